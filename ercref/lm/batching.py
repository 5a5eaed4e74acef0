"""Token-budget micro-batches: which rows go into one generate call or one forward, so that no call
holds more than its budget (rollout.max_tokens_per_generate, rollout.max_tokens_per_logprob,
train.max_tokens_per_forward) and the memory a call needs is known before it runs.

The cost of a micro-batch ``rows`` is what a padded forward or a KV cache really holds:

    cost(rows) = len(rows) * (max prompt_lens[rows] + max resp_lens[rows])     <= max_tokens

and a micro-batch holds at most ``max_rows`` rows. The rule:

1. everything fits in one micro-batch: ``[arange(n)]``, the original order (one call, as without a
   budget);
2. otherwise rows are sorted by prompt + response length, longest first (stable), and packed
   greedily: a row joins the current micro-batch while the cost above stays within ``max_tokens``
   and the rows within ``max_rows``, else it starts the next one. Sorted rows pad little, and the
   most expensive micro-batch runs first (an out-of-memory error comes at once, not minutes in).

A single row longer than ``max_tokens`` gets a micro-batch of its own (the config refuses such a
budget beforehand: ``ercref.lm.config``). ``trim_rows`` then cuts a micro-batch's rows out of the
left-padded prompt + right-padded response batch at their own width.
"""
from __future__ import annotations

import numbers

import torch

Tensor = torch.Tensor


def _count(name: str, value) -> int:
    """An int >= 0 (0: no limit); ValueError naming ``name`` otherwise (bools are not counts)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an int >= 0 (0: no limit), got {value!r}")
    return int(value)


def _lengths(name: str, values) -> Tensor:
    """Per-row token counts as a 1-D CPU long tensor; ValueError naming ``name`` for anything but
    integers >= 0 (floats, NaN, booleans, negative counts)."""
    try:
        t = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as e:   # text, ragged lists, integers beyond int64
        raise ValueError(f"{name} must hold integer token counts >= 0, one per row; got {values!r:.80} ({e})") from None
    if t.device.type == "meta" or t.dim() > 1:
        raise ValueError(f"{name} must hold integer token counts >= 0, one per row (1-D, with values); got a "
                         f"{tuple(t.shape)} tensor on {t.device}")
    if t.numel() and (t.dtype == torch.bool or t.is_floating_point() or t.is_complex()):
        raise ValueError(f"{name} must hold integer token counts >= 0, one per row; got dtype {t.dtype}")
    t = t.flatten().cpu().long()
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"{name} must hold integer token counts >= 0, one per row; got {int(t.min())}")
    return t


def token_budget_batches(prompt_lens, resp_lens, max_tokens: int = 0, max_rows: int = 0) -> list[Tensor]:
    """Row indices (1-D long tensors) of micro-batches covering every row exactly once, by the rule
    of this module: each costs at most ``max_tokens`` tokens (0: no limit) and holds at most
    ``max_rows`` rows (0: no limit).

    prompt_lens, resp_lens: (N,) integer token counts per row (tensors or sequences of ints)."""
    p, r = _lengths("prompt_lens", prompt_lens), _lengths("resp_lens", resp_lens)
    if p.shape != r.shape:
        raise ValueError(f"prompt_lens ({p.numel()}) and resp_lens ({r.numel()}) must have one entry per row")
    max_tokens, max_rows = _count("max_tokens", max_tokens), _count("max_rows", max_rows)
    n = p.numel()
    if n == 0:
        return []
    if max_tokens and int((p + r).max()) > max_tokens:
        i = int((p + r).argmax())
        raise ValueError(f"max_tokens={max_tokens} is below row {i}'s {int(p[i] + r[i])} tokens (prompt {int(p[i])} + "
                         f"response {int(r[i])}): no micro-batch can hold it; give max_tokens >= {int(p[i] + r[i])} or 0")
    whole = n * int(p.max() + r.max())
    if (not max_tokens or whole <= max_tokens) and (not max_rows or n <= max_rows):
        return [torch.arange(n)]
    order = torch.sort(p + r, descending=True, stable=True).indices.tolist()
    pl, rl = p.tolist(), r.tolist()
    out, cur, mp, mr = [], [], 0, 0
    for i in order:
        np_, nr = max(mp, pl[i]), max(mr, rl[i])
        too_many_tokens = max_tokens and (len(cur) + 1) * (np_ + nr) > max_tokens
        too_many_rows = max_rows and len(cur) >= max_rows
        if cur and (too_many_tokens or too_many_rows):
            out.append(torch.tensor(cur))
            cur, np_, nr = [], pl[i], rl[i]
        cur.append(i)
        mp, mr = np_, nr
    out.append(torch.tensor(cur))
    return out


def trim_rows(sequences: Tensor, attention_mask: Tensor, prompt_len: int, rows: Tensor,
              resp_lens: Tensor) -> tuple[Tensor, Tensor, int, int]:
    """Rows ``rows`` of a left-padded prompt + right-padded response batch, cut to their own width:
    leading columns where every selected row is padding are dropped, and response columns past the
    longest selected response (``resp_lens``, (N,) response tokens per row).
    -> (sequences, attention_mask, prompt_len, response columns kept (>= 1))."""
    if isinstance(prompt_len, bool) or not isinstance(prompt_len, numbers.Integral) \
            or not 0 <= prompt_len <= sequences.shape[-1]:
        raise ValueError(f"prompt_len must be an int in [0, {sequences.shape[-1]}] (the batch's prompt columns), "
                         f"got {prompt_len!r}")
    if not isinstance(rows, Tensor) or rows.dim() != 1 or rows.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"rows must be a 1-D int64 tensor of row indices (token_budget_batches gives them), "
                         f"got {rows!r:.80}")
    if rows.numel() == 0:
        raise ValueError("rows must select at least one row")
    if not 0 <= int(rows.min()) <= int(rows.max()) < sequences.shape[0]:
        raise ValueError(f"rows must be row indices in [0, {sequences.shape[0]}) (the batch's rows), got "
                         f"{int(rows.min())}..{int(rows.max())}")
    idx = rows.to(sequences.device)
    am = attention_mask[idx]
    real_prompt = int(am[:, :prompt_len].sum(-1).max())
    r = max(1, int(resp_lens[rows.to(resp_lens.device)].max()))
    start = prompt_len - real_prompt
    return (sequences[idx, start:prompt_len + r], am[:, start:prompt_len + r], real_prompt, r)
