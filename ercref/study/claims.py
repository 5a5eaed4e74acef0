"""The paper's small-scale claims, re-measured from a comparison's logs, with verdicts computed
from the numbers (never typed in) by symmetric rules fixed before any study run.

Every measure is one number per (arm, seed). Arms are compared per seed (paired: the same seed
gives the same initial model, warm-up and prompt order), so a claim is tested on n per-seed values
x_s: a paired difference d_s = ERC_s - baseline_s, or a per-seed share or rate. Over those n values

    mean +- t_{0.975, n-1} * sd / sqrt(n)                              (Student-t 95 % interval)
    MDE  = (t_{0.975, n-1} + t_{0.80, n-1}) * sd / sqrt(n)             (minimum detectable effect)

MDE is the true effect a two-sided 5 % test at this seed count would detect with 80 % power, given
the observed sd of the per-seed values: an inconclusive verdict says how large an effect the study
could have seen. t quantiles: t_quantile, exact (t_cdf in closed form, then bisection; no scipy).

Verdicts (three outcomes each, symmetric in the hypothesis' direction; the hypothesis is the
study's or notebook's own, taken from a claim of the paper; ercref.study.verdict_rules decides
whether a comparison gets a verdict at all: K = 1, seed count, whether the baseline learned):
    direction_verdict(values, direction, null=0)
        the hypothesis: the values lie above ``null`` (direction +1) or below it (-1):
        "supported"      the 95 % interval excludes ``null`` on the hypothesis' side,
        "contradicted"   it excludes ``null`` on the other side,
        "not supported"  it contains ``null`` (inconclusive: the MDE says what those seeds could see).
        paired_verdict(erc, base, direction) is this rule on d_s = erc_s - base_s with null 0.
    band_verdict(values, band=(lo, hi))
        the hypothesis states a value (the paper's "ERC clips ~20 %", read as a band such as
        [10 %, 40 %]): "supported" when the interval lies inside the band, "contradicted" when it
        lies entirely outside it (above hi or below lo), "not supported" when it straddles an edge.

Claims (claims_table):
    1a  ERC's clip rate (all minibatches; also k >= 1 only) lies in ``band`` (default [0.10, 0.40]).
    1b  PPO-clip clips far fewer: PPO/ERC < ``max_ratio`` (0.1), tested per seed in its linear
        form ppo_s - max_ratio * erc_s, direction -1 (no division by a rate that can be 0).
    2   clipped tokens are low-entropy: share of ERC-clipped tokens whose old entropy is below the
        run's median, per seed, against 0.5, direction +1.
    3   entropy and grad-norm curves fluctuate less: step-to-step std, paired ERC - baseline, -1
        (entropy: ENTROPY_KEY, the rollout policy's per-step entropy, as stability.entropy_volatility).
    4   accuracy improves: final eval avg@k, paired ERC - baseline, direction +1.

Edge cases (chosen here, tested in tests/test_claims.py):
    one seed          -> "not supported" with low = -inf, high = +inf, mde = inf (no sd exists);
    no value          -> ValueError;
    NaN / inf value   -> ValueError naming the argument;
    seeds in one arm only -> ValueError listing them, unless drop_unpaired=True (then the test uses
                        the shared seeds and n says how many).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

INTERVALS = ("ci95", "range")
UNIT_RANGE = (0.0, 1.0)


# ----------------------------------------------------------------------------- Student t, intervals
def t_cdf(x: float, dof: int) -> float:
    """P(T <= x) for Student's t with integer ``dof``, exact (Abramowitz & Stegun 26.7.3-4): with
    theta = atan(x / sqrt(dof)), A = P(|T| < |x|) is

        dof = 1:    A = 2 theta / pi
        dof odd:    A = 2/pi [theta + sin(theta) (c + 2/3 c^3 + ... + (2*4*..*(dof-3))/(1*3*..*(dof-2)) c^(dof-2))]
        dof even:   A = sin(theta) [1 + 1/2 c^2 + 1*3/(2*4) c^4 + ... + (1*3*..*(dof-3))/(2*4*..*(dof-2)) c^(dof-2)]

    with c = cos(theta), and P(T <= x) = (1 + sign(x) A) / 2. No scipy needed."""
    if not isinstance(dof, int) or dof < 1:
        raise ValueError(f"dof must be a positive int, got {dof!r}")
    theta = math.atan(abs(x) / math.sqrt(dof))
    s, c = math.sin(theta), math.cos(theta)
    if dof % 2:
        term, total = c, c if dof > 1 else 0.0        # c, then c^3 * 2/3, c^5 * (2*4)/(3*5), ...
        for k in range(3, dof - 1, 2):
            term *= c * c * (k - 1) / k
            total += term
        a = 2 / math.pi * (theta + s * total)
    else:
        term, total = 1.0, 1.0                        # 1, then c^2 / 2, c^4 * 3/(2*4), ...
        for k in range(2, dof - 1, 2):
            term *= c * c * (k - 1) / k
            total += term
        a = s * total
    return 0.5 + math.copysign(0.5 * a, x)


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t with integer ``dof`` (bisection on :func:`t_cdf`, to 1e-10),
    e.g. t_quantile(0.975, 2) = 4.3027, t_quantile(0.80, 4) = 0.9410."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    if p < 0.5:
        return -t_quantile(1 - p, dof)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, dof) < p:
        hi *= 2
    while hi - lo > 1e-10 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, dof) < p else (lo, mid)
    return 0.5 * (lo + hi)


def check_range(bounds, what: str = "bounds") -> tuple[float, float]:
    """(low, high) floats of a bounds pair whose entries may be None (-inf / +inf); ValueError naming
    ``what`` unless it is a pair with low < high."""
    if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
        raise ValueError(f"{what} must be a (low, high) pair, got {bounds!r}")
    lo, hi = (-math.inf if bounds[0] is None else float(bounds[0]), math.inf if bounds[1] is None else float(bounds[1]))
    if not lo < hi:
        raise ValueError(f"{what} must have low < high, got {bounds!r}")
    return lo, hi


def mean_interval(values: Iterable[float], interval: str = "ci95",
                  bounds: tuple[float | None, float | None] | None = None) -> tuple[float, float, float]:
    """(mean, low, high) of values over seeds; low = high = mean for a single value.

    ``bounds`` = (low, high), either may be None: clip the interval to the metric's valid range
    (e.g. (0, 1) for a fraction). The mean is not changed. Default: no clipping."""
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
    rng = None if bounds is None else check_range(bounds)
    m, lo, hi = _mean_interval(values, interval)
    if rng is not None:
        lo, hi = min(max(lo, rng[0]), rng[1]), max(min(hi, rng[1]), rng[0])
    return m, lo, hi


def _mean_interval(values: Iterable[float], interval: str) -> tuple[float, float, float]:
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("values contains no finite number")
    m = float(v.mean())
    if v.size == 1:
        return m, m, m
    if interval == "range":
        return m, float(v.min()), float(v.max())
    h = t_quantile(0.975, int(v.size - 1)) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return m, m - h, m + h


# ----------------------------------------------------------------------------- verdicts
SUPPORTED, CONTRADICTED, NOT_SUPPORTED = "supported", "contradicted", "not supported"
REPRODUCED, INCONCLUSIVE = SUPPORTED, NOT_SUPPORTED      # the same labels, under the names notebooks 01-04 use
LABELS = (SUPPORTED, CONTRADICTED, NOT_SUPPORTED)
NOT_MEASURED = "not measured"        # claims_table's label for a claim whose inputs were not passed (no verdict)
# The per-step entropy every fluctuation measure reads (claim 3 here, stability.entropy_volatility):
# the rollout policy's mean token entropy of that step, what the paper's entropy curves show.
ENTROPY_KEY = "entropy/old_mean"
CLIP_RATE_BAND = (0.10, 0.40)        # claim 1a: the paper's "ERC clips ~20 % of tokens", read as a band


@dataclass(frozen=True)
class Verdict:
    """The outcome of one claim's test. ``mean``/``low``/``high``: the tested quantity over seeds
    (95 % interval); ``n``: seeds; ``mde``: minimum detectable effect at n (module doc);
    ``direction``: +1 / -1 (the hypothesis: above / below ``null``) or 0 (inside ``band``)."""

    label: str
    mean: float
    low: float
    high: float
    n: int
    mde: float
    direction: int
    null: float = 0.0
    band: tuple[float, float] | None = None
    name: str = "ERC - baseline"

    def __str__(self) -> str:
        if self.direction == 0:
            pred = f"hypothesis: in [{_g(self.band[0])}, {_g(self.band[1])}]"
        else:
            pred = f"hypothesis: {'>' if self.direction > 0 else '<'} {_g(self.null)}"
        s = f"{self.label}: {self.name} = {_g(self.mean)} [{_g(self.low)}, {_g(self.high)}] (95% CI, n={self.n}; {pred})"
        if self.label == NOT_SUPPORTED:
            s += f"; MDE {_g(self.mde)} at n={self.n}"
        return s


def _g(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _values(name: str, values) -> np.ndarray:
    v = np.asarray(list(values.values()) if isinstance(values, Mapping) else list(values), dtype=float)
    if v.size == 0:
        raise ValueError(f"{name} is empty; a verdict needs at least one value per seed")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} contains a NaN or inf value ({v.tolist()}); drop the failed seed explicitly "
                         "or fix the measure that produced it")
    return v


def _stats(name: str, values) -> tuple[float, float, float, int, float]:
    """(mean, low, high, n, mde) of per-seed values (module doc); one value -> (-inf, inf), mde inf."""
    v = _values(name, values)
    n, m = int(v.size), float(v.mean())
    if n == 1:
        return m, -math.inf, math.inf, 1, math.inf
    se = float(v.std(ddof=1)) / math.sqrt(n)
    h = t_quantile(0.975, n - 1) * se                     # half-width of the 95 % interval
    mde = (t_quantile(0.975, n - 1) + t_quantile(0.80, n - 1)) * se
    return m, m - h, m + h, n, mde


def min_detectable_effect(values) -> float:
    """MDE = (t_{0.975,n-1} + t_{0.80,n-1}) * sd / sqrt(n) of per-seed values (inf for one value)."""
    return _stats("values", values)[4]


def direction_verdict(values, direction: int, null: float = 0.0, name: str = "ERC - baseline") -> Verdict:
    """Is the mean of per-seed ``values`` on the hypothesis' side of ``null``? (rule in the module doc)"""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 (the hypothesis: above null) or -1 (below), got {direction!r}")
    if not (isinstance(null, (int, float)) and math.isfinite(null)):
        raise ValueError(f"null must be a finite number, got {null!r}")
    m, lo, hi, n, mde = _stats("values", values)
    above, below = lo > null, hi < null                   # the interval excludes null on that side
    if (above and direction > 0) or (below and direction < 0):
        label = SUPPORTED
    elif above or below:
        label = CONTRADICTED
    else:
        label = NOT_SUPPORTED
    return Verdict(label, m, lo, hi, n, mde, direction, float(null), None, name)


