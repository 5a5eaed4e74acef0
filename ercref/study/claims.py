"""The paper's small-scale claims, re-measured from a comparison's logs, with verdicts computed
from the numbers (never typed in).

Every measure is one number per (arm, seed); arms are compared per seed (paired: the same seed
gives the same initial model, warm-up and prompt order), and intervals are Student-t 95 %
intervals over seeds (ercref.study.plots.mean_interval).

Verdict rules (the strings a notebook prints):
    clip_rate_verdict     "reproduced" when ERC's clip rate over all minibatches lies in
                          [target / 2, 2 * target] and PPO-clip's rate is at least ``min_ratio``
                          times smaller; "reproduced only when minibatches are stale (k >= 1)"
                          when that holds only for the off-policy minibatches (k = 0 is on-policy,
                          where rho = 1 exactly); "not reproduced" otherwise.
    share_verdict         "reproduced" when the interval of a share lies above ``threshold``,
                          "not reproduced" when its mean is at or below it, "inconclusive" otherwise.
    lower_is_better_verdict  paired difference d = ERC - baseline: "reproduced" when the interval
                          of d lies below 0, "not reproduced" when mean d >= 0, "inconclusive" otherwise.
    no_worse_verdict      non-inferiority with margin m: "reproduced" when the interval of d lies
                          above -m, "not reproduced" when it lies below 0, "inconclusive" otherwise.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from ercref.study.plots import mean_interval

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
STALE_ONLY = "reproduced only when minibatches are stale (k >= 1)"


def interval(values) -> tuple[float, float, float]:
    """(mean, low, high): Student-t 95 % interval over seeds (low = high = mean for one seed)."""
    return mean_interval(list(values), "ci95")


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[float, float, float]:
    """Interval of a[s] - b[s] over the seeds both hold. ValueError when they share no seed."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("a and b share no seed; a paired difference needs the same seeds in both arms")
    return interval([a[s] - b[s] for s in seeds])


def step_to_step_std(series) -> float:
    """Fluctuation of a per-step curve: the standard deviation (ddof=1) of its first differences
    x[t+1] - x[t]. A smooth trend scores low; jumps between steps score high. Needs >= 3 finite points."""
    x = np.asarray(list(series), dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 3:
        raise ValueError(f"series needs at least 3 finite values, got {x.size}")
    return float(np.diff(x).std(ddof=1))


def _check_interval(name: str, iv) -> tuple[float, float, float]:
    if len(iv) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in iv):
        raise ValueError(f"{name} must be a (mean, low, high) triple of finite numbers, got {iv!r}")
    m, lo, hi = (float(v) for v in iv)
    if not lo <= m <= hi:
        raise ValueError(f"{name} must satisfy low <= mean <= high, got {iv!r}")
    return m, lo, hi


def clip_rate_verdict(erc_all: float, erc_stale: float, ppo: float, target: float = 0.20,
                      min_ratio: float = 10.0, beta_at_target: float | None = None) -> str:
    """Claim 1 (ERC clips ~target of response tokens at beta 0.05, PPO-clip far fewer).

    ``beta_at_target`` (optional): the beta at which the run's captured entropy ratios would clip
    ``target`` of the tokens (beta_at_target_rate); when the claim fails at 0.05 but PPO-clip is
    still far below target, the verdict names that beta ("reproduced only when beta is about ...")."""
    for name, v in (("erc_all", erc_all), ("erc_stale", erc_stale), ("ppo", ppo)):
        if not (isinstance(v, (int, float)) and 0 <= v <= 1):
            raise ValueError(f"{name} must be a fraction in [0, 1], got {v!r}")
    if not 0 < target < 1:
        raise ValueError(f"target must be in (0, 1), got {target!r}")

    def ok(rate):
        return target / 2 <= rate <= 2 * target and rate >= min_ratio * ppo

    if ok(erc_all):
        return REPRODUCED
    if ok(erc_stale):
        return STALE_ONLY
    if beta_at_target is not None and target >= min_ratio * ppo:
        return f"reproduced only when beta is about {beta_at_target:.2f} (not at 0.05)"
    return NOT_REPRODUCED


