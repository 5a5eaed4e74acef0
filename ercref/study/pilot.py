"""The pilot's criteria for a testbed, read from a study cache: does plain DAPO learn there, and does
staleness destabilise it? Both must hold before a confirmatory test of ERC is worth running.

    learns      at the on-policy cell (K = 1 optimizer step per rollout batch), every pilot seed of the
                baseline arm raises held-out accuracy by >= LEARN_GAIN (0.20) from its first evaluation
                to its last, on >= MIN_EVAL_PROBLEMS (200) evaluation problems, none of them a training
                prompt (the run's saved config regenerates both sets to check it)
    degrades    at some stale cell (K > 1, any learning rate), the baseline degrades in >= DEGRADED_SEEDS
                (3) of the pilot seeds: its final accuracy is >= DROP (0.10) below the run's own peak
                evaluation, or its entropy collapses (stability.collapse_step) at or after an evaluation
                where it had learned (accuracy >= LEARNED_MIN, 0.10, above its first evaluation)

How "degrades" is read (decided before tiny6m-pilot3 ran; the criterion's text is "final accuracy >= 10
points below the run's own peak, or entropy collapse after it learned"): literally. "After it learned"
qualifies the entropy collapse only; the drop is measured from the run's own peak evaluation, and that
peak may be the first evaluation, so a run that falls from its starting accuracy without rising first
counts as degraded. The numbers also say how many degraded seeds had learned first (peak >= LEARNED_MIN
above the first evaluation): a testbed whose stale runs only ever fall tests "ERC keeps a policy from
falling", not "ERC keeps a learning policy from being destabilised", and the report says which it is.

A collapse onto answers that are right is not a degradation: a run whose final accuracy is >= SOLVED
(0.95) and within DROP of its peak has solved the task, and a policy that solved it may turn
deterministic. Such a collapse is shown per seed ("collapse on a solved task") and not counted; the
exception can only make the criterion harder to meet.

Each criterion is "met", "not met" (the cached runs already rule it out) or "incomplete" (the seeds
still missing could decide it either way), with the numbers per seed. K is read from each run's saved
config: rollout.prompts_per_step / train.minibatch_prompts.

    python -m ercref.study.pilot tiny6m-pilot2         # the criteria table of the cache (pilot_report:
                                                       # also the <!-- pilot-report: NAME --> blocks of docs/results.md)

``step_profile`` summarises the trainer's own step timings (time/generate_s, time/old_logprob_s,
time/update_s, time/step_s) over the cached runs of each cell.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import doc_blocks
from .cache import finished_runs, study_dir
from .stability import collapse_step

LEARN_GAIN = 0.20       # held-out accuracy gain of every on-policy seed (last - first evaluation)
MIN_EVAL_PROBLEMS = 200  # evaluation problems of each evaluation
DROP = 0.10             # peak - final accuracy of a degraded run
LEARNED_MIN = 0.10      # gain over the first evaluation that counts as "it had learned" before a collapse
DEGRADED_SEEDS = 3      # degraded seeds needed at one stale cell
SOLVED = 0.95           # final accuracy at which a collapse within DROP of the peak is a solved task's
EPS = 1e-9              # thresholds are met within rounding (logged accuracies have 6 digits)
MET, NOT_MET, INCOMPLETE = "met", "not met", "incomplete"
TIMING_KEYS = ("time/generate_s", "time/old_logprob_s", "time/update_s", "time/step_s")


@dataclass(frozen=True)
class RunFacts:
    """What the criteria read from one run: evaluations as (step, accuracy), the collapse step, K, lr,
    the size of the smallest evaluation (distinct problems, when the overlap is checked) and how many
    evaluation prompts were training prompts (None: not checked)."""
    k: int
    lr: float
    evals: tuple[tuple[int, float], ...]
    collapse: int | None
    eval_problems: int
    overlap: int | None

    @property
    def start(self) -> float:
        return self.evals[0][1]

    @property
    def final(self) -> float:
        return self.evals[-1][1]

    @property
    def peak(self) -> float:
        return max(a for _, a in self.evals)

    @property
    def gain(self) -> float:
        return self.final - self.start

    @property
    def drop(self) -> float:
        return self.peak - self.final

    @property
    def learned_before_collapse(self) -> bool:
        return self.collapse is not None and any(s <= self.collapse and a - self.start >= LEARNED_MIN - EPS
                                                 for s, a in self.evals)

    @property
    def learned(self) -> bool:
        """Its peak evaluation is >= LEARNED_MIN above its first."""
        return self.peak - self.start >= LEARNED_MIN - EPS

    @property
    def solved_collapse(self) -> bool:
        """It collapsed after learning, but onto right answers: final >= SOLVED, within DROP of its peak."""
        return self.learned_before_collapse and self.final >= SOLVED - EPS and self.drop < DROP - EPS

    @property
    def degraded(self) -> bool:
        return self.drop >= DROP - EPS or (self.learned_before_collapse and not self.solved_collapse)


@dataclass(frozen=True)
class Criterion:
    """One criterion's verdict: ``state`` is MET, NOT_MET or INCOMPLETE; ``detail`` gives the numbers."""
    name: str
    rule: str
    state: str
    detail: str


