"""The one set of verdict rules every report, notebook and the README applies to a comparison of
ERC with another arm. Statistics (intervals, MDE, the three verdicts) are ercref.study.claims';
this module decides whether a comparison gets a verdict at all, labels it, and counts the tests.

How to call it (notebooks, study reports, the branching and testbed reports):

    from ercref.study import verdict_rules as vr

    gain = vr.learning_gain({0: [0.10, 0.35, 0.52], 1: [0.12, 0.30, 0.49], ...})  # the reference arm's
    j = vr.judge(erc={0: 0.8, 1: 0.7, ...}, other={0: 0.9, 1: 0.8, ...}, direction=-1,   # per-seed values
                 name="entropy volatility: DAPO+ERC - DAPO",
                 erc_can_act=vr.erc_can_act(max_staleness),    # False at K = 1
                 accuracy=False,                               # True for an accuracy measure
                 learning_gain=gain, reference="DAPO",         # used only when accuracy=True
                 primary=False)                                # pre-registered primary endpoint?
    j.label      # "supported" / "not supported" / "contradicted", or, without a verdict,
                 # "not a test (identical by construction)", "too few seeds (3)",
                 # "no verdict (DAPO did not learn)"
    j.counted    # True only for the three verdict labels: these are the tests
    str(j)       # one line: role, label, the interval with n and the MDE, or the reason it has none
    vr.tally([j, ...])     # "Of 12 tests (0 primary, 12 exploratory): 1 supported, 11 not supported,
                           #  0 contradicted; about 0.6 would exclude 0 by chance alone ..."

    one-sample hypotheses (a share against 0.5): judge(erc=shares, other=None, direction=+1, null=0.5, ...)
    a band (ERC clips ~20 %):                     judge(erc=rates, other=None, band=(0.10, 0.40), ...)
    a claims.Verdict computed already:            judge_verdict(v, erc_can_act=..., accuracy=..., learning_gain=...)
    the paper's claims 1a-4 from engine logs:     table, n = ruled_claims_table(steps, minibatches, evals, tokens,
                                                                             erc="DAPO+ERC", base="DAPO")
                                                  (claims.claims_table with the rules; print n["tally"] beside it)
    a study cache:                                report.verdict_table(name).attrs["judgements"]

The rules, applied in this order (the first that applies decides; tests in tests/test_verdict_rules.py):

1. Not a test: where ERC cannot act the arms are identical by construction. With K = 1 optimizer
   step per rollout batch every minibatch is on-policy (staleness 0): rho = 1 exactly, ERC clips
   nothing and ERC's arm trains exactly as the other. erc_can_act(max_staleness) is False there;
   such a comparison is shown as NOT_A_TEST and not counted.
2. Too few seeds: fewer than MIN_PAIRED_SEEDS (5) paired seeds -> "too few seeds (n)", not counted.
3. No accuracy verdict unless the reference arm learned: for an accuracy measure, the reference arm
   (the loss without ERC: DAPO for DAPO+ERC and its controls, GPPO for GPPO+ERC) must have
   learning_gain >= LEARNED_MIN_GAIN (0.10). learning_gain of its per-seed held-out accuracy curves
   (one value per evaluation, in step order, the first before RL when the run evaluates at step 0)
   is   max over evaluations e >= 2 of mean_seeds acc[e]  -  mean_seeds acc[1],
   the best of the seed-mean curve after the first evaluation minus its first point (the seed-mean
   curve, not each seed's peak: the maximum of a noisy curve per seed is biased upward). A run that
   learns and then collapses counts as learned; a gain of -inf (no curve to measure) does not.
   Otherwise -> "no verdict (REFERENCE did not learn)".
4. Otherwise a verdict of claims (95 % Student-t interval over seeds), worded as the study's own
   hypothesis "ERC - other has the sign of ``direction``" (or "lies in ``band``"): SUPPORTED
   (the interval excludes ``null`` on the predicted side; for a band: lies inside it), CONTRADICTED
   (excludes it on the other side; outside the band), NOT_SUPPORTED (contains it; straddles an edge;
   with the MDE, the effect those seeds could have detected).
5. Every judgement is PRIMARY (a pre-registered endpoint of a confirmatory study) or EXPLORATORY
   (everything else), and says so. The family-wise correction over a study's primaries (Holm) is
   the study report's, on the primaries' p-values (ercref.study.branch_stats.holm).
6. Wherever verdicts are listed, tally() prints beside them how many would exclude 0 by chance
   alone if no arm differed: expected_by_chance(n) = ALPHA x n tests (uncorrected). Band verdicts
   describe a rate against the paper's stated value; they are shown but not counted as tests.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from . import claims

MIN_PAIRED_SEEDS = 5          # rule 2
LEARNED_MIN_GAIN = 0.10       # rule 3: held-out accuracy, absolute (10 points)
ALPHA = 0.05                  # two-sided level of every 95 % interval; rule 6's chance rate

SUPPORTED, NOT_SUPPORTED, CONTRADICTED = claims.SUPPORTED, claims.NOT_SUPPORTED, claims.CONTRADICTED
VERDICT_LABELS = (SUPPORTED, NOT_SUPPORTED, CONTRADICTED)
NOT_A_TEST = "not a test (identical by construction)"
PRIMARY, EXPLORATORY = "primary", "exploratory"
# Judgement.status: why a comparison has (or lacks) a verdict
VERDICT, IDENTICAL, FEW_SEEDS, NOT_LEARNED = "verdict", "identical", "few seeds", "not learned"


def too_few_seeds(n: int) -> str:
    """Rule 2's label for n paired seeds."""
    return f"too few seeds ({n})"


