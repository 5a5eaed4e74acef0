"""Seeds for a confirmatory study, from a pilot's between-seed spread (before any confirmatory run).

For each candidate primary endpoint, read per seed from the pilot's DAPO runs at the destabilising cell,

    final_accuracy   the last held-out evaluation
    drop             peak - final held-out accuracy (the run's own peak)
    collapse_step    the step of the entropy collapse (stability.collapse_step); a run without one
                     counts as collapsing at its last step (censored: it makes the spread smaller, so
                     the endpoint's seed count is a lower bound)

the confirmatory test is paired (ERC arm - DAPO, seed by seed), two-sided, at level alpha / tests
(Holm's first, strictest step over ``tests`` primaries), with power ``power``. The paired difference's
sd is taken as sqrt(2 (1 - correlation)) times the pilot's between-seed sd (correlation 0 by default:
no credit for pairing, which the pilot, with one arm, cannot measure). Its minimum detectable effect at
n seeds is

    MDE(n) = (t_{1 - alpha / (2 tests), n-1} + t_{power, n-1}) * sd_diff / sqrt(n)

and the seed count is the smallest n >= min_seeds (10) with MDE(n) <= half of DAPO's degradation in
the pilot, where the degradation of each endpoint is

    final_accuracy, drop   the mean drop from peak to final accuracy of DAPO's pilot seeds (an ERC that
                           halves the fall moves both endpoints by half of it)
    collapse_step          the run length - the mean collapse step (how early DAPO collapses; an ERC that
                           delays it by half of that)

    python -m ercref.study.power tiny6m-pilot3 [--cell K8-lr0.0006]
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import doc_blocks
from .claims import t_quantile
from .pilot import RunFacts, pilot_facts

MIN_SEEDS = 10
MAX_SEEDS = 1000
ENDPOINTS = ("final_accuracy", "drop", "collapse_step")


def _check(alpha: float, power: float, tests: int, correlation: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if not 0.5 <= power < 1:
        raise ValueError(f"power must be in [0.5, 1), got {power!r}")
    if not (isinstance(tests, int) and tests >= 1):
        raise ValueError(f"tests (the number of primary endpoints Holm corrects over) must be an int >= 1, got {tests!r}")
    if not -1 <= correlation < 1:
        raise ValueError(f"correlation (between the paired arms' per-seed values) must be in [-1, 1), got {correlation!r}")


def mde(sd: float, n: int, alpha: float = 0.05, power: float = 0.80, tests: int = 1, correlation: float = 0.0) -> float:
    """Minimum detectable paired effect at ``n`` seeds for one arm's between-seed ``sd`` (module doc)."""
    _check(alpha, power, tests, correlation)
    if not (isinstance(n, int) and n >= 2):
        raise ValueError(f"n (paired seeds) must be an int >= 2, got {n!r}")
    if not (math.isfinite(sd) and sd >= 0):
        raise ValueError(f"sd must be a finite number >= 0, got {sd!r}")
    sd_diff = sd * math.sqrt(2 * (1 - correlation))
    return (t_quantile(1 - alpha / (2 * tests), n - 1) + t_quantile(power, n - 1)) * sd_diff / math.sqrt(n)


def seeds_needed(sd: float, effect: float, alpha: float = 0.05, power: float = 0.80, tests: int = 1,
                 correlation: float = 0.0, min_seeds: int = MIN_SEEDS, max_seeds: int = MAX_SEEDS) -> int | None:
    """The smallest n in [min_seeds, max_seeds] with mde(sd, n) <= effect; None when even max_seeds
    does not reach it (or the effect is 0)."""
    if not (math.isfinite(effect) and effect >= 0):
        raise ValueError(f"effect must be a finite number >= 0, got {effect!r}")
    if not (isinstance(min_seeds, int) and 2 <= min_seeds <= max_seeds):
        raise ValueError(f"min_seeds must be an int in [2, max_seeds={max_seeds}], got {min_seeds!r}")
    if effect == 0:
        return None
    lo, hi = min_seeds, max_seeds
    if mde(sd, hi, alpha, power, tests, correlation) > effect:
        return None
    while lo < hi:            # mde falls with n: bisection for the first n that reaches the effect
        mid = (lo + hi) // 2
        if mde(sd, mid, alpha, power, tests, correlation) <= effect:
            hi = mid
        else:
            lo = mid + 1
    return lo


def endpoint_values(facts: dict[int, RunFacts]) -> dict[str, dict[int, float]]:
    """{endpoint: {seed: value}} of one cell's runs (module doc; a run without a collapse counts at its
    last evaluation's step)."""
    out: dict[str, dict[int, float]] = {e: {} for e in ENDPOINTS}
    for s, f in sorted(facts.items()):
        out["final_accuracy"][s] = f.final
        out["drop"][s] = f.drop
        out["collapse_step"][s] = float(f.collapse if f.collapse is not None else f.evals[-1][0])
    return out


@dataclass(frozen=True)
class EndpointPower:
    """One endpoint's pilot spread, DAPO's degradation, the target MDE (half of it) and the seeds."""
    endpoint: str
    cell: str
    pilot_seeds: int
    mean: float
    sd: float
    degradation: float
    target: float
    seeds: int | None
    mde_at_seeds: float | None


