"""One branch point of a branching study: capture the trainer's state, roll out once, then give every
arm its K-minibatch update from that identical state and measure what it did.

    state = capture(trainer)              weights, AdamW state, scheduler, data cursor, step, every RNG;
                                          state.sha256 hashes all of it (state_hash)
    point = BranchPoint.sample(trainer, state, heldout_prompts, heldout_samples, accuracy_prompts)
                                          ONE rollout batch from pi_old (the trainer's sample_batch: data
                                          stream, rewards, dynamic sampling as configured), the held-out
                                          contexts (ercref.lm.drift_callback: the first evaluation prompts,
                                          responses sampled by pi_old) and pi_old's expected accuracy
    out = point.run(trainer, cfg, lr)     restore the state, K = cfg's minibatch updates on the shared batch
                                          in the trainer's minibatch order (Trainer.minibatches /
                                          update_minibatch, the engine's own step), returning the update's
                                          norm, clip shares and a measure() of its drift

Drift (ercref.drift via DriftCallback.measure, pi_old = a frozen copy of the branch weights):
``trained`` after the K updates on every trained minibatch's response tokens; ``other`` minibatch k's
tokens before its own update (k >= 1: moved only by the updates on minibatches 0..k-1; {} at K = 1);
``heldout`` after the K updates on the held-out responses.

Expected held-out accuracy: the mean over the first ``accuracy_prompts`` evaluation prompts of the
exact probability, under teacher forcing at the rollout temperature, that the policy answers with the
reference answer followed by EOS (prod_t pi(answer_t | prompt, answer_<t)). It is noise-free and cheap
(one forward); it is a lower bound of the chance of a reward when the judge also accepts other
spellings of the answer (the math judge), and exactly that chance for the exact judge when the
answer's spelling is the only accepted one.

Judged held-out accuracy (``heldout_judged``, the measure of tasks answered in free text, where the
reference answer's own probability says little): the held-out responses pi_old sampled are judged once
(the trainer's reward judge; c_i = correct), and after each arm's update ercref.importance_accuracy
weighs them by pi_new(y_i) / pi_old(y_i), both log-probs taken by the same no-grad eval-mode pass at
the rollout temperature (so the weights are exactly 1 before any update): acc_old, acc_new (unbiased
for pi_new's expected judged accuracy), their difference, mean_w, ess. It needs rollout.top_p = 1 (the
weights are those of the untruncated sampling distribution).

Searches (``matched_search``, ``tight_clip_search``): bracket, then secant, as the bandit's
matched_step_run: the next try is the proportional guess from the latest try until one try lies below
the target and one above, then the secant between the closest two (or their midpoint).
"""
from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from ercref import TokenDrift, drift_summary, group_advantages, importance_accuracy, metrics_to_floats
from ercref.lm import checkpoint as ckpt
from ercref.lm.drift_callback import DriftCallback
from ercref.lm.models import frozen_copy
from ercref.lm.rollout import encode_prompts, response_logprobs
from ercref.lm.rollout_batch import RolloutBatch

from .branch_record import kl_hist


