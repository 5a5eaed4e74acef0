"""Rollout: sample G responses per prompt, then one no-grad forward of the same policy snapshot
gives the old log-probs and old entropies at the rollout temperature.

The batch layout is ercref.lm.rollout_batch.RolloutBatch.

For position t of the response, the token sequences[:, P + t] is predicted by the hidden state at
P + t - 1, so the forward keeps positions P-1 .. P+R-2 (``response_logprobs``).

Old log-probs come from the full softmax at temperature tau (as verl), even when sampling used
top-p < 1 (the sampler's truncated distribution is not what the policy gradient differentiates).

Generation is HF generate (KV cache) unless ``generator_fn`` replaces it (the trainer's vLLM
backend, ercref/lm/vllm_backend.py); the old log-probs always come from the HF policy.

Shared prompts (ercref.lm.prompt_sharing): the G samples of a group run their prompt once.
``SHARE_PROMPTS = False`` restores one forward per full row (benchmarks/bench_step_breakdown.py
compares the two).
"""
from __future__ import annotations

import contextlib
import time
import warnings

import torch

from ercref import entropy_from_logits, logprobs_and_entropy, logprobs_from_logits
from ercref.fused_head import fused_logprobs_and_entropy

from .models import apply_chat_template
from .prompt_sharing import cache_kwarg, position_ids_from_mask, prompt_groups, shared_prompt_cache
from .rollout_batch import RolloutBatch

Tensor = torch.Tensor
SHARE_PROMPTS = True   # run each distinct prompt once (see the module docstring); False: one forward per row


# ----------------------------------------------------------------------------- helpers
def eos_ids(model, tokenizer) -> list[int]:
    ids = set()
    gen = getattr(model, "generation_config", None)
    e = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(e, int):
        ids.add(e)
    elif isinstance(e, (list, tuple)):
        ids.update(int(x) for x in e)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if not ids:
        raise ValueError("the model/tokenizer defines no EOS token; generation could never stop")
    return sorted(ids)


def response_mask_from_tokens(response: Tensor, eos: list[int]) -> Tensor:
    """(N, R) token ids -> (N, R) bool: True up to and including the first EOS (all True if none)."""
    is_eos = torch.isin(response, torch.tensor(eos, device=response.device))
    after = (is_eos.long().cumsum(-1) - is_eos.long()) > 0   # strictly after the first EOS
    return ~after


def fused_head_applies(model) -> bool:
    """The fused head computes log-probs from hidden states: a bias-free LM head without logit
    soft-capping, and a model with a decoder."""
    head = model.get_output_embeddings()
    return getattr(head, "bias", None) is None and hasattr(model, "get_decoder") \
        and getattr(model.config, "final_logit_softcapping", None) is None


def response_hidden(model, sequences: Tensor, attention_mask: Tensor, prompt_len: int, share_prompts: bool) -> Tensor:
    """Last hidden states at positions P-1 .. P+R-2 (those that predict the response tokens), (N, R, D).
    With shared prompts (module docstring): the distinct prompts once, then the R-1 response positions
    of every row against its prompt's copied KV cache; otherwise one forward of every full row."""
    P, R = prompt_len, sequences.shape[1] - prompt_len
    decoder = model.get_decoder()
    pos = position_ids_from_mask(attention_mask)
    checkpointing = getattr(model, "is_activation_checkpointing", None)   # transformers >= 5.x name
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    # gradient checkpointing in transformers turns the KV cache off in the update; the no-grad
    # old-log-prob pass then runs full rows too, so both take one numerical path
    share = share_prompts and not checkpointing and cache_kwarg(decoder) is not None
    groups = prompt_groups(sequences, attention_mask, P) if share else None
    if groups is None:
        out = decoder(input_ids=sequences, attention_mask=attention_mask, position_ids=pos, use_cache=False)
        return out.last_hidden_state[:, P - 1 : -1]
    ids, am, inverse = groups
    cache, prompt_hidden = shared_prompt_cache(model, ids, am, inverse)
    first = prompt_hidden[inverse.to(prompt_hidden.device), -1:]            # position P-1 predicts token P
    if R == 1:
        return first
    out = decoder(input_ids=sequences[:, P:-1], attention_mask=attention_mask[:, :-1], position_ids=pos[:, P:-1],
                  use_cache=True, **{cache_kwarg(decoder): cache})
    return torch.cat([first, out.last_hidden_state], 1)


