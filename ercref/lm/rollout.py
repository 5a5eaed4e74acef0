"""Rollout: sample G responses per prompt, then one no-grad forward of the same policy snapshot
gives the old log-probs and old entropies at the rollout temperature.

Layout of a rollout batch of N = n_prompts * G sequences (groups contiguous):

    sequences      (N, P + R)  left-padded prompt (P) then response (R) token ids
    attention_mask (N, P + R)  1 on real prompt tokens and on response tokens up to the first EOS
    response_mask  (N, R)      bool, response tokens up to and including the first EOS
    old_logp       (N, R)      log pi_old(y_t | y_<t) at the rollout temperature (0 where masked)
    old_entropy    (N, R)      H(pi_old, t) over the full vocabulary, same forward (0 where masked)
    ref_logp       (N, R)      log pi_ref(y_t | y_<t) of a frozen reference model (KL term only), computed
                               in the same no-grad pass over the same micro-batches (None without one)

For position t of the response, the token sequences[:, P + t] is predicted by the hidden state at
P + t - 1, so the forward keeps positions P-1 .. P+R-2 (``response_logprobs``).

Old log-probs come from the full softmax at temperature tau (as verl), even when sampling used
top-p < 1 (the sampler's truncated distribution is not what the policy gradient differentiates).

Backends: "hf" (transformers generate, KV cache) and "vllm" (CUDA only, import-guarded; the vLLM
engine samples, the HF policy still computes the old log-probs, and weights are pushed to vLLM
after every training step).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ercref import entropy_from_logits, logprobs_and_entropy, logprobs_from_logits
from ercref.fused_head import fused_logprobs_and_entropy

from .models import apply_chat_template

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


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding, as transformers' generate builds them: cumsum - 1 (pads -> 1)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)


def response_logprobs(model, sequences: Tensor, attention_mask: Tensor, prompt_len: int, temperature: float,
                      fused_head: bool = True, entropy_grad: bool = False) -> tuple[Tensor, Tensor]:
    """(logp, entropy), each (N, R) float32, of the response tokens sequences[:, prompt_len:].

    logp carries gradient when grad mode is on; entropy only with ``entropy_grad=True`` (the
    entropy bonus); otherwise it is detached (it only builds the ERC mask).
    ``fused_head`` computes both from the last hidden states and the LM-head weight in row
    chunks (ercref.fused_head), never materialising the (N, R, V) logits; otherwise the model's
    logits for the R kept positions are used.
    """
    R = sequences.shape[1] - prompt_len
    if R < 1:
        raise ValueError("sequences has no response tokens (prompt_len >= sequence length)")
    pos = position_ids_from_mask(attention_mask)
    labels = sequences[:, prompt_len:]
    head = model.get_output_embeddings()
    use_fused = fused_head and getattr(head, "bias", None) is None and hasattr(model, "get_decoder") \
        and getattr(model.config, "final_logit_softcapping", None) is None
    if use_fused:
        out = model.get_decoder()(input_ids=sequences, attention_mask=attention_mask, position_ids=pos, use_cache=False)
        hidden = out.last_hidden_state[:, prompt_len - 1 : -1]
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
    """Chat-template and left-pad prompts -> (input_ids, attention_mask), each (N, P)."""
    texts = [apply_chat_template(tokenizer, p, require=True) for p in prompts]
    if tokenizer.padding_side != "left":
        tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                    truncation=True, max_length=max_prompt_tokens)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


# ----------------------------------------------------------------------------- HF backend
@torch.no_grad()
def generate_hf(model, tokenizer, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int,
                temperature: float, top_p: float, batch_size: int = 0, do_sample: bool = True) -> Tensor:
    """Sampled continuations with KV cache -> response ids (N, R), padded with pad_token_id after EOS."""
    eos = eos_ids(model, tokenizer)
    outs = []
    bs = batch_size or input_ids.shape[0]
    for i in range(0, input_ids.shape[0], bs):
        gen = model.generate(
            input_ids=input_ids[i : i + bs], attention_mask=attention_mask[i : i + bs], do_sample=do_sample,
            temperature=temperature if do_sample else None, top_p=top_p if do_sample else None, top_k=0 if do_sample else None,
            max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, use_cache=True,
        )
        outs.append(gen[:, input_ids.shape[1]:])
    R = max(o.shape[1] for o in outs)
    pad = tokenizer.pad_token_id
    return torch.cat([torch.nn.functional.pad(o, (0, R - o.shape[1]), value=pad) for o in outs])


def rollout(model, tokenizer, prompts: list, answers: list[str], group_size: int, max_new_tokens: int,
            temperature: float = 1.0, top_p: float = 1.0, max_prompt_tokens: int = 512, generation_batch_size: int = 0,
            fused_head: bool = True, autocast_dtype: torch.dtype | None = None, generator_fn=None,
            with_logprobs: bool = True, ref_model=None) -> RolloutBatch:
    """Sample ``group_size`` responses for every prompt (groups contiguous) and compute old log-probs
    and old entropies in one forward of the same (unchanged) model.

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
    with _autocast(device, autocast_dtype):
        if generator_fn is None:
            resp = generate_hf(model, tokenizer, ids, am, max_new_tokens, temperature, top_p, generation_batch_size)
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
        old_logp, old_ent, ref_logp = _old_logprobs(model, seq, full_am, P, temperature, rmask, generation_batch_size,
                                                    fused_head, autocast_dtype, ref_model)
    t2 = time.perf_counter()
    model.train(was_training)
    texts = tokenizer.batch_decode(torch.where(rmask, resp, tokenizer.pad_token_id), skip_special_tokens=True)
    return RolloutBatch(seq, full_am, rmask, old_logp, old_ent, P, texts, rep_prompts, rep_answers,
                        time_generate_s=t1 - t0, time_old_logprob_s=t2 - t1, ref_logp=ref_logp)


