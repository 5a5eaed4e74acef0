"""Shared prompts: the G samples of a group share their prompt, so generation, the old-log-prob pass
and the update's forward run each distinct prompt once, copy its KV cache to the rows that share
it, and run only the response positions per row:

    positions per forward:  N (P + R)   ->   U P + N (R - 1)        (U distinct prompts, N = U G rows)

In the update the backward sums the G copies' gradients into the one prompt forward, so this is the
same function of the parameters as one forward per full row; only float rounding differs.
"""
from __future__ import annotations

import inspect

import torch

Tensor = torch.Tensor


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding, as transformers' generate builds them: cumsum - 1 (pads -> 1)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)


def prompt_groups(input_ids: Tensor, attention_mask: Tensor, prompt_len: int) -> tuple[Tensor, Tensor, Tensor] | None:
    """Rows whose first ``prompt_len`` columns (ids and mask) are identical share one prompt ->
    (ids (U, P), mask (U, P), inverse (N,)) with row i's prompt at unique row inverse[i], or None
    when no two rows share a prompt (sharing would only add a call)."""
    P = prompt_len
    key = torch.cat([input_ids[:, :P], attention_mask[:, :P].to(input_ids.dtype)], 1)
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    if uniq.shape[0] == key.shape[0]:
        return None
    return uniq[:, :P], uniq[:, P:].to(attention_mask.dtype), inverse


def cache_kwarg(module) -> str | None:
    """The name a transformers forward / generate takes its KV cache under ("cache" from 5.x on);
    None for a module whose forward takes no cache (then prompts are not shared)."""
    params = inspect.signature(module.forward).parameters
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def shared_prompt_cache(model, ids: Tensor, am: Tensor, inverse: Tensor):
    """KV cache (transformers DynamicCache) of the distinct prompts ``ids`` / ``am`` (U, P), run once
    through the decoder and copied to N rows (row i gets prompt inverse[i]) -> (cache, last hidden
    state of the prompts (U, P, D)). Differentiable: under grad mode the copies' gradients flow back
    into the one prompt forward."""
    from transformers import DynamicCache

    decoder = model.get_decoder()
    cache = DynamicCache(config=model.config)
    out = decoder(input_ids=ids, attention_mask=am, position_ids=position_ids_from_mask(am), use_cache=True,
                  **{cache_kwarg(decoder): cache})
    cache.batch_select_indices(inverse.to(ids.device))
    return cache, out.last_hidden_state
