"""The supervised warm-up before RL (sft.steps > 0): AdamW steps of the next-token loss on correct answers,

    loss = - sum_{i,t} m_it log pi(a_it | prompt_i, a_i,<t) / sum_{i,t} m_it      a_i = answer_i + EOS

over sft.batch_size random training records per step (a random.Random seeded by train.seed + 1).

An accuracy target (sft.target_accuracy > 0) stops it early: before step 0 and every sft.check_every
steps, the policy samples one response (the rollout's temperature, top-p and length) to each of the
first sft.check_prompts *training* prompts (the evaluation set is never looked at, so RL's held-out
gain is measured from an untouched start) and the reward judge scores them; the warm-up ends at the
first check whose accuracy reaches the target, or after sft.steps. The check samples under a forked
torch RNG seeded by (train.seed, step): the RL run that follows draws the same random numbers with or
without it, and a seed's warm-up stops at the same step every time. Without a target: exactly
sft.steps steps and no check. The loss (every 20th step), each check and, with a target, the steps
taken go to the run's log (kind "sft").
"""
from __future__ import annotations

import random

import torch

from .rollout import encode_prompts, response_logprobs
from .scoring import score_responses


def check_seed(seed: int, step: int) -> int:
    """The torch seed of the warm-up's accuracy check at ``step`` (a stream apart from RL's)."""
    return 2_000_003 * (seed + 1) + step


@torch.no_grad()
def training_accuracy(trainer, step: int) -> float:
    """Share of the first sft.check_prompts training prompts the policy answers right (one sample each)."""
    cfg, r = trainer.cfg, trainer.cfg.rollout
    records = trainer.train_set[: cfg.sft.check_prompts]
    was = trainer.model.training
    trainer.model.eval()
    batch = trainer.sample_responses(records, 1, check_seed(cfg.train.seed, step))
    trainer.model.train(was)
    _rewards, correct = score_responses(batch.texts, batch.answers, cfg.reward, batch.response_lengths.cpu(),
                                        r.max_new_tokens)
    return float(correct.float().mean())


def sft_warmup(trainer) -> int:
    """Run the warm-up on ``trainer``'s model (module docstring); returns the steps taken."""
    s = trainer.cfg.sft
    opt = torch.optim.AdamW(trainer.model.parameters(), lr=s.lr, weight_decay=0.0)
    rng = random.Random(trainer.cfg.train.seed + 1)
    trainer.model.train()
    steps = s.steps
    for i in range(s.steps):
        if s.target_accuracy > 0 and i % s.check_every == 0:
            acc = training_accuracy(trainer, i)
            trainer.log.write({"kind": "sft", "sft_step": i, "sft/check_accuracy": acc})
            if acc >= s.target_accuracy:
                steps = i
                break
        recs = [rng.choice(trainer.train_set) for _ in range(s.batch_size)]
        ids, am = encode_prompts(trainer.tok, [r["prompt"] for r in recs], trainer.cfg.data.max_prompt_tokens,
                                 trainer.device)
        ans = trainer.tok([r["answer"] + trainer.tok.eos_token for r in recs], add_special_tokens=False,
                          padding="longest", padding_side="right", return_tensors="pt")
        a_ids, a_mask = ans["input_ids"].to(trainer.device), ans["attention_mask"].to(trainer.device)
        logp, _ = response_logprobs(trainer.model, torch.cat([ids, a_ids], 1), torch.cat([am, a_mask], 1),
                                    ids.shape[1], 1.0, trainer.cfg.model.fused_head)
        loss = -(logp * a_mask).sum() / a_mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i % 20 == 0 or i == s.steps - 1:
            trainer.log.write({"kind": "sft", "sft_step": i, "sft/loss": float(loss.detach())})
    trainer.model.eval()
    if s.target_accuracy > 0:
        trainer.log.write({"kind": "sft", "sft_step": steps, "sft/steps_taken": steps})
    return steps
