"""The secure-aggregation protocol without Flower: exact sums under dropouts at every
stage, uniform masked vectors, Shamir below the threshold, tampering and replays."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from scipy import stats

from fedhd import DecodeError
from strategies.secagg import crypto, shamir
from strategies.secagg.protocol import (
    HEAD_BYTES,
    ClientSession,
    Kind,
    ProtocolError,
    SecAggAbort,
    ServerSession,
    StaleMessage,
    neighbourhood,
)


class Fed:
    """K clients and a server, stage by stage, with seeded randomness."""

    def __init__(self, K=10, t=7, num_shares=0, bits=11, n=600, tail=3, seed=0):
        self.rb = random.Random(seed).randbytes
        self.ids = [1000 + 7 * i for i in range(K)]
        self.srv = ServerSession(4, self.ids, t, num_shares, self.rb)
        self.bits, self.n, self.tail = bits, n, tail
        r = np.random.default_rng(seed)
        self.words = {i: r.integers(0, 2**bits, n).astype(np.uint16) for i in self.ids}
        self.tails = {i: r.integers(0, 2**63, tail, dtype=np.uint64) for i in self.ids}
        self.cl: dict[int, ClientSession] = {}

    def setup(self, drop=()):
        msg = self.srv.setup_message()
        replies = []
        for i in self.ids:
            self.cl[i], adv = ClientSession.start(i, msg, self.rb)
            if i not in drop:
                replies.append((i, adv))
        self.roster = self.srv.on_advertise(replies)

    def share(self, drop=()):
        self.shares = {i: self.cl[i].on_roster(self.roster, self.rb) for i in self.srv.u1}
        return self.srv.on_shares([(i, s) for i, s in self.shares.items() if i not in drop])

    def requests(self):
        return {i: self.srv.mask_request(i, b"params", self.bits, self.n, self.tail)
                for i in self.srv.u2}

    def mask(self, drop=(), requests=None):
        requests = requests or self.requests()
        self.masked = {}
        for i, req in requests.items():
            assert self.cl[i].on_mask_request(req) == b"params"
            self.masked[i] = self.cl[i].mask(self.words[i], self.bits, self.tails[i])
        self.unmask_request = self.srv.on_masked(
            [(i, m) for i, m in self.masked.items() if i not in drop])

    def unmask(self, drop=()):
        self.unmask_replies = {i: self.cl[i].on_unmask_request(self.unmask_request)
                               for i in self.srv.u3 if i not in drop}
        return self.srv.on_unmask(list(self.unmask_replies.items()))

    def expected(self, members):
        w = sum(self.words[i].astype(np.int64) for i in members) & (2**self.bits - 1)
        t = np.zeros(self.tail, np.uint64)
        for i in members:
            t += self.tails[i]
        return w, t

    def run(self, drops=None):
        drops = drops or {}
        self.setup(drops.get("setup", ()))
        self.share(drops.get("share", ()))
        self.mask(drops.get("mask", ()))
        return self.unmask(drops.get("unmask", ()))


def _check(fed, agg, members):
    w, t = fed.expected(members)
    assert agg.survivors == sorted(members)
    np.testing.assert_array_equal(agg.words.astype(np.int64), w)  # exact integers
    np.testing.assert_array_equal(agg.tail, t)


# --- exact sums and dropouts ----------------------------------------------------------------

@pytest.mark.parametrize("stage", ["none", "setup", "share", "mask", "unmask"])
def test_the_unmasked_sum_is_exact_with_dropouts_at_each_stage(stage):
    fed = Fed()
    drop = {fed.ids[1], fed.ids[6]}
    agg = fed.run({} if stage == "none" else {stage: drop})
    members = [i for i in fed.ids if stage not in ("setup", "share", "mask") or i not in drop]
    _check(fed, agg, members)
    # who dropped after sending its masked input is still in the sum (rebuilt self masks)
    assert agg.dropped == (sorted(drop) if stage == "mask" else [])


def test_dropouts_at_every_stage_in_one_round_and_the_secagg_plus_ring():
    fed = Fed(K=15, t=4, num_shares=7, seed=3)
    ids = fed.ids
    agg = fed.run({"setup": {ids[0]}, "share": {ids[5]}, "mask": {ids[9], ids[10]},
                   "unmask": {ids[12]}})
    _check(fed, agg, [i for i in ids if i not in (ids[0], ids[5], ids[9], ids[10])])
    u1 = fed.srv.u1
    for i in u1:  # the ring is symmetric and has num_shares members
        n_i = neighbourhood(u1, i, 7, fed.srv.session)
        assert len(n_i) == 7 and i in n_i
        assert all(i in neighbourhood(u1, j, 7, fed.srv.session) for j in n_i)


@pytest.mark.parametrize("stage", ["setup", "share", "mask", "unmask"])
def test_below_the_threshold_at_any_stage_the_round_is_refused_clearly(stage):
    fed = Fed(K=6, t=4)
    with pytest.raises(SecAggAbort, match="3 of 6 clients left, below the threshold 4"):
        fed.run({stage: set(fed.ids[:3])})


def test_the_unmask_stage_needs_t_shares_of_every_secret():
    """t - 1 holders answer for a dropped client's key: refused, nothing is unmasked."""
    fed = Fed(K=5, t=4)
    fed.setup()
    fed.share()
    fed.mask(drop={fed.ids[0]})
    with pytest.raises(SecAggAbort, match="3 of 4 clients left, below the threshold 4"):
        fed.unmask(drop={fed.ids[1]})


