"""Named studies as data: which runs a question needs, nothing about how they are run (runner.py).

A ``Study`` is a preset, overrides shared by every run (``base``), cells (a setting of the
environment: optimizer steps per batch, learning rate, ...; name -> overrides) and arms (the
method: DAPO, DAPO+ERC, a control; name -> overrides), crossed with seeds. One run = one
(cell, arm, seed); its config is ``make_config(preset, base | cell | arm | {"train.seed": seed})``.

    tiny-stability-map  cpu-tiny: K in {1, 2, 4, 8, 16} optimizer steps per rollout batch of 16 prompts
                        (train.minibatch_prompts = 16 / K) x learning rates MAP_LRS; DAPO and DAPO+ERC
                        (beta 0.05) everywhere, GPPO and GPPO+ERC at K in GPPO_KS; seeds 0-4; 100 RL steps
    tiny-controls       cpu-tiny at CONTROL_CELLS (any map cell name is accepted with --cells): every
                        baseline and control (random mask, matched step, entropy bonus, KL, Clip-Cov,
                        KL-Cov) and the beta ablation {0.01, 0.05, 0.1, 0.2}
    tiny-token-captures cpu-tiny at TOKEN_CAPTURE_CELLS: DAPO+ERC with per-token captures (old entropy, ERC
                        state) at steps 25/50/75/100, 5 seeds: the paper's claim 2
    smollm2-learns      cpu-smollm2 on single-digit addition in a sentence (math judge), where DAPO's
                        held-out accuracy rises: DAPO, DAPO+ERC and the random-mask control, 5 seeds,
                        20 RL steps of 8 x 8 at K = 4; the budget (steps, batch, lr, K) are parameters
                        of ``smollm2_learns``
    smollm2-collapse    the cpu-smollm2 preset as it is (multiple choice, format reward, 8 x 4, K = 2), 24 RL
                        steps: DAPO, DAPO+ERC, random mask, 5 seeds; the time to collapse onto one letter

Cost: each cached study's run-hours (the sum of its runs' wall times, one thread per run) are in its
provenance line (README, `--report`); the runner's --status estimates what is left from the cache's own
measured run times. A worker process reuses the SFT warm-up of a seed across its runs.

Matched-step control (``Study.matched``: arm -> (target arm, reference arm)): the arm runs with
the reference arm's config at learning rate

    lr_matched = lr_reference * mean ||dtheta||(target) / mean ||dtheta||(reference)

where mean ||dtheta|| is the mean of ``optim/update_norm`` (the L2 norm of one AdamW step's
parameter change) over every minibatch row of every study seed of that arm at that cell. AdamW's
step is lr times a gradient-scale-free direction, so its norm is ~proportional to lr and this
matches the mean step length to first order (the runner logs the achieved ratio in the run's
meta). The runner computes it from the cache (runner.matched_lr), so the arm waits until both
arms have every seed of the study at that cell.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

ARM_OR_CELL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._=-]*$")   # a folder name in the cache


# ----------------------------------------------------------------------------- arms
def erc_arm(loss: str, beta: float | None, **extra) -> dict:
    """Overrides of one arm: loss name, ERC on (beta_low = beta_high = beta) or off (beta None)."""
    arm = {"loss.loss": loss, "loss.erc": beta is not None, **extra}
    if beta is not None:
        arm.update({"loss.beta_low": float(beta), "loss.beta_high": float(beta)})
    return arm


GPPO_EPS = {"loss.loss_kwargs.eps_low": 0.2, "loss.loss_kwargs.eps_high": 0.2}   # GPPO+ERC in the paper: eps 0.2 / 0.2
# The setting of notebook 04's 3-seed SmolLM2 run (smollm2_dapo_vs_erc): SmolLM2-135M-Instruct,
# 4-option multiple choice, 10 RL steps of 8 prompts x 4 answers at K = 4.
SMOL_BASE = {"train.threads": 1, "train.progress": False, "train.plot": False, "train.steps": 10,
             "rollout.prompts_per_step": 8, "rollout.group_size": 4, "rollout.max_new_tokens": 12,
             "train.minibatch_prompts": 2,          # K = 4 optimizer steps per rollout batch
             "train.eval_k": 2, "data.num_eval": 32}


@dataclass
class Study:
    """A named set of runs: cells x arms x seeds of one preset (see the module docstring)."""
    name: str
    preset: str
    base: dict
    cells: dict[str, dict]
    arms: dict[str, dict]
    seeds: list[int]
    default_cells: list[str] | None = None            # what runs without --cells (None: every cell)
    cell_arms: dict[str, list[str]] = field(default_factory=dict)   # cell -> its arms (absent: every arm)
    matched: dict[str, tuple[str, str]] = field(default_factory=dict)  # arm -> (target arm, reference arm)
    est_run_s: float = 60.0                            # prior for one run's wall time until the cache has some
    description: str = ""
    capture_steps: list[int] = field(default_factory=list)  # RL steps whose tokens are captured (runner: seedK.tokens.gz)
    preregistration: str | None = None                 # hypotheses file (data/preregistration/): a confirmatory study

    def __post_init__(self) -> None:
        for kind, names in (("cell", self.cells), ("arm", self.arms)):
            for n in names:
                if not ARM_OR_CELL_NAME.match(n):
                    raise ValueError(f"{kind} name {n!r} of study {self.name!r} must match {ARM_OR_CELL_NAME.pattern} "
                                     "(it names a folder of the cache)")
        for n in (self.default_cells or []) + list(self.cell_arms):
            if n not in self.cells:
                raise ValueError(f"study {self.name!r}: cell {n!r} is not one of {list(self.cells)}")
        for arms in self.cell_arms.values():
            for a in arms:
                if a not in self.arms:
                    raise ValueError(f"study {self.name!r}: arm {a!r} is not one of {list(self.arms)}")
        for a, (target, ref) in self.matched.items():
            if a not in self.arms or target not in self.arms or ref not in self.arms:
                raise ValueError(f"study {self.name!r}: matched arm {a!r} -> ({target!r}, {ref!r}) names an unknown arm")
        for h in self.registered().get("hypotheses", []):
            if h["cell"] not in self.cells or h["arm"] not in self.arms or h["baseline"] not in self.arms:
                raise ValueError(f"study {self.name!r}: hypothesis {h['id']!r} ({h['cell']}: {h['arm']} - "
                                 f"{h['baseline']}) names a cell or arm the study does not have")

    def registered(self) -> dict:
        """The pre-registered hypotheses, correction, analysis and power of ``preregistration``
        (learning_primaries.load_preregistration), or {} for an exploratory study."""
        if self.preregistration is None:
            return {}
        from .learning_primaries import load_preregistration

        d = load_preregistration(self.preregistration)
        return {"preregistration": self.preregistration,
                **{k: d[k] for k in ("hypotheses", "holm", "analysis", "power") if k in d}}

    def arms_at(self, cell: str) -> list[str]:
        return list(self.cell_arms.get(cell, self.arms))

    def overrides(self, cell: str, arm: str, seed: int, extra: dict | None = None) -> dict:
        """The overrides of one run (base < cell < arm < seed < extra)."""
        if cell not in self.cells:
            raise ValueError(f"cell must be one of {list(self.cells)} (study {self.name!r}), got {cell!r}")
        if arm not in self.arms:
            raise ValueError(f"arm must be one of {list(self.arms)} (study {self.name!r}), got {arm!r}")
        return {**self.base, **self.cells[cell], **self.arms[arm], "train.seed": int(seed), **(extra or {})}

    def config(self, cell: str, arm: str, seed: int, extra: dict | None = None):
        from ercref.lm.config import make_config

        return make_config(self.preset, overrides=self.overrides(cell, arm, seed, extra))

    def runs(self, cells=None, arms=None, seeds=None) -> list[tuple[str, str, int]]:
        """(cell, arm, seed) of every run selected, seeds outermost (paired arms finish together) and
        matched arms last (they need the others' results). ValueError naming an unknown cell / arm."""
        for kind, given, known in (("cells", cells, self.cells), ("arms", arms, self.arms)):
            bad = [x for x in (given or []) if x not in known]
            if bad:
                raise ValueError(f"--{kind}: {bad} not in study {self.name!r}; known: {list(known)}")
        cells = list(cells) if cells else list(self.default_cells or self.cells)
        seeds = [int(s) for s in seeds] if seeds is not None and len(seeds) else list(self.seeds)
        out = []
        for late in (False, True):
            for seed in seeds:
                for cell in cells:
                    for arm in self.arms_at(cell):
                        if (arms and arm not in arms) or ((arm in self.matched) != late):
                            continue
                        out.append((cell, arm, seed))
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "preset": self.preset, "base": self.base, "cells": self.cells, "arms": self.arms,
                "seeds": self.seeds, "default_cells": self.default_cells, "cell_arms": self.cell_arms,
                "matched": {k: list(v) for k, v in self.matched.items()}, "est_run_s": self.est_run_s,
                "description": self.description, "capture_steps": list(self.capture_steps), **self.registered()}


