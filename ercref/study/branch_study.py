"""Branching studies as data: what one K-minibatch update does to the policy, arm by arm, from identical states.

A ``BranchStudy`` names DAPO training trajectories (one per seed: ``preset`` + ``base`` + ``trajectory``
overrides), the branch points along each (``branch_steps``: completed RL steps), the K values (optimizer
steps per rollout batch: train.minibatch_prompts = rollout.prompts_per_step / K) and the arms (name ->
overrides of the loss). At a branch point every arm starts from the same captured state, updates on
the same rollout batch with the same minibatch order, at ``branch_lr`` (times the arm's own scale for
the matched-step control) and is then measured (ercref.study.branch_arms).

Two arms are searched per branch point and K rather than fixed:

    matched step   (``matched``: arm -> target arm)  the reference loss (DAPO) at the learning rate whose
                   whole-update parameter change ||dtheta||_2 equals the target arm's within ``matched_tol``
    tight clip     (``tight_clip``: arm -> target arm)  DAPO with eps_low = eps_high = eps, eps chosen so
                   PPO's clipped-token share equals the target arm's ERC clip share within ``tight_tol``

The pre-registered primaries (data/preregistration/branch_hypotheses.json), saved in each study's study.json with the commit that
first committed them (``registered_commit``). Each compares the per-token KL(pi_old || pi_new) p99 of
an arm with a baseline arm on one region (``trained``: the tokens the update trained on; ``heldout``:
responses sampled by pi_old to evaluation prompts, never trained on), paired at every (branch point,
K), one mean per trajectory; Holm over the four. Everything else a report shows is exploratory.

Held-out accuracy (``accuracy``, exploratory): "answer-probability", the exact probability of the
reference answer followed by EOS (the tiny model's tasks, answered in a few tokens), or "judged", the
judged accuracy of pi_old's held-out responses reweighted to pi_new (ercref.importance; tasks answered
in free text, such as SmolLM2's, where the reference answer's own probability is near 0). A judged
study's records must carry ``heldout_judged`` (``required_keys``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ercref.paths import DATA_DIR

from .branch_record import required_keys
from .studies import ARM_OR_CELL_NAME, BETAS, GPPO_EPS, SEEDS, TINY6M_BASE, erc_arm, smollm2_learns

HYPOTHESES_FILE = DATA_DIR / "preregistration" / "branch_hypotheses.json"
ACCURACY_MEASURES = ("answer-probability", "judged")


def load_preregistration(path=HYPOTHESES_FILE) -> dict:
    """The pre-registered primaries {"hypotheses": [...], "holm": true, "analysis": "..."} (a data file, so
    the commit that first committed them can be found: branch.registered_commit)."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the pre-registered hypotheses ({type(e).__name__}: {e})") from None
    keys = ("id", "arm", "baseline", "region", "metric", "direction", "text")
    for i, h in enumerate(d.get("hypotheses", []) if isinstance(d, dict) else []):
        missing = [k for k in keys if k not in h]
        if missing:
            raise ValueError(f"{path}: hypotheses[{i}] lacks {missing}")
    if not isinstance(d, dict) or not d.get("hypotheses"):
        raise ValueError(f"{path}: must be a JSON object with a non-empty 'hypotheses' list")
    return d


