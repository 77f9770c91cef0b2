"""The secure-aggregation protocol, with no Flower import: SecAgg (Bonawitz et al. 2017)
with SecAgg+'s optional neighbour graph (Bell et al. 2020), for vectors in
Z_{2^m}^n x Z_{2^64}^T (summable codes, ``fedhd.modular``, plus a few 64-bit counters).

Threat model: an honest-but-curious server (it follows the protocol and may try to learn
from what it sees) and clients that may collude with it, fewer than ``threshold`` of them
in any neighbourhood. Such a coalition learns nothing about an honest client's vector
beyond the sum over the clients that survived to the masked-input stage. Not covered: a
server that lies (sends different survivor lists to different clients, or substitutes
public keys: that needs the consistency round and signed keys of the actively secure
variant) and clients that send malformed vectors to spoil the sum.

Stages of one session (one round), server <-> client messages (``Kind``):

0. SETUP -> ADVERTISE: each client makes two X25519 key pairs, c (channel) and s (masks).
1. ROSTER -> SHARES: the server lists the clients that advertised (U1) and their public
   keys. Each client i draws a self-mask seed b_i, Shamir-shares b_i and its private key
   s_sk_i (threshold t) among its neighbourhood N(i) (all of U1, or the SecAgg+ ring of
   ``num_shares`` clients around it), and encrypts each neighbour's two shares with
   AES-GCM under an HKDF key from X25519(c_sk_i, c_pk_j). It also commits to b_i
   (SHA-256) so that the server can check the reconstruction.
2. MASK_REQUEST -> MASKED: the server forwards to each client j of U2 (those that sent
   shares) the ciphertexts addressed to it; j decrypts them (authenticated: a tampered or
   replayed ciphertext fails), and sends its vector plus the ChaCha20 keystream of
   HKDF(b_j), plus or minus the keystream of HKDF(X25519(s_sk_j, s_pk_k)) for every
   neighbour k that sent it shares (+ if j < k): pairwise masks cancel in the sum.
3. UNMASK_REQUEST -> UNMASK: the server lists the survivors U3 (masked vectors received)
   and the dropped D = U2 - U3. Each client of U3 checks the lists (disjoint, it is a
   survivor, at least t survivors, every neighbour that sent it shares is listed), then
   reveals its shares of b_k for the survivors and of s_sk_k for the dropped, never both
   for one client. From t shares the server rebuilds each survivor's self mask and each
   dropped client's pairwise masks with the survivors, and removes them: the sum of the
   survivors' vectors mod 2^m (and mod 2^64) is all it learns. A rebuilt secret must match
   b_k's commitment (or s_pk_k); when the first t shares fail that, other t of them are
   tried, so a client that alters its shares is outvoted while t honest ones remain.

Every message starts with ``MAGIC`` ``FS``, the version, its kind, the 16-byte session id
(random, chosen by the server per round) and the round number; parsers check every field
and length and raise ``fedhd.DecodeError`` for malformed bytes, ``ProtocolError`` for a
well-formed message that must be refused (wrong stage, session or round, a replay,
inconsistent sets, failed authentication). The server raises ``SecAggAbort`` when a stage
leaves fewer than ``threshold`` clients or no t shares of a secret check out.
"""

from __future__ import annotations

import json
import random
import secrets
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from functools import partial
from itertools import pairwise

import numpy as np

from fedhd.errors import DecodeError
from fedhd.modular import pack, packed_bytes, unpack, word_dtype

from . import crypto, shamir
from .crypto import CryptoError, RandBytes

__all__ = [
    "Aggregate",
    "ClientSession",
    "Kind",
    "ProtocolError",
    "SecAggAbort",
    "ServerSession",
    "StaleMessage",
    "neighbourhood",
]

MAGIC = b"FS"
VERSION = 1
PROTOCOL_ID = b"fedhd-secagg/1"
SESSION_BYTES = 16
_HEAD = struct.Struct("<2sBB16sQ")  # magic, version, kind, session, round
#: Subsets of ``threshold`` shares the server tries for one secret before it gives up.
REBUILD_TRIES = 64
HEAD_BYTES = _HEAD.size  # 28
_PK = crypto.KEY_BYTES
_SHARE = shamir.SHARE_BYTES
_PLAIN = struct.Struct(f"<QQ{_SHARE}s{_SHARE}s")  # src, dst, share of b, share of s_sk
CT_BYTES = _PLAIN.size + crypto.TAG_BYTES  # 164
MAX_CLIENTS = 1 << 20