def beta_at_target_rate(rho, target: float = 0.20) -> float:
    """The symmetric beta at which ERC would clip ``target`` of these tokens: the (1 - target)
    quantile of |rho - 1| (a token is clipped when |rho - 1| >= beta, up to the strict bounds)."""
    r = np.asarray(list(rho), dtype=float)
    r = r[np.isfinite(r)]
    if r.size == 0:
        raise ValueError("rho contains no finite value")
    if not 0 < target < 1:
        raise ValueError(f"target must be in (0, 1), got {target!r}")
    return float(np.quantile(np.abs(r - 1.0), 1.0 - target))


def share_verdict(share_interval, threshold: float = 0.5) -> str:
    """Claim 2 (most ERC-clipped tokens are low-entropy): is the share above threshold?"""
    m, lo, hi = _check_interval("share_interval", share_interval)
    if lo > threshold:
        return REPRODUCED
    if m <= threshold:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def lower_is_better_verdict(diff_interval) -> str:
    """Claim 3 (ERC's curves fluctuate less): d = ERC - baseline of a fluctuation measure."""
    m, lo, hi = _check_interval("diff_interval", diff_interval)
    if hi < 0:
        return REPRODUCED
    if m >= 0:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def no_worse_verdict(diff_interval, margin: float = 0.05) -> str:
    """Claim 4 (accuracy no worse): d = ERC - baseline accuracy, non-inferiority margin ``margin``."""
    m, lo, hi = _check_interval("diff_interval", diff_interval)
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    if lo > -margin:
        return REPRODUCED
    if hi < 0:
        return NOT_REPRODUCED
    return INCONCLUSIVE


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


