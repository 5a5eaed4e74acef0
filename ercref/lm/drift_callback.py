"""The drift diagnostic (opt-in): how far one training step's K minibatch updates move the policy's
full next-token distribution, where PPO-clip does not look (the measures: ercref.drift).

    trainer = Trainer(cfg, out_dir, callbacks=[DriftCallback(heldout_prompts=16, heldout_samples=2)])

At the start of a measured step, before the first minibatch update, the policy is still the rollout's
pi_old: its weights are copied into a frozen snapshot, and responses to the held-out prompts are
sampled from it. The step's record (kind "step") then gets, for three sets of response tokens,
the summaries of ercref.drift_summary (mean, p90, p99, max; for the KLs the share beyond 0.01 and
0.1 nats):

    drift/trained/...  after the step's K updates, pi_new = pi_K against pi_old on the response tokens
                       of every minibatch the step trained on
    drift/other/...    before minibatch k's own update (k = 1..K-1), pi_k against pi_old on minibatch
                       k's response tokens: the drift at positions not trained on yet, caused by the
                       updates on the other minibatches 0..k-1 of the same rollout (the staleness
                       minibatch k's loss then sees). Absent when K = 1
    drift/heldout/...  after the K updates, pi_new against pi_old on held-out contexts: the first
                       ``heldout_prompts`` evaluation prompts (never trained on), each with
                       ``heldout_samples`` responses sampled from pi_old at the rollout's temperature
                       and top-p. Absent with heldout_prompts=0

and ``drift/<set>/tokens``, the number of tokens summarised. A step with no update (dynamic sampling
kept no group) gets no drift metrics.

How it is measured: both policies in eval mode (no dropout), on the rollout's numerical path (the
trainer's autocast, shared prompts), at the rollout temperature, in micro-batches of the old-log-prob
pass's token budget; from the last hidden states and the two LM-head weights in row tiles
(ercref.token_drift_from_hidden) where the trainer's fused head applies, else from the two logits
tensors of each micro-batch (ercref.token_drift).

Cost. Memory: the snapshot, one copy of the model's parameters and buffers, allocated at the first
measured step and kept (SmolLM2-135M in fp32: 0.54 GB); the held-out batch; the measures' row tiles
(ercref.drift). Time per measured step: no-grad forwards of the snapshot and of the policy over
minibatches 1..K-1 (before their update) and over every trained minibatch and the held-out batch
(after the K updates), plus the held-out sampling. ``every``: measure every N-th step only.

The training trajectory is unchanged: the held-out sampling draws from its own torch RNG (forked,
seeded by train.seed and the step), no forward here takes a gradient or changes a weight, and the
policy's train / eval mode is restored.
"""
from __future__ import annotations

import copy

import torch

from ercref import TokenDrift, drift_summary, token_drift, token_drift_from_hidden

from .batching import token_budget_batches, trim_rows
from .prompt_sharing import position_ids_from_mask
from .rollout import SHARE_PROMPTS, autocast_context, fused_head_applies, response_hidden
from .rollout_batch import RolloutBatch
from .trainer import Callback, Trainer


def heldout_seed(seed: int, step: int) -> int:
    """The torch seed of the held-out sampling at training step ``step`` of a run seeded ``seed``
    (a stream apart from the evaluation's)."""
    return 1_000_003 * (seed + 1) + step


def _positive_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"DriftCallback({name}=...) must be an int >= {minimum}, got {value!r}")
    return value