# ----------------------------------------------------------------------------- tiny LM
MAP_KS = (1, 2, 4, 8, 16)          # optimizer steps per rollout batch of 16 prompts
# Learning rates spanning DAPO's behaviour at K = 16: stable (3e-4), an entropy collapse within the
# 100 steps (1e-3), a collapse within a few steps (3e-3); the map's cache measures each cell.
MAP_LRS = (3e-4, 1e-3, 3e-3)
GPPO_KS = (4, 16)                  # the subset of K where GPPO +- ERC also runs (every lr)
TINY_STUDY_BASE = {"train.threads": 1, "train.progress": False, "train.plot": False, "train.steps": 100,
                   "rollout.prompts_per_step": 16, "train.eval_every": 20, "train.save_checkpoints": False,
                   "train.save_policy": False}
SEEDS = [0, 1, 2, 3, 4]


def tiny_cell(k: int, lr: float) -> tuple[str, dict]:
    """("K{k}-lr{lr:g}", overrides): k optimizer steps per rollout batch of 16 prompts at AdamW lr."""
    if k not in MAP_KS:
        raise ValueError(f"K must be one of {MAP_KS} (16 prompts split evenly), got {k}")
    return f"K{k}-lr{lr:g}", {"train.minibatch_prompts": 16 // k, "optim.lr": float(lr)}


def parse_tiny_cell(name: str) -> tuple[int, float]:
    m = re.fullmatch(r"K(\d+)-lr([0-9.e+-]+)", name)
    if not m:
        raise ValueError(f"tiny cell name must look like 'K8-lr0.001' (K{{steps per batch}}-lr{{lr}}), got {name!r}")
    return int(m.group(1)), float(m.group(2))


def map_cells(ks=MAP_KS, lrs=MAP_LRS) -> dict[str, dict]:
    return dict(tiny_cell(k, lr) for k in ks for lr in lrs)


def tiny_stability_map(ks=MAP_KS, lrs=MAP_LRS, seeds=SEEDS, steps: int = 100) -> Study:
    cells = map_cells(ks, lrs)
    arms = {"DAPO": erc_arm("dapo", None), "DAPO+ERC": erc_arm("dapo", 0.05),
            "GPPO": erc_arm("gppo", None, **GPPO_EPS), "GPPO+ERC": erc_arm("gppo", 0.05, **GPPO_EPS)}
    cell_arms = {c: ["DAPO", "DAPO+ERC"] for c in cells if parse_tiny_cell(c)[0] not in GPPO_KS}
    return Study("tiny-stability-map", "cpu-tiny", {**TINY_STUDY_BASE, "train.steps": steps}, cells, arms, list(seeds),
                 cell_arms=cell_arms, est_run_s=290.0,
                 description="Where does off-policy DAPO become unstable on the tiny LM, and does ERC change it? "
                             "K optimizer steps per rollout batch x learning rate, DAPO vs DAPO+ERC (GPPO +- ERC "
                             "at some K), 5 seeds.")


# Cells for the controls, chosen from the map (--cells takes any map cell): K16-lr0.001, the cell where
# the map shows ERC delaying DAPO's collapse (README, "What we found"). K8-lr0.001 (ERC's clip rate
# inside the paper's band) is another: python -m ercref.study tiny-controls --cells K8-lr0.001.
CONTROL_CELLS = ("K16-lr0.001",)
TOKEN_CAPTURE_CELLS = ("K8-lr0.001", "K16-lr0.001")
ENTROPY_COEF = 0.001   # entropy bonus of the control arm (loss.entropy_coef)
KL_COEF = 0.01         # KL-to-reference coefficient of the control arm (loss.kl_coef)
BETAS = (0.01, 0.05, 0.1, 0.2)


def tiny_controls(cells=CONTROL_CELLS, seeds=SEEDS, steps: int = 100, entropy_coef: float = ENTROPY_COEF,
                  kl_coef: float = KL_COEF) -> Study:
    """Every baseline and control at the map's informative cells (all map cells are defined, so
    ``--cells`` can pick any; ``cells`` are the default)."""
    all_cells = map_cells()
    for c in cells:
        if c not in all_cells:
            all_cells[c] = tiny_cell(*parse_tiny_cell(c))[1]
    arms = {
        "DAPO": erc_arm("dapo", None),
        "DAPO+ERC": erc_arm("dapo", 0.05),
        "DAPO+random-mask": erc_arm("dapo", 0.05, **{"loss.erc_mask": "random"}),
        "DAPO-matched-step": erc_arm("dapo", None),           # lr set by the runner (Study.matched)
        "DAPO+entropy-bonus": erc_arm("dapo", None, **{"loss.entropy_coef": float(entropy_coef)}),
        "DAPO+KL": erc_arm("dapo", None, **{"loss.kl_coef": float(kl_coef)}),
        "Clip-Cov": erc_arm("clip_cov", None),
        "KL-Cov": erc_arm("kl_cov", None),
    }
    for b in BETAS:
        if b != 0.05:
            arms[f"DAPO+ERC-b{b:g}"] = erc_arm("dapo", b)
    return Study("tiny-controls", "cpu-tiny", {**TINY_STUDY_BASE, "train.steps": steps}, all_cells, arms, list(seeds),
                 default_cells=list(cells), matched={"DAPO-matched-step": ("DAPO+ERC", "DAPO")}, est_run_s=290.0,
                 description="At the informative cells of the map: DAPO, DAPO+ERC, the random-mask and matched-step "
                             "controls, entropy bonus, KL to the reference, Clip-Cov, KL-Cov, and beta in "
                             f"{list(BETAS)}.")


TOKEN_CAPTURE_STEPS = (25, 50, 75, 100)


def tiny_token_captures(cells=TOKEN_CAPTURE_CELLS, seeds=SEEDS, steps: int = 100,
                        capture_steps=TOKEN_CAPTURE_STEPS) -> Study:
    """The paper's claim 2 (the tokens ERC clips are mostly low-entropy) needs every response token's
    entropy and ERC state, which the engine log does not keep: DAPO+ERC at the control cells, 5
    seeds, with experiments.TokenCapture at ``capture_steps`` (one extra no-grad forward per
    minibatch of those steps, written to seedK.tokens.gz). The capture leaves the training unchanged: the
    runs' logs equal the map's DAPO+ERC runs of the same cell and seed (tests/test_study_runner.py checks
    it on a small run)."""
    all_cells = map_cells()
    return Study("tiny-token-captures", "cpu-tiny", {**TINY_STUDY_BASE, "train.steps": steps}, all_cells,
                 {"DAPO+ERC": erc_arm("dapo", 0.05)}, list(seeds), default_cells=list(cells), est_run_s=120.0,
                 capture_steps=[s for s in capture_steps if s <= steps],
                 description="Which tokens does ERC clip? DAPO+ERC with per-token captures at the control cells, "
                             "5 seeds (claim 2: clipped tokens are mostly low-entropy).")


# ----------------------------------------------------------------------------- SmolLM2
def smollm2_arms() -> dict[str, dict]:
    """The SmolLM2 studies' arms: DAPO, DAPO+ERC (beta 0.05), and the random-mask control."""
    return {"DAPO": erc_arm("dapo", None), "DAPO+ERC": erc_arm("dapo", 0.05),
            "DAPO+random-mask": erc_arm("dapo", 0.05, **{"loss.erc_mask": "random"})}


def smollm2_learns(seeds=SEEDS, steps: int = 20, prompts_per_step: int = 8, group_size: int = 8,
                   minibatch_prompts: int = 2, lr: float = 1e-5, max_new_tokens: int = 12) -> Study:
    """SmolLM2-135M-Instruct where DAPO learns: single-digit addition asked in a sentence ("What is
    3+5? Answer with just the number.", data.task=arith, level 1, style instruct), judged by the math
    judge (math-verify reads the last expression of the response, so "3 + 5 = 8" is right, and so is
    the restated question "3+5": the number judge would not credit it), binary reward. DAPO, DAPO+ERC
    (beta 0.05) and the random-mask control; K = prompts_per_step / minibatch_prompts = 4 optimizer
    steps per rollout batch.

    Why this task: on cpu-smollm2's multiple-choice task the held-out accuracy does not rise (notebook
    04, part 1), so it tests no accuracy claim; on this task DAPO's held-out accuracy rises within a few
    steps, and the runs of this study measure it per seed (notebook 04, part 2)."""
    base = {"train.threads": 1, "train.progress": False, "train.plot": False, "train.steps": steps,
            "data.task": "arith", "data.level": 1, "data.style": "instruct",
            "reward.judge": "math", "reward.scheme": "binary", "reward.judge_workers": 1,
            "rollout.prompts_per_step": prompts_per_step, "rollout.group_size": group_size,
            "rollout.max_new_tokens": max_new_tokens, "train.minibatch_prompts": minibatch_prompts,
            "optim.lr": float(lr), "train.eval_every": max(1, steps // 4), "train.eval_k": 2, "data.num_eval": 32,
            "train.save_checkpoints": False, "train.save_policy": False}
    arms = smollm2_arms()
    return Study("smollm2-learns", "cpu-smollm2", base, {"default": {}}, arms, list(seeds), est_run_s=18.0 * steps + 60,
                 description="Does ERC change what SmolLM2-135M learns (and when it collapses) where DAPO learns? "
                             "Single-digit addition in a sentence, math judge, K = 4, 5 seeds.")


def smollm2_collapse(seeds=SEEDS, steps: int = 24, lr: float = 1e-5) -> Study:
    """The known instability of the cpu-smollm2 preset: on its multiple-choice task (reward 1 for the
    right letter, 0.2 for a wrong bare letter) the policy learns the bare-letter format and then
    collapses onto one letter. The preset as it is (8 prompts x 4 answers, K = 2) for ``steps`` RL
    steps: DAPO, DAPO+ERC and the random-mask control, 5 seeds; the time to collapse
    (stability.collapse_step) per seed and arm."""
    base = {"train.threads": 1, "train.progress": False, "train.plot": False, "train.steps": steps,
            "optim.lr": float(lr), "train.eval_every": max(1, steps // 4), "train.save_checkpoints": False,
            "train.save_policy": False}
    arms = smollm2_arms()
    return Study("smollm2-collapse", "cpu-smollm2", base, {"default": {}}, arms, list(seeds), est_run_s=12.0 * steps + 60,
                 description="When does SmolLM2-135M collapse onto one letter on cpu-smollm2's multiple-choice task, "
                             "with and without ERC? DAPO, DAPO+ERC, random mask, 5 seeds.")


def smollm2_dapo_vs_erc(seeds=(0, 1, 2), steps: int = 10, capture_steps=(3, 6, 9)) -> Study:
    """Notebook 04's first SmolLM2 run: the cpu-smollm2 preset's multiple-choice task, 10 RL steps of
    8 prompts x 4 answers at K = 4 (SMOL_BASE), DAPO against DAPO+ERC (beta 0.05), 3 seeds,
    with per-token captures at steps 3, 6 and 9. Its held-out accuracy did not rise, so it tests no
    accuracy claim (notebook 04 computes why); it shows which tokens ERC clips on a real model."""
    arms = {"DAPO": erc_arm("dapo", None), "DAPO+ERC": erc_arm("dapo", 0.05)}
    return Study("smollm2-dapo-vs-erc", "cpu-smollm2", {**SMOL_BASE, "train.steps": steps}, {"default": {}}, arms,
                 list(seeds), est_run_s=75.0 * steps, capture_steps=[s for s in capture_steps if s <= steps],
                 description="Notebook 04's 3-seed SmolLM2 run: multiple choice, DAPO vs DAPO+ERC (beta 0.05), "
                             "10 RL steps, token captures at steps 3, 6, 9.")


STUDIES = {"tiny-stability-map": tiny_stability_map, "tiny-controls": tiny_controls,
           "tiny-token-captures": tiny_token_captures, "smollm2-learns": smollm2_learns,
           "smollm2-collapse": smollm2_collapse, "smollm2-dapo-vs-erc": smollm2_dapo_vs_erc}


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise ValueError(f"study must be one of {sorted(STUDIES)}, got {name!r}")
    return STUDIES[name]()


# ----------------------------------------------------------------------------- testbed pilot
# The candidate testbed: the tiny-6m character model (ercref.lm.models.TINY_MODELS, ~6.3 M parameters) on
# the max task ("max(47,58)=" -> "58": 8,010 distinct problems, two-token answers; 2,000 training draws and
# 237 held-out problems, none of them a training prompt), a supervised warm-up stopped while the held-out
# accuracy is partial (RL needs groups with both right and wrong answers), then 80 RL steps of 16 prompts x 8
# answers. The criteria are in ercref.study.pilot (learns: DAPO at K = 1 gains >= 0.20 in every
# seed; degrades: at some K > 1 DAPO degrades in >= 3 of 5 seeds).
TINY6M_BASE = {**TINY_STUDY_BASE, "model.name": "tiny-6m", "data.task": "max", "data.num_train": 2000,
               "data.num_eval": 300, "rollout.max_new_tokens": 4, "sft.steps": 250, "sft.batch_size": 32,
               "sft.lr": 1e-3, "train.steps": 80, "train.eval_every": 20, "train.eval_k": 2}
PILOT_CELLS = ((1, 3e-4), (16, 3e-4), (16, 1e-3))   # staleness alone (K1 vs K16 at 3e-4), and a higher lr
# tiny6m-pilot2 adds K = 4 and 8 at 3e-4: staleness alone at the learning rate where K = 1 learns (+0.14 to
# +0.26 in 120 steps over four seeds) and K = 16 falls from its first evaluation.
PILOT2_CELLS = PILOT_CELLS + ((4, 3e-4), (8, 3e-4))
# tiny6m-pilot3: one learning rate for every K (staleness alone), twice pilot2's so that K = 1 gains more
# within 200 RL steps; K = 4 and 8 are between K = 1 (learns) and K = 16 (broke from the first steps).
PILOT3_CELLS = ((1, 6e-4), (8, 6e-4), (4, 6e-4))
# tiny6m-pilot4: pilot2's learning rate (where K = 1 learned +0.14 to +0.26 in 120 RL steps and was still rising;
# pilot3's twice-as-high one collapsed) for 300 RL steps, and a warm-up stopped at an accuracy target: after the
# same 200 warm-up steps pilot2's seeds started between 0.31 and 0.64 held-out, and a seed that starts at 0.64 has
# little room left for +0.20. K = 4, 8 and 16 at the same learning rate: staleness alone.
PILOT4_CELLS = ((1, 3e-4), (4, 3e-4), (8, 3e-4), (16, 3e-4))
PILOT4_SFT = {"sft.target_accuracy": 0.30, "sft.check_every": 10, "sft.check_prompts": 128}


def tiny6m_pilot(cells=PILOT_CELLS, seeds=SEEDS, steps: int = 80, sft_steps: int = 250,
                 name: str = "tiny6m-pilot", base: dict | None = None) -> Study:
    """A testbed pilot: DAPO alone at K = 1 and at stale cells, 5 seeds (TINY6M_BASE and ``base`` with
    ``steps`` RL steps after ``sft_steps`` warm-up steps). ``python -m ercref.study.pilot NAME`` says which
    criterion the cache meets. tiny6m-pilot: K1 / K16 at 3e-4, K16 at 1e-3, 250 warm-up steps, 80 RL steps;
    tiny6m-pilot2: those cells and K4 / K8 at 3e-4 (PILOT2_CELLS), 200 warm-up steps (a lower,
    higher-entropy start: more room to learn), 120 RL steps; tiny6m-pilot3: PILOT3_CELLS (one learning
    rate, K in {1, 4, 8}), 200 warm-up steps, 200 RL steps, no update-norm weight copy (the pilot has no
    matched-step arm)."""
    stale = sorted({k for k, _ in cells if k > 1})
    base = {**TINY6M_BASE, "train.steps": steps, "sft.steps": sft_steps, **(base or {})}
    warmup = (f"A warm-up of up to {sft_steps} steps stopped once the sampled accuracy on "
              f"{base.get('sft.check_prompts', 128)} training prompts reaches {base['sft.target_accuracy']:g}"
              if base.get("sft.target_accuracy") else f"{sft_steps} warm-up steps")
    return Study(name, "cpu-tiny", base, dict(tiny_cell(k, lr) for k, lr in cells), {"DAPO": erc_arm("dapo", None)},
                 list(seeds), est_run_s=600.0,
                 description=f"Testbed pilot: does DAPO learn the max task on the ~6M tiny model at K = 1 (>= +0.20 "
                             f"in every seed), and does it degrade at K in {stale} (>= 3 of 5 seeds)? {warmup}, "
                             f"{steps} RL steps, 5 seeds.")


STUDIES["tiny6m-pilot"] = tiny6m_pilot
STUDIES["tiny6m-pilot2"] = functools.partial(tiny6m_pilot, cells=PILOT2_CELLS, steps=120, sft_steps=200,
                                             name="tiny6m-pilot2")
STUDIES["tiny6m-pilot3"] = functools.partial(tiny6m_pilot, cells=PILOT3_CELLS, steps=200, sft_steps=200,
                                             name="tiny6m-pilot3", base={"train.log_update_norm": False})
# The SmolLM2 testbed pilot: two-digit addition and subtraction asked in a sentence (arith level 2: 8,100 problems;
# of 300 generated held-out problems about 230 are not training prompts), math judge, where SmolLM2-135M-Instruct
# starts low with room to rise (avg@2 0.20, pass@2 0.39 on 64 held-out problems, measured before this pilot), and
# where on single-digit additions DAPO learned +65 points in 20 steps (smollm2-learns). 8 prompts x 8 answers per
# step, 30 RL steps; K = 1 (on-policy) at lr 1e-5, K = 8 at lr 1e-5 (staleness alone) and 3e-5; then, since K = 8 at
# 3e-5 learned as well as K = 1 without a drop, K = 8 at 1e-4 and 3e-4 (larger stale steps), added before their runs.
SMOL_PILOT_CELLS = ((1, 1e-5), (8, 1e-5), (8, 3e-5), (8, 1e-4), (8, 3e-4))


def smollm2_cell(k: int, lr: float, prompts: int = 8) -> tuple[str, dict]:
    """("K{k}-lr{lr:g}", overrides): k optimizer steps per rollout batch of ``prompts`` prompts at AdamW lr."""
    if k < 1 or prompts % k:
        raise ValueError(f"K must divide the {prompts} prompts of a rollout batch, got {k}")
    return f"K{k}-lr{lr:g}", {"train.minibatch_prompts": prompts // k, "optim.lr": float(lr)}


def smollm2_pilot(cells=SMOL_PILOT_CELLS, seeds=SEEDS, steps: int = 30, name: str = "smollm2-pilot", level: int = 2,
                  num_train: int = 2000, num_eval: int = 300, base: dict | None = None) -> Study:
    """A SmolLM2 testbed pilot (above): DAPO alone at each cell, 5 seeds, ``steps`` RL steps on arith
    ``level`` (``num_train`` training and ``num_eval`` generated evaluation problems, those that are not
    training prompts kept); ``python -m ercref.study.pilot NAME`` says which criterion the cache meets."""
    base = {"train.threads": 1, "train.progress": False, "train.plot": False, "train.steps": steps,
            "data.task": "arith", "data.level": level, "data.style": "instruct", "data.num_train": num_train,
            "data.num_eval": num_eval, "reward.judge": "math", "reward.scheme": "binary", "reward.judge_workers": 1,
            "rollout.prompts_per_step": 8, "rollout.group_size": 8, "rollout.max_new_tokens": 16,
            "train.eval_every": 10, "train.eval_k": 1, "train.save_checkpoints": False, "train.save_policy": False,
            "train.log_update_norm": False, **(base or {})}
    stale = sorted({k for k, _ in cells if k > 1})
    return Study(name, "cpu-smollm2", base, dict(smollm2_cell(k, lr) for k, lr in cells),
                 {"DAPO": erc_arm("dapo", None)}, list(seeds), est_run_s=900.0,
                 description=f"Testbed pilot on SmolLM2-135M: does DAPO learn arith level {level} at K = 1 (>= +0.20 in "
                             f"every seed, >= 200 held-out problems), and does it degrade at K in {stale} (>= 3 of 5 "
                             f"seeds)? {steps} RL steps, 5 seeds.")


# smollm2-pilot2: two-digit x one-digit multiplication (arith level 3), a skill SmolLM2-135M has to learn rather than
# a format it has to find (level 2 reached 0.99 held-out within 10 RL steps at every cell, which leaves no room to
# degrade). Level 3 has only 720 distinct problems, so the training stream is 320 prompts (40 steps x 8 prompts, each
# seen once) and 500 evaluation problems are generated, of which those not in training are kept (~300 rows, ~210
# distinct problems). 40 RL steps; AdamW's
# fused kernel (optim.fused). Cells: K = 1 at lr 1e-5 (does it learn?), K = 8 at lr 1e-4 and 3e-4 (does it degrade?);
# K = 8 at lr 1e-3 added before its runs, when K = 8 at 3e-4 had reached 0.97 held-out by step 10; K = 1 at lr 3e-4
# added before its runs, when K = 8 at 3e-4 had fallen after learning in its first seed: is it the staleness or
# the learning rate?
SMOL_PILOT2_CELLS = ((1, 1e-5), (8, 1e-4), (8, 3e-4), (8, 1e-3), (1, 3e-4))


STUDIES["smollm2-pilot"] = smollm2_pilot
STUDIES["smollm2-pilot2"] = functools.partial(smollm2_pilot, cells=SMOL_PILOT2_CELLS, steps=40, name="smollm2-pilot2",
                                              level=3, num_train=320, num_eval=500, base={"optim.fused": True})
# smollm2-pilot3: two operations, "(a+b)*c" and the like (arith level 4: 259,200 problems, so 300 generated evaluation
# problems are distinct and none is a training prompt): harder than multiplication, on which most runs reached every
# held-out problem right and left no room to fall back. Judged by the final number (reward.judge "number"):
# math-verify credits restating the question's expression, which is what the policies of smollm2-pilot and
# smollm2-pilot2 learned. 24 new tokens (16 cut most answers of the untrained model), 40 RL steps, each training
# prompt seen once. Cells: K = 1 at lr 1e-5 (does it learn?), K = 8 at lr 3e-4 (the cell where multiplication fell
# back in 2 of 5 seeds), K = 1 at lr 3e-4 (the on-policy control of that learning rate).
SMOL_PILOT3_CELLS = ((1, 1e-5), (8, 3e-4), (1, 3e-4))
STUDIES["smollm2-pilot3"] = functools.partial(smollm2_pilot, cells=SMOL_PILOT3_CELLS, steps=40, name="smollm2-pilot3",
                                              level=4, num_train=320, num_eval=300,
                                              base={"optim.fused": True, "rollout.max_new_tokens": 24,
                                                    "reward.judge": "number"})


# smollm2-pilot4: smollm2-pilot2's multiplication (arith level 3, 320 training prompts, ~210 distinct held-out
# problems) judged by the final number, 24 new tokens. Under that judge SmolLM2-135M starts at avg@4 0.04 (pass@4
# 0.13) on level 3, 0.02 on level 2 and 0.007 on level 4 (smollm2-pilot3's first evaluation, where it was stopped):
# multiplication is the level with the most room that the model can sometimes do. Cells: K = 1 at lr 3e-5 (does it
# learn? a higher rate than the exploit needed, the reward being rarer), K = 8 at lr 3e-4, and the on-policy control
# K = 1 at lr 3e-4; K = 8 at lr 3e-5 (staleness at the learning rate that learns on-policy) added before its runs,
# when K = 8 at lr 3e-4 had answered nothing right from its second step on.
SMOL_PILOT4_CELLS = ((1, 3e-5), (8, 3e-4), (1, 3e-4), (8, 3e-5))
STUDIES["smollm2-pilot4"] = functools.partial(smollm2_pilot, cells=SMOL_PILOT4_CELLS, steps=40, name="smollm2-pilot4",
                                              level=3, num_train=320, num_eval=500,
                                              base={"optim.fused": True, "rollout.max_new_tokens": 24,
                                                    "reward.judge": "number"})


def testbed_study(name: str, pilot: str, cell: str, check_cell: str, seeds, preregistration: str | None,
                  beta: float = 0.05) -> Study:
    """The confirmatory study at a pilot's destabilising ``cell``, with one cell where DAPO is stable
    (``check_cell``) as a check: the pilot's model, task and run length, arms DAPO, DAPO+ERC (``beta``),
    DAPO+random-mask (as many tokens stopped as ERC, at random) and DAPO-matched-step (DAPO at the
    learning rate whose mean update norm matches DAPO+ERC's, set by the runner), ``seeds`` from the
    power calculation (``python -m ercref.study.power PILOT --cell CELL``), the hypotheses in
    ``preregistration`` (data/preregistration/, committed before the first run)."""
    source = get_study(pilot)
    missing = [c for c in (cell, check_cell) if c not in source.cells]
    if missing:
        raise ValueError(f"cells {missing} are not cells of the pilot {pilot!r}: {list(source.cells)}")
    if len(set(int(s) for s in seeds)) < 5:
        raise ValueError(f"a confirmatory study needs >= 5 distinct seeds (verdict_rules), got {list(seeds)}")
    arms = {"DAPO": erc_arm("dapo", None), "DAPO+ERC": erc_arm("dapo", beta),
            "DAPO+random-mask": erc_arm("dapo", beta, **{"loss.erc_mask": "random"}),
            "DAPO-matched-step": erc_arm("dapo", None)}
    return Study(name, source.preset, {**source.base, "train.log_update_norm": True},
                 {c: source.cells[c] for c in (cell, check_cell)}, arms, [int(s) for s in seeds],
                 matched={"DAPO-matched-step": ("DAPO+ERC", "DAPO")}, est_run_s=source.est_run_s,
                 preregistration=preregistration,
                 description=f"Confirmatory study on the {pilot} testbed: DAPO+ERC (beta {beta:g}) vs DAPO, the "
                             f"random mask and the matched step at {cell} (where DAPO degraded in the pilot) and "
                             f"{check_cell} (a check), {len(seeds)} seeds.")

STUDIES["tiny6m-pilot4"] = functools.partial(tiny6m_pilot, cells=PILOT4_CELLS, steps=300, sft_steps=400,
                                             name="tiny6m-pilot4", base={"train.log_update_norm": False,
                                                                         "train.eval_every": 25, **PILOT4_SFT})