def response_logprobs(model, sequences: Tensor, attention_mask: Tensor, prompt_len: int, temperature: float,
                      fused_head: bool = True, entropy_grad: bool = False,
                      share_prompts: bool | None = None) -> tuple[Tensor, Tensor]:
    """(logp, entropy), each (N, R) float32, of the response tokens sequences[:, prompt_len:].

    logp carries gradient when grad mode is on; entropy only with ``entropy_grad=True`` (the
    entropy bonus); otherwise it is detached (it only builds the ERC mask).
    ``fused_head`` computes both from the last hidden states and the LM-head weight in row
    chunks (ercref.fused_head), never materialising the (N, R, V) logits; otherwise the model's
    logits for the R kept positions are used (one forward per full row).
    ``share_prompts`` (default ``SHARE_PROMPTS``; fused head only): rows with the same prompt run it
    once (module docstring).
    """
    R = sequences.shape[1] - prompt_len
    if R < 1:
        raise ValueError("sequences has no response tokens (prompt_len >= sequence length)")
    pos = position_ids_from_mask(attention_mask)
    labels = sequences[:, prompt_len:]
    head = model.get_output_embeddings()
    if fused_head and fused_head_applies(model):
        share = SHARE_PROMPTS if share_prompts is None else share_prompts
        hidden = response_hidden(model, sequences, attention_mask, prompt_len, share)
        weight = head.weight if head.weight.dtype == hidden.dtype else head.weight.to(hidden.dtype)
        return fused_logprobs_and_entropy(hidden, weight, labels, temperature, entropy_grad=entropy_grad)
    logits = model(input_ids=sequences, attention_mask=attention_mask, position_ids=pos, use_cache=False,
                   logits_to_keep=R + 1).logits[:, :-1]
    if entropy_grad:
        return logprobs_and_entropy(logits, labels, temperature, entropy_grad=True)
    logp = logprobs_from_logits(logits, labels, temperature)
    with torch.no_grad():
        ent = entropy_from_logits(logits.detach(), temperature)
    return logp, ent


def encode_prompts(tokenizer, prompts: list, max_prompt_tokens: int, device) -> tuple[Tensor, Tensor]:
    """Chat-template and left-pad prompts -> (input_ids, attention_mask), each (N, P).

    A prompt longer than ``max_prompt_tokens`` keeps its *last* max_prompt_tokens tokens (left
    truncation, as verl's ``data.truncation='left'``: the end of the chat template, which opens the
    assistant's turn, survives), with one warning per call counting the distinct prompts cut."""
    texts = [apply_chat_template(tokenizer, p, require=True) for p in prompts]
    if tokenizer.padding_side != "left":
        tokenizer.padding_side = "left"
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    cut = {t: len(r) for t, r in zip(texts, rows) if len(r) > max_prompt_tokens}
    if cut:
        warnings.warn(f"{len(cut)} of {len(set(texts))} distinct prompts are longer than data.max_prompt_tokens="
                      f"{max_prompt_tokens} tokens (longest {max(cut.values())}): each keeps its last "
                      f"{max_prompt_tokens} tokens (left truncation); raise data.max_prompt_tokens to keep them whole",
                      stacklevel=2)
        rows = [r[-max_prompt_tokens:] for r in rows]
    enc = tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


# ----------------------------------------------------------------------------- HF backend
@torch.no_grad()
def generate_hf(model, tokenizer, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int,
                temperature: float, top_p: float, batch_size: int = 0, do_sample: bool = True,
                max_tokens: int = 0, share_prompts: bool | None = None) -> Tensor:
    """Sampled continuations with KV cache -> response ids (N, R), padded with pad_token_id after EOS.

    Calls are bounded by ``max_tokens`` (rows x (prompt width + max_new_tokens), what the KV cache
    holds; 0: no limit) and ``batch_size`` rows (0: no limit); ercref.lm.batching.token_budget_batches
    chooses them (one call in the original order when everything fits; otherwise rows sorted by prompt
    length, longest first, each call's prompts cut to their own width), and the responses are put
    back in the original row order. Sampling is deterministic for a given seed and batching.

    ``share_prompts`` (default ``SHARE_PROMPTS``): within a call, rows with the same prompt share
    one prefill of its first width-1 tokens (``shared_prompt_cache``); generate then runs the last
    prompt token and the new tokens per row, drawing the same random numbers as without sharing."""
    from .batching import token_budget_batches

    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id
    plen = attention_mask.sum(-1)
    share = (SHARE_PROMPTS if share_prompts is None else share_prompts) and hasattr(model, "get_decoder") \
        and cache_kwarg(model) is not None and cache_kwarg(model.get_decoder()) is not None
    batches = token_budget_batches(plen, torch.full_like(plen, max_new_tokens), max_tokens, batch_size)
    outs = []
    for rows in batches:
        idx = rows.to(input_ids.device)
        width = int(plen[idx].max())        # drop the leading columns where every row of this call is padding
        ids, am = input_ids[idx, input_ids.shape[1] - width:], attention_mask[idx, input_ids.shape[1] - width:]
        cache = {}
        groups = prompt_groups(ids, am, width - 1) if share and width > 1 else None
        if groups is not None and bool(groups[1].any(-1).all()):  # (a prefix of padding only is never prefilled)
            cache = {cache_kwarg(model): shared_prompt_cache(model, *groups)[0]}
        gen = model.generate(
            input_ids=ids, attention_mask=am, do_sample=do_sample,
            temperature=temperature if do_sample else None, top_p=top_p if do_sample else None, top_k=0 if do_sample else None,
            max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad, use_cache=True, **cache,
        )
        outs.append(gen[:, width:])
    R = max(o.shape[1] for o in outs)
    if len(batches) == 1:
        return outs[0]
    out = torch.full((input_ids.shape[0], R), pad, dtype=outs[0].dtype, device=outs[0].device)
    for rows, o in zip(batches, outs):
        out[rows.to(out.device), : o.shape[1]] = o
    return out