# --- what the server sees -------------------------------------------------------------------

@pytest.mark.parametrize(("bits", "n", "pattern"), [(8, 1 << 16, "zeros"), (8, 1 << 16, "ramp"),
                                                    (11, 1 << 17, "zeros")])
def test_a_single_masked_vector_is_uniform(bits, n, pattern):
    """Chi-square goodness of fit of the 2**m word values of ONE masked vector (fixed
    seeds, so the test is deterministic) against the uniform law: reject at 99.9 %
    confidence (p < 0.001). An all-zero input is the most structured one there is."""
    fed = Fed(K=4, t=3, bits=bits, n=n, tail=1, seed=bits)
    base = np.zeros(n) if pattern == "zeros" else np.arange(n) % (1 << bits)
    fed.words = {i: base.astype(np.uint16) for i in fed.ids}
    fed.setup()
    fed.share()
    fed.mask()
    masked = fed.masked[fed.ids[0]]
    from fedhd.modular import packed_bytes, unpack

    words = unpack(masked[HEAD_BYTES + 15:HEAD_BYTES + 15 + packed_bytes(n, bits)], bits, n)
    counts = np.bincount(words.astype(np.int64), minlength=1 << bits)
    p = stats.chisquare(counts).pvalue
    assert p > 1e-3, p
    assert not np.array_equal(words, fed.words[fed.ids[0]])
    # and the sum still unmasks exactly
    _check(fed, fed.unmask(), fed.ids)


def test_fewer_shares_than_the_threshold_reveal_nothing():
    rb = random.Random(5).randbytes
    secret = rb(32)
    xs = [1, 2, 3, 4, 5, 6]
    ys = shamir.split(secret, 4, xs, rb)
    pts = list(zip(xs, ys, strict=True))
    assert shamir.combine(pts[2:], 4) == int.from_bytes(secret, "little")
    with pytest.raises(ValueError, match="3 shares cannot reconstruct"):
        shamir.combine(pts[:3], 4)
    # t - 1 shares are consistent with ANY secret: for a forged s', one degree-3 polynomial
    # passes through (0, s') and the 3 shares, and it "reconstructs" s' exactly
    forged = int.from_bytes(rb(32), "little")
    # g(4) of the polynomial g through (0, forged) and pts[:3], by Lagrange in x' = 4 - x
    l4 = shamir.lagrange_at_zero((4 - 0, 4 - 1, 4 - 2, 4 - 3))
    y4 = sum(li * yi for li, yi in zip(l4, [forged, *ys[:3]], strict=True)) % shamir.PRIME
    assert shamir.combine([*pts[:3], (4, y4)], 4) == forged != int.from_bytes(secret, "little")
    assert shamir.PRIME == 2**521 - 1 and pow(3, shamir.PRIME - 1, shamir.PRIME) == 1


