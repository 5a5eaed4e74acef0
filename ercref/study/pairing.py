"""Which runs of two arms may be compared seed by seed: those that started from the same policy.

Each run's meta records the sha256 of the policy RL started from (runner.run_unit, start_policy.py).
Two runs of one seed are

    verified     both record a starting hash and the hashes are equal (bit-for-bit the same start)
    unverified   one of them records none (a run cached before the hash was recorded): paired by seed as
                 before, and a report says "unverified pairing"
    mismatched   the hashes differ (e.g. their warm-ups ran on CPUs that part the trajectories): not a
                 pair; rerun one of them from the stored starting policy

    p = paired_seeds({seed: meta of arm A}, {seed: meta of arm B})
    p.seeds, p.label, p.mismatched
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

VERIFIED, UNVERIFIED, MISMATCHED = "verified", "unverified", "mismatched"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def start_hash(meta: Mapping) -> str | None:
    """The starting policy's sha256 of a run's meta, None when the meta records none. ValueError
    naming the field when it is there but malformed."""
    sp = meta.get("start_policy")
    if sp is None:
        return None
    sha = sp.get("sha256") if isinstance(sp, Mapping) else None
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise ValueError(f"a run meta's start_policy must be null or an object whose sha256 is 64 lowercase hex "
                         f"digits, got {sp!r}")
    return sha


def pair_state(meta_a: Mapping, meta_b: Mapping) -> str:
    """VERIFIED, UNVERIFIED or MISMATCHED for two runs of one seed (module doc)."""
    a, b = start_hash(meta_a), start_hash(meta_b)
    if a is None or b is None:
        return UNVERIFIED
    return VERIFIED if a == b else MISMATCHED


@dataclass(frozen=True)
class Pairing:
    """The seeds two arms share, split by pair_state. ``seeds`` (verified + unverified) are the pairs a
    paired test may use; mismatched seeds are left out."""
    verified: list[int] = field(default_factory=list)
    unverified: list[int] = field(default_factory=list)
    mismatched: list[int] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted(self.verified + self.unverified)

    @property
    def label(self) -> str:
        """"verified pairing", "unverified pairing" (some pair has no hash) or "no pair"; with the
        seeds left out for different starting policies, if any."""
        text = "no pair" if not self.seeds else "unverified pairing" if self.unverified else "verified pairing"
        if self.mismatched:
            text += f" (seeds {self.mismatched} left out: different starting policies)"
        return text


def paired_seeds(metas_a: Mapping[int, Mapping], metas_b: Mapping[int, Mapping]) -> Pairing:
    """The Pairing of two arms' runs, each {seed: run meta}; seeds in one arm only are not pairs."""
    out: dict[str, list[int]] = {VERIFIED: [], UNVERIFIED: [], MISMATCHED: []}
    for s in sorted(set(metas_a) & set(metas_b)):
        out[pair_state(metas_a[s], metas_b[s])].append(int(s))
    return Pairing(out[VERIFIED], out[UNVERIFIED], out[MISMATCHED])