def rollout(model, tokenizer, prompts: list, answers: list[str], group_size: int, max_new_tokens: int,
            temperature: float = 1.0, top_p: float = 1.0, max_prompt_tokens: int = 512, generation_batch_size: int = 0,
            fused_head: bool = True, autocast_dtype: torch.dtype | None = None, generator_fn=None,
            with_logprobs: bool = True, ref_model=None, max_tokens_per_generate: int = 0,
            max_tokens_per_logprob: int = 0) -> RolloutBatch:
    """Sample ``group_size`` responses for every prompt (groups contiguous) and compute old log-probs
    and old entropies in one forward of the same (unchanged) model.

    Memory is bounded by token budgets (ercref.lm.batching.token_budget_batches; 0: no limit):
    ``max_tokens_per_generate`` per generate call (rows x (prompt width + max_new_tokens)), with at
    most ``generation_batch_size`` rows (0: no limit); ``max_tokens_per_logprob`` per no-grad forward
    of the old-log-prob pass (rows x width, each micro-batch cut to its own width).

    ``generator_fn(input_ids, attention_mask) -> response ids`` replaces HF generate (vLLM backend).
    ``with_logprobs=False`` (evaluation) skips the forward; old_logp / old_entropy are then zeros.
    ``ref_model`` (KL term): its log-probs are computed in the same no-grad pass (same micro-batches).
    """
    if not prompts or len(prompts) != len(answers):
        raise ValueError(f"prompts ({len(prompts)}) and answers ({len(answers)}) must be non-empty and equal in length")
    device = next(model.parameters()).device
    rep_prompts = [p for p in prompts for _ in range(group_size)]
    rep_answers = [a for a in answers for _ in range(group_size)]
    ids, am = encode_prompts(tokenizer, rep_prompts, max_prompt_tokens, device)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    with autocast_context(device, autocast_dtype):
        if generator_fn is None:
            resp = generate_hf(model, tokenizer, ids, am, max_new_tokens, temperature, top_p, generation_batch_size,
                               max_tokens=max_tokens_per_generate)
        else:
            resp = generator_fn(ids, am)
    t1 = time.perf_counter()
    rmask = response_mask_from_tokens(resp, eos_ids(model, tokenizer))
    seq = torch.cat([ids, resp], dim=1)
    full_am = torch.cat([am, rmask.long()], dim=1)
    P = ids.shape[1]
    ref_logp = None
    if not with_logprobs:
        old_logp = old_ent = torch.zeros(rmask.shape, device=device)
    else:
        old_logp, old_ent, ref_logp = _old_logprobs(model, seq, full_am, P, temperature, rmask, max_tokens_per_logprob,
                                                    fused_head, autocast_dtype, ref_model)
    t2 = time.perf_counter()
    model.train(was_training)
    texts = tokenizer.batch_decode(torch.where(rmask, resp, tokenizer.pad_token_id), skip_special_tokens=True)
    return RolloutBatch(seq, full_am, rmask, old_logp, old_ent, P, texts, rep_prompts, rep_answers,
                        time_generate_s=t1 - t0, time_old_logprob_s=t2 - t1, ref_logp=ref_logp)


@torch.no_grad()
def _old_logprobs(model, seq, full_am, P, temperature, rmask, max_tokens, fused_head, autocast_dtype, ref_model=None):
    """(old_logp, old_entropy, ref_logp or None), each (N, R), masked: one no-grad pass in micro-batches
    of at most ``max_tokens`` tokens (rows x width; 0: one forward), each cut to its own width and
    scattered back to the original rows; the reference model (when given) on the same micro-batch
    right after the policy."""
    from .batching import token_budget_batches, trim_rows

    rlen = rmask.sum(-1)
    out_logp, out_ent = torch.zeros(rmask.shape, device=seq.device), torch.zeros(rmask.shape, device=seq.device)
    out_ref = torch.zeros(rmask.shape, device=seq.device) if ref_model is not None else None
    with autocast_context(seq.device, autocast_dtype):
        for rows in token_budget_batches(full_am[:, :P].sum(-1), rlen, max_tokens):
            s, a, p, r = trim_rows(seq, full_am, P, rows, rlen)
            idx = rows.to(seq.device)
            lp, en = response_logprobs(model, s, a, p, temperature, fused_head)
            out_logp[idx, :r] = lp.float()
            out_ent[idx, :r] = en.float()
            if ref_model is not None:
                rl, _ = response_logprobs(ref_model, s, a, p, temperature, fused_head)
                out_ref[idx, :r] = rl.float()
    return out_logp * rmask, out_ent * rmask, (out_ref * rmask if ref_model is not None else None)


def autocast_context(device, dtype: torch.dtype | None):
    """torch.autocast to ``dtype`` on ``device``'s type, or nothing for dtype None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