def not_learned(reference: str) -> str:
    """Rule 3's label when ``reference`` (e.g. "DAPO") did not learn."""
    return f"no verdict ({reference} did not learn)"


def erc_can_act(max_staleness: int) -> bool:
    """Rule 1: ERC can change an update only where some minibatch is stale (staleness k >= 1, i.e.
    K >= 2 optimizer steps per rollout batch); at max_staleness 0 (K = 1) the arms are identical."""
    if isinstance(max_staleness, bool) or not isinstance(max_staleness, (int, np.integer)) or max_staleness < 0:
        raise ValueError(f"max_staleness must be an int >= 0 (the largest minibatch staleness k of the runs), "
                         f"got {max_staleness!r}")
    return int(max_staleness) >= 1


def learning_gain(curves: Mapping[int, Sequence[float]]) -> float:
    """Rule 3's gain of held-out accuracy curves {seed: [acc at each evaluation, in step order]}:
    max(mean curve[1:]) - mean curve[0], the mean over seeds at each evaluation. Every seed needs the
    same number (>= 2) of finite evaluations; ValueError naming the seed otherwise."""
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError(f"curves must be a non-empty {{seed: [accuracy per evaluation]}} dict, got {curves!r}")
    arr = {s: np.asarray(list(c), dtype=float) for s, c in curves.items()}
    lengths = {s: a.size for s, a in arr.items()}
    if min(lengths.values()) < 2 or len(set(lengths.values())) > 1:
        raise ValueError(f"curves must hold the same number (>= 2) of evaluations for every seed, got "
                         f"{lengths} evaluations per seed")
    for s, a in arr.items():
        if not np.isfinite(a).all():
            raise ValueError(f"curves[{s!r}] holds a NaN or inf accuracy: {a.tolist()}")
    mean = np.mean(np.stack([arr[s] for s in arr]), axis=0)
    return float(mean[1:].max() - mean[0])


def learned(gain: float) -> bool:
    """Rule 3: did the reference arm learn? gain (learning_gain) >= LEARNED_MIN_GAIN; -inf (no gain
    could be measured) is not learned."""
    if not (isinstance(gain, (int, float, np.floating)) and not math.isnan(gain) and gain != math.inf):
        raise ValueError(f"gain must be a number < inf, -inf when none could be measured (learning_gain of the "
                         f"reference arm), got {gain!r}")
    return float(gain) >= LEARNED_MIN_GAIN


