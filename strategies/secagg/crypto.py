"""The cryptographic primitives of the protocol, every one from the ``cryptography``
package (nothing here is hand-written cryptography):

- X25519 key agreement (``keypair``, ``agree``);
- HKDF-SHA256 key derivation (``derive_key``), with the session id as salt and an info
  string naming the purpose and the parties, so every key serves one purpose, once;
- AES-256-GCM authenticated encryption of the Shamir shares (``seal``, ``unseal``): each
  key encrypts exactly one message, so the fixed all-zero nonce is never reused;
- ChaCha20 as the mask generator (``keystream``): the pairwise and self masks are its
  keystream under a derived 256-bit key, zero nonce and counter (one key, one stream);
- SHA-256 (``sha256``) for commitments and the ring order of the neighbour graph.

Secret randomness comes from the caller's ``randbytes`` (``secrets.token_bytes`` by
default: the OS CSPRNG); tests pass a seeded one to make runs repeatable.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

RandBytes = Callable[[int], bytes]
KEY_BYTES = 32
TAG_BYTES = 16
_NONCE = bytes(12)
_CHACHA_NONCE = bytes(16)  # cryptography's ChaCha20 takes counter (4 bytes) + nonce (12)


class CryptoError(ValueError):
    """A key or ciphertext is invalid (bad public key, failed authentication)."""


def keypair(randbytes: RandBytes) -> tuple[bytes, bytes]:
    """(private, public) X25519 key pair, 32 bytes each, from 32 random bytes."""
    sk = X25519PrivateKey.from_private_bytes(randbytes(KEY_BYTES))
    return sk.private_bytes_raw(), public_of(sk.private_bytes_raw())


def public_of(private: bytes) -> bytes:
    """The X25519 public key of a private key."""
    pk = X25519PrivateKey.from_private_bytes(private).public_key()
    return pk.public_bytes(Encoding.Raw, PublicFormat.Raw)


def agree(private: bytes, public: bytes) -> bytes:
    """The X25519 shared secret; CryptoError for a public key of small order."""
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(public))
    except ValueError as e:
        raise CryptoError(f"key agreement failed: {e}") from None


def derive_key(secret: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 of ``secret`` to a 32-byte key for the purpose ``info``."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(secret)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM ciphertext + tag of one message under a single-use key."""
    return AESGCM(key).encrypt(_NONCE, plaintext, aad)


def unseal(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """The plaintext; CryptoError when the ciphertext, tag or associated data was altered
    (or the key is not the sender's)."""
    try:
        return AESGCM(key).decrypt(_NONCE, ciphertext, aad)
    except InvalidTag:
        raise CryptoError("authentication failed: the ciphertext was altered, replayed "
                          "from another session or pair, or not encrypted for this node"
                          ) from None


def keystream(key: bytes, nbytes: int) -> bytes:
    """``nbytes`` of ChaCha20 keystream under ``key`` (the mask generator)."""
    enc = Cipher(algorithms.ChaCha20(key, _CHACHA_NONCE), mode=None).encryptor()
    return enc.update(bytes(nbytes))


def sha256(*parts: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    for p in parts:
        h.update(p)
    return h.finalize()