def band_verdict(values, band: tuple[float, float], name: str = "value") -> Verdict:
    """Does the interval of per-seed ``values`` lie inside ``band`` = (lo, hi)? (rule in the module doc)"""
    if not (isinstance(band, (tuple, list)) and len(band) == 2 and all(math.isfinite(b) for b in band)
            and band[0] < band[1]):
        raise ValueError(f"band must be a (low, high) pair of finite numbers with low < high, got {band!r}")
    b_lo, b_hi = float(band[0]), float(band[1])
    m, lo, hi, n, mde = _stats("values", values)
    if b_lo <= lo and hi <= b_hi:
        label = SUPPORTED
    elif hi < b_lo or lo > b_hi:
        label = CONTRADICTED
    else:
        label = NOT_SUPPORTED
    return Verdict(label, m, lo, hi, n, mde, 0, 0.0, (b_lo, b_hi), name)


def paired_differences(a: Mapping[int, float], b: Mapping[int, float], drop_unpaired: bool = False) -> dict[int, float]:
    """{seed: a[seed] - b[seed]}. Seeds in one arm only raise ValueError (listing them) unless
    ``drop_unpaired`` is True; no shared seed always raises."""
    only = sorted(set(a) ^ set(b))
    if only and not drop_unpaired:
        raise ValueError(f"seeds {only} are in one arm only; rerun them, or pass drop_unpaired=True to test "
                         "on the seeds both arms hold")
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("a and b share no seed; a paired difference needs the same seeds in both arms")
    return {s: float(a[s]) - float(b[s]) for s in seeds}