class Kind(IntEnum):
    SETUP = 1
    ADVERTISE = 2
    ROSTER = 3
    SHARES = 4
    MASK_REQUEST = 5
    MASKED = 6
    UNMASK_REQUEST = 7
    UNMASK = 8


class ProtocolError(ValueError):
    """A well-formed protocol message that this party refuses."""


class StaleMessage(ProtocolError):
    """A message of another session or round, or of a stage already done (a replay): it is
    refused and the session it does not belong to goes on."""


class SecAggAbort(RuntimeError):
    """The server cannot finish the session (too few clients, a failed reconstruction)."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"secure aggregation aborted at stage {stage!r}: {reason}")
        self.stage = stage
        self.reason = reason


# --- byte helpers ---------------------------------------------------------------------

def _u64(v: int) -> bytes:
    return struct.pack("<Q", v)


class _Reader:
    """Cursor over a message body; DecodeError for truncation or trailing bytes."""

    def __init__(self, data: bytes | memoryview, pos: int, what: str):
        self.data, self.pos, self.what = memoryview(data), pos, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise DecodeError(f"{self.what} is truncated: needs {self.pos + n} bytes, has "
                              f"{len(self.data)}")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size))

    def count(self, item_bytes: int) -> int:
        (n,) = self.unpack("I")
        if n > MAX_CLIENTS or n * item_bytes > len(self.data) - self.pos:
            raise DecodeError(f"{self.what}: a count of {n} entries of {item_bytes} bytes does "
                              f"not fit the {len(self.data) - self.pos} bytes left")
        return n

    def ids(self) -> list[int]:
        n = self.count(8)
        ids = list(struct.unpack(f"<{n}Q", self.take(8 * n)))
        _check_sorted(ids, self.what)
        return ids

    def done(self) -> None:
        if self.pos != len(self.data):
            raise DecodeError(f"{self.what} has {len(self.data) - self.pos} trailing bytes")


def _check_sorted(ids: Sequence[int], what: str) -> None:
    if any(a >= b for a, b in pairwise(ids)):
        raise DecodeError(f"{what}: node ids must be strictly increasing")


def _head(kind: Kind, session: bytes, server_round: int) -> bytes:
    return _HEAD.pack(MAGIC, VERSION, int(kind), session, server_round)


def read_head(data: bytes | memoryview, kind: Kind) -> tuple[bytes, int, _Reader]:
    """(session, round, reader of the body) of a message that must be of ``kind``."""
    what = f"a secagg {kind.name} message"
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"{what} must be bytes, got {type(data).__name__}")
    if len(data) < HEAD_BYTES:
        raise DecodeError(f"{what} of {len(data)} bytes is shorter than its header")
    magic, version, k, session, server_round = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError(f"bad magic {magic!r}: not a secagg message")
    if version != VERSION:
        raise DecodeError(f"unsupported secagg version {version}")
    if k != kind:
        raise ProtocolError(f"expected a {kind.name} message, got kind {k}")
    return session, server_round, _Reader(data, HEAD_BYTES, what)


def message_kind(data: bytes | memoryview) -> Kind:
    """The kind of a message (DecodeError if it is not one)."""
    if len(data) < HEAD_BYTES or bytes(data[:2]) != MAGIC:
        raise DecodeError("not a secagg message")
    try:
        return Kind(data[3])
    except ValueError:
        raise DecodeError(f"unknown secagg message kind {data[3]}") from None


def neighbourhood(ids: Sequence[int], node: int, num_shares: int, session: bytes
                  ) -> tuple[int, ...]:
    """N(node), itself included, sorted: every id when ``num_shares`` is 0 or covers them
    all (SecAgg), else the ``num_shares`` (odd) nodes around it on a ring ordered by
    SHA-256(session, id) (SecAgg+'s graph; symmetric: j in N(i) iff i in N(j))."""
    if num_shares == 0 or num_shares >= len(ids):
        return tuple(ids)
    ring = sorted(ids, key=lambda v: crypto.sha256(session, _u64(v)))
    pos = ring.index(node)
    half = num_shares // 2
    return tuple(sorted({ring[(pos + o) % len(ring)] for o in range(-half, half + 1)}))


def _channel_key(own_sk: bytes, peer_pk: bytes, session: bytes, src: int, dst: int) -> bytes:
    return crypto.derive_key(crypto.agree(own_sk, peer_pk), session,
                             PROTOCOL_ID + b"/channel" + _u64(src) + _u64(dst))


def _pair_key(own_sk: bytes, peer_pk: bytes, session: bytes, a: int, b: int) -> bytes:
    lo, hi = min(a, b), max(a, b)
    return crypto.derive_key(crypto.agree(own_sk, peer_pk), session,
                             PROTOCOL_ID + b"/pair-mask" + _u64(lo) + _u64(hi))


def _self_key(seed: bytes, session: bytes, node: int) -> bytes:
    return crypto.derive_key(seed, session, PROTOCOL_ID + b"/self-mask" + _u64(node))


def _commitment(seed: bytes, session: bytes, node: int) -> bytes:
    return crypto.sha256(PROTOCOL_ID, b"/commit", session, _u64(node), seed)


def _share_aad(session: bytes, server_round: int, src: int, dst: int) -> bytes:
    return _head(Kind.SHARES, session, server_round) + _u64(src) + _u64(dst)


def mask_streams(key: bytes, n: int, dtype: np.dtype, tail: int) -> tuple[np.ndarray, np.ndarray]:
    """The mask of one key: n words of ``dtype`` and ``tail`` uint64 words of ChaCha20
    keystream (words little-endian; reduced mod 2**m only after the sum)."""
    nb = n * dtype.itemsize
    ks = crypto.keystream(key, nb + 8 * tail)
    return (np.frombuffer(ks, dtype.newbyteorder("<"), n).astype(dtype),
            np.frombuffer(ks, "<u8", tail, nb).astype(np.uint64))


# --- client ---------------------------------------------------------------------------

ADVERTISED, SHARED, READY, MASKED, DONE = "advertised", "shared", "ready", "masked", "done"


@dataclass
class ClientSession:
    """One client's state in one session; ``to_bytes``/``from_bytes`` keep it in the
    node's state between the stages (secrets included: the node's own storage)."""

    node_id: int
    session: bytes
    server_round: int
    threshold: int
    num_shares: int
    c_sk: bytes
    s_sk: bytes
    stage: str = ADVERTISED
    seed: bytes = b""
    roster: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    neighbours: tuple[int, ...] = ()
    own_shares: tuple[int, int] = (0, 0)
    received: dict[int, tuple[int, int]] = field(default_factory=dict)

    # stage 0
    @classmethod
    def start(cls, node_id: int, setup: bytes, randbytes: RandBytes = secrets.token_bytes
              ) -> tuple[ClientSession, bytes]:
        """A new session from a SETUP message, and the ADVERTISE reply."""
        session, server_round, r = read_head(setup, Kind.SETUP)
        threshold, num_shares = r.unpack("HI")
        r.done()
        if threshold < 2:
            raise ProtocolError(f"threshold {threshold} < 2 would let the server read inputs")
        if num_shares and (num_shares < threshold or num_shares % 2 == 0):
            raise ProtocolError(f"num_shares {num_shares} must be odd and >= the threshold")
        c_sk, c_pk = crypto.keypair(randbytes)
        s_sk, s_pk = crypto.keypair(randbytes)
        st = cls(node_id, session, server_round, threshold, num_shares, c_sk, s_sk)
        return st, _head(Kind.ADVERTISE, session, server_round) + _u64(node_id) + c_pk + s_pk

    def _read(self, data: bytes | memoryview, kind: Kind, stage: str) -> _Reader:
        session, server_round, r = read_head(data, kind)
        if session != self.session or server_round != self.server_round:
            raise StaleMessage(f"{kind.name} of another session or round (replayed or stale): "
                               f"this node is in round {self.server_round}")
        if self.stage != stage:
            raise StaleMessage(f"{kind.name} arrived at stage {self.stage!r}, expected "
                               f"{stage!r} (out of order or replayed)")
        return r

    # stage 1
    def on_roster(self, data: bytes | memoryview, randbytes: RandBytes = secrets.token_bytes
                  ) -> bytes:
        """Shares of the self-mask seed and of s_sk for the neighbours: the SHARES reply."""
        r = self._read(data, Kind.ROSTER, ADVERTISED)
        threshold, num_shares = r.unpack("HI")
        n = r.count(8 + 2 * _PK)
        roster: dict[int, tuple[bytes, bytes]] = {}
        ids = []
        for _ in range(n):
            (nid,) = r.unpack("Q")
            ids.append(nid)
            roster[nid] = (r.take(_PK), r.take(_PK))
        r.done()
        _check_sorted(ids, "the roster")
        if (threshold, num_shares) != (self.threshold, self.num_shares):
            raise ProtocolError("the roster changed the threshold or the neighbourhood size")
        mine = (crypto.public_of(self.c_sk), crypto.public_of(self.s_sk))
        if roster.get(self.node_id) != mine:
            raise ProtocolError("the roster does not list this node with its own public keys")
        if n < self.threshold:
            raise ProtocolError(f"only {n} clients advertised keys, below the threshold "
                                f"{self.threshold}")
        nbrs = neighbourhood(ids, self.node_id, num_shares, self.session)
        if len(nbrs) < self.threshold:
            raise ProtocolError(f"a neighbourhood of {len(nbrs)} is below the threshold")
        xs = [ids.index(j) + 1 for j in nbrs]
        self.seed = randbytes(32)
        b_shares = shamir.split(self.seed, self.threshold, xs, randbytes)
        sk_shares = shamir.split(self.s_sk, self.threshold, xs, randbytes)
        out = [_head(Kind.SHARES, self.session, self.server_round), _u64(self.node_id),
               _commitment(self.seed, self.session, self.node_id),
               struct.pack("<I", len(nbrs) - 1)]
        for j, bs, ks in zip(nbrs, b_shares, sk_shares, strict=True):
            if j == self.node_id:
                self.own_shares = (bs, ks)
                continue
            key = _channel_key(self.c_sk, roster[j][0], self.session, self.node_id, j)
            plain = _PLAIN.pack(self.node_id, j, shamir.to_bytes(bs), shamir.to_bytes(ks))
            out += [_u64(j), crypto.seal(key, plain,
                                         _share_aad(self.session, self.server_round,
                                                    self.node_id, j))]
        self.roster, self.neighbours, self.stage = roster, nbrs, SHARED
        return b"".join(out)

    # stage 2
    def on_mask_request(self, data: bytes | memoryview) -> bytes:
        """Decrypt and keep the neighbours' shares; returns the request's opaque params
        (the vector's encoding, chosen by the server). Call ``mask`` next."""
        r = self._read(data, Kind.MASK_REQUEST, SHARED)
        (plen,) = r.unpack("I")
        params = r.take(plen)
        n = r.count(8 + CT_BYTES)
        received: dict[int, tuple[int, int]] = {}
        srcs = []
        for _ in range(n):
            (src,) = r.unpack("Q")
            ct = r.take(CT_BYTES)
            srcs.append(src)
            if src == self.node_id or src not in self.neighbours:
                raise ProtocolError(f"shares forwarded from node {src}, not a neighbour")
            key = _channel_key(self.c_sk, self.roster[src][0], self.session, src, self.node_id)
            try:
                plain = crypto.unseal(key, ct, _share_aad(self.session, self.server_round, src,
                                                          self.node_id))
            except CryptoError as e:
                raise ProtocolError(f"shares from node {src}: {e}") from None
            p_src, p_dst, bs, ks = _PLAIN.unpack(plain)
            if (p_src, p_dst) != (src, self.node_id):
                raise ProtocolError(f"shares from node {src} name the pair ({p_src}, {p_dst})")
            try:
                received[src] = (shamir.from_bytes(bs), shamir.from_bytes(ks))
            except ValueError as e:
                raise ProtocolError(f"shares from node {src}: {e}") from None
        r.done()
        _check_sorted(srcs, "the forwarded shares")
        if len(received) + 1 < self.threshold:
            raise ProtocolError(f"only {len(received)} neighbours sent shares, below the "
                                f"threshold {self.threshold}: refusing to send a masked input")
        self.received, self.stage = received, READY
        return params

    def mask(self, words: np.ndarray, bits: int, tail: np.ndarray) -> bytes:
        """The MASKED reply: ``words`` (values mod 2**bits) and ``tail`` (uint64) plus the
        self mask and the pairwise masks of every neighbour that sent shares."""
        if self.stage != READY:
            raise StaleMessage(f"mask at stage {self.stage!r}: a session masks one input once")
        dt = word_dtype(bits)
        acc = np.array(words, dtype=dt, copy=True)
        tacc = np.array(tail, dtype=np.uint64, copy=True).ravel()
        if acc.ndim != 1 or (acc.astype(np.uint64) >> np.uint64(bits)).any():
            raise ValueError(f"words must be a vector of values below 2**{bits}")
        w, t = mask_streams(_self_key(self.seed, self.session, self.node_id), acc.size, dt,
                            tacc.size)
        acc += w
        tacc += t
        for j in sorted(self.received):
            w, t = mask_streams(_pair_key(self.s_sk, self.roster[j][1], self.session,
                                          self.node_id, j), acc.size, dt, tacc.size)
            if self.node_id < j:
                acc += w
                tacc += t
            else:
                acc -= w
                tacc -= t
        acc &= dt.type((1 << bits) - 1)
        self.stage = MASKED
        return b"".join([_head(Kind.MASKED, self.session, self.server_round),
                         struct.pack("<QBIH", self.node_id, bits, acc.size, tacc.size),
                         pack(acc, bits), tacc.astype("<u8").tobytes()])

    # stage 3
    def on_unmask_request(self, data: bytes | memoryview) -> bytes:
        """The UNMASK reply: shares of b for the survivors, of s_sk for the dropped."""
        r = self._read(data, Kind.UNMASK_REQUEST, MASKED)
        survivors, dropped = r.ids(), r.ids()
        r.done()
        s, dset = set(survivors), set(dropped)
        if s & dset:
            raise ProtocolError(f"nodes {sorted(s & dset)} are listed both as survivors and "
                                "as dropped: revealing both secrets would unmask them")
        if self.node_id not in s:
            raise ProtocolError("this node sent its masked input but is not listed as a survivor")
        if len(s) < self.threshold:
            raise ProtocolError(f"only {len(s)} survivors, below the threshold {self.threshold}")
        missing = [j for j in self.received if j not in s and j not in dset]
        if missing:
            raise ProtocolError(f"neighbours {missing} are listed neither as survivors nor as "
                                "dropped")
        entries = []
        for o in sorted(set(self.received) | {self.node_id}):
            b_share, sk_share = self.own_shares if o == self.node_id else self.received[o]
            if o in s:
                entries.append(_u64(o) + b"\x00" + shamir.to_bytes(b_share))
            elif o in dset:
                entries.append(_u64(o) + b"\x01" + shamir.to_bytes(sk_share))
        self.stage = DONE
        self.c_sk = self.s_sk = self.seed = b""
        self.received = {}
        return b"".join([_head(Kind.UNMASK, self.session, self.server_round),
                         _u64(self.node_id), struct.pack("<I", len(entries)), *entries])

    # persistence
    def to_bytes(self) -> bytes:
        return json.dumps({
            "node_id": self.node_id, "session": self.session.hex(), "round": self.server_round,
            "threshold": self.threshold, "num_shares": self.num_shares,
            "c_sk": self.c_sk.hex(), "s_sk": self.s_sk.hex(), "stage": self.stage,
            "seed": self.seed.hex(),
            "roster": [[k, a.hex(), b.hex()] for k, (a, b) in self.roster.items()],
            "neighbours": list(self.neighbours), "own_shares": list(self.own_shares),
            "received": [[k, a, b] for k, (a, b) in self.received.items()],
        }).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientSession:
        try:
            d = json.loads(data)
            return cls(
                int(d["node_id"]), bytes.fromhex(d["session"]), int(d["round"]),
                int(d["threshold"]), int(d["num_shares"]), bytes.fromhex(d["c_sk"]),
                bytes.fromhex(d["s_sk"]), str(d["stage"]), bytes.fromhex(d["seed"]),
                {int(k): (bytes.fromhex(a), bytes.fromhex(b)) for k, a, b in d["roster"]},
                tuple(int(v) for v in d["neighbours"]),
                (int(d["own_shares"][0]), int(d["own_shares"][1])),
                {int(k): (int(a), int(b)) for k, a, b in d["received"]})
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise DecodeError(f"corrupt secagg client state: {e}") from None


# --- server ---------------------------------------------------------------------------

@dataclass
class Aggregate:
    """The unmasked result: sum over ``survivors`` of their words mod 2**m and tails."""

    words: np.ndarray
    tail: np.ndarray
    survivors: list[int]
    dropped: list[int]


class ServerSession:
    """The server's side of one session. Each ``on_*`` takes the replies of one stage as
    (node id, bytes) pairs, keeps the valid ones (the others are recorded in
    ``rejected`` with the reason) and raises ``SecAggAbort`` below the threshold.

    Parameters
    ----------
    server_round : int
    nodes : the sampled node ids
    threshold : t, the number of shares that rebuild a secret (>= 2)
    num_shares : 0 for the complete graph (SecAgg), else the odd neighbourhood size
    """

    def __init__(self, server_round: int, nodes: Iterable[int], threshold: int,
                 num_shares: int = 0, randbytes: RandBytes = secrets.token_bytes):
        self.server_round = int(server_round)
        self.sampled = sorted(set(int(n) for n in nodes))
        if not 2 <= threshold <= len(self.sampled):
            raise ValueError(f"threshold must be in [2, {len(self.sampled)}] (the sampled "
                             f"clients), got {threshold}")
        if num_shares and (num_shares < threshold or num_shares % 2 == 0):
            raise ValueError(f"num_shares must be 0 or odd and >= threshold, got {num_shares}")
        self.threshold, self.num_shares = int(threshold), int(num_shares)
        self.session = randbytes(SESSION_BYTES)
        self.rejected: list[tuple[str, int, str]] = []
        self.u1: list[int] = []
        self.u2: list[int] = []
        self.u3: list[int] = []
        self.u4: list[int] = []
        self.roster: dict[int, tuple[bytes, bytes]] = {}
        self.nbrs: dict[int, tuple[int, ...]] = {}
        self.commitments: dict[int, bytes] = {}
        #: Owners whose secret needed other shares than the first ``threshold`` (some
        #: client altered its shares of them), filled by ``on_unmask``.
        self.outvoted: list[int] = []
        self._suspects: set[int] = set()  # x of holders whose shares failed a check
        self.forward: dict[int, list[tuple[int, bytes]]] = {}
        self._shape: tuple[int, int, int] | None = None
        self._sum: tuple[np.ndarray, np.ndarray] | None = None

    def _head(self, kind: Kind) -> bytes:
        return _head(kind, self.session, self.server_round)

    def _valid(self, stage: str, kind: Kind, replies: Iterable[tuple[int, bytes]],
               expected: Iterable[int]) -> dict[int, _Reader]:
        want = set(expected)
        seen: dict[int, _Reader] = {}
        for node, data in replies:
            try:
                if node not in want:
                    raise ProtocolError("not expected at this stage")
                if node in seen:
                    raise ProtocolError("a second reply for this stage")
                session, server_round, r = read_head(data, kind)
                if session != self.session or server_round != self.server_round:
                    raise ProtocolError("a reply of another session or round (replayed)")
                (sender,) = r.unpack("Q")
                if sender != node:
                    raise ProtocolError(f"the reply names node {sender} as its sender")
                seen[node] = r
            except (DecodeError, ProtocolError) as e:
                self.rejected.append((stage, node, str(e)))
                seen.pop(node, None)
                want.discard(node)
        return seen

    def _reject(self, stage: str, node: int, e: Exception) -> None:
        self.rejected.append((stage, node, str(e)))

    def _enough(self, stage: str, have: Sequence[int], of: int) -> None:
        if len(have) < self.threshold:
            raise SecAggAbort(stage, f"round {self.server_round}: {len(have)} of {of} clients "
                              f"left, below the threshold {self.threshold}; no aggregate")

    # stage 0
    def setup_message(self) -> bytes:
        return self._head(Kind.SETUP) + struct.pack("<HI", self.threshold, self.num_shares)

    def on_advertise(self, replies: Iterable[tuple[int, bytes]]) -> bytes:
        """The ROSTER message (the same for every client of U1)."""
        for node, r in sorted(self._valid("advertise", Kind.ADVERTISE, replies,
                                          self.sampled).items()):
            try:
                c_pk, s_pk = r.take(_PK), r.take(_PK)
                r.done()
            except DecodeError as e:
                self._reject("advertise", node, e)
                continue
            self.roster[node] = (c_pk, s_pk)
        self.u1 = sorted(self.roster)
        self._enough("advertise", self.u1, len(self.sampled))
        self.nbrs = {i: neighbourhood(self.u1, i, self.num_shares, self.session)
                     for i in self.u1}
        body = [self._head(Kind.ROSTER), struct.pack("<HII", self.threshold, self.num_shares,
                                                     len(self.u1))]
        body += [_u64(i) + self.roster[i][0] + self.roster[i][1] for i in self.u1]
        return b"".join(body)

    # stage 1
    def on_shares(self, replies: Iterable[tuple[int, bytes]]) -> list[int]:
        """Keep the ciphertexts; returns U2, the clients to send a mask request to."""
        cts: dict[int, dict[int, bytes]] = {}
        for node, r in sorted(self._valid("share-keys", Kind.SHARES, replies, self.u1).items()):
            try:
                commitment = r.take(32)
                n = r.count(8 + CT_BYTES)
                entries = {}
                order = []
                for _ in range(n):
                    (dst,) = r.unpack("Q")
                    order.append(dst)
                    entries[dst] = r.take(CT_BYTES)
                r.done()
                _check_sorted(order, "the shares")
                if set(order) != set(self.nbrs[node]) - {node}:
                    raise ProtocolError("shares are not addressed to exactly its neighbours")
            except (DecodeError, ProtocolError) as e:
                self._reject("share-keys", node, e)
                continue
            self.commitments[node] = commitment
            cts[node] = entries
        u2 = set(cts)
        self._enough("share-keys", sorted(u2), len(self.u1))
        while True:  # a client with fewer than t share holders left could never be unmasked
            weak = {i for i in u2 if len(set(self.nbrs[i]) & u2) < self.threshold}
            if not weak:
                break
            for i in weak:
                self._reject("share-keys", i, ProtocolError(
                    "fewer than threshold neighbours hold its shares"))
            u2 -= weak
        self.u2 = sorted(u2)
        self._enough("share-keys", self.u2, len(self.u1))
        self.forward = {j: [(i, cts[i][j]) for i in self.u2 if i != j and j in self.nbrs[i]]
                        for j in self.u2}
        return list(self.u2)

    # stage 2
    def mask_request(self, node: int, params: bytes, bits: int, n: int, tail: int) -> bytes:
        """The MASK_REQUEST of one client of U2: ``params`` (opaque to the protocol) and
        the ciphertexts addressed to it; the masked vector must be (bits, n, tail)."""
        self._shape = (int(bits), int(n), int(tail))
        word_dtype(bits)
        body = [self._head(Kind.MASK_REQUEST), struct.pack("<I", len(params)), params,
                struct.pack("<I", len(self.forward[node]))]
        body += [_u64(i) + ct for i, ct in self.forward[node]]
        return b"".join(body)

    def on_masked(self, replies: Iterable[tuple[int, bytes]]) -> bytes:
        """Sum the masked vectors of U3; returns the UNMASK_REQUEST (same for all of U3)."""
        if self._shape is None:
            raise RuntimeError("on_masked before any mask_request")
        bits, n, tail = self._shape
        dt = word_dtype(bits)
        acc = np.zeros(n, dt)
        tacc = np.zeros(tail, np.uint64)
        u3 = []
        for node, r in sorted(self._valid("masked-input", Kind.MASKED, replies,
                                          self.u2).items()):
            try:
                got = r.unpack("BIH")
                if got != (bits, n, tail):
                    raise ProtocolError(f"a masked vector of shape {got}, expected "
                                        f"{(bits, n, tail)}")
                words = unpack(r.take(packed_bytes(n, bits)), bits, n)
                t = np.frombuffer(r.take(8 * tail), "<u8").astype(np.uint64)
                r.done()
            except (DecodeError, ProtocolError) as e:
                self._reject("masked-input", node, e)
                continue
            acc += words
            tacc += t
            u3.append(node)
        self.u3 = u3
        self._enough("masked-input", self.u3, len(self.u2))
        self._sum = (acc, tacc)
        dropped = sorted(set(self.u2) - set(u3))
        return b"".join([self._head(Kind.UNMASK_REQUEST), struct.pack("<I", len(u3)),
                         *(_u64(i) for i in u3), struct.pack("<I", len(dropped)),
                         *(_u64(i) for i in dropped)])

    # stage 3
    def on_unmask(self, replies: Iterable[tuple[int, bytes]]) -> Aggregate:
        """Rebuild the secrets from the shares and remove the masks."""
        if self._sum is None or self._shape is None:
            raise RuntimeError("on_unmask before on_masked")
        bits, n, tail = self._shape
        dt = word_dtype(bits)
        s, dropped = set(self.u3), sorted(set(self.u2) - set(self.u3))
        dset = set(dropped)
        x_of = {j: self.u1.index(j) + 1 for j in self.u1}
        b_points: dict[int, list[tuple[int, int]]] = {o: [] for o in self.u3}
        sk_points: dict[int, list[tuple[int, int]]] = {o: [] for o in dropped}
        u4 = []
        for node, r in sorted(self._valid("unmask", Kind.UNMASK, replies, self.u3).items()):
            held = set(self.nbrs[node]) & set(self.u2)
            want = {(o, 0) for o in held & s} | {(o, 1) for o in held & dset}
            try:
                k = r.count(9 + _SHARE)
                got = {}
                order = []
                for _ in range(k):
                    o, kind = r.unpack("QB")
                    got[(o, kind)] = shamir.from_bytes(r.take(_SHARE))
                    order.append(o)
                r.done()
                _check_sorted(order, "the unmask shares")
                if set(got) != want:
                    raise ProtocolError("the shares do not match the survivors and dropped "
                                        "clients it holds shares of")
            except (DecodeError, ProtocolError, ValueError) as e:
                self._reject("unmask", node, e)
                continue
            for (o, kind), y in got.items():
                (b_points if kind == 0 else sk_points)[o].append((x_of[node], y))
            u4.append(node)
        self.u4 = u4
        self._enough("unmask", self.u4, len(self.u3))
        acc, tacc = self._sum[0].copy(), self._sum[1].copy()
        for o in self.u3:
            seed = self._rebuild(o, b_points[o], 32, "self-mask seed",
                                 partial(self._is_seed_of, o))
            w, t = mask_streams(_self_key(seed, self.session, o), n, dt, tail)
            acc -= w
            tacc -= t
        for o in dropped:
            sk = self._rebuild(o, sk_points[o], 32, "mask key", partial(self._is_key_of, o))
            for k in sorted(s & set(self.nbrs[o])):
                w, t = mask_streams(_pair_key(sk, self.roster[k][1], self.session, o, k), n, dt,
                                    tail)
                if k < o:  # k added +mask
                    acc -= w
                    tacc -= t
                else:
                    acc += w
                    tacc += t
        acc &= dt.type((1 << bits) - 1)
        return Aggregate(acc, tacc, list(self.u3), dropped)

    def _is_seed_of(self, node: int, seed: bytes) -> bool:
        """Whether ``seed`` is the self-mask seed ``node`` committed to."""
        return _commitment(seed, self.session, node) == self.commitments[node]

    def _is_key_of(self, node: int, sk: bytes) -> bool:
        """Whether ``sk`` is the mask key of ``node``'s advertised public key."""
        return crypto.public_of(sk) == self.roster[node][1]

    def _rebuild(self, owner: int, points: list[tuple[int, int]], nbytes: int, what: str,
                 check: Callable[[bytes], bool]) -> bytes:
        """The secret of ``owner`` from its shares, as ``check`` (its commitment, or its
        public key) confirms it. A client that sends altered shares is outvoted: when the
        first ``threshold`` shares give a value that fails the check, other subsets of
        ``threshold`` shares are tried (seeded order, at most REBUILD_TRIES), first without
        the holders suspected by earlier secrets; SecAggAbort if none checks out."""
        t = self.threshold
        if len(points) < t:
            raise SecAggAbort("unmask", f"the {what} of node {owner} has {len(points)} shares, "
                              f"{t} are needed")
        pts = sorted(points)
        trusted = [p for p in pts if p[0] not in self._suspects]
        first = trusted[:t] if len(trusted) >= t else pts[:t]
        order = random.Random(int.from_bytes(crypto.sha256(self.session, _u64(owner)), "big"))
        for k in range(REBUILD_TRIES):
            subset = first if k == 0 else sorted(order.sample(pts, t))
            value = shamir.combine(subset, t)
            if not value >> (8 * nbytes):
                secret = value.to_bytes(nbytes, "little")
                if check(secret):
                    if subset != pts[:t]:  # some share among the first t was altered
                        self.outvoted.append(owner)
                        self._suspects |= {x for x, _ in pts[:t]} - {x for x, _ in subset}
                    return secret
            if len(pts) == t:
                break  # no other subset to try
        raise SecAggAbort("unmask", f"the {what} of node {owner} does not reconstruct from any "
                          f"{t} of its {len(pts)} shares: shares were altered")