def test_a_forged_share_is_outvoted_and_too_many_make_the_unmask_fail_not_a_wrong_sum():
    """A client that alters its shares cannot break the round while t honest shares of each
    secret remain: the server finds t that match the secret's commitment (or public key)
    and the sum is exact. When no t shares check out, the round aborts: never a wrong sum."""
    def forge(data: bytes, byte: int = 10) -> bytes:
        forged = bytearray(data)
        forged[-byte] ^= 1  # in the last share value it sends
        return bytes(forged)

    for seed in range(3):
        fed = Fed(K=6, t=3, seed=seed)
        fed.setup()
        fed.share()
        fed.mask(drop={fed.ids[5]})  # one dropped client: its mask key is rebuilt too
        replies = [(i, fed.cl[i].on_unmask_request(fed.unmask_request)) for i in fed.srv.u3]
        agg = fed.srv.on_unmask([(replies[0][0], forge(replies[0][1])), *replies[1:]])
        _check(fed, agg, fed.ids[:5])
        assert fed.srv.outvoted  # the forged share was among the first t of some secret
    fed = Fed(K=5, t=3)
    fed.setup()
    fed.share()
    fed.mask(drop={fed.ids[4]})
    replies = [(i, fed.cl[i].on_unmask_request(fed.unmask_request)) for i in fed.srv.u3]
    forged = [(i, forge(r, 10 + k)) for k, (i, r) in enumerate(replies[:2])] + replies[2:]
    # 2 of the 4 holders of the dropped client's key lie: no 3 of its shares check out
    with pytest.raises(SecAggAbort, match="shares were altered"):
        fed.srv.on_unmask(forged)


# --- tampering and replays ------------------------------------------------------------------

def test_a_tampered_ciphertext_is_refused_by_its_client():
    fed = Fed(K=5, t=3)
    fed.setup()
    fed.share()
    req = fed.requests()
    victim = fed.ids[2]
    bad = bytearray(req[victim])
    bad[-5] ^= 0x40  # inside the last forwarded ciphertext
    with pytest.raises(ProtocolError, match="authentication failed"):
        fed.cl[victim].on_mask_request(bytes(bad))


def test_a_ciphertext_swapped_between_pairs_or_sessions_is_refused():
    fed = Fed(K=4, t=3, seed=1)
    fed.setup()
    fed.share()
    req = fed.requests()
    a, b = fed.ids[0], fed.ids[1]
    # give a the list addressed to b (relabelled as if it were a's): wrong key and AAD
    body = bytearray(req[a])
    body[-crypto.TAG_BYTES - 150:] = req[b][-crypto.TAG_BYTES - 150:]
    with pytest.raises(ProtocolError):
        fed.cl[a].on_mask_request(bytes(body))
    other = Fed(K=4, t=3, seed=2)  # another session: same ids, other keys and session id
    other.setup()
    other.share()
    with pytest.raises(StaleMessage, match="another session"):
        fed.cl[a].on_mask_request(other.requests()[a])


def test_replayed_stage_messages_are_refused_and_one_input_is_masked_once():
    fed = Fed(K=4, t=3)
    fed.setup()
    fed.share()
    with pytest.raises(StaleMessage, match="expected 'advertised'"):
        fed.cl[fed.ids[0]].on_roster(fed.roster)  # a second roster
    req = fed.requests()
    fed.mask(requests=req)
    with pytest.raises(StaleMessage, match="expected 'shared'"):
        fed.cl[fed.ids[0]].on_mask_request(req[fed.ids[0]])  # would mask a second input
    with pytest.raises(StaleMessage):
        fed.cl[fed.ids[0]].mask(fed.words[fed.ids[0]], fed.bits, fed.tails[fed.ids[0]])
    agg = fed.unmask()
    _check(fed, agg, fed.ids)
    with pytest.raises(StaleMessage, match="expected 'masked'"):
        fed.cl[fed.ids[0]].on_unmask_request(fed.unmask_request)


