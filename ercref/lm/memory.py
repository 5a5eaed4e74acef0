"""The memory planner: a run's peak memory, phase by phase, estimated before it starts (and a run
that cannot fit the device refused, naming the setting to change), and its time. It only plans:
the micro-batches it counts are ercref.lm.batching's.

Use:

    plan = plan_memory(cfg)                 # device detected; or device_bytes=80 * 2**30, device_name=...
    print(plan.table())                     # component -> GiB, peak of each phase, total vs capacity
    plan.fits, plan.total_bytes, plan.advice
    plan.check()                            # ValueError naming the setting to change when it does not fit
    suggest_budgets(cfg, device_bytes)      # the largest token budgets the planner says fit
    estimate_step_seconds(cfg, tflops=400)  # rough time of one training step (documented assumptions)
    estimate_eval_seconds(cfg, eval_prompts=60)   # one evaluation, and how many a run makes
    t = estimate_run_seconds(cfg, eval_prompts=60)  # both: t.total, t.text(); plan.table(time=t)

Every argument is checked first: a bool, NaN, an infinity, zero or a negative number where a count,
a size in bytes, a throughput or a fraction is expected is a ValueError naming the argument and
its valid range.

What it counts (bytes; P parameters, in the model's dtype):
  persistent    weights P, AdamW's two states 2P (torch keeps them in the parameter dtype), the
                frozen reference model P (loss.kl_coef > 0), bf16 copies of the matmul weights that
                autocast caches inside an autocast region (model.bf16_autocast), the vLLM engine
                (vllm_gpu_memory_utilization x device, or its weights + vllm_kv_cache_gb; only in the
                generation phases with rollout.vllm_sleep), and a runtime reserve (CUDA context and
                allocator slack; on CPU the Python / torch / transformers runtime with a model loaded).
  generate      (HF backend) KV cache rows x (prompt + max_new_tokens) x layers x 2 x kv_heads x
                head_dim, plus one layer for the cache's growth by concatenation, per-step logits and
                sampling buffers (rows x vocab), the prefill's activations and mask. Evaluation
                (train.eval_max_new_tokens, eval_k samples per prompt) is its own phase; with
                rollout.backend=vllm both are the engine's share.
  old log-probs the rollout batch's tensors; a no-grad forward of one micro-batch: one layer's
                transients, the padding mask, the fused head's tiles.
  update        gradients P; the activations autograd saves for one micro-batch (per layer and token,
                for the sdpa attention of Llama/Qwen2-style decoders, counted from the tensors autograd
                saves: fp32 7h + 3hq + 4i floats; under bf16 autocast 4h fp32 + (6h + 3hq + 4i) bf16;
                bf16 weights 2h fp32 + (5h + 3hq + 4i) bf16, with h = hidden, hq = heads x head_dim,
                i = MLP width), plus each layer's float copy of the padding mask (rows x width^2: torch's
                sdpa turns the boolean mask into an additive one per call and keeps it for backward);
                with gradient checkpointing only each layer's input plus one recomputed layer; the
                fused head's saved hidden states and tiles, the LM-head's fp32 gradient, hidden-state
                gradients. Gradients are freed after each optimizer step, so with one micro-batch per
                minibatch the peak is the larger of the backward's start (activations) and its end
                (gradients + the embedding's gradient); with several, activations and gradients add up;
                the optimizer step holds the gradients, on CUDA AdamW's foreach temporaries (one
                more P; none with optim.fused) and, with train.log_update_norm, a copy of the weights.

The update, old-log-prob and generation phases never overlap, so the planned peak is the largest
phase plus the persistent memory. Token budgets set to 0 mean "no limit": the planner then assumes
the whole batch in one call. Rows are assumed at the longest width: the longest prompt
(``prompt_tokens``; the Trainer measures its data, else data.max_prompt_tokens) + the max new tokens.
With a budget B the worst micro-batch holds B tokens and rows x width^2 <= B x max width.

Checked on CPU (tests/test_memory.py, slow): planned and measured peak RSS of an update step for
the tiny model and SmolLM2-135M, with and without gradient checkpointing and with two micro-batches,
agree within 25 %, measured with glibc's mmap threshold fixed so that RSS tracks live memory
(glibc's default heap keeps freed pages, so RSS can be a multiple of the live set of a step).
Untested on a GPU here: the CUDA kernels' workspaces, memory-efficient attention keeping the float
mask like the CPU kernel, and the caching allocator's fragmentation are assumptions (FIT_MARGIN and
CUDA_RESERVE_BYTES leave room for them).
"""
from __future__ import annotations

import copy
import math
import numbers
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ercref.fused_head import tile_rows

Tensor = torch.Tensor
GiB = 2 ** 30

# Capacities torch reports (torch.cuda.get_device_properties(0).total_memory), rounded; used when no
# device is given and for the notebook's "does it fit an H100 / H200" question.
DEVICE_BYTES = {
    "H100 80GB": int(79.1 * GiB),
    "H200 141GB": int(139.8 * GiB),
    "A100 80GB": int(79.2 * GiB),
    "A100 40GB": int(39.4 * GiB),
}
CUDA_RESERVE_BYTES = int(1.0 * GiB)   # CUDA context + cuBLAS workspaces + allocator slack (assumed)
CPU_RESERVE_BYTES = int(0.37 * GiB)   # the Python / torch / transformers runtime with a model loaded
FIT_MARGIN = 0.05                      # refuse above 95 % of the capacity (fragmentation)


