"""The rollout batch: N = n_prompts * G sequences (groups contiguous) and what one no-grad pass
of the policy snapshot gave for them.

    sequences      (N, P + R)  left-padded prompt (P) then response (R) token ids
    attention_mask (N, P + R)  1 on real prompt tokens and on response tokens up to the first EOS
    response_mask  (N, R)      bool, response tokens up to and including the first EOS
    old_logp       (N, R)      log pi_old(y_t | y_<t) at the rollout temperature (0 where masked)
    old_entropy    (N, R)      H(pi_old, t) over the full vocabulary, same forward (0 where masked)
    ref_logp       (N, R)      log pi_ref(y_t | y_<t) of a frozen reference model (KL term only), or None

Every tensor lives on the policy's device.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass
class RolloutBatch:
    sequences: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    old_logp: Tensor
    old_entropy: Tensor
    prompt_len: int
    texts: list[str]                 # decoded responses (up to the first EOS, special tokens dropped)
    prompts: list                    # the prompt of every sequence (repeated G times)
    answers: list[str]
    time_generate_s: float = 0.0
    time_old_logprob_s: float = 0.0
    ref_logp: Tensor | None = None

    @property
    def response_lengths(self) -> Tensor:
        return self.response_mask.sum(-1)

    def select(self, idx: Tensor) -> RolloutBatch:
        """Rows idx (1-D long tensor) of every per-sequence field."""
        il = idx.tolist()
        return RolloutBatch(self.sequences[idx], self.attention_mask[idx], self.response_mask[idx], self.old_logp[idx],
                            self.old_entropy[idx], self.prompt_len, [self.texts[i] for i in il],
                            [self.prompts[i] for i in il], [self.answers[i] for i in il],
                            ref_logp=None if self.ref_logp is None else self.ref_logp[idx])


def concat_rollouts(batches: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """Rows of several rollout batches in one (dynamic-sampling rounds): prompts left-padded and
    responses right-padded to the widest (token ``pad_id``, attention and response masks 0, old
    log-probs / entropies 0), so every row keeps its tokens and positions."""
    P = max(b.prompt_len for b in batches)
    R = max(b.sequences.shape[1] - b.prompt_len for b in batches)
    fields = {f.name for f in dataclasses.fields(RolloutBatch)}
    known = {"sequences", "attention_mask", "response_mask", "old_logp", "old_entropy", "ref_logp", "prompt_len", "texts",
             "prompts", "answers", "time_generate_s", "time_old_logprob_s"}
    if fields != known:  # a new per-row field must be padded here too
        raise NotImplementedError(f"concat_rollouts does not know the RolloutBatch fields {sorted(fields ^ known)}")

    def widen(b: RolloutBatch, t: torch.Tensor, value) -> torch.Tensor:  # (N, P_b + R_b) -> (N, P + R)
        p, r = b.prompt_len, t.shape[1] - b.prompt_len
        return torch.nn.functional.pad(t, (P - p, R - r), value=value)

    def resp(t: torch.Tensor, value) -> torch.Tensor:  # (N, R_b) -> (N, R)
        return torch.nn.functional.pad(t, (0, R - t.shape[1]), value=value)

    cat = torch.cat
    return RolloutBatch(
        cat([widen(b, b.sequences, pad_id) for b in batches]), cat([widen(b, b.attention_mask, 0) for b in batches]),
        cat([resp(b.response_mask, False) for b in batches]), cat([resp(b.old_logp, 0.0) for b in batches]),
        cat([resp(b.old_entropy, 0.0) for b in batches]), P, [t for b in batches for t in b.texts],
        [p for b in batches for p in b.prompts], [a for b in batches for a in b.answers],
        time_generate_s=sum(b.time_generate_s for b in batches),
        time_old_logprob_s=sum(b.time_old_logprob_s for b in batches),
        ref_logp=None if batches[0].ref_logp is None else cat([resp(b.ref_logp, 0.0) for b in batches]))