class DriftCallback(Callback):
    """Per-step drift of the policy on trained, other and held-out tokens (module docstring)."""

    def __init__(self, heldout_prompts: int = 16, heldout_samples: int = 2, every: int = 1):
        self.heldout_prompts = _positive_int("heldout_prompts", heldout_prompts, 0)
        self.heldout_samples = _positive_int("heldout_samples", heldout_samples, 1)
        self.every = _positive_int("every", every, 1)
        self.snapshot: torch.nn.Module | None = None   # pi_old's weights (allocated once, refilled per step)
        self._reset()

    def _reset(self) -> None:
        self._active = False                         # a snapshot of this step's pi_old is held
        self._trained: list[RolloutBatch] = []       # the step's minibatches
        self._other: list[tuple[TokenDrift, torch.Tensor]] = []
        self._heldout: RolloutBatch | None = None

    # ------------------------------------------------------------------ hooks
    def on_minibatch_start(self, trainer: Trainer, minibatch: RolloutBatch, advantages: torch.Tensor,
                           staleness: int) -> None:
        if staleness == 0:   # the policy is the rollout's pi_old: take the snapshot
            self._reset()
            if (trainer.step + 1) % self.every:
                return
            self._take_snapshot(trainer)
            self._heldout = self._sample_heldout(trainer)
            self._active = True
        elif self._active:   # k updates in, on minibatches 0..k-1 only
            self._other.append(self.measure(trainer, minibatch))
        if self._active:
            self._trained.append(minibatch)

    def on_step_metrics(self, trainer: Trainer, record: dict) -> None:
        if not self._active:
            return
        groups = {"trained": [self.measure(trainer, mb) for mb in self._trained], "other": self._other}
        if self._heldout is not None:
            groups["heldout"] = [self.measure(trainer, self._heldout)]
        for name, parts in groups.items():
            if parts:
                drift = TokenDrift(*(torch.cat([p[0][i].reshape(-1) for p in parts]) for i in range(len(TokenDrift._fields))))
                mask = torch.cat([p[1].reshape(-1) for p in parts])
                record.update(drift_summary(drift, mask, prefix=f"drift/{name}"))
        self._reset()

    # ------------------------------------------------------------------ pieces
    @torch.no_grad()
    def _take_snapshot(self, trainer: Trainer) -> None:
        if self.snapshot is None:
            self.snapshot = copy.deepcopy(trainer.model).eval().requires_grad_(False)
        else:
            self.snapshot.load_state_dict(trainer.model.state_dict())

    def _sample_heldout(self, trainer: Trainer) -> RolloutBatch | None:
        """Responses to the held-out prompts sampled from the policy (pi_old at the step's start), under
        a forked torch RNG: the training steps draw the same random numbers with or without this."""
        if not self.heldout_prompts:
            return None
        records = trainer.eval_set[: self.heldout_prompts]
        if not records:
            raise ValueError("DriftCallback(heldout_prompts=...) samples held-out contexts from the run's evaluation "
                             "prompts, but its eval set is empty: set data.num_eval (or an eval file) or pass "
                             "heldout_prompts=0 to measure no held-out contexts")
        return trainer.sample_responses(records, self.heldout_samples,
                                        heldout_seed(trainer.cfg.train.seed, trainer.step + 1))

    @torch.no_grad()
    def measure(self, trainer: Trainer, batch: RolloutBatch) -> tuple[TokenDrift, torch.Tensor]:
        """Per-token drift from the snapshot (pi_old) to the trainer's policy on ``batch``'s response
        tokens -> (TokenDrift of (N, R) tensors, response mask (N, R)); masked positions hold 0."""
        cfg, dev, model = trainer.cfg, trainer.device, trainer.model
        seq, am, rmask = batch.sequences.to(dev), batch.attention_mask.to(dev), batch.response_mask.to(dev)
        P, rlen = batch.prompt_len, rmask.sum(-1)
        fields = [torch.zeros(rmask.shape, device=dev) for _ in TokenDrift._fields]
        budget = cfg.rollout.max_tokens_per_logprob or cfg.train.max_tokens_per_forward
        was_training = model.training
        model.eval()
        try:
            for rows in token_budget_batches(am[:, :P].sum(-1), rlen, budget):
                s, a, p, r = trim_rows(seq, am, P, rows, rlen)
                d = _pair_drift(self.snapshot, model, s, a, p, cfg.rollout.temperature, cfg.model.fused_head,
                                trainer.autocast)
                idx = rows.to(dev)
                for f, x in zip(fields, d):
                    f[idx, :r] = x.float()
        finally:
            model.train(was_training)
        return TokenDrift(*(f * rmask for f in fields)), rmask


def _pair_drift(old, new, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                temperature: float, fused_head: bool, autocast_dtype) -> TokenDrift:
    """TokenDrift (n, R) from ``old`` to ``new`` at the response positions of one micro-batch."""
    labels = sequences[:, prompt_len:]
    dev = sequences.device
    if fused_head and fused_head_applies(new):
        with autocast_context(dev, autocast_dtype):
            hidden = [response_hidden(m, sequences, attention_mask, prompt_len, SHARE_PROMPTS) for m in (old, new)]
        weights = [m.get_output_embeddings().weight for m in (old, new)]
        return token_drift_from_hidden(hidden[0].to(weights[0].dtype), weights[0], hidden[1].to(weights[1].dtype),
                                       weights[1], labels, temperature)
    R = labels.shape[1]
    pos = position_ids_from_mask(attention_mask)
    with autocast_context(dev, autocast_dtype):
        logits = [m(input_ids=sequences, attention_mask=attention_mask, position_ids=pos, use_cache=False,
                    logits_to_keep=R + 1).logits[:, :-1] for m in (old, new)]
    return token_drift(logits[0], logits[1], labels, temperature)