def paired_verdict(erc: Mapping[int, float], base: Mapping[int, float], direction: int,
                   name: str = "ERC - baseline", drop_unpaired: bool = False) -> Verdict:
    """direction_verdict on d_s = erc[s] - base[s] with null 0 (the hypothesis: sign(d) = direction)."""
    _values("erc", erc), _values("base", base)
    return direction_verdict(paired_differences(erc, base, drop_unpaired), direction, 0.0, name)


def interval(values) -> tuple[float, float, float]:
    """(mean, low, high): Student-t 95 % interval over seeds, for display (low = high = mean for one
    seed; verdicts use _stats, where one seed gives (-inf, inf))."""
    return mean_interval(list(values), "ci95")


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], drop_unpaired: bool = False) -> tuple[float, float, float]:
    """Interval of a[s] - b[s] over seeds (see paired_differences for unpaired seeds)."""
    return interval(paired_differences(a, b, drop_unpaired).values())


def step_to_step_std(series) -> float:
    """Fluctuation of a per-step curve: the standard deviation (ddof=1) of its first differences
    x[t+1] - x[t]. A smooth trend scores low; jumps between steps score high. Needs >= 3 finite points."""
    x = np.asarray(list(series), dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 3:
        raise ValueError(f"series needs at least 3 finite values, got {x.size}")
    return float(np.diff(x).std(ddof=1))


def beta_at_target_rate(rho, target: float = 0.20) -> float:
    """The symmetric beta at which ERC would clip ``target`` of these tokens: the (1 - target)
    quantile of |rho - 1| (a token is clipped when |rho - 1| >= beta, up to the strict bounds).
    A description of the captured tokens, not a verdict: a run trained at that beta would differ."""
    r = np.asarray(list(rho), dtype=float)
    r = r[np.isfinite(r)]
    if r.size == 0:
        raise ValueError("rho contains no finite value")
    if not 0 < target < 1:
        raise ValueError(f"target must be in (0, 1), got {target!r}")
    return float(np.quantile(np.abs(r - 1.0), 1.0 - target))


# ----------------------------------------------------------------------------- measures from logs
def per_seed(df: pd.DataFrame, label: str, fn) -> dict[int, float]:
    """{seed: fn(rows of that seed)} for one arm."""
    sub = df[df["label"] == label]
    if sub.empty:
        raise ValueError(f"label {label!r} not in the data; labels: {sorted(set(df['label']))}")
    return {int(s): float(fn(g)) for s, g in sub.groupby("seed")}


def fmt_interval(iv, pct: bool = False, digits: int = 3) -> str:
    m, lo, hi = iv
    if pct:
        return f"{100 * m:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def claims_table(steps: pd.DataFrame, minibatches: pd.DataFrame, evals: pd.DataFrame, tokens: pd.DataFrame | None,
                 erc: str, base: str, acc_key: str | None = None, band: tuple[float, float] = CLIP_RATE_BAND,
                 max_ratio: float = 0.1, drop_unpaired: bool = False) -> tuple[pd.DataFrame, dict]:
    """The paper's claims (module doc) for arms ``erc`` (ERC on, beta 0.05) and ``base`` (same loss
    without ERC).

    steps / minibatches / evals: the engine's log records with label and seed; tokens: one row
    per captured response token (token_view.token_table) with old_entropy, clipped, label, seed;
    None when the runs captured no tokens (claim 2's row then reads NOT_MEASURED, without a Verdict).
    Claim 3's entropy curve is ENTROPY_KEY of the step rows.
    Returns (table with columns claim, measure, ERC, baseline, verdict (the label), detail
    (str of the Verdict, with the MDE when not supported), note; dict of the raw numbers, with
    per-seed values under "seeds/<name>" and the Verdict objects under "verdicts").
    """
    if not 0 < max_ratio < 1:
        raise ValueError(f"max_ratio must be in (0, 1), got {max_ratio!r}")
    n: dict = {"verdicts": {}}
    rows = []

    def add(claim, measure, erc_txt, base_txt, v: Verdict | None, note=""):
        if v is not None:
            n["verdicts"][claim] = v
        rows.append((claim, measure, erc_txt, base_txt, NOT_MEASURED if v is None else v.label,
                     note if v is None else str(v), "" if v is None else note))

    # 1. clip rates
    mb_erc = minibatches[minibatches["label"] == erc]
    rate_all = per_seed(minibatches, erc, lambda g: g["erc/clip_frac"].mean())
    stale = mb_erc[mb_erc["staleness"] >= 1]
    rate_stale = per_seed(stale, erc, lambda g: g["erc/clip_frac"].mean()) if len(stale) else {}

    def ppo_rate(g):
        return (g["ppo/clip_frac_low"] + g["ppo/clip_frac_high"]).mean()

    ppo_erc_arm, ppo_base_arm = per_seed(minibatches, erc, ppo_rate), per_seed(minibatches, base, ppo_rate)
    n["seeds/erc_clip_all"], n["seeds/erc_clip_stale"], n["seeds/ppo_clip_erc_arm"] = rate_all, rate_stale, ppo_erc_arm
    n["erc_clip_all"] = interval(rate_all.values())
    n["erc_clip_stale"] = interval(rate_stale.values()) if rate_stale else (math.nan,) * 3
    n["ppo_clip_erc_arm"], n["ppo_clip_base_arm"] = interval(ppo_erc_arm.values()), interval(ppo_base_arm.values())
    beta_note = ""
    if tokens is not None and "rho" in tokens.columns:
        n["beta_at_20pct"] = interval(per_seed(tokens, erc, lambda g: beta_at_target_rate(g["rho"])).values())
        beta_note = f"; beta that would clip 20% of the captured tokens: {fmt_interval(n['beta_at_20pct'])}"
    band_txt = f"[{band[0]:.0%}, {band[1]:.0%}]"
    add(f"1a. ERC clips ~20% of tokens (band {band_txt})", "ERC clip fraction of response tokens, all minibatches",
        fmt_interval(n["erc_clip_all"], pct=True), "", band_verdict(rate_all, band, "ERC clip rate"), beta_note.lstrip("; "))
    add(f"1a'. same, stale minibatches only (k >= 1, band {band_txt})", "ERC clip fraction, minibatches with k >= 1",
        fmt_interval(n["erc_clip_stale"], pct=True) if rate_stale else "", "",
        band_verdict(rate_stale, band, "ERC clip rate at k>=1") if rate_stale else None,
        "k = 0 is on-policy, where rho = 1 exactly" if rate_stale else "no minibatch with k >= 1 (K = 1: on-policy)")
    lin = {s: ppo_erc_arm[s] - max_ratio * rate_all[s] for s in rate_all if s in ppo_erc_arm}
    ratio = [ppo_erc_arm[s] / rate_all[s] for s in lin if rate_all[s] > 0]
    add(f"1b. PPO-clip clips < {max_ratio:g} x ERC's tokens", f"PPO - {max_ratio:g} x ERC clip fraction, ERC arm",
        fmt_interval(n["erc_clip_all"], pct=True), "PPO-clip: " + fmt_interval(n["ppo_clip_erc_arm"], pct=True),
        direction_verdict(lin, -1, 0.0, f"PPO - {max_ratio:g} x ERC"),
        (f"PPO/ERC ratio mean over seeds {np.mean(ratio):.3g}; " if ratio else "")
        + f"PPO-clip in the baseline arm {fmt_interval(n['ppo_clip_base_arm'], pct=True)}")
    # 2. low-entropy share of clipped tokens (low: old entropy below the median of all captured tokens of that run)
    if tokens is None:
        add("2. ERC-clipped tokens are mostly low-entropy", "share of clipped tokens with old entropy below the "
            "run's median", "", "", None, "no per-token captures were passed (tokens=None)")
    else:
        _low_entropy_claim(tokens, erc, n, add)

    # 3. fluctuation of entropy and grad norm
    for key, name in ((ENTROPY_KEY, "entropy"), ("grad/norm", "grad norm")):
        a = per_seed(steps, erc, lambda g: step_to_step_std(g.sort_values("step")[key]))
        b = per_seed(steps, base, lambda g: step_to_step_std(g.sort_values("step")[key]))
        n[f"seeds/fluct_{name}_erc"], n[f"seeds/fluct_{name}_base"] = a, b
        n[f"fluct_{name}_erc"], n[f"fluct_{name}_base"] = interval(a.values()), interval(b.values())
        n[f"fluct_{name}_diff"] = paired_difference(a, b, drop_unpaired)
        add(f"3. {name} curve fluctuates less", "step-to-step std of the per-step mean",
            fmt_interval(n[f"fluct_{name}_erc"], digits=4), fmt_interval(n[f"fluct_{name}_base"], digits=4),
            paired_verdict(a, b, -1, f"{name} fluctuation ERC - baseline", drop_unpaired))
    # 4. accuracy
    if acc_key is None:
        acc_key = next(c for c in evals.columns if c.startswith("eval/avg@"))
    last = evals.groupby(["label", "seed"])["step"].transform("max") == evals["step"]
    ev = evals[last]
    a = per_seed(ev, erc, lambda g: g[acc_key].mean())
    b = per_seed(ev, base, lambda g: g[acc_key].mean())
    n["seeds/acc_erc"], n["seeds/acc_base"] = a, b
    n["acc_erc"], n["acc_base"], n["acc_diff"] = interval(a.values()), interval(b.values()), paired_difference(a, b, drop_unpaired)
    add("4. accuracy improves", f"final {acc_key}", fmt_interval(n["acc_erc"]), fmt_interval(n["acc_base"]),
        paired_verdict(a, b, +1, f"{acc_key} ERC - baseline", drop_unpaired))
    df = pd.DataFrame(rows, columns=["claim", "measure", "ERC", "baseline", "verdict", "detail", "note"])
    return df, n