def test_the_server_rejects_replayed_duplicated_and_misattributed_replies():
    fed = Fed(K=6, t=3, seed=4)
    fed.setup()
    fed.share()
    reqs = fed.requests()
    masked = {}
    for i, r in reqs.items():
        fed.cl[i].on_mask_request(r)
        masked[i] = fed.cl[i].mask(fed.words[i], fed.bits, fed.tails[i])
    old = Fed(K=6, t=3, seed=9)  # a masked vector of another session, replayed
    old.setup()
    old.share()
    old.mask()
    a, b, c = fed.ids[:3]
    replies = [(a, old.masked[a]), (b, masked[c]), (c, masked[c]),
               *[(i, masked[i]) for i in fed.ids[3:]], (fed.ids[3], masked[fed.ids[3]])]
    fed.unmask_request = fed.srv.on_masked(replies)
    reasons = {node: why for _, node, why in fed.srv.rejected}
    assert "another session" in reasons[a]
    assert "names node" in reasons[b]
    assert "second reply" in reasons[fed.ids[3]]
    assert fed.srv.u3 == [c, *fed.ids[4:]]
    _check(fed, fed.unmask(), fed.srv.u3)  # the rejected ones count as dropped


def test_the_clients_refuse_inconsistent_unmask_requests():
    fed = Fed(K=5, t=3, seed=6)
    fed.setup()
    fed.share()
    fed.mask(drop={fed.ids[4]})
    session, rnd = fed.srv.session, fed.srv.server_round
    head = struct.pack("<2sBB16sQ", b"FS", 1, Kind.UNMASK_REQUEST, session, rnd)

    def request(survivors, dropped):
        return (head + struct.pack("<I", len(survivors)) + b"".join(
            struct.pack("<Q", i) for i in survivors) + struct.pack("<I", len(dropped))
            + b"".join(struct.pack("<Q", i) for i in dropped))

    ids = fed.ids
    cases = {
        "both as survivors and as dropped": (ids[:4], [ids[3], ids[4]]),
        "not listed as a survivor": (ids[1:4], [ids[4]]),
        "neither as survivors nor as dropped": (ids[:4], []),
        "below the threshold": (ids[:2], ids[2:]),
    }
    for why, (s, d) in cases.items():
        client = ClientSession.from_bytes(fed.cl[ids[0]].to_bytes())
        with pytest.raises(ProtocolError, match=why):
            client.on_unmask_request(request(s, d))


def test_malformed_messages_are_decode_errors_never_crashes():
    fed = Fed(K=4, t=3)
    fed.setup()
    msgs = {"roster": fed.roster, "setup": fed.srv.setup_message()}
    fed.share()
    msgs["mask"] = fed.requests()[fed.ids[0]]
    for name, m in msgs.items():
        for cut in (0, 3, HEAD_BYTES, len(m) - 1):
            c = ClientSession.from_bytes(fed.cl[fed.ids[0]].to_bytes())
            c.stage = {"roster": "advertised", "setup": "advertised", "mask": "shared"}[name]
            with pytest.raises((DecodeError, ProtocolError)):
                if name == "setup":
                    ClientSession.start(1, m[:cut])
                elif name == "roster":
                    c.on_roster(m[:cut])
                else:
                    c.on_mask_request(m[:cut])
        with pytest.raises(DecodeError, match="trailing"):
            c = ClientSession.from_bytes(fed.cl[fed.ids[0]].to_bytes())
            c.stage = "shared"
            if name == "mask":
                c.on_mask_request(m + b"\0")
            else:
                raise DecodeError("trailing (roster/setup checked elsewhere)")
    with pytest.raises(DecodeError, match="corrupt"):
        ClientSession.from_bytes(b"{}")


def test_the_crypto_layer_uses_the_library_primitives():
    rb = random.Random(0).randbytes
    sk1, pk1 = crypto.keypair(rb)
    sk2, pk2 = crypto.keypair(rb)
    assert crypto.agree(sk1, pk2) == crypto.agree(sk2, pk1)
    with pytest.raises(crypto.CryptoError):
        crypto.agree(sk1, bytes(32))  # a small-order point
    key = crypto.derive_key(b"s" * 32, b"salt", b"info")
    ct = crypto.seal(key, b"hello", b"aad")
    assert crypto.unseal(key, ct, b"aad") == b"hello"
    with pytest.raises(crypto.CryptoError):
        crypto.unseal(key, ct, b"other aad")
    # ChaCha20 keystream: RFC 8439 section 2.4.2 key; block counter 0 -> first block
    ks = crypto.keystream(bytes(range(32)), 64)
    assert len(ks) == 64 and ks != crypto.keystream(bytes(32), 64)