def power_for_cell(facts: dict[int, RunFacts], cell: str, alpha: float = 0.05, power: float = 0.80,
                   tests: int = len(ENDPOINTS), correlation: float = 0.0,
                   min_seeds: int = MIN_SEEDS) -> list[EndpointPower]:
    """EndpointPower of each endpoint from one cell's pilot runs {seed: RunFacts} (>= 2 seeds)."""
    if len(facts) < 2:
        raise ValueError(f"cell {cell}: a between-seed spread needs >= 2 pilot seeds, got {len(facts)}")
    vals = endpoint_values(facts)
    fall = float(np.mean(list(vals["drop"].values())))
    length = float(np.mean([f.evals[-1][0] for f in facts.values()]))
    degradation = {"final_accuracy": fall, "drop": fall,
                   "collapse_step": length - float(np.mean(list(vals["collapse_step"].values())))}
    out = []
    for e in ENDPOINTS:
        v = np.array(list(vals[e].values()), dtype=float)
        sd, target = float(v.std(ddof=1)), degradation[e] / 2
        n = seeds_needed(sd, target, alpha, power, tests, correlation, min_seeds)
        out.append(EndpointPower(e, cell, len(v), float(v.mean()), sd, degradation[e], target, n,
                                 None if n is None else mde(sd, n, alpha, power, tests, correlation)))
    return out


def destabilising_cell(stale: dict[str, dict[int, RunFacts]]) -> str:
    """The stale cell where the most pilot seeds degraded (ties: the larger mean drop)."""
    if not stale:
        raise ValueError("the pilot has no stale (K > 1) cell cached")
    return max(stale, key=lambda c: (sum(f.degraded for f in stale[c].values()),
                                     float(np.mean([f.drop for f in stale[c].values()]))))


def power_table(rows: list[EndpointPower]) -> str:
    lines = ["| endpoint | cell | pilot seeds | mean | sd | DAPO degradation | target MDE (half) | seeds | MDE at seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = "not reachable" if r.seeds is None else str(r.seeds)
        m = "-" if r.mde_at_seeds is None else f"{r.mde_at_seeds:.3g}"
        lines.append(f"| {r.endpoint} | {r.cell} | {r.pilot_seeds} | {r.mean:.3g} | {r.sd:.3g} | {r.degradation:.3g} | "
                     f"{r.target:.3g} | {n} | {m} |")
    return "\n".join(lines) + "\n"


POWER_BLOCK = doc_blocks.pattern("power-report")


def power_report(pilot: str, cell: str, results_dir=None, arm: str = "DAPO") -> str:
    """Markdown: the seeds a confirmatory study at ``cell`` of the pilot ``pilot`` would need
    (power_for_cell with the defaults: three primaries, alpha 0.05, power 0.80, no credit for pairing).
    The block ``<!-- power-report: PILOT CELL -->`` of docs/results.md (refresh_power_blocks)."""
    _, stale = pilot_facts(pilot, results_dir, arm, check_overlap=False)
    if not stale.get(cell):
        raise ValueError(f"{cell!r} is not a cached stale cell of the pilot {pilot!r}: {sorted(c for c, f in stale.items() if f)}")
    rows = power_for_cell(stale[cell], cell)
    reach = [r.seeds for r in rows if r.seeds is not None]
    return (f"Seeds per arm for a confirmatory study at `{pilot}` {cell} (`python -m ercref.study.power {pilot} --cell "
            f"{cell}`: {len(stale[cell])} pilot seeds of {arm}, {len(ENDPOINTS)} primaries under Holm, alpha 0.05, power "
            f"0.80, no credit for pairing; the target is half of {arm}'s mean fall in the pilot): "
            + (f"{min(reach)} to {max(reach)}." if reach else f"not reachable within {MAX_SEEDS}.") + "\n\n"
            + power_table(rows))


def refresh_power_blocks(path, results_dir=None) -> list[str]:
    """Replace every ``<!-- power-report: PILOT CELL -->`` ... ``<!-- /power-report -->`` block of the
    markdown file ``path`` with power_report(PILOT, CELL) of the current cache. Returns "PILOT CELL"s."""
    return doc_blocks.refresh(path, POWER_BLOCK, lambda pilot, cell: power_report(pilot, cell, results_dir))


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ercref.study.power", description=__doc__.split("\n")[0])
    ap.add_argument("study", help="the pilot study's name (its cache under data/results)")
    ap.add_argument("--cell", default=None, help="the destabilising cell (default: the stale cell where most "
                                                 "seeds degraded)")
    ap.add_argument("--arm", default="DAPO")
    ap.add_argument("--tests", type=int, default=len(ENDPOINTS), help="primary endpoints Holm corrects over")
    ap.add_argument("--correlation", type=float, default=0.0, help="assumed correlation of paired arms' values")
    ap.add_argument("--results-dir", default=None)
    args = ap.parse_args(argv)
    try:
        _, stale = pilot_facts(args.study, args.results_dir, args.arm, check_overlap=False)
        stale = {c: f for c, f in stale.items() if f}          # cached cells only
        cell = args.cell or destabilising_cell(stale)
        if cell not in stale:
            raise ValueError(f"--cell {cell!r} is not a cached stale cell of {args.study!r}: {sorted(stale)}")
        rows = power_for_cell(stale[cell], cell, tests=args.tests, correlation=args.correlation)
    except ValueError as e:
        ap.error(str(e))
    print(power_table(rows), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