def low_entropy_shares(tokens: pd.DataFrame, label: str) -> dict[int, float]:
    """Claim 2's per-seed number: {seed: share of the ERC-clipped tokens whose old entropy is below the
    median old entropy of all captured tokens of that seed} for the token rows (token_view.token_table:
    old_entropy, clipped, label, seed) of ``label``; seeds without a clipped token are left out."""
    def low_share(g):
        med = g["old_entropy"].median()
        c = g[g["clipped"]]
        return float((c["old_entropy"] < med).mean()) if len(c) else float("nan")

    return {s: v for s, v in per_seed(tokens, label, low_share).items() if math.isfinite(v)}


def _low_entropy_claim(tokens: pd.DataFrame, erc: str, n: dict, add) -> None:
    """Claim 2 of claims_table, from the per-token captures: adds its numbers to ``n`` and its row with ``add``."""
    tk = tokens[tokens["label"] == erc]
    shares = low_entropy_shares(tk, erc)
    if not shares:
        raise ValueError("no ERC-clipped token in the captures; claim 2 cannot be measured")
    n["seeds/low_entropy_share"] = shares
    n["low_entropy_share"] = interval(shares.values())
    n["median_H_clipped"] = interval(per_seed(tk, erc, lambda g: g[g["clipped"]]["old_entropy"].median()).values())
    n["median_H_kept"] = interval(per_seed(tk, erc, lambda g: g[~g["clipped"]]["old_entropy"].median()).values())
    add("2. ERC-clipped tokens are mostly low-entropy", "share of clipped tokens with old entropy below the run's median",
        fmt_interval(n["low_entropy_share"], pct=True), "threshold 50%",
        direction_verdict(shares, +1, 0.5, "low-entropy share"),
        f"seeds with a clipped token: {len(shares)}; median old entropy: clipped {fmt_interval(n['median_H_clipped'])}, "
        f"kept {fmt_interval(n['median_H_kept'])} nats")
