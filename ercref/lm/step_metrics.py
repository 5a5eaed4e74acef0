"""Per-step properties of a rollout batch the trainer logs (0-d or (N,) tensors on the device, no
host sync): rewards, lengths, truncation, the old policy's entropy, how many distinct responses
the batch holds, its size."""
from __future__ import annotations

import torch

from .rollout_batch import RolloutBatch


def ends_with_eos(batch: RolloutBatch, eos: list[int]) -> torch.Tensor:
    """(N,) bool: the response stopped at an EOS token (False: cut at max_new_tokens)."""
    resp = batch.sequences[:, batch.prompt_len:]
    last = resp.gather(1, (batch.response_lengths - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.isin(last, torch.tensor(eos, device=last.device))


def distinct_fraction(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of distinct rows among the N rows of ``tokens`` (N, T), each row read at ``mask`` only
    (a response's tokens; padding ignored): 1 = all different, 1/N = all the same. A 0-d tensor on the
    device, no host sync: row i is hashed as h_i = sum_t w_t * (tok_it + 1) * m_it with fixed random
    float64 weights w (distinct rows collide only by exact float equality), then distinct hashes are
    counted after a sort."""
    gen = torch.Generator().manual_seed(0)   # its own generator: the global RNG (the run's trajectory) is untouched
    w = torch.rand(tokens.shape[1], generator=gen, dtype=torch.float64).to(tokens.device)
    h = (((tokens.double() + 1) * mask) * w).sum(-1).sort().values
    return (1 + (h[1:] != h[:-1]).sum()).double() / max(h.numel(), 1)


def rollout_metrics(batch: RolloutBatch, rewards: torch.Tensor, correct: torch.Tensor, keep: torch.Tensor,
                    group_size: int, eos: list[int]) -> dict:
    """The step record's rollout metrics, over every generated sequence (kept by dynamic sampling or not)."""
    rm = batch.response_mask
    return {
        "reward/mean": rewards.mean(), "reward/std": rewards.std() if rewards.numel() > 1 else torch.zeros(()),
        "reward/accuracy": correct.float().mean(),
        "len/response_mean": batch.response_lengths.float().mean(),
        "len/truncated_frac": (~ends_with_eos(batch, eos)).float().mean(),
        "entropy/old_mean": (batch.old_entropy * rm).sum() / rm.sum(),
        "rollout/distinct_frac": distinct_fraction(batch.sequences[:, batch.prompt_len:], rm),
        "batch/seq_width": int(batch.sequences.shape[1]),
        "batch/tokens": batch.attention_mask.sum(),
        "batch/kept_groups": keep.view(-1, group_size)[:, 0].sum(),
    }