def expected_by_chance(n_tests: int, alpha: float = ALPHA) -> float:
    """Rule 6: of n_tests comparisons where no arm differed, alpha x n_tests would exclude 0 anyway."""
    if isinstance(n_tests, bool) or not isinstance(n_tests, (int, np.integer)) or n_tests < 0:
        raise ValueError(f"n_tests must be an int >= 0, got {n_tests!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return alpha * int(n_tests)


def _num(x: float) -> str:
    """0.15 -> "0.15", 4.2 -> "4.2", 2.0 -> "2"."""
    return f"{x:.2f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Judgement:
    """One comparison under the rules (module doc). ``label``: what to print; ``status``: VERDICT,
    IDENTICAL, FEW_SEEDS or NOT_LEARNED; ``role``: PRIMARY or EXPLORATORY; ``n``: paired seeds;
    ``verdict``: the claims.Verdict (None without a verdict); ``reason``: why it has none."""

    name: str
    label: str
    status: str
    role: str
    n: int
    verdict: claims.Verdict | None = None
    reason: str = ""

    @property
    def counted(self) -> bool:
        """A test: a verdict on a direction (band verdicts describe, they are not counted)."""
        return self.status == VERDICT and self.verdict is not None and self.verdict.direction != 0

    def __str__(self) -> str:
        if self.verdict is not None:
            return f"[{self.role}] {self.verdict}"
        return f"[{self.role}] {self.label}: {self.name}" + (f" ({self.reason})" if self.reason else "")


def _per_seed(what: str, values) -> dict:
    if isinstance(values, Mapping):
        return dict(values)
    try:
        return dict(enumerate(values))
    except TypeError:
        raise ValueError(f"{what} must be {{seed: value}} or a list of per-seed values, got {values!r}") from None


def judge(erc, other=None, direction: int = 0, *, name: str = "ERC - other", erc_can_act: bool = True,
          accuracy: bool = False, learning_gain: float | None = None, reference: str = "DAPO",
          primary: bool = False, null: float = 0.0, band: tuple[float, float] | None = None,
          drop_unpaired: bool = False) -> Judgement:
    """Apply the rules (module doc) to per-seed values. ``erc`` / ``other``: {seed: value} of the
    ERC arm and the other arm (paired by seed; lists are indexed by position); ``other`` None for a
    one-sample hypothesis on ``erc`` against ``null`` (direction +-1) or ``band``. ``direction``: +1
    when the hypothesis is ERC - other > null, -1 when < null (0 only with ``band``).
    ``learning_gain``: the reference arm's learning_gain, required when ``accuracy`` is True."""
    role = PRIMARY if primary else EXPLORATORY
    if band is None and direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1 (the hypothesis' sign of ERC - other), got {direction!r}")
    if band is not None and other is not None:
        raise ValueError("band tests one arm's values: pass other=None with band")
    if accuracy and learning_gain is None:
        raise ValueError("accuracy=True needs learning_gain= (learning_gain of the reference arm's accuracy curves)")
    a = _per_seed("erc", erc)
    if other is None:
        seeds = sorted(a)
    else:
        b = _per_seed("other", other)
        seeds = sorted(claims.paired_differences(a, b, drop_unpaired))
    n = len(seeds)
    withheld = _withheld(name, n, role, erc_can_act, accuracy, learning_gain, reference)
    if withheld is not None:
        return withheld
    if band is not None:
        v = claims.band_verdict({s: a[s] for s in seeds}, band, name)
    elif other is None:
        v = claims.direction_verdict({s: a[s] for s in seeds}, direction, null, name)
    else:
        v = claims.paired_verdict({s: a[s] for s in seeds}, {s: b[s] for s in seeds}, direction, name)
    return Judgement(name, v.label, VERDICT, role, n, v)


def _withheld(name: str, n: int, role: str, erc_can_act: bool, accuracy: bool, learning_gain, reference: str):
    """Rules 1-3: the Judgement without a verdict that the first rule applying gives, else None."""
    if not erc_can_act:
        return Judgement(name, NOT_A_TEST, IDENTICAL, role, n, None,
                         "K = 1: every minibatch is on-policy, ERC clips nothing")
    if n < MIN_PAIRED_SEEDS:
        return Judgement(name, too_few_seeds(n), FEW_SEEDS, role, n, None,
                         f"a verdict needs >= {MIN_PAIRED_SEEDS} paired seeds")
    if accuracy and not learned(learning_gain):
        return Judgement(name, not_learned(reference), NOT_LEARNED, role, n, None,
                         f"{reference}'s held-out accuracy gain {learning_gain:+.3f} < +{LEARNED_MIN_GAIN:.2f}")
    return None


def judge_verdict(v: claims.Verdict, *, erc_can_act: bool = True, accuracy: bool = False,
                  learning_gain: float | None = None, reference: str = "DAPO", primary: bool = False) -> Judgement:
    """The rules applied to a verdict claims already computed (its n is the seed count): the same
    Judgement judge() gives for the values behind ``v``."""
    if accuracy and learning_gain is None:
        raise ValueError("accuracy=True needs learning_gain= (learning_gain of the reference arm's accuracy curves)")
    role = PRIMARY if primary else EXPLORATORY
    withheld = _withheld(v.name, v.n, role, erc_can_act, accuracy, learning_gain, reference)
    return withheld if withheld is not None else Judgement(v.name, v.label, VERDICT, role, v.n, v)


def ruled_claims_table(steps, minibatches, evals, tokens, erc: str, base: str, acc_key: str | None = None,
                       **kwargs):
    """claims.claims_table (the paper's claims 1a-4 for arms ``erc`` and ``base``) with the rules
    applied: every claim is "not a test" when no minibatch of either arm was stale (K = 1), has no
    verdict below MIN_PAIRED_SEEDS seeds, and claim 4 (accuracy) none unless ``base`` learned
    (learning_gain of its held-out ``acc_key`` curves, from ``evals``' rows with label, seed, step).
    Returns (table with the verdict column holding the Judgement's label and the columns status,
    role, counted added; the numbers dict of claims_table plus "judgements" {claim: Judgement},
    "learning_gain" and "tally" (the line to print beside the table)). ``kwargs``: claims_table's."""
    df, n = claims.claims_table(steps, minibatches, evals, tokens, erc, base, acc_key=acc_key, **kwargs)
    key = acc_key or next(c for c in evals.columns if c.startswith("eval/avg@"))
    ev = evals[evals["label"] == base].dropna(subset=[key]).sort_values("step")
    curves = {int(s): g[key].tolist() for s, g in ev.groupby("seed")}
    shortest = min((len(c) for c in curves.values()), default=0)
    gain = learning_gain({s: c[:shortest] for s, c in curves.items()}) if shortest >= 2 else -math.inf
    mb = minibatches[minibatches["label"].isin([erc, base])]
    acts = erc_can_act(int(mb["staleness"].max())) if len(mb) else True
    judgements = {}
    for claim, v in n["verdicts"].items():
        judgements[claim] = judge_verdict(v, erc_can_act=acts, accuracy=claim.startswith("4."), learning_gain=gain,
                                          reference=base)
    df = df.copy()
    got = [judgements.get(c) for c in df["claim"]]
    if not acts:                                 # a claim claims_table could not measure is no test either
        got = [j or Judgement(c, NOT_A_TEST, IDENTICAL, EXPLORATORY, 0) for j, c in zip(got, df["claim"])]
    df["status"] = [j.status if isinstance(j, Judgement) else None for j in got]
    df["role"] = [j.role if isinstance(j, Judgement) else None for j in got]
    df["counted"] = [isinstance(j, Judgement) and j.counted for j in got]
    df["verdict"] = [j.label if isinstance(j, Judgement) else lab for j, lab in zip(got, df["verdict"])]
    df["detail"] = [str(j) if isinstance(j, Judgement) else d for j, d in zip(got, df["detail"])]
    n.update(judgements=judgements, learning_gain=gain, tally=tally(judgements.values()))
    return df, n


def holm_label(p_adj: float, mean: float, direction: int) -> str:
    """The verdict of a primary from its (Holm-adjusted) p-value: below ALPHA with the mean on the
    predicted side (the sign of ``direction``) SUPPORTED, on the other side CONTRADICTED, else
    NOT_SUPPORTED (rule 5)."""
    if not p_adj < ALPHA:
        return NOT_SUPPORTED
    return SUPPORTED if math.copysign(1, mean) == direction else CONTRADICTED


def tally(judgements: Iterable[Judgement], alpha: float = ALPHA) -> str:
    """Rule 6's line for a list of judgements: the counted tests by role and label, how many would
    exclude 0 by chance alone (expected_by_chance), and what was not counted and why."""
    js = list(judgements)
    tests = [j for j in js if j.counted]
    n_primary = sum(j.role == PRIMARY for j in tests)
    labels = ", ".join(f"{sum(j.label == lab for j in tests)} {lab}" for lab in VERDICT_LABELS)
    s = (f"Of {len(tests)} tests ({n_primary} primary, {len(tests) - n_primary} exploratory): {labels}; "
         f"about {_num(expected_by_chance(len(tests), alpha))} would exclude 0 by chance alone if no arm differed "
         f"({alpha:g} x {len(tests)} tests, not corrected for multiple comparisons)")
    left = {IDENTICAL: "not a test (identical by construction, K = 1)", FEW_SEEDS: "too few seeds",
            NOT_LEARNED: "accuracy without a verdict (the reference arm did not learn)"}
    skipped = [f"{sum(j.status == st for j in js)} {txt}" for st, txt in left.items() if any(j.status == st for j in js)]
    return s + (". Not counted: " + "; ".join(skipped) if skipped else "") + "."