@dataclass
class BranchStudy:
    """Trajectories x branch points x K x arms (module docstring)."""
    name: str
    preset: str
    base: dict                      # overrides shared by the trajectory and every arm
    trajectory: dict                # the trajectory's own overrides (its loss, K, lr)
    arms: dict[str, dict]           # arm -> loss overrides at a branch
    seeds: list[int]
    branch_steps: list[int]         # completed RL steps of the trajectory at which to branch
    ks: list[int]
    branch_lr: float                # AdamW lr of every arm's update (the matched step scales it)
    matched: dict[str, str] = field(default_factory=dict)      # arm -> target arm (equal ||dtheta||)
    tight_clip: dict[str, str] = field(default_factory=dict)   # arm -> target arm (equal clip share)
    matched_tol: float = 0.02
    tight_tol: float = 0.05         # relative; or within one token of the target count
    max_tries: int = 6
    heldout_prompts: int = 32       # evaluation prompts whose pi_old samples measure held-out drift
    heldout_samples: int = 2
    accuracy_prompts: int = 128     # evaluation prompts of the expected held-out accuracy
    accuracy: str = "answer-probability"   # the report's held-out accuracy: one of ACCURACY_MEASURES
    preregistration: dict = field(default_factory=load_preregistration)   # hypotheses, holm, analysis
    est_branch_s: float = 120.0     # prior for one branch point's wall time until the cache has some
    description: str = ""

    def __post_init__(self) -> None:
        if self.accuracy not in ACCURACY_MEASURES:
            raise ValueError(f"accuracy of study {self.name!r} must be one of {list(ACCURACY_MEASURES)}, "
                             f"got {self.accuracy!r}")
        for n in self.arms:
            if not ARM_OR_CELL_NAME.match(n):
                raise ValueError(f"arm name {n!r} of study {self.name!r} must match {ARM_OR_CELL_NAME.pattern}")
        for kind, d in (("matched", self.matched), ("tight_clip", self.tight_clip)):
            for a, target in d.items():
                if a not in self.arms or target not in self.arms:
                    raise ValueError(f"study {self.name!r}: {kind} arm {a!r} -> {target!r} names an unknown arm")
        prompts = int(self.base.get("rollout.prompts_per_step", 0))
        for k in self.ks:
            if k < 1 or prompts % k:
                raise ValueError(f"study {self.name!r}: K = {k} must divide rollout.prompts_per_step = {prompts}")
        if sorted(set(self.branch_steps)) != list(self.branch_steps) or min(self.branch_steps) < 1:
            raise ValueError(f"study {self.name!r}: branch_steps must be increasing and >= 1, got {self.branch_steps}")
        for h in self.preregistration["hypotheses"]:
            for key in ("arm", "baseline"):
                if h[key] not in self.arms:
                    raise ValueError(f"study {self.name!r}: hypothesis {h['id']} {key} {h[key]!r} is not an arm")

    @property
    def prompts_per_step(self) -> int:
        return int(self.base["rollout.prompts_per_step"])

    def trajectory_overrides(self, seed: int) -> dict:
        return {**self.base, **self.trajectory, "train.seed": int(seed)}

    def arm_overrides(self, arm: str, k: int, seed: int, extra: dict | None = None) -> dict:
        """The config overrides of one arm's update at K = k (the trajectory's, then the arm's loss and K)."""
        if arm not in self.arms:
            raise ValueError(f"arm must be one of {list(self.arms)} (study {self.name!r}), got {arm!r}")
        if k not in self.ks:
            raise ValueError(f"K must be one of {self.ks} (study {self.name!r}), got {k!r}")
        return {**self.trajectory_overrides(seed), **self.arms[arm], **(extra or {}),
                "train.minibatch_prompts": self.prompts_per_step // k, "optim.lr": float(self.branch_lr)}

    def required_keys(self) -> tuple[str, ...]:
        """Record keys beyond branch_record.RECORD_KEYS that this study's report needs."""
        return required_keys(self.accuracy)

    def searched(self) -> set[str]:
        return set(self.matched) | set(self.tight_clip)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": "branch", "preset": self.preset, "base": self.base,
                "trajectory": self.trajectory, "arms": self.arms, "seeds": list(self.seeds),
                "branch_steps": list(self.branch_steps), "ks": list(self.ks), "branch_lr": self.branch_lr,
                "matched": dict(self.matched), "tight_clip": dict(self.tight_clip), "matched_tol": self.matched_tol,
                "tight_tol": self.tight_tol, "max_tries": self.max_tries, "heldout_prompts": self.heldout_prompts,
                "heldout_samples": self.heldout_samples, "accuracy_prompts": self.accuracy_prompts,
                "accuracy": self.accuracy,
                "hypotheses": [dict(h) for h in self.preregistration["hypotheses"]],
                "holm": bool(self.preregistration.get("holm", True)), "analysis": self.preregistration.get("analysis"),
                "est_branch_s": self.est_branch_s, "description": self.description}


def dapo_controls(beta: float = 0.05) -> dict[str, dict]:
    """DAPO, DAPO+ERC at ``beta``, the random-mask control and the two searched controls (their
    overrides are the reference loss's; the runner sets the lr / eps)."""
    return {"DAPO": erc_arm("dapo", None), "DAPO+ERC": erc_arm("dapo", beta),
            "DAPO+random-mask": erc_arm("dapo", beta, **{"loss.erc_mask": "random"}),
            "DAPO-matched-step": erc_arm("dapo", None), "DAPO-tight-clip": erc_arm("dapo", None)}


