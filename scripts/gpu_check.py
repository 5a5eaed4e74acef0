"""The GPU check: the one-GPU recipe's code path on a CUDA device, in at most 10 minutes on an H100,
with no hub access (a randomly initialised model of DeepSeek-R1-Distill-Qwen-1.5B's exact shape).

On the GPU machine, from the repository root (one command):

    PYTHONPATH=. python scripts/gpu_check.py --out $OUT

It needs only torch (with CUDA) and transformers from that machine's own Python; ercref's other
import-time dependencies (tyro and its docstring-parser and typeguard) go along as pure-Python wheels
in .gpu-wheels/, which the script puts on sys.path itself when they are not installed. Steps:

  1. here (with the network), once:  make gpu-check-wheels
     which runs, with the versions of requirements.lock,
         pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \\
             -d .gpu-wheels tyro==... docstring-parser==... typeguard==...
  2. send the working tree with .gpu-wheels/ (git-ignored: name it in what is carried along; about
     0.2 MiB) to the GPU machine, and run the command above there. Nothing else is installed.

    PYTHONPATH=. python scripts/gpu_check.py --cpu-smoke --out DIR   # every section on CPU, tiny shapes, < 60 s
    PYTHONPATH=. python scripts/gpu_check.py --only a,d              # some sections (a-g)

The model: data/models/deepseek-r1-distill-qwen-1.5b/config.json (the hub repository's config.json:
1,777,088,000 parameters), initialised randomly (seed 0) and written with a synthetic tokenizer of
the same vocabulary size (characters plus filler tokens) to a temporary folder, which the real
Trainer loads like any model folder. --cpu-smoke uses the same config with tiny dimensions.

Sections, each guarded (a failure prints its traceback and the script goes on to the next); each
can also fail a check (a number outside what the engine promises), reported as "check failed":
  a  two full training steps of the gpu-1x80gb-1.5b recipe (fp32 weights, bf16 autocast, gradient
     checkpointing, fused head, HF generate) with short responses, through Trainer.fit
  b  peak memory of each phase at the preset's real token budgets (longest prompt + 4K response rows):
     the old-log-prob micro-batches (rollout.max_tokens_per_logprob), one minibatch's update
     (train.max_tokens_per_forward micro-batches) plus its AdamW step, and one evaluation generate call
     (rollout.max_tokens_per_generate rows of prompt + eval_max_new_tokens, prefilled to that width
     then a few decode steps) beside the memory planner's phases (ercref.lm.memory.plan_memory)
  c  time: the phases of b as achieved FLOP/s, the fused head's tile size (fused_head.tile_rows on
     this device against the 27 rows a CPU-sized tile gives V = 151,936), decode seconds per step at
     the planner's rows in flight, and the projected step and evaluation times beside the planner's
  d  staleness 0 under bf16 with realistically low entropies (the final norm scaled until the mean
     entropy is ~0.5 nats): the first minibatch's ratio is exactly 1 and ERC clips nothing; beside it
     what ERC would clip if the rollout pass's values were used as pi_old (the numerical gap of two paths)
  e  the fused head's gradients under bf16 autocast and in fp32 against float64, next to plain autograd
  f  checkpoint: size (and the size ercref.lm.checkpoint.expected_checkpoint_bytes plans), save time,
     resume time (a new Trainer with resume=True) and that the resumed weights are the saved ones
  g  vLLM, when importable: memory asleep and awake, the engine's log-probs against the policy's after
     a weight sync at a learning rate that changes bf16 weights, and generation throughput

Output: one summary table (and each section's rows) on stdout; the same as JSON in OUT/gpu_check.json
and as text in OUT/gpu_check.txt (OUT: --out, else $OUT, else the current folder). Exit status 0 when
every section passed or was skipped, 1 otherwise, 2 without CUDA outside --cpu-smoke.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS_DIR = REPO / ".gpu-wheels"
# ercref's import-time dependencies that a plain torch + transformers install lacks (pure Python)
CARRIED_PACKAGES = ("tyro", "docstring-parser", "typeguard")
MODEL_CONFIG = REPO / "data" / "models" / "deepseek-r1-distill-qwen-1.5b" / "config.json"
PRESET = "gpu-1x80gb-1.5b"
CPU_TILE_ROWS = 27          # 2**22 // (4 * 151,936): a CPU-sized fused-head tile at the 1.5B model's vocabulary
TARGET_ENTROPY = 0.5        # nats: the mean token entropy section d sets (reasoning models sample at ~0.3-1)
GiB = 2 ** 30


def use_carried_wheels(folder: Path = WHEELS_DIR) -> list[str]:
    """Append every pure-Python wheel (``*-none-any.whl``) in ``folder`` to sys.path (Python imports
    pure-Python packages from a wheel, a zip file, directly); installed packages still come first.
    Returns the wheels added."""
    added = []
    for whl in sorted(Path(folder).glob("*-none-any.whl")):
        if str(whl) not in sys.path:
            sys.path.append(str(whl))
            added.append(whl.name)
    return added


CARRIED = use_carried_wheels()
if str(REPO) not in sys.path:     # `python scripts/gpu_check.py` without PYTHONPATH=.
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from ercref.fused_head import fused_logprobs_and_entropy, tile_rows  # noqa: E402
from ercref.lm import checkpoint as ckpt  # noqa: E402
from ercref.lm.config import make_config  # noqa: E402
from ercref.lm.memory import (  # noqa: E402
    ModelShape,
    estimate_eval_seconds,
    estimate_step_seconds,
    measure_peak_rss,
    plan_memory,
)
from ercref.lm.models import ARITH_CHARS  # noqa: E402
from ercref.lm.rollout import autocast_context, generate_hf, response_logprobs, rollout  # noqa: E402
from ercref.lm.trainer import Trainer  # noqa: E402


class Skip(Exception):
    """A section that cannot run here (its reason is the message)."""


# ============================================================================= the model
def model_config(smoke: bool):
    """The R1-Distill-Qwen-1.5B config of the repository (a transformers Qwen2Config); with ``smoke``
    the same config with tiny dimensions (hidden 64, 2 layers, vocabulary 512)."""
    from transformers import Qwen2Config

    d = json.loads(MODEL_CONFIG.read_text())
    if smoke:
        d.update(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, bos_token_id=500, eos_token_id=500,
                 max_position_embeddings=4096, max_window_layers=2)
    return Qwen2Config(**{k: v for k, v in d.items() if k not in ("architectures", "torch_dtype")})


def synthetic_tokenizer(vocab_size: int, eos_id: int):
    """A fast tokenizer with exactly ``vocab_size`` ids: one token per character of ercref's
    character set (ids 0..), "<|endoftext|>" (eos and pad) at ``eos_id``, "<|unk|>", and filler
    tokens "<|tN|>" everywhere else (a random model samples any id; each decodes to its name)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = list(dict.fromkeys(ARITH_CHARS))
    if eos_id < len(chars) + 1 or eos_id >= vocab_size:
        raise ValueError(f"eos_id must lie in [{len(chars) + 1}, {vocab_size}), got {eos_id}")
    vocab = {c: i for i, c in enumerate(chars)}
    vocab["<|unk|>"] = len(chars)
    vocab["<|endoftext|>"] = eos_id
    used = set(vocab.values())
    vocab.update({f"<|t{i}|>": i for i in range(vocab_size) if i not in used})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|unk|>"))
    core.decoder = decoders.Fuse()
    core.add_special_tokens(["<|endoftext|>", "<|unk|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  unk_token="<|unk|>", padding_side="left", clean_up_tokenization_spaces=False)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    return tok


def write_model_folder(folder: Path, smoke: bool, device: str) -> Path:
    """A randomly initialised model (seed 0) of model_config(smoke) and its synthetic tokenizer,
    written with save_pretrained (bf16 safetensors on a GPU, fp32 on CPU) to ``folder``."""
    from transformers import AutoModelForCausalLM

    cfg = model_config(smoke)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.generation_config.eos_token_id = cfg.eos_token_id
    model.generation_config.pad_token_id = cfg.eos_token_id
    model.save_pretrained(folder, safe_serialization=True)
    synthetic_tokenizer(cfg.vocab_size, cfg.eos_token_id).save_pretrained(folder)
    del model
    return folder


# ============================================================================= configs
def budget_overrides(smoke: bool) -> dict:
    """Sizes of the measured phases: the preset's own on a GPU; the same ratios at tiny widths in smoke mode."""
    if not smoke:
        return {}
    return {"data.max_prompt_tokens": 64, "rollout.max_new_tokens": 40, "train.eval_max_new_tokens": 72,
            "rollout.max_tokens_per_generate": 4 * 136, "rollout.max_tokens_per_logprob": 6 * 104,
            "train.max_tokens_per_forward": 3 * 104}


def preset_config(ck: Check, **extra):
    """The gpu-1x80gb-1.5b preset on this check's model and device, HF generate (what is measured here)."""
    over = {"model.name": str(ck.model_dir()), "rollout.backend": "hf", "rollout.vllm_sleep": False,
            "data.task": "arith", "data.style": "instruct", "data.path": None, "data.eval_paths": {},
            "data.num_train": 256, "data.num_eval": 64, "reward.judge": "exact", "reward.scheme": "binary",
            "reward.require_think": False, "train.plot": False, "train.progress": False, "train.save_policy": False,
            **budget_overrides(ck.smoke)}
    if ck.smoke:   # CPU: bf16 weights stand in for bf16 autocast (the config refuses autocast without CUDA)
        over.update({"train.device": "cpu", "train.require_cuda": False, "model.bf16_autocast": False,
                     "model.dtype": "bfloat16", "train.threads": 0})
    over.update(extra)
    return make_config(PRESET, overrides=over)


def run_config(ck: Check):
    """Section a's run: the preset with short responses, 4 prompts x 8 samples (smoke: 2 x 4), 2 minibatches
    per step, 2 steps."""
    n = 4 if ck.smoke else 64
    prompts, group = (2, 4) if ck.smoke else (4, 8)
    return preset_config(ck, **{"rollout.prompts_per_step": prompts, "rollout.group_size": group,
                                "rollout.max_new_tokens": n, "train.minibatch_prompts": prompts // 2,
                                "advantage.dynamic_sampling": False, "advantage.gen_batch_prompts": 0,
                                "train.steps": 2, "train.eval_every": 0,
                                "train.eval_before_training": False, "data.num_eval": 4, "train.eval_k": 2,
                                "train.eval_max_new_tokens": n, "train.save_checkpoints": False,
                                "train.keep_last": 1, "optim.warmup_steps": 0})


def random_rewards(seed: int = 0):
    """A replacement for Trainer.score: each response is "correct" (reward 1) or not (-1) by a coin
    flip (seeded). A random model earns no reward from a judge, so every advantage would be 0 and
    every gradient 0; with random rewards the recipe's loss trains on real, non-zero gradients."""
    g = torch.Generator().manual_seed(seed)

    def score(batch, max_new_tokens):
        correct = torch.rand(len(batch.texts), generator=g) < 0.5
        return torch.where(correct, 1.0, -1.0), correct
    return score


def build_trainer(ck: Check) -> Trainer:
    tr = Trainer(run_config(ck), ck.work / "run")
    tr.score = random_rewards()
    return tr


# ============================================================================= the check's state
@dataclass
class Measured:
    """One measured phase: wall seconds, bytes in use before it, its absolute peak (torch's allocated
    bytes on CUDA, resident memory on CPU) and on CUDA the allocator's reserved peak."""
    seconds: float
    before: int
    peak: int | None
    reserved: int | None = None

    @property
    def own(self) -> int | None:
        return None if self.peak is None else self.peak - self.before

    def to_dict(self) -> dict:
        return {"seconds": self.seconds, "before_gib": self.before / GiB,
                "peak_gib": None if self.peak is None else self.peak / GiB,
                "own_gib": None if self.own is None else self.own / GiB,
                "reserved_peak_gib": None if self.reserved is None else self.reserved / GiB}


@dataclass
class Section:
    key: str
    title: str
    status: str = "not run"
    seconds: float = 0.0
    summary: str = ""
    rows: list = field(default_factory=list)
    results: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    error: str = ""

    def row(self, name: str, value: str) -> None:
        self.rows.append((name, value))

    def expect(self, ok: bool, what: str) -> None:
        """A check of this section: ``what`` is recorded as a problem when ``ok`` is false."""
        if not ok:
            self.problems.append(what)


class Check:
    """Shared state of one run of the script: mode, device, work folder, the model folder and the
    Trainer (built once, on first use; a failure to build either is re-raised to every section that
    needs it), and each section's results."""

    def __init__(self, smoke: bool, work: Path):
        self.smoke = smoke
        self.device = "cpu" if smoke else "cuda"
        self.work = work
        self.sections: dict[str, Section] = {}
        self._model_dir: Path | None = None
        self._trainer = None
        self._failed: dict[str, BaseException] = {}
        self.measured: dict[str, Measured] = {}       # section b's phases, for section c

    def _once(self, name: str, build):
        if name in self._failed:
            raise RuntimeError(f"{name} could not be built (traceback printed above)") from self._failed[name]
        try:
            return build()
        except BaseException as e:
            self._failed[name] = e
            raise

    def model_dir(self) -> Path:
        if self._model_dir is None:
            self._model_dir = self._once("the model folder", lambda: write_model_folder(
                self.work / "model", self.smoke, self.device))
        return self._model_dir

    def trainer(self) -> Trainer:
        if self._trainer is None:
            self._trainer = self._once("the Trainer", lambda: build_trainer(self))
        return self._trainer

    def drop_trainer(self) -> None:
        self._trainer = None
        free_device(self.device)

    def set_trainer(self, tr: Trainer) -> None:
        self._trainer = tr

    def shape(self) -> ModelShape:
        return ModelShape.from_hf_config(model_config(self.smoke), source=str(MODEL_CONFIG))

    def device_bytes(self) -> tuple[str, int]:
        if self.device == "cuda":
            props = torch.cuda.get_device_properties(0)
            return props.name, int(props.total_memory)
        from ercref.lm.memory import detect_device
        return detect_device("cpu")


def free_device(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(device: str, fn):
    """(Measured, fn()): wall time and peak memory of ``fn`` (CUDA: torch's allocator statistics;
    CPU: resident memory, ercref.lm.memory.measure_peak_rss)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return Measured(time.perf_counter() - t0, before, torch.cuda.max_memory_allocated(),
                        torch.cuda.max_memory_reserved()), out
    before = _rss()
    box = {}

    def timed():
        t0 = time.perf_counter()
        box["out"] = fn()
        box["s"] = time.perf_counter() - t0

    try:
        above, _ = measure_peak_rss(timed)
        peak = before + above
    except OSError:   # /proc/self/clear_refs not writable here: time only
        timed()
        peak = None
    return Measured(box["s"], before, peak), box["out"]


def _rss() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def gib(b) -> str:
    return "n/a" if b is None else f"{b / GiB:.2f} GiB"


# ============================================================================= synthetic batches
def long_prompt(n_chars: int) -> str:
    """A prompt text of ``n_chars`` characters (one token each with the synthetic tokenizer)."""
    unit = "Compute 12 + 34 and explain each step. "
    return (unit * (n_chars // len(unit) + 1))[:n_chars]


def fixed_responses(n_tokens: int, high: int, seed: int = 0):
    """A generator_fn for rollout.rollout: responses of exactly ``n_tokens`` random ids in [0, high)
    (no EOS), so every row is as long as the budget allows."""
    def gen(ids, am):
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, high, (ids.shape[0], n_tokens), generator=g).to(ids.device)
    return gen


def full_width_batch(tr: Trainer, cfg, rows: int):
    """A rollout batch of ``rows`` rows (one prompt x rows samples) at the preset's longest width:
    a prompt of data.max_prompt_tokens tokens and rollout.max_new_tokens response tokens, with the
    engine's own old-log-prob pass (rollout.rollout with the responses given) -> (batch, Measured)."""
    P, R = cfg.data.max_prompt_tokens, cfg.rollout.max_new_tokens
    eos = tr.tok.eos_token_id
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*longer than data.max_prompt_tokens.*")
        m, batch = measure(tr.device, lambda: rollout(
            tr.model, tr.tok, [long_prompt(P + 64)], ["0"], rows, R, cfg.rollout.temperature, 1.0, P, 0,
            cfg.model.fused_head, tr.autocast, fixed_responses(R, eos), max_tokens_per_logprob=cfg.rollout.max_tokens_per_logprob))
    return batch, m


# ============================================================================= sections
def section_a(ck: Check, s: Section) -> None:
    tr = ck.trainer()
    cfg = tr.cfg
    steps = tr.fit()
    s.results["steps"] = [{k: v for k, v in r.items() if isinstance(v, (int, float, str))} for r in steps]
    s.results["param_devices"] = sorted({str(p.device) for p in tr.model.parameters()})
    s.row("run", f"{cfg.rollout.prompts_per_step} prompts x {cfg.rollout.group_size}, <= {cfg.rollout.max_new_tokens} "
                 f"new tokens, {cfg.num_minibatches} minibatches per step, dtype {cfg.model.dtype}, bf16 autocast "
                 f"{cfg.model.bf16_autocast}, gradient checkpointing {cfg.model.gradient_checkpointing}")
    for r in steps:
        keys = ("reward/mean", "grad/norm", "erc/clip_frac", "logp/old_path_max_abs_diff", "time/generate_s",
                "time/old_logprob_s", "time/update_s")
        s.row(f"step {r['step']}", ", ".join(f"{k} {r[k]:.4g}" for k in keys if k in r))
    s.expect([r["step"] for r in steps] == [1, 2], f"two steps logged (got {[r['step'] for r in steps]})")
    s.expect(all(math.isfinite(r.get("grad/norm", math.nan)) for r in steps), "finite gradient norms")
    s.expect(s.results["param_devices"] == [str(tr.device) if tr.device != "cuda" else "cuda:0"],
             f"every parameter on {tr.device} (got {s.results['param_devices']})")
    s.summary = (f"{len(steps)} steps, " + ", ".join(f"{r.get('time/step_s', 0):.1f} s" for r in steps)
                 + f" per step; grad norm {steps[-1].get('grad/norm', math.nan):.3g}")


def section_b(ck: Check, s: Section) -> None:
    tr = ck.trainer()
    cfg = preset_config(ck)
    name, total = ck.device_bytes()
    P, R, W = cfg.data.max_prompt_tokens, cfg.rollout.max_new_tokens, cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    rows = cfg.rollout.group_size
    free_device(ck.device)
    # old log-probs: one prompt x group_size samples at the longest width, in max_tokens_per_logprob micro-batches
    batch, m_old = full_width_batch(tr, cfg, rows)
    # update: the same rows as one minibatch (max_tokens_per_forward micro-batches) and its AdamW step
    g = torch.Generator().manual_seed(1)
    adv = torch.randn(rows, generator=g).to(tr.device)
    rewards = torch.where(adv > 0, 1.0, -1.0)
    free_device(ck.device)
    m_upd, _ = measure(tr.device, lambda: tr.update_minibatch(batch, adv, rewards, staleness=1))
    batch = None   # noqa: F841 (freed before the next phase)
    free_device(ck.device)
    # evaluation: one generate call of rollout.max_tokens_per_generate // (prompt + eval_max_new_tokens) rows
    eval_new = cfg.train.eval_max_new_tokens or R
    ew = P + eval_new
    erows = max(1, cfg.rollout.max_tokens_per_generate // ew) if cfg.rollout.max_tokens_per_generate else 1
    k = 4 if ck.smoke else 8
    ids = torch.randint(0, len(ARITH_CHARS), (erows, ew - k), generator=g).to(tr.device)
    am = torch.ones_like(ids)
    tr.model.eval()

    def evaluate():
        with torch.no_grad(), autocast_context(tr.device, tr.autocast):
            return generate_hf(tr.model, tr.tok, ids, am, k, cfg.train.eval_temperature, cfg.train.eval_top_p,
                               max_tokens=cfg.rollout.max_tokens_per_generate)
    m_eval, _ = measure(tr.device, evaluate)
    ids = am = None   # noqa: F841 (freed)
    free_device(ck.device)
    ck.measured.update({"old log-probs": m_old, "update": m_upd, "evaluate": m_eval})
    plan = plan_memory(cfg, device_bytes=total, device_name=name, model=tr.model, prompt_tokens=P, eval_prompt_tokens=P)
    s.results.update(device=name, device_gib=total / GiB, width=W, rows=rows, eval_rows=erows, eval_width=ew,
                     plan=plan.to_dict(), measured={k2: v.to_dict() for k2, v in ck.measured.items()})
    s.row("shapes", f"old log-probs + update: {rows} rows x {W} tokens (prompt {P} + response {R}); budgets "
                    f"logprob {cfg.rollout.max_tokens_per_logprob}, forward {cfg.train.max_tokens_per_forward}; "
                    f"evaluate: {erows} rows prefilled to {ew - k} tokens + {k} decode steps")
    s.row("planner persistent", gib(plan.persistent_bytes) + " (weights, AdamW, autocast copies, reserve)")
    for phase, m in ck.measured.items():
        planned = plan.phase_total(phase)
        ratio = planned / m.peak if m.peak else math.nan
        s.row(f"{phase}", f"planner {gib(planned)} (phase alone {gib(plan.phases[phase])}); measured peak {gib(m.peak)}"
                          f" (phase alone {gib(m.own)}" + (f", reserved {gib(m.reserved)}" if m.reserved else "")
                          + f"), planner / measured {ratio:.2f}; {m.seconds:.2f} s")
        if ck.device == "cuda":   # the planner must not promise less than the phase takes
            s.expect(planned >= m.peak, f"{phase}: planner {gib(planned)} >= measured {gib(m.peak)}")
    s.summary = "; ".join(f"{p} {gib(m.peak)} vs planner {gib(plan.phase_total(p))}" for p, m in ck.measured.items())


def _achieved_rate(ck: Check, cfg, phase: str, m: Measured, rows: int) -> float:
    """FLOP/s achieved in section b's ``phase``: the planner's FLOPs of that batch (one prompt x rows
    samples at the longest width) over the measured seconds."""
    P = cfg.data.max_prompt_tokens
    one = preset_config(ck, **{"rollout.prompts_per_step": 1, "rollout.group_size": rows,
                               "advantage.dynamic_sampling": False, "train.minibatch_prompts": 1})
    flops = estimate_step_seconds(one, response_fill=1.0, prompt_tokens=P, shape=ck.shape()).flops[phase]
    return flops / max(m.seconds, 1e-9)


DECODE_ROUNDS = 4   # rounds of timed generations at most (decode_seconds): the first, then pairs


def decode_seconds(tr: Trainer, rows: int, prompt: int, n1: int, n2: int) -> float:
    """Seconds per decode step of HF generate with ``rows`` rows after a ``prompt``-token prompt:
    (time of n2 new tokens - time of n1) / (n2 - n1), so the prefill cancels out."""
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, len(ARITH_CHARS), (rows, prompt), generator=g).to(tr.device)
    am = torch.ones_like(ids)
    tr.model.eval()
    best = {n1: math.inf, n2: math.inf}

    def timed(n: int) -> None:
        sync(tr.device)
        t0 = time.perf_counter()
        with torch.no_grad(), autocast_context(tr.device, tr.autocast):
            out = generate_hf(tr.model, tr.tok, ids, am, n, 1.0, 1.0)
        sync(tr.device)
        if out.shape[1] < n:
            raise RuntimeError(f"every row ended at EOS before {n} new tokens: cannot time {n} decode steps")
        best[n] = min(best[n], time.perf_counter() - t0)

    for n in (n1, n1, n2, n1, n2):      # the first call warms up; the fastest of two of each
        timed(n)
    for _ in range(DECODE_ROUNDS - 1):  # a busy machine can make n2 tokens look no slower than n1: time more pairs
        if best[n2] > best[n1]:
            break
        timed(n1)
        timed(n2)
    if best[n2] <= best[n1]:
        raise RuntimeError(f"decode timing: {n2} new tokens took no longer than {n1} ({best[n2]:.4f} s vs "
                           f"{best[n1]:.4f} s); the machine is too noisy to time")
    return (best[n2] - best[n1]) / (n2 - n1)


def head_timing(device: str, V: int, D: int, n: int, rows: int, autocast: bool) -> float:
    """Seconds of one forward + backward of the fused head over ``n`` tokens with ``rows``-row tiles
    (bf16 autocast on CUDA, as the trainer; fp32 weights)."""
    g = torch.Generator().manual_seed(3)
    h = torch.randn(n, D, generator=g).to(device).requires_grad_()
    w = (torch.randn(V, D, generator=g) * 0.02).to(device).requires_grad_()
    labels = torch.randint(0, V, (n,), generator=g).to(device)
    best = math.inf
    for _ in range(2):
        h.grad = w.grad = None
        sync(device)
        t0 = time.perf_counter()
        with autocast_context(device, torch.bfloat16 if autocast else None):
            logp, _ = fused_logprobs_and_entropy(h, w, labels, chunk_rows=rows)
        logp.sum().backward()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def section_c(ck: Check, s: Section) -> None:
    tr = ck.trainer()
    cfg = preset_config(ck)
    shape = ck.shape()
    # fused head: today's tile size on this device against CPU-sized tiles
    V, D = shape.vocab, shape.hidden
    n = 256 if ck.smoke else 8192
    today = tile_rows(V, ck.device)
    t_today = head_timing(ck.device, V, D, n, today, tr.autocast is not None)
    t_cpu = head_timing(ck.device, V, D, n, CPU_TILE_ROWS, tr.autocast is not None)
    s.results["head"] = {"tokens": n, "vocab": V, "tile_rows": today, "seconds": t_today, "cpu_tile_rows": CPU_TILE_ROWS,
                         "cpu_tile_seconds": t_cpu}
    s.row("fused head, fwd + bwd", f"{n} tokens x V {V}: tiles of {today} rows {t_today * 1e3:.1f} ms, of "
                                   f"{CPU_TILE_ROWS} rows {t_cpu * 1e3:.1f} ms ({t_cpu / t_today:.1f}x)")
    if ck.device == "cuda":
        s.expect(today > CPU_TILE_ROWS and t_today <= t_cpu, "device-sized tiles larger and not slower than 27-row ones")
    # decode: seconds per step at the planner's rows in flight (training generation and evaluation)
    step = estimate_step_seconds(cfg, shape=shape)
    ev = estimate_eval_seconds(cfg, eval_prompts=60, shape=shape, backend="hf")
    prompt = min(256, cfg.data.max_prompt_tokens)
    n1, n2 = (2, 24) if ck.smoke else (8, 40)
    per_step = {}
    for label, rows in (("generate", step.assumptions["rows_in_flight"]), ("evaluate", ev.assumptions["rows_in_flight"])):
        if rows not in per_step.values():
            per_step[label] = decode_seconds(tr, rows, prompt, n1, n2)
        else:
            per_step[label] = per_step["generate"]
        s.row(f"decode, {label}", f"{rows} rows after {prompt} prompt tokens: {per_step[label] * 1e3:.1f} ms per step, "
                                  f"{rows / per_step[label]:.0f} tokens/s")
    s.results["decode"] = {k: {"rows": r, "seconds_per_step": per_step[k]} for k, r in
                           (("generate", step.assumptions["rows_in_flight"]), ("evaluate", ev.assumptions["rows_in_flight"]))}
    # projections for the preset (HF generate): measured rates x the planner's FLOPs and decode steps
    proj, rates = {}, {}
    b = ck.measured
    rows_b = cfg.rollout.group_size
    for phase in ("old log-probs", "update"):
        if phase in b:
            rates[phase] = _achieved_rate(ck, cfg, phase, b[phase], rows_b)
            proj[phase] = step.flops[phase] / rates[phase]
    proj["generate"] = step.assumptions["decode_steps"] * per_step["generate"]
    eval_proj = ev.assumptions["decode_steps"] * per_step["evaluate"]
    s.results.update(achieved_tflops={k: v / 1e12 for k, v in rates.items()}, projected_step_s=proj,
                     planner_step_s=dict(step.seconds), projected_eval_s=eval_proj, planner_eval_s=ev.seconds,
                     evaluations_per_run=ev.evaluations)
    for phase, secs in step.seconds.items():
        got = proj.get(phase)
        extra = f" at {rates[phase] / 1e12:.3g} TFLOP/s achieved" if phase in rates else ""
        s.row(f"step: {phase}", f"planner {secs / 60:.1f} min; projected from this run "
                                + (f"{got / 60:.1f} min{extra}" if got is not None else "n/a (section b did not run)"))
    s.row("one evaluation (60 prompts)", f"planner {ev.seconds / 60:.0f} min; projected {eval_proj / 60:.0f} min "
                                         f"({ev.assumptions['decode_steps']} decode steps); {ev.evaluations} per run")
    if len(proj) == 3:
        total = sum(proj.values())
        s.summary = (f"step ~{total / 60:.1f} min projected vs planner {step.total / 60:.1f} min; evaluation "
                     f"~{eval_proj / 60:.0f} vs {ev.seconds / 60:.0f} min; head tiles {today} rows {t_cpu / t_today:.1f}x "
                     f"faster than {CPU_TILE_ROWS}")
    else:
        s.summary = "projections need section b; " + f"head tiles {today} rows {t_cpu / t_today:.1f}x vs {CPU_TILE_ROWS}"


def _sharpen(tr: Trainer, target: float, n_tokens: int) -> tuple[float, float]:
    """Scale the final norm's weight until the policy's mean token entropy on random text is at most
    ``target`` nats (a random model is near uniform: ln V). -> (scale, mean entropy)."""
    model = tr.model
    norm = model.get_decoder().norm.weight
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, len(ARITH_CHARS), (1, n_tokens), generator=g).to(tr.device)
    am = torch.ones_like(ids)
    base = norm.detach().clone()

    def mean_entropy() -> float:
        with torch.no_grad(), autocast_context(tr.device, tr.autocast):
            _, ent = response_logprobs(model, ids, am, 1, 1.0, tr.cfg.model.fused_head)
        return float(ent.float().mean())

    scale, ent = 1.0, mean_entropy()
    while ent > target and scale < 4096:
        scale *= 1.5
        with torch.no_grad():
            norm.copy_(base * scale)
        ent = mean_entropy()
    return scale, ent


def section_d(ck: Check, s: Section) -> None:
    tr = ck.trainer()
    cfg = tr.cfg
    scale, ent = _sharpen(tr, TARGET_ENTROPY, 64 if ck.smoke else 512)
    s.row("entropy", f"final norm x {scale:.3g}: mean entropy {ent:.3f} nats on random text")
    s.expect(ent <= TARGET_ENTROPY, f"mean entropy brought to <= {TARGET_ENTROPY} nats (got {ent:.3f})")
    recs = tr.next_prompts(cfg.train.minibatch_prompts)
    batch = tr.make_rollout(recs, cfg.rollout.group_size, cfg.rollout.temperature, cfg.rollout.top_p,
                            cfg.rollout.max_new_tokens)
    n = batch.response_mask.shape[0]
    g = torch.Generator().manual_seed(5)
    adv = torch.randn(n, generator=g).to(tr.device)
    rewards = torch.where(adv > 0, 1.0, -1.0)
    # 1. the rollout pass's values as pi_old (staleness 1 semantics), at lr 0: the weights do not move
    lrs = [grp["lr"] for grp in tr.opt.param_groups]
    for grp in tr.opt.param_groups:
        grp["lr"] = 0.0
    try:
        two_paths = {k: float(v) for k, v in tr.update_minibatch(batch, adv, rewards, staleness=1).items()}
    finally:
        for grp, lr in zip(tr.opt.param_groups, lrs):
            grp["lr"] = lr
    # 2. staleness 0: the update forward's own values are pi_old
    m0 = {k: float(v) for k, v in tr.update_minibatch(batch, adv, rewards, staleness=0).items()}
    rm = batch.response_mask
    old_ent = float((batch.old_entropy * rm).sum() / rm.sum())
    s.results.update(norm_scale=scale, mean_entropy_random_text=ent, rollout_mean_entropy=old_ent,
                     staleness0=m0, rollout_pass_as_old=two_paths, tokens=int(rm.sum()))
    s.row("rollout", f"{n} responses, {int(rm.sum())} tokens, mean old entropy {old_ent:.3f} nats")
    s.row("staleness 0", f"max |logp - old| {m0['logp/max_abs_diff_old']:.3g} (ratio exactly 1: "
                         f"{m0['logp/max_abs_diff_old'] == 0}), ERC clip {m0['erc/clip_frac']:.4f}, PPO clip "
                         f"low {m0['ppo/clip_frac_low']:.4f} high {m0['ppo/clip_frac_high']:.4f}, rollout pass "
                         f"within {m0['logp/old_path_max_abs_diff']:.3g}")
    s.row("rollout pass as pi_old", f"max |logp - old| {two_paths['logp/max_abs_diff_old']:.3g}, ERC would clip "
                                    f"{two_paths['erc/clip_frac']:.4f} of tokens (two numerical paths, same weights)")
    s.expect(m0["logp/max_abs_diff_old"] == 0.0, "staleness-0 ratio exactly 1")
    s.expect(m0["erc/clip_frac"] == 0.0, "no ERC clip at staleness 0")
    s.expect(m0["ppo/clip_frac_low"] == 0.0 and m0["ppo/clip_frac_high"] == 0.0, "no PPO clip at staleness 0")
    s.summary = (f"ratio - 1 = {m0['logp/max_abs_diff_old']:.3g}, ERC clip {m0['erc/clip_frac']:.3g} at mean entropy "
                 f"{old_ent:.2f}; rollout pass as pi_old would clip {two_paths['erc/clip_frac']:.3g}")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def section_e(ck: Check, s: Section) -> None:
    tr = ck.trainer()
    model, dev = tr.model, tr.device
    n = 256 if ck.smoke else 2048
    g = torch.Generator().manual_seed(6)
    seq = torch.randint(0, len(ARITH_CHARS), (1, n + 1), generator=g).to(dev)
    with torch.no_grad(), autocast_context(dev, tr.autocast):
        hidden = model.get_decoder()(input_ids=seq, use_cache=False).last_hidden_state[0, :-1].float()
    weight = model.get_output_embeddings().weight.detach().float()
    labels = seq[0, 1:]
    up = torch.randn(n, generator=g).to(dev)

    def grads(fn, dtype=torch.float32, autocast=False):
        hh = hidden.to(dtype).clone().requires_grad_()
        ww = weight.to(dtype).clone().requires_grad_()
        with autocast_context(dev, torch.bfloat16 if autocast else None):
            out = fn(hh, ww)
        (out.double() * up.double()).sum().backward()
        return hh.grad, ww.grad

    def plain(hh, ww):
        logits = torch.nn.functional.linear(hh, ww)
        logits = logits if logits.dtype == torch.float64 else logits.float()
        return torch.log_softmax(logits, -1).gather(-1, labels[:, None])[:, 0]

    def fused(hh, ww):
        return fused_logprobs_and_entropy(hh, ww, labels)[0]

    ref = grads(plain, torch.float64)
    out = {"fused_bf16": grads(fused, autocast=True), "plain_bf16": grads(plain, autocast=True), "fused_fp32": grads(fused)}
    errs = {k: (_rel(v[0], ref[0]), _rel(v[1], ref[1])) for k, v in out.items()}
    from ercref import fused_head
    fp32_out = fused_head._MM_OUT_DTYPE.get(torch.device(dev).type)
    s.results.update(tokens=n, vocab=weight.shape[0], errors=errs, mm_fp32_out_kernel=fp32_out)
    for k, (eh, ew) in errs.items():
        s.row(k.replace("_", " "), f"relative error vs float64: d/dh {eh:.2e}, d/dW {ew:.2e}")
    s.row("dW kernel", "bf16 matmul with fp32 output (torch.mm out_dtype)" if fp32_out else
          "fp32 accumulation after an upcast (no bf16 -> fp32 matmul kernel on this device)")
    fb, pb = errs["fused_bf16"], errs["plain_bf16"]
    s.expect(fb[0] <= 1.05 * pb[0] and fb[1] <= 1.05 * pb[1], "fused bf16 gradients no worse than plain bf16 autograd")
    s.expect(max(errs["fused_fp32"]) < 1e-4, "fused fp32 gradients at fp32 accuracy")
    s.summary = (f"bf16 fused d/dh {fb[0]:.2e} d/dW {fb[1]:.2e} vs plain {pb[0]:.2e} {pb[1]:.2e}; "
                 f"fp32 {max(errs['fused_fp32']):.1e}")


def _checksum(model) -> float:
    with torch.no_grad():
        return float(sum(p.double().sum() for p in model.parameters()))


def section_f(ck: Check, s: Section) -> None:
    tr = ck.trainer()
    cfg, out = tr.cfg, tr.out
    n_params = sum(p.numel() for p in tr.model.parameters())
    dtype_bytes = next(tr.model.parameters()).element_size()
    expected = ckpt.expected_checkpoint_bytes(n_params, dtype_bytes, tensors=len(list(tr.model.parameters())),
                                              reference_model=tr.ref_model is not None)
    sync(tr.device)
    t0 = time.perf_counter()
    path = tr.save()
    t_save = time.perf_counter() - t0
    size = path.stat().st_size
    step, total = tr.step, _checksum(tr.model)
    ck.drop_trainer()
    del tr
    free_device(ck.device)
    t0 = time.perf_counter()
    tr2 = Trainer(cfg, out, resume=True)
    tr2.score = random_rewards(1)
    sync(tr2.device)
    t_resume = time.perf_counter() - t0
    ck.set_trainer(tr2)
    same = _checksum(tr2.model) == total and tr2.step == step
    peak_disk = ckpt.peak_checkpoint_disk_bytes(expected, cfg.train.keep_last)
    s.results.update(bytes=size, expected_bytes=expected, save_s=t_save, resume_s=t_resume, step=step,
                     restored=same, peak_disk_bytes=peak_disk, params=n_params)
    s.row("checkpoint", f"{path.name}: {size / GiB:.2f} GiB; planned {expected / GiB:.2f} GiB "
                        f"({100 * (size - expected) / expected:+.2f} %)")
    s.row("save / resume", f"save {t_save:.1f} s ({size / GiB / max(t_save, 1e-9):.2f} GiB/s with sha256); resume "
                           f"(a new Trainer: model folder + checkpoint) {t_resume:.1f} s")
    s.row("disk a run needs", f"{peak_disk / GiB:.1f} GiB at train.keep_last={cfg.train.keep_last} (kept + the one written)")
    s.expect(same, "the resumed Trainer holds the saved step and weights")
    s.expect(abs(size - expected) <= 0.01 * expected + 2 ** 20, "checkpoint size within 1 % of the planned size")
    s.summary = f"{size / GiB:.2f} GiB (planned {expected / GiB:.2f}), save {t_save:.1f} s, resume {t_resume:.1f} s"


def _hf_logprobs(tr: Trainer, prompts: list[list[int]], tokens: list[list[int]]) -> list[torch.Tensor]:
    """The policy's log-probs of ``tokens`` after each prompt (one forward, left-padded prompts)."""
    pad = tr.tok.pad_token_id
    P, R = max(map(len, prompts)), max(1, max(map(len, tokens)))
    seq = torch.full((len(prompts), P + R), pad, dtype=torch.long)
    am = torch.zeros_like(seq)
    for i, (p, t) in enumerate(zip(prompts, tokens)):
        seq[i, P - len(p):P], am[i, P - len(p):P] = torch.tensor(p), 1
        if t:
            seq[i, P:P + len(t)], am[i, P:P + len(t)] = torch.tensor(t), 1
    seq, am = seq.to(tr.device), am.to(tr.device)
    tr.model.eval()
    with torch.no_grad(), autocast_context(tr.device, tr.autocast):
        lp, _ = response_logprobs(tr.model, seq, am, P, 1.0, tr.cfg.model.fused_head)
    return [lp[i, :len(t)].float().cpu() for i, t in enumerate(tokens)]


def _diff(a: list[list[float]], b: list[torch.Tensor]) -> tuple[float, float]:
    d = torch.cat([(torch.tensor(x) - y).abs() for x, y in zip(a, b) if len(x)])
    return float(d.max()), float(d.mean())


def section_g(ck: Check, s: Section) -> None:
    try:
        from ercref.lm.vllm_backend import VLLMGenerator, vllm_device_type
        built_for = vllm_device_type()
    except Exception as e:  # not installed, or a broken install
        raise Skip(f"vllm is not importable here ({type(e).__name__}: {e})") from None
    if built_for != ck.device:
        raise Skip(f"the installed vllm targets {built_for!r}, this check runs on {ck.device!r}")
    tr = ck.trainer()
    gpu = ck.device == "cuda"

    def used() -> int | None:
        if not gpu:
            return None
        free, total = torch.cuda.mem_get_info()
        return total - free

    u0 = used()
    t0 = time.perf_counter()
    gen = VLLMGenerator(str(ck.model_dir()), tr.tok, device=ck.device, dtype="bfloat16" if gpu else "float32",
                        gpu_memory_utilization=0.3, kv_cache_gb=0.0 if gpu else 0.25, max_model_len=1024,
                        seed=0, enforce_eager=not gpu, sleep=gpu)
    t_build = time.perf_counter() - t0
    try:
        u1 = used()
        gen.sync_weights(tr.model)
        mem = {"before_gib": u0, "awake_gib": u1}
        if gpu:
            gen.sleep()
            mem["asleep"] = used()
            gen.sync_weights(tr.model)      # wakes weights, loads, wakes the KV cache
            mem["woken"] = used()
            s.row("memory in use", f"before engine {gib(u0)}, engine awake {gib(u1)}, asleep {gib(mem['asleep'])}, "
                                   f"woken + synced {gib(mem['woken'])}")
            s.expect(mem["asleep"] < u1 - GiB, "sleep frees the engine's memory")
        g = torch.Generator().manual_seed(7)
        prompts = [torch.randint(0, len(ARITH_CHARS), (32,), generator=g).tolist() for _ in range(8)]
        toks, lps = gen.generate_tokens(prompts, 32, 1.0, logprobs=True)
        before = _diff(lps, _hf_logprobs(tr, prompts, toks))
        # one optimizer step at a learning rate that moves bf16 weights, then the engine before and after its sync
        params = [p for p in tr.model.parameters() if p.requires_grad]
        old_bf16 = [p.detach().to(torch.bfloat16).cpu() for p in params]
        for grp in tr.opt.param_groups:
            grp["lr"] = 1e-3
        recs = tr.next_prompts(tr.cfg.train.minibatch_prompts)
        batch = tr.make_rollout(recs, tr.cfg.rollout.group_size, 1.0, 1.0, 16)
        adv = torch.randn(batch.response_mask.shape[0], generator=g).to(tr.device)
        tr.update_minibatch(batch, adv, torch.where(adv > 0, 1.0, -1.0), staleness=0)
        changed = sum(int((p.detach().to(torch.bfloat16).cpu() != o).sum()) for p, o in zip(params, old_bf16))
        frac = changed / sum(o.numel() for o in old_bf16)
        del old_bf16
        toks, lps = gen.generate_tokens(prompts, 32, 1.0, logprobs=True)
        stale = _diff(lps, _hf_logprobs(tr, prompts, toks))
        gen.sync_weights(tr.model)
        toks, lps = gen.generate_tokens(prompts, 32, 1.0, logprobs=True)
        synced = _diff(lps, _hf_logprobs(tr, prompts, toks))
        s.row("weights moved", f"lr 1e-3 AdamW step changed {100 * frac:.1f} % of the weights in bf16")
        s.row("|logp vLLM - logp policy|", f"before the step max {before[0]:.3g} mean {before[1]:.3g}; after it, "
                                           f"unsynced max {stale[0]:.3g} mean {stale[1]:.3g}; synced max {synced[0]:.3g} "
                                           f"mean {synced[1]:.3g}")
        s.expect(frac > 0.1, "the step changed at least 10 % of the bf16 weights")
        s.expect(synced[1] < stale[1], "after the sync the engine's log-probs follow the updated policy")
        # throughput
        many = [torch.randint(0, len(ARITH_CHARS), (64,), generator=g).tolist() for _ in range(16 if ck.smoke else 128)]
        n_new = 16 if ck.smoke else 256
        t1 = time.perf_counter()
        out, _ = gen.generate_tokens(many, n_new, 1.0)
        secs = time.perf_counter() - t1
        tps = sum(map(len, out)) / secs
        s.row("generation", f"{len(many)} prompts x <= {n_new} tokens in {secs:.1f} s: {tps:.0f} tokens/s; engine built "
                            f"in {t_build:.0f} s")
        s.results.update(memory_gib={k: (v / GiB if v is not None else None) for k, v in mem.items()},
                         bf16_changed_frac=frac, logp_diff_before=before, logp_diff_unsynced=stale,
                         logp_diff_synced=synced, tokens_per_s=tps, build_s=t_build)
        s.summary = f"synced |dlogp| mean {synced[1]:.3g} (unsynced {stale[1]:.3g}); {tps:.0f} tokens/s"
    finally:
        gen.close()


SECTIONS = {
    "a": ("two training steps (Trainer.fit, bf16)", section_a),
    "b": ("peak memory per phase vs the planner", section_b),
    "c": ("time per phase, head tiles, decode, projections", section_c),
    "d": ("staleness 0 under bf16, low entropies", section_d),
    "e": ("fused head gradients, bf16 vs fp32", section_e),
    "f": ("checkpoint size, save and resume", section_f),
    "g": ("vLLM: sleep/wake, weight sync, throughput", section_g),
}


# ============================================================================= running and reporting
def run_section(ck: Check, key: str, budget_s: float, t_start: float) -> Section:
    title, fn = SECTIONS[key]
    s = Section(key, title)
    ck.sections[key] = s
    elapsed = time.perf_counter() - t_start
    if elapsed > budget_s:
        s.status, s.summary = "skipped", f"the time budget ({budget_s:.0f} s) was spent before it started"
        return s
    print(f"[{key}] {title} ...", flush=True)
    t0 = time.perf_counter()
    try:
        fn(ck, s)
        s.status = "check failed" if s.problems else "ok"
    except Skip as e:
        s.status, s.summary = "skipped", str(e)
    except Exception:
        s.status, s.error = "failed", traceback.format_exc()
        print(f"[{key}] FAILED:\n{s.error}", file=sys.stderr, flush=True)
        s.summary = s.error.strip().splitlines()[-1]
    s.seconds = time.perf_counter() - t0
    if s.problems:
        s.summary = "; ".join(f"NOT {p}" for p in s.problems) + (f" | {s.summary}" if s.summary else "")
    print(f"[{key}] {s.status} in {s.seconds:.1f} s", flush=True)
    return s


def environment(smoke: bool) -> dict:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "mode": "cpu-smoke" if smoke else "gpu", "carried_wheels": CARRIED, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "cuda": torch.version.cuda}
    if not smoke:
        env["device"] = torch.cuda.get_device_name(0)
    else:
        env["device"] = f"CPU ({os.cpu_count()} cores)"
    return env


def report(ck: Check, env: dict, total_s: float) -> str:
    lines = [f"ercref GPU check ({env['mode']}): {env['device']}; Python {env['python']}, torch {env['torch']}, "
             f"transformers {env['transformers']}; {env['date']}; {total_s:.0f} s in all", ""]
    w = max(len(s.title) for s in ck.sections.values()) if ck.sections else 10
    lines.append(f"{'':2}{'section':<{w + 4}}{'status':<14}{'seconds':>8}  summary")
    for s in ck.sections.values():
        lines.append(f"  {s.key}  {s.title:<{w}}  {s.status:<14}{s.seconds:>8.1f}  {s.summary}")
    for s in ck.sections.values():
        if s.rows:
            lines += ["", f"[{s.key}] {s.title}"]
            rw = max(len(k) for k, _ in s.rows)
            lines += [f"  {k:<{rw}}  {v}" for k, v in s.rows]
    return "\n".join(lines)


def _jsonable(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    return str(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="PYTHONPATH=. python scripts/gpu_check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="every section on CPU with tiny shapes (< 60 s)")
    ap.add_argument("--out", default=None, help="folder for gpu_check.json / gpu_check.txt (default $OUT, else .)")
    ap.add_argument("--only", default=None, help=f"comma-separated sections to run, of {','.join(SECTIONS)}")
    ap.add_argument("--time-budget-s", type=float, default=540.0,
                    help="sections that would start after this many seconds are skipped (default 540)")
    ap.add_argument("--work", default=None, help="scratch folder for the model and checkpoints (default: a temporary one)")
    args = ap.parse_args(argv)
    keys = list(SECTIONS) if not args.only else [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SECTIONS]
    if unknown:
        ap.error(f"--only: unknown section(s) {unknown}; sections are {', '.join(SECTIONS)}")
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("No CUDA GPU here: the check itself needs CUDA; run with --cpu-smoke for every section on CPU "
              "(tiny shapes).", file=sys.stderr)
        return 2
    out_dir = Path(args.out or os.environ.get("OUT") or ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment(args.cpu_smoke)
    print(f"ercref GPU check: {env}", flush=True)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ercref-gpu-check-", dir=args.work) as tmp:
        ck = Check(args.cpu_smoke, Path(tmp))
        for key in keys:
            run_section(ck, key, args.time_budget_s, t_start)
        ck.drop_trainer()
    total = time.perf_counter() - t_start
    text = report(ck, env, total)
    print("\n" + text, flush=True)
    (out_dir / "gpu_check.txt").write_text(text + "\n")
    doc = {"environment": env, "seconds": total,
           "sections": {k: {"title": s.title, "status": s.status, "seconds": s.seconds, "summary": s.summary,
                            "rows": s.rows, "results": s.results, "problems": s.problems, "error": s.error}
                        for k, s in ck.sections.items()}}
    (out_dir / "gpu_check.json").write_text(json.dumps(_jsonable(doc), indent=1) + "\n")
    print(f"written: {out_dir / 'gpu_check.json'}, {out_dir / 'gpu_check.txt'}", flush=True)
    return 1 if any(s.status in ("failed", "check failed") for s in ck.sections.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