def claims_table(steps: pd.DataFrame, minibatches: pd.DataFrame, evals: pd.DataFrame, tokens: pd.DataFrame,
                 erc: str, base: str, acc_key: str | None = None, margin: float = 0.05) -> tuple[pd.DataFrame, dict]:
    """The four claims for arms ``erc`` (ERC on, beta 0.05) and ``base`` (same loss without ERC).

    steps / minibatches / evals: the engine's log records with label and seed; tokens: one row
    per captured response token (experiments.token_table) with old_entropy, clipped, label, seed.
    Returns (table with columns claim, measure, ERC, baseline, verdict; dict of the raw numbers).
    """
    n = {}
    # 1. clip rates
    mb_erc = minibatches[minibatches["label"] == erc]
    n["erc_clip_all"] = interval(per_seed(minibatches, erc, lambda g: g["erc/clip_frac"].mean()).values())
    n["erc_clip_stale"] = interval(per_seed(mb_erc[mb_erc["staleness"] >= 1], erc,
                                            lambda g: g["erc/clip_frac"].mean()).values())

    def ppo_rate(g):
        return (g["ppo/clip_frac_low"] + g["ppo/clip_frac_high"]).mean()

    n["ppo_clip_erc_arm"] = interval(per_seed(minibatches, erc, ppo_rate).values())
    n["ppo_clip_base_arm"] = interval(per_seed(minibatches, base, ppo_rate).values())
    beta_t = None
    if "rho" in tokens.columns:
        n["beta_at_20pct"] = interval(per_seed(tokens, erc, lambda g: beta_at_target_rate(g["rho"])).values())
        beta_t = n["beta_at_20pct"][0]
    v1 = clip_rate_verdict(n["erc_clip_all"][0], n["erc_clip_stale"][0], n["ppo_clip_erc_arm"][0], beta_at_target=beta_t)
    # 2. low-entropy share of clipped tokens (low: old entropy below the median of all captured tokens of that run)
    tk = tokens[tokens["label"] == erc]

    def low_share(g):
        med = g["old_entropy"].median()
        c = g[g["clipped"]]
        return float((c["old_entropy"] < med).mean()) if len(c) else float("nan")

    shares = {s: v for s, v in per_seed(tk, erc, low_share).items() if math.isfinite(v)}
    if not shares:
        raise ValueError("no ERC-clipped token in the captures; claim 2 cannot be measured")
    n["low_entropy_share"] = interval(shares.values())
    n["median_H_clipped"] = interval(per_seed(tk, erc, lambda g: g[g["clipped"]]["old_entropy"].median()).values())
    n["median_H_kept"] = interval(per_seed(tk, erc, lambda g: g[~g["clipped"]]["old_entropy"].median()).values())
    v2 = share_verdict(n["low_entropy_share"], 0.5)
    # 3. fluctuation of entropy and grad norm
    rows3 = []
    for key, name in (("entropy/new_mean", "entropy"), ("grad/norm", "grad norm")):
        a = per_seed(steps, erc, lambda g: step_to_step_std(g.sort_values("step")[key]))
        b = per_seed(steps, base, lambda g: step_to_step_std(g.sort_values("step")[key]))
        n[f"fluct_{name}_erc"], n[f"fluct_{name}_base"] = interval(a.values()), interval(b.values())
        n[f"fluct_{name}_diff"] = paired_difference(a, b)
        rows3.append((f"3. {name} curve fluctuates less", "step-to-step std of the per-step mean",
                      fmt_interval(n[f"fluct_{name}_erc"], digits=4), fmt_interval(n[f"fluct_{name}_base"], digits=4),
                      lower_is_better_verdict(n[f"fluct_{name}_diff"]),
                      f"paired diff {fmt_interval(n[f'fluct_{name}_diff'], digits=4)}"))
    # 4. accuracy
    if acc_key is None:
        acc_key = next(c for c in evals.columns if c.startswith("eval/avg@"))
    last = evals.groupby(["label", "seed"])["step"].transform("max") == evals["step"]
    ev = evals[last]
    a = per_seed(ev, erc, lambda g: g[acc_key].mean())
    b = per_seed(ev, base, lambda g: g[acc_key].mean())
    n["acc_erc"], n["acc_base"], n["acc_diff"] = interval(a.values()), interval(b.values()), paired_difference(a, b)
    v4 = no_worse_verdict(n["acc_diff"], margin)
    table = [
        ("1. ERC clips ~20% at beta 0.05, PPO-clip far fewer", "clip fraction of response tokens, all minibatches "
         "(stale k>=1 in note)", fmt_interval(n["erc_clip_all"], pct=True), "PPO-clip: " + fmt_interval(n["ppo_clip_erc_arm"], pct=True),
         v1, f"ERC at k>=1: {fmt_interval(n['erc_clip_stale'], pct=True)}; PPO-clip in baseline arm "
             f"{fmt_interval(n['ppo_clip_base_arm'], pct=True)}"
             + (f"; beta clipping 20% of the captured tokens: {fmt_interval(n['beta_at_20pct'])}" if beta_t is not None else "")),
        ("2. ERC-clipped tokens are mostly low-entropy", "share of clipped tokens with old entropy below the run's median",
         fmt_interval(n["low_entropy_share"], pct=True), "threshold 50%", v2,
         f"median old entropy: clipped {fmt_interval(n['median_H_clipped'])}, kept {fmt_interval(n['median_H_kept'])} nats"),
        *rows3,
        ("4. accuracy no worse", f"final {acc_key}", fmt_interval(n["acc_erc"]), fmt_interval(n["acc_base"]), v4,
         f"paired diff {fmt_interval(n['acc_diff'])}, margin {margin}"),
    ]
    df = pd.DataFrame(table, columns=["claim", "measure", "ERC", "baseline", "verdict", "note"])
    return df, n