# ============================================================================= arguments
def _int_arg(name: str, value, low: int, what: str = "", none_ok: bool = False):
    """``value`` as an int >= low (None passes when ``none_ok``); ValueError naming the argument."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}{what}{' or None' if none_ok else ''}, got {value!r}")
    return int(value)


def _real_arg(name: str, value, low: float = 0.0, high: float = math.inf, what: str = "", low_open: bool = True,
              none_ok: bool = False):
    """``value`` as a finite float in (low, high] ([low, high] when not ``low_open``; None passes when
    ``none_ok``); ValueError naming the argument. Booleans are not numbers here."""
    if value is None and none_ok:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        span = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high < math.inf else "")
        raise ValueError(f"{name} must be a finite number {span}{what}{' or None' if none_ok else ''}, got {value!r}")
    return float(value)


def _config_arg(cfg) -> None:
    """TypeError unless ``cfg`` is a run's Config (make_config(...)): the planner reads its sections."""
    from .config import Config

    if not isinstance(cfg, Config):
        raise TypeError(f"cfg must be an ercref.lm.config.Config (make_config(...)), got {type(cfg).__name__}")


# ============================================================================= model shapes
@dataclass(frozen=True)
class ModelShape:
    """What the planner needs to know about a decoder (Llama / Qwen2 / Mistral style)."""
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    qkv_bias: bool = False
    params: int = 0                     # exact count when known; 0: computed from the shape
    source: str = ""

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab", "params"):
            v = getattr(self, name)
            low = 0 if name == "params" else 1
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                raise ValueError(f"model shape ({self.source or 'ModelShape'}): {name} must be an int >= {low}, got {v!r}")

    @property
    def n_params(self) -> int:
        return self.params or self.counted_params

    @property
    def counted_params(self) -> int:
        h, hq, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = h * hq + 2 * h * kv + hq * h + ((hq + 2 * kv) if self.qkv_bias else 0)
        layer = attn + 3 * h * self.intermediate + 2 * h
        return self.layers * layer + self.vocab * h * (1 if self.tied_embeddings else 2) + h

    @property
    def matmul_params(self) -> int:
        """Weights that go through a matmul (cast to bf16 by autocast): the layers' linears and the head."""
        h, hq, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return self.layers * (h * hq + 2 * h * kv + hq * h + 3 * h * self.intermediate) + self.vocab * h

    @classmethod
    def from_hf_config(cls, config: Any, params: int = 0, source: str = "") -> ModelShape:
        """From a transformers PretrainedConfig (or any object / dict with its field names)."""
        get = (lambda k, d=None: config.get(k, d)) if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
        if not all(get(k) for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size")):
            raise ValueError("the model config lacks hidden_size / num_attention_heads / num_hidden_layers / "
                             "vocab_size: the memory planner knows decoder-only transformers only")
        model_type = get("model_type", "")
        source = source or f"config of {get('_name_or_path', '') or model_type or 'a model'}"
        h = _int_arg(f"model shape ({source}): hidden_size", get("hidden_size"), 1)
        heads = _int_arg(f"model shape ({source}): num_attention_heads", get("num_attention_heads"), 1)
        return cls(layers=get("num_hidden_layers"), hidden=h, intermediate=get("intermediate_size") or 4 * h,
                   heads=heads, kv_heads=get("num_key_value_heads") or heads, head_dim=get("head_dim") or h // heads,
                   vocab=get("vocab_size"), tied_embeddings=bool(get("tie_word_embeddings", False)),
                   qkv_bias=bool(get("attention_bias", False)) or model_type == "qwen2", params=params, source=source)

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> ModelShape:
        """From a loaded model: its config, and the exact parameter count."""
        return cls.from_hf_config(model.config, params=sum(p.numel() for p in model.parameters()),
                                  source="the loaded model")


# Shapes of hub models the planner knows without the network (copied from each repository's config.json).
KNOWN_MODELS: dict[str, ModelShape] = {
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": ModelShape(
        layers=28, hidden=1536, intermediate=8960, heads=12, kv_heads=2, head_dim=128, vocab=151936,
        tied_embeddings=False, qkv_bias=True,
        source="https://huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B/blob/main/config.json"),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": ModelShape(
        layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4, head_dim=128, vocab=152064,
        tied_embeddings=False, qkv_bias=True,
        source="https://huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-7B/blob/main/config.json"),
    "smollm2-135m-instruct": ModelShape(
        layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64, vocab=49152,
        tied_embeddings=True, qkv_bias=False, params=134_515_008,
        source="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/blob/main/config.json"),
}
KNOWN_MODELS["HuggingFaceTB/SmolLM2-135M-Instruct"] = KNOWN_MODELS["smollm2-135m-instruct"]