def staleness_k(config: dict) -> int:
    """Optimizer steps per rollout batch of a run's saved config (Config.to_dict())."""
    try:
        n, m = int(config["rollout"]["prompts_per_step"]), int(config["train"]["minibatch_prompts"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError("a run's config must have rollout.prompts_per_step and train.minibatch_prompts "
                         f"(a saved Config.to_dict()), missing or invalid: {e}") from None
    if n < 1 or m < 1:
        raise ValueError(f"rollout.prompts_per_step ({n}) and train.minibatch_prompts ({m}) must be >= 1")
    return max(1, n // m)


def eval_overlap(config: dict) -> tuple[int, int]:
    """(distinct evaluation problems, how many evaluation prompts are also training prompts) of a run's
    saved config, by regenerating both sets (ercref.lm.data.load_task). A generated evaluation set can
    ask one problem twice (arith level 3 has 720): those count once."""
    from ercref.lm.config import config_from_dict
    from ercref.lm.data import load_task

    train, eval_ = load_task(config_from_dict(config).data)
    seen = {str(r["prompt"]) for r in train}
    return len({str(r["prompt"]) for r in eval_}), sum(str(r["prompt"]) in seen for r in eval_)


def _accuracy_key(evals: list[dict]) -> str:
    key = next((c for r in evals for c in r if c.startswith("eval/avg@")), None)
    if key is None:
        raise ValueError("the log's eval rows carry no eval/avg@k (accuracy)")
    return key


def run_facts(rows: list[dict], config: dict, check_overlap: bool = True) -> RunFacts:
    """RunFacts of one run from its log rows and saved config. ValueError when it has fewer than two
    evaluations (a gain needs a first and a last one)."""
    evals = sorted((r for r in rows if r.get("kind") == "eval"), key=lambda r: r["step"])
    if len(evals) < 2:
        raise ValueError(f"a pilot run needs >= 2 evaluations (first and last), its log has {len(evals)}")
    key = _accuracy_key(evals)
    pts = tuple((int(r["step"]), float(r[key])) for r in evals if key in r)
    if any(not math.isfinite(a) for _, a in pts):
        raise ValueError(f"an evaluation's {key} is not finite: {[a for _, a in pts]}")
    sizes = [int(r["eval/prompts"]) for r in evals if "eval/prompts" in r]
    overlap = None
    if check_overlap:           # the distinct problems too: an evaluation can ask one problem twice
        distinct, overlap = eval_overlap(config)
        sizes.append(distinct)
    return RunFacts(k=staleness_k(config), lr=float(config["optim"]["lr"]), evals=pts, collapse=collapse_step(rows),
                    eval_problems=min(sizes) if sizes else 0, overlap=overlap)


def _seed_line(seed: int, f: RunFacts) -> str:
    c = "never" if f.collapse is None else f"step {f.collapse}"
    return (f"seed {seed}: {f.start:.3f} -> peak {f.peak:.3f} -> final {f.final:.3f} (gain {f.gain:+.3f}, "
            f"drop {f.drop:.3f}), collapse {c}")


def learns(facts: dict[int, RunFacts], seeds: list[int], cell: str = "K1") -> Criterion:
    """The learning criterion over the on-policy runs {seed: RunFacts} of the pilot's ``seeds``."""
    rule = (f"DAPO at K = 1: every seed's held-out accuracy gain >= {LEARN_GAIN:.2f}, on >= {MIN_EVAL_PROBLEMS} "
            "evaluation problems, none a training prompt")
    if not seeds:
        raise ValueError("seeds must name the pilot's seeds (at least one)")
    have = {s: f for s, f in facts.items() if s in seeds}
    bad = {s: f for s, f in have.items()
           if f.gain < LEARN_GAIN - EPS or f.eval_problems < MIN_EVAL_PROBLEMS or (f.overlap or 0) > 0}
    lines = [_seed_line(s, f) + f", {f.eval_problems} eval problems, "
             + ("overlap not checked" if f.overlap is None else f"{f.overlap} in training") for s, f in sorted(have.items())]
    missing = [s for s in seeds if s not in have]
    state = NOT_MET if bad else (INCOMPLETE if missing or any(f.overlap is None for f in have.values()) else MET)
    detail = f"{cell}: {len(have)} of {len(seeds)} seeds cached" + (f" (missing {missing})" if missing else "")
    detail += "".join("; " + x for x in lines)
    if bad:
        detail += f"; failing seeds {sorted(bad)}"
    return Criterion("learns", rule, state, detail)


def degrades(cells: dict[str, dict[int, RunFacts]], seeds: list[int]) -> Criterion:
    """The staleness criterion over the stale cells' runs {cell: {seed: RunFacts}} (K > 1 only)."""
    rule = (f"DAPO at some K > 1: >= {DEGRADED_SEEDS} of {len(seeds)} seeds end >= {DROP:.2f} below their own peak "
            f"or collapse after learning (>= +{LEARNED_MIN:.2f}), not onto right answers (final >= {SOLVED:.2f} within "
            f"{DROP:.2f} of its peak)")
    if not seeds:
        raise ValueError("seeds must name the pilot's seeds (at least one)")
    states, parts = [], []
    for cell, facts in cells.items():
        have = {s: f for s, f in facts.items() if s in seeds}
        n_bad = sum(f.degraded for f in have.values())
        missing = [s for s in seeds if s not in have]
        states.append(MET if n_bad >= DEGRADED_SEEDS else NOT_MET if n_bad + len(missing) < DEGRADED_SEEDS
                      else INCOMPLETE)
        n_after = sum(f.degraded and f.learned for f in have.values())
        parts.append(f"{cell} ({states[-1]}): {n_bad} of {len(have)} cached seeds degraded ({n_after} after learning)"
                     + (f" (missing {missing})" if missing else "")
                     + "".join(f"; {_seed_line(s, f)}{' DEGRADED' if f.degraded else ''}"
                               f"{' (collapse on a solved task: not counted)' if f.solved_collapse else ''}"
                               for s, f in sorted(have.items())))
    state = MET if MET in states else INCOMPLETE if INCOMPLETE in states else NOT_MET
    return Criterion("degrades", rule, state, " | ".join(parts) if parts else "no stale cell cached")


def facts_by_cell(name: str, results_dir=None, arm: str = "DAPO",
                  check_overlap: bool = True, runs=None) -> dict[str, dict[int, RunFacts]]:
    """{cell: {seed: RunFacts}} of the cached study ``name``'s runs of ``arm`` (``runs``: its
    cache.finished_runs when already read), cells in the order of its study.json. ValueError when the
    study has no cache."""
    from .cache import read_study_json

    root = study_dir(name, results_dir)
    if not (root / "study.json").is_file():
        raise ValueError(f"study {name!r} has no cache at {root} (no study.json): run it first")
    order = list(read_study_json(root / "study.json")["cells"])
    runs = finished_runs(root, tokens=False)[0] if runs is None else runs
    out: dict[str, dict[int, RunFacts]] = {}
    for r in sorted(runs, key=lambda r: (order.index(r.cell) if r.cell in order else len(order), r.cell)):
        if r.arm == arm:
            out.setdefault(r.cell, {})[r.seed] = run_facts(r.rows, r.meta["config"], check_overlap)
    return out


def cell_k(name: str, cells: dict[str, dict[int, RunFacts]], results_dir=None, arm: str = "DAPO") -> dict[str, int]:
    """{cell: K} of every cell the cached study.json of ``name`` defines for ``arm``, in its order: K
    of the cell's cached runs (``cells``, facts_by_cell), else of its definition; then cached cells the
    definition lacks."""
    from ercref.lm.config import make_config

    from .cache import read_study_json

    d = read_study_json(study_dir(name, results_dir) / "study.json")
    out = {c: (next(iter(cells[c].values())).k if cells.get(c) else
               staleness_k(make_config(d["preset"], overrides={**d["base"], **over}).to_dict()))
           for c, over in d.get("cells", {}).items() if arm in (d.get("cell_arms") or {}).get(c, d["arms"])}
    return {**out, **{c: next(iter(f.values())).k for c, f in cells.items() if c not in out and f}}


def pilot_facts(name: str, results_dir=None, arm: str = "DAPO", check_overlap: bool = True,
                cells: dict[str, dict[int, RunFacts]] | None = None,
                ) -> tuple[tuple[str, dict[int, RunFacts]], dict[str, dict[int, RunFacts]]]:
    """((K = 1 cell, {seed: RunFacts}), {stale cell: {seed: RunFacts}}) of the cached study ``name``'s
    runs of ``arm``; every defined stale cell is there, with no seeds when none is cached. The learning
    criterion's K = 1 cell is the first one the study defines; other K = 1 cells (on-policy controls at
    another learning rate: on_policy_controls) are in neither. ``cells``: facts_by_cell's, when
    already computed."""
    cells = facts_by_cell(name, results_dir, arm, check_overlap) if cells is None else cells
    ks = cell_k(name, cells, results_dir, arm)
    on = [c for c, k in ks.items() if k == 1]
    stale = {c: cells.get(c, {}) for c, k in ks.items() if k > 1}
    return (on[0], cells.get(on[0], {})) if on else ("K1", {}), stale


def on_policy_controls(name: str, results_dir=None, arm: str = "DAPO",
                       cells: dict[str, dict[int, RunFacts]] | None = None) -> dict[str, dict[int, RunFacts]]:
    """The K = 1 cells after the first the study defines (pilot_facts), with their cached runs: on-policy
    DAPO at another learning rate, which says whether a stale cell's fall is the staleness or the
    learning rate. Described, not a criterion. ``cells``: facts_by_cell's, when already computed."""
    cells = facts_by_cell(name, results_dir, arm, check_overlap=False) if cells is None else cells
    on = [c for c, k in cell_k(name, cells, results_dir, arm).items() if k == 1]
    return {c: cells[c] for c in on[1:] if c in cells}


def pilot_criteria(name: str, results_dir=None, arm: str = "DAPO", seeds: list[int] | None = None,
                   check_overlap: bool = True, cells: dict[str, dict[int, RunFacts]] | None = None) -> list[Criterion]:
    """[learns, degrades] of the cached study ``name``, read from its runs of ``arm`` (the seeds:
    ``seeds``, else the study.json's). K = 1 cells feed "learns", K > 1 cells "degrades". ``cells``:
    facts_by_cell's (with the overlap check), when already computed."""
    from .cache import read_study_json

    (on_cell, on_policy), stale = pilot_facts(name, results_dir, arm, check_overlap, cells)
    defined = read_study_json(study_dir(name, results_dir) / "study.json")
    seeds = list(seeds) if seeds is not None else [int(s) for s in defined["seeds"]]
    return [learns(on_policy, seeds, on_cell), degrades(stale, seeds)]


def step_profile(name: str, results_dir=None, runs=None) -> dict[str, dict[str, float]]:
    """{cell: {timing key: mean seconds per RL step, "steps": steps averaged, "wall_s": mean run wall
    time}} over every cached run of the study (the trainer's time/* metrics; ``runs``: its
    cache.finished_runs when already read)."""
    runs = finished_runs(study_dir(name, results_dir), tokens=False)[0] if runs is None else runs
    out: dict[str, dict[str, list]] = {}
    for r in runs:
        d = out.setdefault(r.cell, {k: [] for k in TIMING_KEYS + ("wall_s",)})
        d["wall_s"].append(float(r.meta["wall_s"]))
        for row in r.rows:
            if row.get("kind") == "step":
                for k in TIMING_KEYS:
                    if k in row:
                        d[k].append(float(row[k]))
    return {cell: {**{k: float(np.mean(v)) for k, v in d.items() if v}, "steps": len(d["time/step_s"])}
            for cell, d in sorted(out.items())}


def criteria_table(criteria: list[Criterion]) -> str:
    """Markdown table: criterion, rule, state, numbers."""
    lines = ["| criterion | rule | state | numbers |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {c.rule} | **{c.state}** | {c.detail} |" for c in criteria]
    return "\n".join(lines) + "\n"


def _judge_caveat(runs) -> str | None:
    """config_rules.judge_task_caveat of the first cached run's config (a pilot's runs share their judge)."""
    from ercref.lm.config import config_from_dict
    from ercref.lm.config_rules import judge_task_caveat

    return judge_task_caveat(config_from_dict(runs[0].meta["config"])) if runs else None


def pilot_report(name: str, results_dir=None, arm: str = "DAPO") -> str:
    """Markdown: what the pilot is (its study.json description and cache), the criteria table and each
    cell's step profile. The block ``<!-- pilot-report: NAME -->`` of docs/results.md (refresh_pilot_blocks)."""
    from .cache import read_study_json

    root = study_dir(name, results_dir)
    defined = read_study_json(root / "study.json") if (root / "study.json").is_file() else {}
    runs, _ = finished_runs(root, tokens=False) if root.is_dir() else ([], [])
    where = f"data/results/{name}" if results_dir is None else str(root)
    lines = [f"Pilot `{name}` (cache `{where}`): {len(runs)} runs, "
             f"{sum(float(r.meta['wall_s']) for r in runs) / 3600:.2f} run-hours. {defined.get('description', '')}", ""]
    cells = facts_by_cell(name, results_dir, arm, runs=runs) if defined else None   # the cache, read once
    caveat = _judge_caveat(runs)
    if caveat:
        lines += [f"**Judge caveat**: {caveat}; what these runs were credited for: `python -m ercref.study.judge_audit "
                  f"{name}`.", ""]
    lines.append(criteria_table(pilot_criteria(name, results_dir, arm, cells=cells)).rstrip("\n"))
    for cell, facts in (on_policy_controls(name, results_dir, arm, cells) if runs else {}).items():
        lines += ["", f"On-policy control {cell} (K = 1 at another learning rate: does DAPO fall there without "
                  "staleness? described, not a criterion): " + "; ".join(
                      f"{_seed_line(s, f)}{' DEGRADED' if f.degraded else ''}" for s, f in sorted(facts.items()))]
    profile = step_profile(name, results_dir, runs)
    if profile:
        lines += ["", "Seconds per RL step (mean over the cached runs' steps; one torch thread per run, other runs "
                  "sharing the machine's cores, so only ratios within one sitting compare) and run wall time, per cell:", ""]
        lines += [f"- {cell}: " + ", ".join(f"{k.removeprefix('time/')} {v:.3g}" for k, v in p.items()) for cell, p in
                  profile.items()]
    return "\n".join(lines) + "\n"


PILOT_BLOCK = doc_blocks.pattern("pilot-report")


def refresh_pilot_blocks(path, results_dir=None) -> list[str]:
    """Replace every ``<!-- pilot-report: NAME -->`` ... ``<!-- /pilot-report -->`` block of the markdown
    file ``path`` with pilot_report(NAME) of the current cache. Returns the names."""
    return doc_blocks.refresh(path, PILOT_BLOCK, lambda name: pilot_report(name, results_dir))


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ercref.study.pilot", description=__doc__.split("\n")[0])
    ap.add_argument("study", help="the pilot study's name (its cache under data/results)")
    ap.add_argument("--arm", default="DAPO", help="the baseline arm (default DAPO)")
    ap.add_argument("--results-dir", default=None, help="cache root (default data/results)")
    args = ap.parse_args(argv)
    try:
        print(pilot_report(args.study, args.results_dir, args.arm), end="")
    except ValueError as e:
        ap.error(str(e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