# ----------------------------------------------------------------------------- state
def _hash_into(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, np.ndarray):
        h.update(f"A{obj.dtype}{obj.shape}".encode() + obj.tobytes())
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=str):
            h.update(repr(k).encode())
            _hash_into(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for x in obj:
            _hash_into(h, x)
        h.update(b"]")
    else:
        h.update(repr(obj).encode())


def state_hash(obj) -> str:
    """sha256 of a nest of dicts / lists / tensors / numbers (key order independent, bytes exact)."""
    h = hashlib.sha256()
    _hash_into(h, obj)
    return h.hexdigest()


@dataclass
class BranchState:
    """Everything one training step depends on, copied out of a Trainer."""
    model: dict
    optimizer: dict
    scheduler: dict
    cursor: int
    step: int
    rng: dict
    sha256: str


def capture(trainer) -> BranchState:
    parts = {"model": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
             "optimizer": copy.deepcopy(trainer.opt.state_dict()), "scheduler": copy.deepcopy(trainer.sched.state_dict()),
             "cursor": int(trainer.cursor), "step": int(trainer.step), "rng": ckpt.rng_state()}
    return BranchState(**parts, sha256=state_hash(parts))


def restore(trainer, state: BranchState) -> None:
    """Put ``state`` back into ``trainer`` (copies: later updates never touch ``state``)."""
    trainer.model.load_state_dict(state.model)
    trainer.opt.load_state_dict(copy.deepcopy(state.optimizer))
    trainer.sched.load_state_dict(copy.deepcopy(state.scheduler))
    trainer.cursor, trainer.step = state.cursor, state.step
    ckpt.set_rng_state(copy.deepcopy(state.rng))


def trainer_state_hash(trainer) -> str:
    """state_hash of the trainer's current state, as ``capture`` would compute it."""
    return capture(trainer).sha256


# ----------------------------------------------------------------------------- measures
def _pool(parts: list[tuple[TokenDrift, torch.Tensor]]) -> tuple[TokenDrift, torch.Tensor]:
    drift = TokenDrift(*(torch.cat([p[0][i].reshape(-1) for p in parts]) for i in range(len(TokenDrift._fields))))
    return drift, torch.cat([p[1].reshape(-1) for p in parts])


def summarise(parts: list[tuple[TokenDrift, torch.Tensor]]) -> tuple[dict, list[int], int]:
    """(drift_summary as floats, kl_old_new histogram, tokens) of pooled (TokenDrift, mask) parts;
    ({}, [], 0) for none."""
    if not parts:
        return {}, [], 0
    drift, mask = _pool(parts)
    if not mask.any():
        return {}, [], 0
    summary = metrics_to_floats(drift_summary(drift, mask, prefix="drift"))
    return summary, kl_hist(drift.kl_old_new[mask].double().numpy()), int(mask.sum())


@torch.no_grad()
def policy_logprobs(trainer, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """(N, R) log-probs of the response tokens under the trainer's policy, eval mode, rollout temperature."""
    model = trainer.model
    was = model.training
    model.eval()
    try:
        logp, _ = response_logprobs(model, sequences, attention_mask, prompt_len, trainer.cfg.rollout.temperature,
                                    trainer.cfg.model.fused_head)
    finally:
        model.train(was)
    return logp


def expected_accuracy(trainer, records: list[dict]) -> float:
    """Mean over ``records`` of pi(answer + EOS | prompt) under teacher forcing (module docstring)."""
    if not records:
        return float("nan")
    tok, dev, cfg = trainer.tok, trainer.device, trainer.cfg
    ids, am = encode_prompts(tok, [r["prompt"] for r in records], cfg.data.max_prompt_tokens, dev)
    ans = tok([r["answer"] + tok.eos_token for r in records], add_special_tokens=False, padding="longest",
              padding_side="right", return_tensors="pt")
    a_ids, a_mask = ans["input_ids"].to(dev), ans["attention_mask"].to(dev)
    logp = policy_logprobs(trainer, torch.cat([ids, a_ids], 1), torch.cat([am, a_mask], 1), ids.shape[1])
    return float(torch.exp((logp.double() * a_mask).sum(-1)).mean())


def heldout_judgement(trainer, heldout: RolloutBatch | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(correct (n,), pi_old's log-probs (n, R)) of the held-out responses, judged once (module docstring);
    None without held-out contexts."""
    if heldout is None:
        return None
    if trainer.cfg.rollout.top_p != 1.0:
        raise ValueError(f"the judged held-out accuracy weighs responses by pi_new / pi_old, which needs "
                         f"rollout.top_p = 1 (the untruncated sampling distribution), got {trainer.cfg.rollout.top_p}")
    _rewards, correct = trainer.score(heldout, trainer.cfg.rollout.max_new_tokens)
    trainer.drain_judge_stats()    # the trajectory's own judge counters stay its own
    logp = policy_logprobs(trainer, heldout.sequences, heldout.attention_mask, heldout.prompt_len)
    return correct.detach().float().cpu(), logp


def judged_accuracy(trainer, heldout: RolloutBatch | None, judgement) -> dict:
    """ercref.importance_accuracy of the trainer's policy on the judged held-out responses; {} without them."""
    if judgement is None:
        return {}
    correct, logp_old = judgement
    logp_new = policy_logprobs(trainer, heldout.sequences, heldout.attention_mask, heldout.prompt_len)
    return importance_accuracy(correct, logp_old.cpu(), logp_new.cpu(), heldout.response_mask.cpu())


# ----------------------------------------------------------------------------- one arm's update
@dataclass
class ArmUpdate:
    """What one arm's K-minibatch update did: lr, ||dtheta||_2, clip shares, and the drift parts."""
    lr: float
    update_norm: float
    clip: dict
    minibatches: int
    other: list


@dataclass
class BranchPoint:
    """The shared inputs of every arm at one branch point."""
    state: BranchState
    batch: RolloutBatch
    rewards: torch.Tensor
    keep: torch.Tensor
    heldout: RolloutBatch | None
    accuracy_records: list[dict]
    acc_before: float
    probe: DriftCallback
    judgement: tuple | None = None     # heldout_judgement: (correct, pi_old's log-probs) of the held-out responses

    @classmethod
    def sample(cls, trainer, state: BranchState, heldout_prompts: int, heldout_samples: int,
               accuracy_prompts: int) -> BranchPoint:
        """Restore ``state``, then roll out once and sample the held-out responses, both with pi_old."""
        restore(trainer, state)
        probe = DriftCallback(heldout_prompts=heldout_prompts, heldout_samples=heldout_samples)
        probe.snapshot = frozen_copy(trainer.model)
        batch, rewards, _correct, keep, _gen = trainer.sample_batch()
        heldout = probe._sample_heldout(trainer)   # forked RNG, seeded by (train.seed, step)
        acc_records = trainer.eval_set[:accuracy_prompts]
        return cls(state, batch, rewards, keep, heldout, acc_records, expected_accuracy(trainer, acc_records), probe,
                   heldout_judgement(trainer, heldout))

    def run(self, trainer, cfg, lr: float, measure_other: bool = True) -> ArmUpdate:
        """Restore the branch state, set ``cfg`` (the arm's loss and K) and ``lr``, and take the K updates."""
        restore(trainer, self.state)
        saved_cfg = trainer.cfg
        trainer.cfg = cfg
        try:
            for g in trainer.opt.param_groups:
                g["lr"] = float(lr)
            adv = group_advantages(self.rewards, cfg.rollout.group_size, scale_by_std=cfg.advantage.scale_by_std)
            metrics, other = [], []
            for k, idx in enumerate(trainer.minibatches(self.keep)):
                mb = self.batch.select(idx)
                if k and measure_other:
                    other.append(self.probe.measure(trainer, mb))
                metrics.append(trainer.update_minibatch(mb, adv[idx], self.rewards[idx], staleness=k))
        finally:
            trainer.cfg = saved_cfg
        return ArmUpdate(float(lr), self.update_norm(trainer), clip_shares(metrics), len(metrics), other)

    def update_norm(self, trainer) -> float:
        """||theta - theta_branch||_2 over the trained parameters (float64)."""
        sq = 0.0
        for name, p in trainer.model.named_parameters():
            if p.requires_grad:
                sq += float(((p.detach().double() - self.state.model[name].double()) ** 2).sum())
        return math.sqrt(sq)

    def measure(self, trainer, upd: ArmUpdate) -> dict:
        """The record fields of the update just run (the trainer holds pi_new)."""
        trained = [self.probe.measure(trainer, self.batch.select(idx)) for idx in trainer.minibatches(self.keep)]
        held = [self.probe.measure(trainer, self.heldout)] if self.heldout is not None else []
        out = {"drift": {}, "hist": {}, "n_tokens": {}}
        for region, parts in (("trained", trained), ("other", upd.other), ("heldout", held)):
            s, h, n = summarise(parts)
            out["drift"][region], out["n_tokens"][region] = s, n
            if region != "other":
                out["hist"][region] = h
        out["heldout_acc_before"] = self.acc_before
        out["heldout_acc_after"] = expected_accuracy(trainer, self.accuracy_records)
        out["heldout_judged"] = judged_accuracy(trainer, self.heldout, self.judgement)
        out["update_norm"], out["clip"], out["lr"] = upd.update_norm, upd.clip, upd.lr
        return out


def clip_shares(metrics: list[dict]) -> dict:
    """Token-weighted shares over the minibatches: ERC-masked, PPO-clipped, random-masked tokens."""
    if not metrics:
        return {"erc": 0.0, "ppo": 0.0, "random": 0.0}
    flat = metrics_to_floats({(j, k): v for j, m in enumerate(metrics) for k, v in m.items()})
    tok = [flat[(j, "tokens")] for j in range(len(metrics))]
    total = sum(tok) or 1.0

    def share(*keys) -> float:
        return sum(t * sum(flat.get((j, k), 0.0) for k in keys) for j, t in enumerate(tok)) / total

    random = any((j, "erc/random_overlap") in flat for j in range(len(metrics)))
    erc = share("erc/clip_frac")
    return {"erc": 0.0 if random else erc, "ppo": share("ppo/clip_frac_low", "ppo/clip_frac_high"),
            "random": erc if random else 0.0}


# ----------------------------------------------------------------------------- searches
def bracket_secant(f, x0: float, target: float, close, max_tries: int, first: tuple[float, float] | None = None,
                   proportional: bool = True, bounds: tuple[float, float] = (0.0, math.inf)
                   ) -> tuple[float, list[tuple[float, float]], object]:
    """Find x with f(x) close to ``target`` (``close(value) -> bool``), f increasing in x to first order.
    f(x) -> (value, payload). Until bracketed the next x is x * target / value (``proportional``), else the
    bound on the target's side (x doubled / halved where that bound is 0 or infinite): one try there either
    brackets the target or shows it lies beyond the bound; once bracketed, the secant between the closest
    tries below and above (or their midpoint).
    ``first``: an (x, value) already known (its payload None). Every x is clipped into ``bounds``; the
    search stops early when the next x was tried already (the target lies beyond a bound). Returns
    (best x, tries [(x, value)], payload of the best try or None when the best is ``first``)."""
    tried: list[tuple[float, float, object]] = []
    if first is not None:
        tried.append((first[0], first[1], None))
    x = x0
    if first is not None and not close(first[1]):
        x = _next_x(tried, target, proportional, bounds)
    elif first is not None:
        return first[0], [first], None
    for _ in range(max_tries):
        x = min(max(x, bounds[0]), bounds[1])
        if any(abs(x - t[0]) <= 1e-12 * abs(x) for t in tried):
            break
        v, payload = f(x)
        tried.append((x, v, payload))
        if close(v):
            break
        x = _next_x(tried, target, proportional, bounds)
        if x is None:
            break
    best = min(tried, key=lambda t: abs(t[1] - target))
    return best[0], [(t[0], t[1]) for t in tried], best[2]


def _next_x(tried, target: float, proportional: bool, bounds: tuple[float, float]) -> float | None:
    below = [t for t in tried if t[1] < target]
    above = [t for t in tried if t[1] > target]
    if below and above:
        (xa, va, _), (xb, vb, _) = max(below, key=lambda t: t[1]), min(above, key=lambda t: t[1])
        sec = xa + (target - va) * (xb - xa) / (vb - va)
        return sec if min(xa, xb) < sec < max(xa, xb) else (xa + xb) / 2
    x, v, _ = tried[-1]
    if proportional and v > 0 and target > 0:
        return x * target / v
    lo, hi = bounds
    if v < target:
        return hi if math.isfinite(hi) else x * 2.0
    return lo if lo > 0 else x / 2.0