def model_shape(name: str) -> ModelShape:
    """Shape of ``model.name`` without loading weights or using the network: "tiny" (built from its
    config), a local folder (its config.json), or a hub id in KNOWN_MODELS (or already in the local
    Hugging Face cache). ValueError naming what to pass otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a model name (model.name: tiny, a hub id or a folder), got {name!r}")
    if name == "tiny":
        from .models import load_char_tokenizer, tiny_model_config
        tok = load_char_tokenizer()
        return ModelShape.from_hf_config(tiny_model_config(len(tok)), source="ercref.lm.models.tiny_model_config")
    key = name.lower() if name.lower() == "smollm2-135m-instruct" else name
    if key in KNOWN_MODELS:
        return KNOWN_MODELS[key]
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        import json
        return ModelShape.from_hf_config(json.loads((path / "config.json").read_text()), source=str(path / "config.json"))
    try:
        from transformers import AutoConfig
        cfg = AutoConfig.from_pretrained(name, local_files_only=True)
        return ModelShape.from_hf_config(cfg, source=f"{name} (local Hugging Face cache)")
    except Exception:
        pass
    raise ValueError(f"model.name={name!r}: the memory planner does not know this model's shape offline; pass "
                     f"plan_memory(..., shape=ModelShape.from_hf_config(config)) or a loaded model (model=...). "
                     f"Known: {sorted(KNOWN_MODELS)} and 'tiny'")


# ============================================================================= devices
def detect_device(device: str | torch.device | None = None) -> tuple[str, int]:
    """(name, capacity in bytes): a CUDA device's total memory, or on CPU the RAM available now
    (MemAvailable of /proc/meminfo; total RAM where that is unreadable)."""
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"cannot detect the memory of device {str(dev)!r}: torch.cuda.is_available() is False; "
                             "pass device_bytes (e.g. ercref.lm.memory.DEVICE_BYTES['H100 80GB'])")
        props = torch.cuda.get_device_properties(dev)
        return props.name, int(props.total_memory)
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
        return "CPU RAM available", info.get("MemAvailable", info["MemTotal"])
    except (OSError, KeyError, ValueError, IndexError):
        return "CPU RAM", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# ============================================================================= the plan
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class MemoryPlan:
    """Planned peak memory of a run; ``rows`` are (component, bytes, phase), phase "all" when persistent."""
    rows: list[tuple[str, int, str]]
    phases: dict[str, int]                 # phase -> its own peak bytes (persistent memory excluded)
    persistent_bytes: int
    device_name: str
    device_bytes: int
    advice: dict[str, str]                 # phase -> which setting to change
    label: str = ""
    budgets: dict[str, int] = field(default_factory=dict)

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)

    @property
    def total_bytes(self) -> int:
        return self.persistent_bytes + max(self.phases.values())

    def phase_total(self, phase: str) -> int:
        return self.persistent_bytes + self.phases[phase]

    @property
    def usable_bytes(self) -> int:
        return int(self.device_bytes * (1 - FIT_MARGIN))

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.usable_bytes

    def table(self, time: RunTime | None = None) -> str:
        """Component -> GiB, the peak of each phase, the total against the device; with ``time``
        (estimate_run_seconds) also the time of a step, of an evaluation and of the whole run."""
        w = max(len(c) for c, _, _ in self.rows) + 2
        lines = [f"memory plan{' for ' + self.label if self.label else ''}: {self.device_name}, "
                 f"{self.device_bytes / GiB:.1f} GiB",
                 f"  {'component':<{w}}{'GiB':>8}   phase"]
        for comp, b, ph in self.rows:
            lines.append(f"  {comp:<{w}}{b / GiB:>8.2f}   {ph}")
        lines.append("  peak of each phase (persistent included): " + ", ".join(
            f"{k} {self.phase_total(k) / GiB:.1f}" for k in self.phases))
        verdict = "fits" if self.fits else f"DOES NOT FIT (limit {100 * (1 - FIT_MARGIN):.0f} % of the device)"
        lines.append(f"  total (largest phase: {self.peak_phase}) {self.total_bytes / GiB:.1f} GiB of "
                     f"{self.device_bytes / GiB:.1f} GiB: {verdict}")
        if not self.fits:
            lines.append("  " + self.message())
        if time is not None:
            lines.append(time.table())
        return "\n".join(lines)

    def message(self) -> str:
        over = [p for p in self.phases if self.phase_total(p) > self.usable_bytes]
        parts = [f"{p} needs ~{self.phase_total(p) / GiB:.1f} GiB: {self.advice[p]}" for p in over]
        if self.persistent_bytes > self.usable_bytes:
            parts.insert(0, self.advice["persistent"])
        return (f"the run needs ~{self.total_bytes / GiB:.1f} GiB but {self.device_name} has "
                f"{self.device_bytes / GiB:.1f} GiB. " + "; ".join(parts))

    def check(self) -> MemoryPlan:
        """ValueError naming the setting to change when the plan does not fit; returns self."""
        if not self.fits:
            raise ValueError(self.message() + " (train.memory_check=warn runs it anyway)")
        return self

    def to_dict(self) -> dict:
        return {"device": self.device_name, "device_gib": self.device_bytes / GiB, "total_gib": self.total_bytes / GiB,
                "fits": self.fits, "peak_phase": self.peak_phase,
                "phases_gib": {k: self.phase_total(k) / GiB for k in self.phases},
                "components_gib": {c: b / GiB for c, b, _ in self.rows}, "budgets": dict(self.budgets)}


def _act_bytes_per_token_layer(s: ModelShape, param_bytes: int, autocast: bool) -> int:
    """Bytes autograd saves per token and decoder layer (sdpa attention; mask excluded)."""
    h, hq, i = s.hidden, s.heads * s.head_dim, s.intermediate
    if param_bytes == 4 and not autocast:
        b = 4 * (7 * h + 3 * hq + 4 * i)
    elif param_bytes == 4:
        b = 4 * 4 * h + 2 * (6 * h + 3 * hq + 4 * i)
    else:
        b = 4 * 2 * h + 2 * (5 * h + 3 * hq + 4 * i)
    return b + 4 * s.heads + 8          # attention log-sum-exp (fp32) + two RMSNorm rsqrt


def _budget(tokens: int, rows_cap: int, n_rows: int, width: int) -> tuple[int, int]:
    """(tokens, rows x width^2 bound) of the worst micro-batch: a token budget (0: none), a row cap
    (0: none), n_rows rows in all, width the longest possible row."""
    rows = n_rows if not rows_cap else min(rows_cap, n_rows)
    t = rows * width
    if tokens:
        t = min(t, max(tokens, width))
    return t, t * width


def plan_memory(cfg, device_bytes: int | None = None, device_name: str | None = None, model=None,
                shape: ModelShape | None = None, eval_prompts: int | None = None, prompt_tokens: int | None = None,
                eval_prompt_tokens: int | None = None) -> MemoryPlan:
    """Planned peak memory of a run of ``cfg`` (an ercref.lm.config.Config).

    device_bytes: capacity to plan against (None: detect ``cfg.train.device``: CUDA total memory,
    CPU available RAM). model / shape: the loaded model (exact parameter count) or its ModelShape;
    otherwise model_shape(cfg.model.name). eval_prompts: prompts per evaluation (None: data.num_eval).
    prompt_tokens / eval_prompt_tokens: the longest (chat-templated) training / eval prompt in tokens
    (None: data.max_prompt_tokens, the longest possible; the Trainer passes the measured ones).
    ValueError naming the argument for anything else (a bool, a float, zero or a negative count).
    """
    _config_arg(cfg)
    device_bytes = _int_arg("device_bytes", device_bytes, 1, " (the device's bytes)", none_ok=True)
    eval_prompts = _int_arg("eval_prompts", eval_prompts, 0, " (prompts per evaluation)", none_ok=True)
    prompt_tokens = _int_arg("prompt_tokens", prompt_tokens, 1, " (tokens)", none_ok=True)
    eval_prompt_tokens = _int_arg("eval_prompt_tokens", eval_prompt_tokens, 1, " (tokens)", none_ok=True)
    if device_name is not None and not isinstance(device_name, str):
        raise ValueError(f"device_name must be a str or None, got {device_name!r}")
    if shape is not None and not isinstance(shape, ModelShape):
        raise ValueError(f"shape must be a ModelShape or None, got {type(shape).__name__}")
    s = shape or (ModelShape.from_model(model) if model is not None else model_shape(cfg.model.name))
    dev = cfg.train.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    on_cuda = str(dev).startswith("cuda")
    if device_bytes is None:
        device_name, device_bytes = detect_device(dev)
    device_name = device_name or ("GPU" if on_cuda else "CPU")
    m, r, t, d = cfg.model, cfg.rollout, cfg.train, cfg.data
    wb = _BYTES[m.dtype]
    autocast = bool(m.bf16_autocast)
    cb = 2 if (autocast or wb == 2) else 4            # compute (activation) dtype bytes
    P = s.n_params
    h, hq, kvd, i, L, V = s.hidden, s.heads * s.head_dim, s.kv_heads * s.head_dim, s.intermediate, s.layers, s.vocab
    rows: list[tuple[str, int, str]] = []
    pers = 0

    def add(name: str, b: int, phase: str) -> int:
        rows.append((name, int(b), phase))
        return int(b)

    pers += add(f"weights ({m.dtype}, {P / 1e9:.3g} B params)", P * wb, "all")
    pers += add(f"AdamW states (2 x {m.dtype})", 2 * P * wb, "all")
    if cfg.loss.kl_coef > 0:
        pers += add("reference model (loss.kl_coef > 0)", P * wb, "all")
    if autocast and wb == 4:
        pers += add("bf16 autocast weight copies", s.matmul_params * 2, "all")
    vllm = r.backend == "vllm"
    sleep = vllm and bool(getattr(r, "vllm_sleep", False))
    vllm_bytes = 0
    if vllm:
        kv_gb = float(getattr(r, "vllm_kv_cache_gb", 0.0) or 0.0)
        if kv_gb > 0:   # weights (bf16) + the KV cache asked for + ~1 GiB of activations / CUDA graphs
            vllm_bytes = add(f"vLLM engine (weights + rollout.vllm_kv_cache_gb={kv_gb:g})",
                             P * 2 + kv_gb * GiB + GiB, "generate" if sleep else "all")
        else:
            vllm_bytes = add(f"vLLM engine (rollout.vllm_gpu_memory_utilization={r.vllm_gpu_memory_utilization:g})",
                             r.vllm_gpu_memory_utilization * device_bytes, "generate" if sleep else "all")
        if not sleep:
            pers += vllm_bytes
    pers += add("runtime reserve (CUDA context, allocator)" if on_cuda else "runtime reserve (python, torch)",
                CUDA_RESERVE_BYTES if on_cuda else CPU_RESERVE_BYTES, "all")

    phases: dict[str, int] = {}
    a = cfg.advantage
    gen_prompts = (a.gen_batch_prompts or r.prompts_per_step) if a.dynamic_sampling else r.prompts_per_step
    n_rows = gen_prompts * r.group_size                   # rows of one rollout (generation round)
    all_rows = n_rows * (a.max_gen_batches if a.dynamic_sampling else 1)
    pt = min(prompt_tokens or d.max_prompt_tokens, d.max_prompt_tokens)
    ept = min(eval_prompt_tokens or pt, d.max_prompt_tokens)
    width = pt + r.max_new_tokens
    head_tile_rows = tile_rows(V, "cuda" if on_cuda else "cpu")

    def tile(tokens: int) -> int:           # one (rows, vocab) fp32 tile of the fused head on this device
        return min(head_tile_rows, tokens) * V * 4
    kv_per_token = L * 2 * kvd * cb

    def generation(label: str, rows_total: int, max_new: int, prompt: int) -> None:
        if vllm:   # the engine samples the rollouts and the evaluations: its KV cache is its share (counted above)
            phases[label] = vllm_bytes if sleep else 0
            return
        wdt = prompt + max_new
        tok, _ = _budget(r.max_tokens_per_generate, r.generation_batch_size, rows_total, wdt)
        g_rows = max(1, tok // wdt)
        kv = add(f"{label}: KV cache ({g_rows} rows x {wdt} tokens)", tok * kv_per_token * (L + 1) / L, label)
        sample = g_rows * V * 4 * (5 if r.top_p < 1 or label != "generate" else 3)
        step = add(f"{label}: logits + sampling buffers", sample, label)
        pre = add(f"{label}: prefill activations + mask", g_rows * prompt * (3 * h + 3 * i) * cb
                  + g_rows * prompt ** 2 * (1 + cb), label)
        phases[label] = kv + step + pre + (vllm_bytes if sleep else 0)   # a sleeping engine may be awake here

    generation("generate", n_rows, r.max_new_tokens, pt)
    k_eval = t.eval_k
    n_eval = (eval_prompts if eval_prompts is not None else d.num_eval) * k_eval
    generation("evaluate", n_eval, t.eval_max_new_tokens or r.max_new_tokens, ept)

    # old log-probs: no-grad forward, one micro-batch at a time (the reference model right after)
    lp_budget = r.max_tokens_per_logprob or t.max_tokens_per_forward
    tok, quad = _budget(lp_budget, 0, n_rows, width)
    batch = add(f"rollout batch tensors ({all_rows} rows)", all_rows * width * 16
                + all_rows * r.max_new_tokens * (9 + (4 if cfg.loss.kl_coef > 0 else 0)), "log-probs, update")
    phases["old log-probs"] = batch + (
        add(f"old log-probs: one layer's transients ({tok} tokens)", tok * ((4 * h + 3 * hq) * 4 + 3 * i * cb), "old log-probs")
        + add("old log-probs: padding mask (bool + one float copy)", quad * (1 + cb), "old log-probs")
        + add("old log-probs: fused-head tiles + outputs", 3 * tile(tok) + n_rows * r.max_new_tokens * 4 * 3, "old log-probs"))

    # update: one micro-batch's forward + backward. The micro-batches of one minibatch accumulate into
    # the gradients, which are freed after the optimizer step: with one micro-batch per minibatch the
    # gradients grow during the backward while the activations are freed (peak: the start or the end of
    # the backward); from the second micro-batch on they are all there next to the activations.
    mb_rows = t.minibatch_prompts * r.group_size
    tok, quad = _budget(t.max_tokens_per_forward, t.micro_batch_size, mb_rows, width)
    n_micro = max(math.ceil(mb_rows * width / tok), math.ceil(mb_rows / t.micro_batch_size) if t.micro_batch_size else 1)
    per_layer = _act_bytes_per_token_layer(s, wb, autocast)
    resid = 4 if wb == 4 else 2
    grads = add(f"gradients ({m.dtype})", P * wb, "update, sft" if cfg.sft.steps else "update")
    if m.gradient_checkpointing:
        act = add(f"update: checkpointed layer inputs ({tok} tokens)", L * tok * h * resid, "update")
        layer = add("update: one recomputed layer", tok * per_layer, "update")
        mask = add("update: padding mask (bool + one layer's float copy)", quad * (1 + cb), "update")
        act += layer + mask
    else:
        act = add(f"update: saved activations ({tok} tokens x {L} layers)", L * tok * per_layer, "update")
        act += add("update: padding mask (bool + every layer's float copy)", quad * (1 + L * cb), "update")
        layer = 0
    head = tok * (3 * h * 4 + 2 * s.head_dim * 4) + 3 * tile(tok)
    if not m.fused_head:
        head += tok * V * 4 * 3
    act += add("update: embeddings, final norm, LM-head" + (" tiles" if m.fused_head else " logits"), head, "update")
    bwd = add("update: backward buffers (LM-head fp32 grad, hidden grads)", V * h * 4 + tok * (2 * h + 2 * i) * 4, "update")
    emb = V * h * wb if (s.tied_embeddings or n_micro > 1) else 0   # the embedding's gradient before it is accumulated
    if n_micro > 1:
        phases["update"] = batch + grads + act + bwd + emb
    else:
        phases["update"] = batch + max(act + bwd, grads + emb + layer)
    # the optimizer step: gradients, on CUDA AdamW's foreach kernel's sqrt(v) for all weights at once
    # (torch's CPU loop and the fused kernel work tensor by tensor) and, with optim/update_norm, a copy
    # of the weights
    foreach = on_cuda and not cfg.optim.fused
    step = add(f"update: AdamW foreach temporaries ({m.dtype})", P * wb, "update") if foreach else 0
    if t.log_update_norm:
        step += add(f"update: weight copy for optim/update_norm ({m.dtype})", P * wb, "update")
    phases["update"] = max(phases["update"], batch + grads + step)

    if cfg.sft.steps:   # the supervised warm-up: one forward + backward of all sft.batch_size rows at once
        sft_tok = cfg.sft.batch_size * width             # prompt + an answer of at most max_new_tokens
        if m.gradient_checkpointing:
            sft = add(f"sft: checkpointed layer inputs + one layer ({sft_tok} tokens)",
                      L * sft_tok * h * resid + sft_tok * per_layer, "sft")
        else:
            sft = add(f"sft: saved activations ({sft_tok} tokens x {L} layers)", L * sft_tok * per_layer, "sft")
        sft += add("sft: padding mask, LM-head tiles, backward buffers", cfg.sft.batch_size * width ** 2 * (1 + cb)
                   + sft_tok * 3 * h * 4 + 3 * tile(sft_tok) + V * h * 4 + sft_tok * (2 * h + 2 * i) * 4, "sft")
        phases["sft"] = grads + sft

    budgets = {"rollout.max_tokens_per_generate": r.max_tokens_per_generate,
               "rollout.max_tokens_per_logprob": r.max_tokens_per_logprob,
               "train.max_tokens_per_forward": t.max_tokens_per_forward}
    gc = "" if m.gradient_checkpointing else " or turn on model.gradient_checkpointing"
    gen_fix = (f"lower rollout.max_tokens_per_generate (now {r.max_tokens_per_generate or 'unlimited'}), "
               f"counted as rows x (data.max_prompt_tokens + max new tokens), or rollout.generation_batch_size "
               f"(now {r.generation_batch_size or 'unlimited'})")
    advice = {
        "persistent": (f"the weights, AdamW states{', reference model' if cfg.loss.kl_coef > 0 else ''}"
                       f"{', vLLM share' if vllm and not sleep else ''} and runtime reserve alone need {pers / GiB:.1f} GiB: "
                       "use a smaller model"
                       + (", lower rollout.vllm_gpu_memory_utilization" if vllm else "")
                       + " or a multi-GPU setup (the verl plug-in, ercref.integrations.verl)"),
        "generate": gen_fix,
        "evaluate": gen_fix + f", or train.eval_max_new_tokens (now {t.eval_max_new_tokens or r.max_new_tokens})",
        "old log-probs": (f"lower rollout.max_tokens_per_logprob (now {r.max_tokens_per_logprob or 'unset'}; "
                          f"unset uses train.max_tokens_per_forward, now {t.max_tokens_per_forward or 'unlimited'})"),
        "sft": f"lower sft.batch_size (now {cfg.sft.batch_size}: the warm-up trains on the whole batch at once){gc}",
        "update": (f"lower train.max_tokens_per_forward (now {t.max_tokens_per_forward or 'unlimited'}){gc}"
                   + (f", or train.micro_batch_size (now {t.micro_batch_size})" if t.micro_batch_size else "")),
    }
    return MemoryPlan(rows, phases, pers, device_name, int(device_bytes), advice,
                      label=cfg.preset or cfg.model.name, budgets=budgets)


def suggest_budgets(cfg, device_bytes: int, step: int = 1024, **plan_kwargs) -> dict[str, int]:
    """The largest token budgets (multiples of ``step``) that the planner says fit ``device_bytes``:
    {"rollout.max_tokens_per_generate": ..., "rollout.max_tokens_per_logprob": ..., "train.max_tokens_per_forward": ...}.
    The smallest budget is one longest row (``ercref.lm.config.longest_rows``, the rule the config
    checks); ValueError when even that does not fit, or naming a bad argument. ``plan_kwargs`` go to
    plan_memory (eval_prompts, prompt_tokens, shape, ...)."""
    from .config import longest_rows

    _config_arg(cfg)
    device_bytes = _int_arg("device_bytes", device_bytes, 1, " (the device's bytes)")
    step = _int_arg("step", step, 1, " (tokens)")
    phase_of = {"rollout.max_tokens_per_generate": ("generate", "evaluate"),
                "rollout.max_tokens_per_logprob": ("old log-probs",),
                "train.max_tokens_per_forward": ("update",)}
    rows = ((cfg.advantage.gen_batch_prompts or cfg.rollout.prompts_per_step) if cfg.advantage.dynamic_sampling
            else cfg.rollout.prompts_per_step) * cfg.rollout.group_size
    eval_prompts = plan_kwargs.get("eval_prompts")
    eval_rows = cfg.train.eval_k * (cfg.data.num_eval if eval_prompts is None else eval_prompts)
    whole = {"rollout.max_tokens_per_generate": max(rows, eval_rows),
             "rollout.max_tokens_per_logprob": rows,
             "train.max_tokens_per_forward": cfg.train.minibatch_prompts * cfg.rollout.group_size}
    out: dict[str, int] = {}
    for name, wdt in longest_rows(cfg).items():
        cap = math.ceil(whole[name] * wdt / step) * step     # a budget above this changes nothing
        section, key = name.split(".")

        def ok(b: int, section=section, key=key, name=name) -> bool:
            c = copy.deepcopy(cfg)
            setattr(getattr(c, section), key, b)
            p = plan_memory(c, device_bytes=device_bytes, device_name="target", **plan_kwargs)
            return all(p.phase_total(ph) <= p.usable_bytes for ph in phase_of[name] if ph in p.phases)
        lo = math.ceil(wdt / step) * step
        if not ok(lo):
            raise ValueError(f"{name}: even one longest row ({wdt} tokens) does not fit {device_bytes / GiB:.1f} GiB")
        if ok(cap):
            out[name] = cap
            continue
        hi = cap
        while hi - lo > step:            # largest ok multiple of step in [lo, hi)
            mid = (lo + hi) // 2 // step * step
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        out[name] = lo
    return out


# ============================================================================= time
@dataclass
class StepTime:
    """Rough seconds of one training step by phase (see estimate_step_seconds for the assumptions)."""
    seconds: dict[str, float]
    flops: dict[str, float]
    assumptions: dict[str, Any]

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def text(self) -> str:
        parts = ", ".join(f"{k} {v / 60:.1f} min" for k, v in self.seconds.items())
        return f"~{self.total / 60:.0f} min per step ({parts})"


@dataclass
class EvalTime:
    """Rough seconds of one evaluation, and how many evaluations a run makes (estimate_eval_seconds)."""
    seconds: float                       # one evaluation: decoding eval prompts x eval_k responses
    evaluations: int                     # over the run: before training, every train.eval_every steps, the last
    flops: float
    assumptions: dict[str, Any]

    @property
    def total(self) -> float:
        return self.seconds * self.evaluations


@dataclass
class RunTime:
    """Rough seconds of a whole run: train.steps training steps plus every evaluation."""
    step: StepTime
    evaluation: EvalTime
    steps: int

    @property
    def training_seconds(self) -> float:
        return self.step.total * self.steps

    @property
    def total(self) -> float:
        return self.training_seconds + self.evaluation.total

    def text(self) -> str:
        e = self.evaluation
        return (f"~{self.total / 3600:.1f} h in all: {self.steps} steps x ~{self.step.total / 60:.1f} min "
                f"({self.training_seconds / 3600:.1f} h) + {e.evaluations} evaluations x ~{e.seconds / 60:.0f} min "
                f"({e.total / 3600:.1f} h)")

    def table(self) -> str:
        """Seconds by phase: one step's phases, one evaluation, the run's training, evaluation, total."""
        rows = [(f"step: {k}", v) for k, v in self.step.seconds.items()]
        rows += [("step: total", self.step.total), ("one evaluation", self.evaluation.seconds),
                 (f"training ({self.steps} steps)", self.training_seconds),
                 (f"evaluation ({self.evaluation.evaluations} evaluations)", self.evaluation.total),
                 ("run total", self.total)]
        w = max(len(k) for k, _ in rows) + 2
        a = self.step.assumptions
        lines = [f"time estimate ({a['tflops']:g} TFLOP/s, {a['bandwidth_gbs']:g} GB/s, responses "
                 f"{100 * a['response_fill']:.0f} % of their limit; judging excluded)",
                 f"  {'phase':<{w}}{'minutes':>10}{'hours':>8}"]
        lines += [f"  {k:<{w}}{v / 60:>10.1f}{v / 3600:>8.2f}" for k, v in rows]
        return "\n".join(lines)


def _decode(s: ModelShape, r, backend: str, rows_total: int, prompt: float, max_new: int, resp: float,
            rate: float, bandwidth_gbs: float, overhead: float, device_bytes: int | None) -> tuple[float, float, dict]:
    """(seconds, FLOPs, details) of generating ``rows_total`` responses of mean length ``resp`` (at
    most ``max_new``) after prompts of mean length ``prompt``. HF: each call (rollout.max_tokens_per_generate
    / (prompt + max_new) rows, at most rollout.generation_batch_size) decodes max_new steps (its
    longest row); vLLM keeps as many rows in flight as its KV cache holds and decodes
    max(max_new, all generated tokens / rows in flight) steps. A decode step costs
    max(FLOPs / throughput, bytes read / bandwidth) + overhead; bytes = bf16 weights + the rows' KV cache."""
    hq, kvd = s.heads * s.head_dim, s.kv_heads * s.head_dim
    kv_tok = s.layers * 2 * kvd * 2
    if backend == "vllm":
        kv_gb = float(getattr(r, "vllm_kv_cache_gb", 0.0) or 0.0)
        cap = kv_gb * GiB if kv_gb > 0 else ((device_bytes or DEVICE_BYTES["H100 80GB"]) * r.vllm_gpu_memory_utilization
                                             - s.n_params * 2 - GiB)
        rows = max(1, min(rows_total, int(cap // max(1, kv_tok * (prompt + resp)))))
        steps = max(max_new, math.ceil(rows_total * resp / rows))
        calls = 1
    else:
        tok = r.max_tokens_per_generate or rows_total * (prompt + max_new)
        rows = max(1, min(rows_total, int(tok // (prompt + max_new)), r.generation_batch_size or rows_total))
        calls = math.ceil(rows_total / rows)
        steps = calls * max_new
    ctx = prompt + resp / 2                                      # mean context over a response
    step_flops = rows * (2 * s.matmul_params + 4 * s.layers * hq * ctx)
    step_bytes = s.matmul_params * 2 + rows * ctx * kv_tok
    per_step = max(step_flops / rate, step_bytes / (bandwidth_gbs * 1e9)) + overhead
    return steps * per_step, steps * step_flops, {"rows_in_flight": rows, "generate_calls": calls, "decode_steps": steps}


def _time_args(cfg, tflops, bandwidth_gbs, response_fill, prompt_tokens, decode_overhead_s, shape, device_bytes,
               backend) -> tuple:
    """The time estimates' shared arguments, checked (ValueError naming the argument), with defaults."""
    tflops = _real_arg("tflops", tflops, what=" (achieved TFLOP/s)")
    bandwidth_gbs = _real_arg("bandwidth_gbs", bandwidth_gbs, what=" (GB/s)")
    response_fill = _real_arg("response_fill", response_fill, high=1.0, what=" (mean response / its limit)")
    prompt_tokens = _real_arg("prompt_tokens", prompt_tokens, what=" (mean prompt tokens)", none_ok=True)
    decode_overhead_s = _real_arg("decode_overhead_s", decode_overhead_s, low_open=False, what=" (s per decode step)",
                                  none_ok=True)
    device_bytes = _int_arg("device_bytes", device_bytes, 1, " (the device's bytes)", none_ok=True)
    if shape is not None and not isinstance(shape, ModelShape):
        raise ValueError(f"shape must be a ModelShape or None, got {type(shape).__name__}")
    if backend not in ("hf", "vllm"):
        raise ValueError(f"backend must be 'hf' or 'vllm', got {backend!r}")
    s = shape or model_shape(cfg.model.name)
    prompt = prompt_tokens if prompt_tokens is not None else min(256, cfg.data.max_prompt_tokens)
    overhead = decode_overhead_s if decode_overhead_s is not None else (0.005 if backend == "vllm" else 0.03)
    return s, tflops * 1e12, bandwidth_gbs, response_fill, prompt, overhead, device_bytes


def estimate_step_seconds(cfg, tflops: float = 400.0, bandwidth_gbs: float = 3350.0, response_fill: float = 0.5,
                          prompt_tokens: float | None = None, decode_overhead_s: float | None = None,
                          shape: ModelShape | None = None, device_bytes: int | None = None) -> StepTime:
    """Seconds of one training step (rollout + old log-probs + update; evaluation: estimate_eval_seconds),
    from FLOPs and memory traffic under stated assumptions.

    tflops:            achieved dense bf16 throughput (default 400: ~40 % of an H100's 989 TFLOP/s peak;
                       an H200 has the same compute)
    bandwidth_gbs:     memory bandwidth for decoding (default 3350: H100 SXM; H200: 4800)
    response_fill:     mean response length as a fraction of its limit, in (0, 1] (default 0.5)
    prompt_tokens:     mean prompt length (default min(256, data.max_prompt_tokens))
    decode_overhead_s: per decode step (default 0.03 s for HF generate: Python and kernel launches of
                       ~30 layers; 0.005 s for vLLM with CUDA graphs)
    device_bytes:      GPU capacity for vLLM's KV cache (default an H100 80GB)
    Each is refused (ValueError naming it) when it is a bool, not finite, or out of its range.
    Rows: one rollout generates (advantage.gen_batch_prompts with dynamic sampling, else
    rollout.prompts_per_step) x group_size rows, computes their old log-probs, and trains on
    prompts_per_step x group_size. Training: forward 2 x matmul params per token + causal attention
    2 x layers x heads x head_dim x width^2 per row; update = 3 forwards (+1 with gradient
    checkpointing); old log-probs 1 forward (+1 for the reference model). Generation with
    rollout.backend as ``_decode`` describes.
    """
    _config_arg(cfg)
    r, m, a = cfg.rollout, cfg.model, cfg.advantage
    s, rate, bandwidth_gbs, response_fill, prompt, overhead, device_bytes = _time_args(
        cfg, tflops, bandwidth_gbs, response_fill, prompt_tokens, decode_overhead_s, shape, device_bytes, r.backend)
    resp = response_fill * r.max_new_tokens
    n_train = r.prompts_per_step * r.group_size
    n_gen = ((a.gen_batch_prompts or r.prompts_per_step) if a.dynamic_sampling else r.prompts_per_step) * r.group_size
    wmean = prompt + resp
    hq = s.heads * s.head_dim
    fwd_row = 2 * s.matmul_params * wmean + 2 * s.layers * hq * wmean ** 2
    upd = n_train * fwd_row * (4 if m.gradient_checkpointing else 3)
    old = n_gen * fwd_row * (2 if cfg.loss.kl_coef > 0 else 1)
    gen_s, gen_flops, gen = _decode(s, r, r.backend, n_gen, prompt, r.max_new_tokens, resp, rate, bandwidth_gbs,
                                    overhead, device_bytes)
    return StepTime(
        seconds={"generate": gen_s, "old log-probs": old / rate, "update": upd / rate},
        flops={"generate": gen_flops, "old log-probs": old, "update": upd},
        assumptions={"tflops": tflops, "bandwidth_gbs": bandwidth_gbs, "response_fill": response_fill,
                     "prompt_tokens": prompt, "decode_overhead_s": overhead, **gen, "generated_rows": n_gen})


def evaluations_per_run(cfg) -> int:
    """How many evaluations a run of ``cfg`` makes (the Trainer's schedule): one before training
    (train.eval_before_training), one every train.eval_every steps, and one after the last step
    when that is not already one of them."""
    t = cfg.train
    every = t.steps // t.eval_every if t.eval_every else 0
    last = 0 if t.eval_every and t.steps % t.eval_every == 0 else 1
    return int(bool(t.eval_before_training)) + every + last


def estimate_eval_seconds(cfg, tflops: float = 400.0, bandwidth_gbs: float = 3350.0, response_fill: float = 0.5,
                          eval_prompts: int | None = None, prompt_tokens: float | None = None,
                          decode_overhead_s: float | None = None, shape: ModelShape | None = None,
                          device_bytes: int | None = None, backend: str | None = None) -> EvalTime:
    """Seconds of one evaluation and the number of evaluations in a run (evaluations_per_run): decoding
    eval_prompts x train.eval_k responses of up to train.eval_max_new_tokens (0: rollout.max_new_tokens)
    tokens, with the decode model and arguments of estimate_step_seconds. eval_prompts: prompts per
    evaluation (None: data.num_eval; the AIME24 + AIME25 sets of the GPU presets are 60). backend:
    "hf" or "vllm" (None: rollout.backend). Judging the responses is not counted."""
    _config_arg(cfg)
    r, t = cfg.rollout, cfg.train
    backend = r.backend if backend is None else backend
    s, rate, bandwidth_gbs, response_fill, prompt, overhead, device_bytes = _time_args(
        cfg, tflops, bandwidth_gbs, response_fill, prompt_tokens, decode_overhead_s, shape, device_bytes, backend)
    eval_prompts = _int_arg("eval_prompts", eval_prompts, 0, " (prompts per evaluation)", none_ok=True)
    n_rows = (cfg.data.num_eval if eval_prompts is None else eval_prompts) * t.eval_k
    max_new = t.eval_max_new_tokens or r.max_new_tokens
    if n_rows == 0:
        return EvalTime(0.0, evaluations_per_run(cfg), 0.0, {"eval_rows": 0})
    secs, flops, gen = _decode(s, r, backend, n_rows, prompt, max_new, response_fill * max_new, rate, bandwidth_gbs,
                               overhead, device_bytes)
    return EvalTime(secs, evaluations_per_run(cfg), flops,
                    {"tflops": tflops, "bandwidth_gbs": bandwidth_gbs, "response_fill": response_fill, "backend": backend,
                     "prompt_tokens": prompt, "decode_overhead_s": overhead, "eval_rows": n_rows,
                     "max_new_tokens": max_new, **gen})


def estimate_run_seconds(cfg, eval_prompts: int | None = None, eval_backend: str | None = None, **kwargs) -> RunTime:
    """Seconds of a whole run: train.steps x estimate_step_seconds(cfg, **kwargs) plus every evaluation
    (estimate_eval_seconds(cfg, eval_prompts=..., backend=eval_backend, **kwargs)); ``kwargs`` are
    the shared assumptions (tflops, bandwidth_gbs, response_fill, prompt_tokens, decode_overhead_s,
    shape, device_bytes). ``.text()`` is one line, ``.table()`` the phases."""
    if eval_backend not in (None, "hf", "vllm"):
        raise ValueError(f"eval_backend must be 'hf', 'vllm' or None (rollout.backend), got {eval_backend!r}")
    return RunTime(estimate_step_seconds(cfg, **kwargs),
                   estimate_eval_seconds(cfg, eval_prompts=eval_prompts, backend=eval_backend, **kwargs),
                   cfg.train.steps)


# ============================================================================= measuring (CPU)
def measure_peak_rss(fn) -> tuple[int, Any]:
    """(peak resident memory in bytes while ``fn()`` ran, above the resident memory just before;
    fn's result). Linux only: frees unused heap pages (malloc_trim), resets the high-water mark
    (/proc/self/clear_refs) and reads VmHWM."""
    import ctypes

    def field_bytes(name: str) -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(name):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"/proc/self/status has no {name}")

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = field_bytes("VmRSS:")
    out = fn()
    return field_bytes("VmHWM:") - base, out


def plan_run(cfg, model, tokenizer, train_set: list[dict], eval_set: list[dict], device) -> MemoryPlan:
    """``plan_memory`` for a run about to start on ``device``: the loaded model's exact size and the
    longest chat-templated prompts of its training and evaluation records."""
    from .models import apply_chat_template

    def longest(records: list[dict]) -> int | None:
        texts = list({apply_chat_template(tokenizer, r["prompt"], require=True) for r in records})
        return max(len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else None

    name, capacity = detect_device(device)
    return plan_memory(cfg, device_bytes=capacity, device_name=name, model=model, eval_prompts=len(eval_set),
                       prompt_tokens=longest(train_set), eval_prompt_tokens=longest(eval_set))


def enforce_plan(plan: MemoryPlan, mode: str, show: bool = False) -> None:
    """train.memory_check for ``plan``: print it (``show``), then refuse ("refuse": ValueError naming the
    setting to change) or warn ("warn") when it does not fit the device."""
    if show:
        print(plan.table(), flush=True)
    if not plan.fits:
        if mode == "refuse":
            plan.check()
        warnings.warn(plan.message(), stacklevel=3)
