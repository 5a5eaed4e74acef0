"""Run configuration: plain dataclasses (every hyperparameter is a named field), named presets,
config files (JSON, or YAML when PyYAML is installed) and command-line overrides.

    cfg = make_config("cpu-tiny", config_file=None, overrides=["loss.beta_low=0.1", "train.steps=5"])

Precedence: preset < config file < --set overrides. Every override names a field as
``section.field`` (``loss.loss_kwargs.beta1=0.5`` reaches into a dict field); an unknown name is
a ValueError that lists the valid ones. Values are parsed as JSON when possible (numbers, true,
null, lists), otherwise kept as strings.

Presets (see PRESETS):
    cpu-tiny        seconds: the ~1M-parameter tiny model on single-digit addition. The model starts
                    random, so the run begins with a short supervised warm-up (120 steps of next-token
                    loss on correct answers, ~10 s) that brings accuracy to ~20 % (pass@4 ~56 %), where
                    rewards vary within a group; 20 RL steps then raise it (measured: mean reward of
                    the first 5 steps 0.18 -> last 5 steps 0.25; eval avg@4 0.20 -> 0.34). Wall time
                    ~20 s on 2 idle cores, including model build, logs, checkpoints and the plot.
    cpu-smollm2     minutes: SmolLM2-135M-Instruct on 4-option multiple-choice single-digit addition
                    ("answer with the letter only"), where it starts at ~20 % accuracy and mostly
                    answers in sentences; a format reward (0.2 for a bare letter) gives the early
                    signal. ~18 s per step on 2 idle cores (generation ~20 %, old log-probs ~15 %,
                    update ~65 %), so the 16 steps take ~5-6 min. Measured (lr 1e-5): reward/mean
                    0.26 over steps 1-4 -> 0.37 over steps 5-16, mostly through the format (responses
                    shrink to "<letter><eos>"); accuracy barely moves (0.25 -> 0.27). Run longer and the
                    policy collapses onto one letter (entropy 1.5 -> 0.02 by step 18); at lr 2e-6 the
                    reward did not rise within 9 steps.
    gpu-paper-1.5b  the paper's recipe for DeepSeek-R1-Distill-Qwen-1.5B (needs a CUDA GPU; on CPU it
                    fails fast with a clear message before loading anything).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ModelConfig:
    name: str = "tiny"                  # "tiny" | "smollm2-135m-instruct" | hub id | local folder
    dtype: str = "float32"              # parameter dtype: float32 | bfloat16 | float16
    trust_remote_code: bool = False
    init_seed: int = 0                  # initialisation seed of the tiny model
    bf16_autocast: bool = False         # CUDA only: forward/backward under torch.autocast(bfloat16)
    gradient_checkpointing: bool = False
    fused_head: bool = True             # log-probs + entropy from hidden states, no [B, T, V] logits


@dataclass
class DataConfig:
    # synthetic: "arith" | "mc-arith" | "word";  real: "gsm8k" | "math500" | "verl"
    task: str = "arith"
    path: str | None = None             # local .jsonl/.parquet, or a hub dataset id (real tasks only)
    split: str = "train"                # hub split
    eval_path: str | None = None        # eval file / hub id (real tasks); None: held-out synthetic
    eval_split: str = "test"
    level: int = 1                      # synthetic difficulty level (arith: 1-4)
    num_train: int = 2000               # synthetic train prompts
    num_eval: int = 64                  # eval prompts (synthetic generated; real: first num_eval)
    style: str = "bare"                 # synthetic prompt style: "bare" (tiny model) | "instruct"
    system_prompt: str | None = None    # prepended as a system message when set
    max_prompt_tokens: int = 512        # longer prompts are left-truncated (warned)
    seed: int = 0                       # data generation and shuffling seed


@dataclass
class RolloutConfig:
    backend: str = "hf"                 # "hf" (transformers generate) | "vllm" (CUDA only)
    prompts_per_step: int = 8           # n prompts per rollout batch
    group_size: int = 8                 # G samples per prompt
    max_new_tokens: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    generation_batch_size: int = 0      # sequences per generate call (0: all at once)
    vllm_gpu_memory_utilization: float = 0.5


@dataclass
class RewardConfig:
    judge: str = "exact"                # "exact" | "choice" | "math" (math-verify)
    scheme: str = "binary"              # "binary" (1/0) | "paper" (+1/-1/-0.5) | "format"
    correct: float = 1.0
    wrong: float = 0.0                  # "paper" scheme uses -1
    no_think_close: float = -0.5        # "paper" scheme, when require_think and no </think>
    require_think: bool = False
    format_reward: float = 0.1          # "format" scheme: reward of a well-formatted wrong answer
    overlong_shaping: bool = False      # DAPO soft overlong punishment (added)
    overlong_max_length: int = 0        # L_max in tokens (0: rollout.max_new_tokens)
    overlong_buffer: int = 4            # L_buf in tokens


@dataclass
class LossConfig:
    name: str = "dapo"                  # a name in ercref.LOSSES
    eps_low: float | None = None        # None: the registered default of the loss
    eps_high: float | None = None
    clip_ratio_c: float | None = None   # dual-clip constant (dapo/gppo/dual_clip)
    loss_kwargs: dict = field(default_factory=dict)  # any other loss hyperparameter (e.g. gppo beta1)
    erc: bool = True
    beta_low: float = 0.05
    beta_high: float = 0.05
    agg_mode: str = "token-mean"
    nll_coef: float = 0.1
    entropy_coef: float = 0.0
    kl_coef: float = 0.0                # not supported by this trainer (no reference model); must be 0
    scale_adv_by_std: bool = True       # GRPO (True) or Dr.GRPO (False) advantages
    dynamic_sampling: bool = False      # drop groups whose rewards are all equal


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_steps: int = 0               # linear warm-up, counted in training steps (rollout batches), as verl
    grad_clip: float = 1.0              # max grad norm (0: no clipping)


@dataclass
class SFTConfig:
    steps: int = 0                      # supervised warm-up steps before RL (0: none)
    batch_size: int = 64
    lr: float = 3e-3


@dataclass
class TrainConfig:
    steps: int = 20                     # training steps (rollout batches)
    minibatch_prompts: int = 4          # prompts per minibatch; K = prompts_per_step / minibatch_prompts
    micro_batch_size: int = 0           # sequences per forward/backward (0: the whole minibatch)
    seed: int = 0
    device: str = "auto"                # "auto" | "cpu" | "cuda" | "cuda:N"
    threads: int = 0                    # torch intra-op CPU threads (0: torch's default)
    require_cuda: bool = False          # fail fast on a machine without CUDA
    save_every: int = 10                # checkpoint every N steps (and at the end); 0: only at the end
    keep_last: int = 2                  # checkpoints kept
    eval_every: int = 0                 # 0: eval only at the end
    eval_k: int = 4                     # samples per eval prompt (avg@k, pass@k)
    eval_temperature: float = 1.0
    eval_top_p: float = 1.0
    eval_max_new_tokens: int = 0        # 0: rollout.max_new_tokens
    tensorboard: bool = False
    progress: bool = True               # tqdm progress bar
    plot: bool = True                   # PNG of reward / entropy / clip fractions at the end


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = ""

    @property
    def num_minibatches(self) -> int:
        return self.rollout.prompts_per_step // self.train.minibatch_prompts

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- presets
PRESETS: dict[str, dict[str, Any]] = {
    "cpu-tiny": {
        "model.name": "tiny",
        "data.task": "arith", "data.level": 1, "data.style": "bare", "data.num_train": 2000, "data.num_eval": 32,
        "rollout.prompts_per_step": 16, "rollout.group_size": 8, "rollout.max_new_tokens": 4,
        "rollout.temperature": 1.0,
        "reward.judge": "exact", "reward.scheme": "binary",
        "loss.name": "dapo", "loss.erc": True, "loss.beta_low": 0.05, "loss.beta_high": 0.05, "loss.nll_coef": 0.1,
        "optim.lr": 3e-4, "optim.warmup_steps": 0, "optim.grad_clip": 1.0,
        "sft.steps": 120, "sft.batch_size": 64, "sft.lr": 3e-3,
        "train.steps": 20, "train.minibatch_prompts": 4, "train.save_every": 5, "train.eval_k": 4,
        "train.device": "cpu",
        # one thread: the tiny model's GEMMs gain nothing from two, and on a busy machine two
        # spinning OpenMP threads made the run 7x slower (228 s vs 34 s at load 5; same results)
        "train.threads": 1,
    },
    "cpu-smollm2": {
        "model.name": "smollm2-135m-instruct",
        "data.task": "mc-arith", "data.level": 1, "data.style": "instruct", "data.num_train": 1000, "data.num_eval": 32,
        "data.system_prompt": "Answer briefly.",   # shorter than SmolLM2's default system prompt
        "rollout.prompts_per_step": 8, "rollout.group_size": 4, "rollout.max_new_tokens": 12,
        "rollout.temperature": 1.0,
        "reward.judge": "choice", "reward.scheme": "format", "reward.format_reward": 0.2,
        "loss.name": "dapo", "loss.erc": True, "loss.beta_low": 0.05, "loss.beta_high": 0.05, "loss.nll_coef": 0.1,
        "optim.lr": 1e-5, "optim.warmup_steps": 2, "optim.weight_decay": 0.0, "optim.grad_clip": 1.0,
        "train.steps": 16, "train.minibatch_prompts": 4, "train.save_every": 8, "train.keep_last": 1, "train.eval_k": 2,
        "train.device": "cpu",
    },
    # The paper's recipe (arXiv 2512.05591, section 4 and the authors' scripts), line by line.
    "gpu-paper-1.5b": {
        "model.name": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        # fp32 master weights + bf16 autocast (bf16 weights would round away 1e-6 updates)
        "model.dtype": "float32", "model.bf16_autocast": True, "model.gradient_checkpointing": True,
        "data.task": "verl", "data.path": "Kwai-Klear/KlearReasoner-MathSub-30K", "data.split": "train",
        "data.eval_path": None, "data.max_prompt_tokens": 4096,
        "rollout.backend": "hf",                     # "vllm" for speed when installed
        "rollout.prompts_per_step": 128, "rollout.group_size": 8,   # 128 prompts x 8 samples
        "rollout.max_new_tokens": 16384, "rollout.temperature": 1.0, "rollout.top_p": 1.0,
        "reward.judge": "math", "reward.scheme": "paper", "reward.correct": 1.0, "reward.wrong": -1.0,
        "reward.no_think_close": -0.5, "reward.require_think": True, "reward.overlong_shaping": False,
        "loss.name": "dapo", "loss.eps_low": 0.2, "loss.eps_high": 0.28, "loss.clip_ratio_c": 10.0,
        "loss.erc": True, "loss.beta_low": 0.05, "loss.beta_high": 0.05, "loss.nll_coef": 0.1,
        "loss.agg_mode": "token-mean", "loss.dynamic_sampling": True,
        "optim.lr": 1e-6, "optim.warmup_steps": 10, "optim.weight_decay": 0.1, "optim.grad_clip": 1.0,
        "train.minibatch_prompts": 16,               # -> 8 optimizer steps per rollout batch
        "train.micro_batch_size": 8, "train.steps": 1000, "train.save_every": 20, "train.eval_every": 50,
        "train.eval_k": 32, "train.eval_temperature": 0.6, "train.eval_top_p": 0.95,
        "train.eval_max_new_tokens": 32768,
        "train.device": "cuda", "train.require_cuda": True, "train.progress": True,
    },
}


# ----------------------------------------------------------------------------- overrides
def parse_value(text: str) -> Any:
    """'0.1' -> 0.1, 'true' -> True, 'null' -> None, '[1,2]' -> [1, 2], anything else -> the string."""
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text


def _sections(cfg: Config) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))}


def set_field(cfg: Config, dotted: str, value: Any) -> None:
    """Set ``section.field`` (or ``section.dict_field.key``) on cfg; ValueError for unknown names."""
    parts = dotted.split(".")
    sections = _sections(cfg)
    if len(parts) < 2 or parts[0] not in sections:
        raise ValueError(f"unknown config field {dotted!r}: expected section.field with section one of {sorted(sections)}")
    sec = sections[parts[0]]
    names = [f.name for f in dataclasses.fields(sec)]
    if parts[1] not in names:
        raise ValueError(f"unknown config field {dotted!r}: {parts[0]} has fields {names}")
    if len(parts) == 2:
        current = getattr(sec, parts[1])
        if isinstance(current, bool) and isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        setattr(sec, parts[1], value)
    else:
        target = getattr(sec, parts[1])
        if not isinstance(target, dict):
            raise ValueError(f"config field {'.'.join(parts[:2])!r} is not a dict; cannot set {dotted!r}")
        for p in parts[2:-1]:
            target = target.setdefault(p, {})
        target[parts[-1]] = value


def apply_overrides(cfg: Config, overrides: dict[str, Any] | list[str]) -> Config:
    """Apply {"section.field": value} or ["section.field=value", ...] (values parsed by parse_value)."""
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like section.field=value")
            k, v = item.split("=", 1)
            items.append((k.strip(), parse_value(v.strip())))
    for k, v in items:
        set_field(cfg, k, v)
    return cfg


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and "." not in key:  # a section: recurse one level
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON (or YAML) file of nested sections or dotted keys -> flat {"section.field": value}."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {str(p)!r} does not exist")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise ValueError(f"config file {str(p)!r} is YAML but PyYAML is not installed; use JSON") from e
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ValueError(f"config file {str(p)!r} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(p)!r} must hold a mapping of sections, got {type(data).__name__}")
    preset = data.pop("preset", None)
    flat = _flatten(data)
    if preset is not None:
        flat["preset"] = preset
    return flat


def make_config(preset: str | None = None, config_file: str | os.PathLike | None = None,
                overrides: list[str] | dict | None = None, validate: bool = True) -> Config:
    """Preset, then config file, then overrides; validated (ValueError naming the field)."""
    file_values = load_config_file(config_file) if config_file else {}
    preset = preset or file_values.pop("preset", None) or ""
    file_values.pop("preset", None)
    cfg = Config()
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; presets: {sorted(PRESETS)}")
        apply_overrides(cfg, copy.deepcopy(PRESETS[preset]))
        cfg.preset = preset
    apply_overrides(cfg, file_values)
    apply_overrides(cfg, overrides or [])
    if validate:
        validate_config(cfg)
    return cfg


def config_from_dict(d: dict) -> Config:
    """Inverse of Config.to_dict (used to reload the config saved with a run)."""
    cfg = Config()
    preset = d.get("preset", "")
    apply_overrides(cfg, {k: v for k, v in _flatten({k: v for k, v in d.items() if k != "preset"}).items()})
    cfg.preset = preset
    return cfg


# ----------------------------------------------------------------------------- validation
def _pos_int(name: str, v: Any, allow_zero: bool = False) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be an int >= {0 if allow_zero else 1}, got {v!r}")


def _pos_float(name: str, v: Any, allow_zero: bool = False) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and v != float("inf")
    if not ok or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {v!r}")


def validate_config(cfg: Config) -> Config:
    """Check every field; ValueError naming the field. Also fails fast on a CPU-only machine
    for configs that need CUDA (train.require_cuda, model.bf16_autocast, rollout.backend=vllm)."""
    from ercref.losses import LOSSES
    from ercref.aggregation import AGG_MODES

    m, d, r, rw, lo, o, s, t = cfg.model, cfg.data, cfg.rollout, cfg.reward, cfg.loss, cfg.optim, cfg.sft, cfg.train
    if not isinstance(m.name, str) or not m.name:
        raise ValueError(f"model.name must be a non-empty string, got {m.name!r}")
    if m.dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {m.dtype!r}")
    from .data import REAL_TASKS, SYNTHETIC_TASKS
    if d.task not in SYNTHETIC_TASKS + REAL_TASKS:
        raise ValueError(f"data.task must be one of {SYNTHETIC_TASKS + REAL_TASKS}, got {d.task!r}")
    if d.task in REAL_TASKS and not d.path:
        raise ValueError(f"data.path is required for data.task={d.task!r} (a local .jsonl/.parquet file or a hub id)")
    _pos_int("data.level", d.level)
    _pos_int("data.num_train", d.num_train)
    _pos_int("data.num_eval", d.num_eval)
    _pos_int("data.max_prompt_tokens", d.max_prompt_tokens)
    if d.style not in ("bare", "instruct"):
        raise ValueError(f"data.style must be 'bare' or 'instruct', got {d.style!r}")
    if r.backend not in ("hf", "vllm"):
        raise ValueError(f"rollout.backend must be 'hf' or 'vllm', got {r.backend!r}")
    _pos_int("rollout.prompts_per_step", r.prompts_per_step)
    _pos_int("rollout.group_size", r.group_size)
    _pos_int("rollout.max_new_tokens", r.max_new_tokens)
    _pos_int("rollout.generation_batch_size", r.generation_batch_size, allow_zero=True)
    _pos_float("rollout.temperature", r.temperature)
    if not (isinstance(r.top_p, (int, float)) and 0 < r.top_p <= 1):
        raise ValueError(f"rollout.top_p must be in (0, 1], got {r.top_p!r}")
    if rw.judge not in ("exact", "choice", "math"):
        raise ValueError(f"reward.judge must be 'exact', 'choice' or 'math', got {rw.judge!r}")
    if rw.scheme not in ("binary", "paper", "format"):
        raise ValueError(f"reward.scheme must be 'binary', 'paper' or 'format', got {rw.scheme!r}")
    _pos_int("reward.overlong_max_length", rw.overlong_max_length, allow_zero=True)
    _pos_int("reward.overlong_buffer", rw.overlong_buffer)
    if lo.name not in LOSSES:
        raise ValueError(f"loss.name must be one of {sorted(LOSSES)}, got {lo.name!r}")
    if lo.erc:
        for name in ("beta_low", "beta_high"):
            v = getattr(lo, name)
            _pos_float(f"loss.{name}", v)
        if lo.beta_low >= 1:
            raise ValueError(f"loss.beta_low must be < 1 (the lower bound 1 - beta_low must stay positive), got {lo.beta_low!r}")
    if lo.agg_mode not in AGG_MODES:
        raise ValueError(f"loss.agg_mode must be one of {AGG_MODES}, got {lo.agg_mode!r}")
    for name in ("nll_coef", "entropy_coef"):
        _pos_float(f"loss.{name}", getattr(lo, name), allow_zero=True)
    if lo.kl_coef != 0:
        raise ValueError("loss.kl_coef must be 0: this trainer keeps no reference model (the paper uses no KL)")
    if lo.entropy_coef != 0:
        raise ValueError("loss.entropy_coef must be 0: the trainer's entropy is detached (the paper uses no entropy bonus)")
    if lo.eps_low is not None:
        _pos_float("loss.eps_low", lo.eps_low)
        if lo.eps_low >= 1:
            raise ValueError(f"loss.eps_low must be < 1, got {lo.eps_low!r}")
    if lo.eps_high is not None:
        _pos_float("loss.eps_high", lo.eps_high)
    if lo.clip_ratio_c is not None and not (isinstance(lo.clip_ratio_c, (int, float)) and lo.clip_ratio_c > 1):
        raise ValueError(f"loss.clip_ratio_c must be > 1, got {lo.clip_ratio_c!r}")
    if not isinstance(lo.loss_kwargs, dict):
        raise ValueError(f"loss.loss_kwargs must be a dict, got {lo.loss_kwargs!r}")
    _pos_float("optim.lr", o.lr)
    _pos_float("optim.weight_decay", o.weight_decay, allow_zero=True)
    for name in ("beta1", "beta2"):
        v = getattr(o, name)
        if not (isinstance(v, (int, float)) and 0 <= v < 1):
            raise ValueError(f"optim.{name} must be in [0, 1), got {v!r}")
    _pos_float("optim.adam_eps", o.adam_eps)
    _pos_int("optim.warmup_steps", o.warmup_steps, allow_zero=True)
    _pos_float("optim.grad_clip", o.grad_clip, allow_zero=True)
    _pos_int("sft.steps", s.steps, allow_zero=True)
    _pos_int("sft.batch_size", s.batch_size)
    _pos_float("sft.lr", s.lr)
    _pos_int("train.steps", t.steps)
    _pos_int("train.minibatch_prompts", t.minibatch_prompts)
    if r.prompts_per_step % t.minibatch_prompts:
        raise ValueError(f"train.minibatch_prompts ({t.minibatch_prompts}) must divide rollout.prompts_per_step "
                         f"({r.prompts_per_step}): the rollout batch is split into equal minibatches")
    _pos_int("train.micro_batch_size", t.micro_batch_size, allow_zero=True)
    for name in ("save_every", "eval_every", "eval_max_new_tokens"):
        _pos_int(f"train.{name}", getattr(t, name), allow_zero=True)
    _pos_int("train.keep_last", t.keep_last)
    _pos_int("train.threads", t.threads, allow_zero=True)
    _pos_int("train.eval_k", t.eval_k)
    _pos_float("train.eval_temperature", t.eval_temperature)
    if not (isinstance(t.eval_top_p, (int, float)) and 0 < t.eval_top_p <= 1):
        raise ValueError(f"train.eval_top_p must be in (0, 1], got {t.eval_top_p!r}")
    if not isinstance(t.device, str) or not (t.device in ("auto", "cpu") or t.device.startswith("cuda")):
        raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda[:N]', got {t.device!r}")
    _check_hardware(cfg)
    return cfg


def _check_hardware(cfg: Config) -> None:
    import torch

    has_cuda = torch.cuda.is_available()
    label = f"preset {cfg.preset!r}" if cfg.preset else "this config"
    if (cfg.train.require_cuda or cfg.train.device.startswith("cuda")) and not has_cuda:
        raise ValueError(
            f"{label} needs a CUDA GPU (train.device={cfg.train.device!r}, train.require_cuda="
            f"{cfg.train.require_cuda}), but torch.cuda.is_available() is False on this machine. "
            "gpu-paper-1.5b is documented as GPU-only (a 1.5B model with 16K-token responses); "
            "use --preset cpu-tiny or cpu-smollm2 on CPU.")
    if cfg.model.bf16_autocast and not has_cuda:
        raise ValueError("model.bf16_autocast=True needs CUDA (bf16 autocast is not used on CPU); set it to false")
    if cfg.rollout.backend == "vllm":
        from .rollout import check_vllm_available
        check_vllm_available(cfg.train.device)


def resolve_device(cfg: Config) -> str:
    import torch

    if cfg.train.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.train.device