GSPO_AGG = {"loss.agg_mode": "seq-mean-token-mean"}   # the GSPO paper's aggregation


def tiny_branch_arms() -> dict[str, dict]:
    arms = dapo_controls()
    for b in BETAS:
        if b != 0.05:
            arms[f"DAPO+ERC-b{b:g}"] = erc_arm("dapo", b)
    arms.update({"GPPO": erc_arm("gppo", None, **GPPO_EPS), "GPPO+ERC": erc_arm("gppo", 0.05, **GPPO_EPS),
                 "GSPO": erc_arm("gspo", None, **GSPO_AGG), "GSPO+ERC": erc_arm("gspo", 0.05, **GSPO_AGG)})
    return arms


SEARCHED = {"matched": {"DAPO-matched-step": "DAPO+ERC"}, "tight_clip": {"DAPO-tight-clip": "DAPO+ERC"}}
TINY_BRANCH_STEPS = (5, 20, 35, 50, 65, 80)


def tiny_branch(seeds=SEEDS, branch_steps=TINY_BRANCH_STEPS, ks=(2, 4, 8, 16), branch_lr: float = 3e-4) -> BranchStudy:
    """The tiny-6m model on the max task (the testbed of ercref.study.pilot's tiny6m-pilot2: 200 warm-up
    steps): DAPO trajectories at K = 1, lr 3e-4 (where DAPO learns), branched at ``branch_steps``;
    every arm at K in ``ks`` at the trajectory's lr ``branch_lr``."""
    base = {**TINY6M_BASE, "sft.steps": 200, "train.eval_every": 0}
    return BranchStudy("tiny-branch", "cpu-tiny", base,
                       {**erc_arm("dapo", None), "train.minibatch_prompts": 16, "optim.lr": 3e-4},
                       tiny_branch_arms(), list(seeds), list(branch_steps), list(ks), branch_lr,
                       matched=dict(SEARCHED["matched"]), tight_clip=dict(SEARCHED["tight_clip"]), est_branch_s=120.0,
                       description="What does one K-minibatch update do to the tiny-6m policy's full distribution, "
                                   "arm by arm, from identical states? 12 arms x K in {2, 4, 8, 16} at branch points "
                                   "of 5 DAPO trajectories (max task).")


SMOL_BRANCH_STEPS = (1, 2, 3, 4, 5, 6)   # the learning phase: smollm2-learns' DAPO training accuracy rises 0.3 -> 0.9 over steps 1-7


def smollm2_branch(seeds=SEEDS, branch_steps=SMOL_BRANCH_STEPS, ks=(4, 8)) -> BranchStudy:
    """SmolLM2-135M-Instruct on smollm2-learns' task (single-digit addition in a sentence, math judge),
    DAPO trajectories at K = 4, lr 1e-5 (that study's setting); DAPO, DAPO+ERC, random mask, matched
    step and tight clip at K in ``ks`` at the same lr."""
    learns = smollm2_learns()
    base = {k: v for k, v in learns.base.items() if k not in ("train.steps", "train.minibatch_prompts", "optim.lr")}
    base.update({"train.eval_every": 0, "data.num_eval": 64})
    return BranchStudy("smollm2-branch", learns.preset, base,
                       {**erc_arm("dapo", None), "train.minibatch_prompts": learns.base["train.minibatch_prompts"],
                        "optim.lr": learns.base["optim.lr"]},
                       dapo_controls(), list(seeds), list(branch_steps), list(ks), learns.base["optim.lr"],
                       matched=dict(SEARCHED["matched"]), tight_clip=dict(SEARCHED["tight_clip"]),
                       heldout_prompts=16, heldout_samples=2, accuracy_prompts=64, accuracy="judged",
                       est_branch_s=900.0,
                       description="What does one K-minibatch update do to SmolLM2-135M's full distribution on "
                                   "smollm2-learns' task? DAPO, DAPO+ERC, random mask, matched step, tight clip at "
                                   "K in {4, 8}, branch points of 5 DAPO trajectories.")


BRANCH_STUDIES = {"tiny-branch": tiny_branch, "smollm2-branch": smollm2_branch}


def get_branch_study(name: str) -> BranchStudy:
    if name not in BRANCH_STUDIES:
        raise ValueError(f"branch study must be one of {sorted(BRANCH_STUDIES)}, got {name!r}")
    return BRANCH_STUDIES[name]()