@torch.no_grad()
def _old_logprobs(model, seq, full_am, P, temperature, rmask, batch_size, fused_head, autocast_dtype, ref_model=None):
    """(old_logp, old_entropy, ref_logp or None), each (N, R), masked: one no-grad pass in micro-batches,
    the reference model (when given) on the same micro-batch right after the policy."""
    device = seq.device
    with _autocast(device, autocast_dtype):
        logps, ents, refs = [], [], []
        bs = batch_size or seq.shape[0]
        for i in range(0, seq.shape[0], bs):
            lp, en = response_logprobs(model, seq[i : i + bs], full_am[i : i + bs], P, temperature, fused_head)
            logps.append(lp.float())
            ents.append(en.float())
            if ref_model is not None:
                rl, _ = response_logprobs(ref_model, seq[i : i + bs], full_am[i : i + bs], P, temperature, fused_head)
                refs.append(rl.float())
    ref = torch.cat(refs) * rmask if ref_model is not None else None
    return torch.cat(logps) * rmask, torch.cat(ents) * rmask, ref


def _autocast(device, dtype):
    import contextlib

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


# ----------------------------------------------------------------------------- vLLM backend
def check_vllm_available(device: str) -> None:
    """The vLLM backend needs CUDA and the vllm package; ValueError naming rollout.backend otherwise."""
    if not str(device).startswith("cuda") and str(device) != "auto":
        raise ValueError(f"rollout.backend='vllm' needs a CUDA device, but train.device={device!r}; use rollout.backend='hf' on CPU")
    if not torch.cuda.is_available():
        raise ValueError("rollout.backend='vllm' needs a CUDA GPU, but torch.cuda.is_available() is False; "
                         "use rollout.backend='hf' on CPU")
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ValueError("rollout.backend='vllm' needs the vllm package (pip install vllm, on a CUDA machine); "
                         "or use rollout.backend='hf'") from e


class VLLMGenerator:
    """Sampling with a vLLM engine that shares the policy's weights (pushed after every update).

    Untested here (no GPU on the development machine); its configuration errors are tested on CPU.
    """

    def __init__(self, model_name: str, tokenizer, device: str, dtype: str, gpu_memory_utilization: float,
                 max_model_len: int, seed: int):
        check_vllm_available(device)
        from vllm import LLM

        self.tokenizer = tokenizer
        self.llm = LLM(model=model_name, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, seed=seed, enable_prefix_caching=True)

    def load_weights(self, model) -> None:
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        runner.model.load_weights(model.state_dict().items())

    def __call__(self, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int, temperature: float,
                 top_p: float) -> Tensor:
        from vllm import SamplingParams

        prompts = [{"prompt_token_ids": row[m.bool()].tolist()} for row, m in zip(input_ids, attention_mask)]
        params = SamplingParams(n=1, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens)
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        toks = [list(o.outputs[0].token_ids) for o in outs]
        R = max(1, max(len(t) for t in toks))
        pad = self.tokenizer.pad_token_id
        return torch.tensor([t + [pad] * (R - len(t)) for t in toks], device=input_ids.device)
