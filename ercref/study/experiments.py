"""Running the engine for experiments and the notebooks' helpers around it.

    run_arm                       train one config with the engine's Trainer; returns its log rows and
                                  token captures (the study runner, runner.run_unit, writes them to the cache)
    OnStep, SFTCache, TokenCapture the Trainer callbacks these use (live plots, a shared warm-up, per-token records)
    results_from_records          a run's in-memory log rows as DataFrames (notebook 05)
    cuda_report, planner_estimate, recipe_diff, ...   notebook 05's GPU and paper-recipe helpers

Orchestration only: every number comes from the engine's Trainer (ercref.lm.trainer) and the core
(ercref.erc_masks for the token view). Cached results live in the study cache (cache.py).
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from ercref import erc_masks
from ercref.lm.config import Config
from ercref.lm.data import load_dataset_records, write_jsonl
from ercref.lm.metrics_log import read_log
from ercref.lm.rollout import response_logprobs
from ercref.lm.trainer import Callback, Trainer
from ercref.losses import LOG_RATIO_CLAMP, loss_keywords
from ercref.paths import REPO_ROOT

from .cache import RESULTS_DIR, LogFrames  # noqa: F401  (RESULTS_DIR: notebooks import it from here)
from .start_policy import load_start, save_start, start_file, state_sha256
from .teaching import QUICK_ENV, quick_mode  # noqa: F401  (re-exported: notebooks import them from here)
from .token_view import erc_states, token_strings

DOCS_IMG_DIR = REPO_ROOT / "docs" / "img"


# ----------------------------------------------------------------------------- callbacks used here
_SFT_CACHE: dict[str, dict] = {}


class OnStep(Callback):
    """Calls ``fn(trainer, step_record)`` after every training step (live plots, progress bars)."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def on_step(self, trainer: Trainer, record: dict) -> None:
        self.fn(trainer, record)


class SFTCache(Callback):
    """Reuses the supervised warm-up across arms: it does not depend on the RL loss, so it is computed
    once per (model, seed, sft, data) config in a process, and, with ``store_dir``, once per study
    (start_policy.py: the first warm-up is stored there and later runs load it, on any machine).
    ``restore(trainer)`` before ``fit`` loads a cached or stored warm-up (and marks it done);
    ``on_sft_end`` keeps a new one. ``start`` then describes the policy RL starts from: {"sha256",
    "file" (None when not stored), "source": "computed", "stored" (loaded from the file), "memory" (this
    process's earlier run) or "initial" (no warm-up: the initial weights)}."""

    def __init__(self, store_dir=None):
        self.store_dir = Path(store_dir) if store_dir is not None else None
        self.start: dict | None = None

    @staticmethod
    def key(cfg: Config) -> str:
        return json.dumps([cfg.model.name, cfg.model.init_seed, cfg.train.seed, dataclasses.asdict(cfg.sft),
                           dataclasses.asdict(cfg.data)], sort_keys=True, default=str)

    def _file(self, cfg: Config) -> Path | None:
        return None if self.store_dir is None else start_file(self.store_dir, cfg.train.seed, self.key(cfg))

    def _describe(self, sha: str, file: Path | None, source: str) -> dict:
        rel = None if file is None else f"{self.store_dir.name}/{file.name}"
        return {"sha256": sha, "file": rel, "source": source}

    def restore(self, trainer: Trainer) -> bool:
        if trainer.step > 0:
            return False
        cfg, file = trainer.cfg, self._file(trainer.cfg)
        if cfg.sft.steps == 0:
            self.start = self._describe(state_sha256(trainer.model.state_dict()), None, "initial")
            return False
        hit, source = _SFT_CACHE.get(self.key(cfg)), "memory"
        if hit is None and file is not None and file.is_file():
            hit, source = load_start(file), "stored"
            _SFT_CACHE[self.key(cfg)] = hit
        if hit is None:
            return False
        state, sha = hit
        trainer.model.load_state_dict(state)
        trainer.model.eval()
        trainer.sft_done = True
        self.start = self._describe(sha, file if file is not None and file.is_file() else None, source)
        return True

    def on_sft_end(self, trainer: Trainer) -> None:
        state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        sha, file = state_sha256(state), self._file(trainer.cfg)
        if file is not None:
            stored, _ = save_start(file, state, self.key(trainer.cfg))
            if stored != sha:   # another process stored this setting first, and its warm-up differs
                file = None
        _SFT_CACHE[self.key(trainer.cfg)] = (state, sha)
        self.start = self._describe(sha, file, "computed")


class TokenCapture(Callback):
    """Per-token records at ``capture_steps``: before each minibatch update, one extra no-grad forward
    gives the entropy the update sees; ERC's states come from ercref.erc_masks with the run's beta
    (for an arm without ERC: the tokens ERC *would* clip, at ``capture_beta``)."""

    def __init__(self, capture_steps=(), capture_beta: float = 0.05):
        self.capture_steps = set(capture_steps)
        self.capture_beta = capture_beta
        self.records: list[dict] = []

    @torch.no_grad()
    def on_minibatch_start(self, trainer: Trainer, mb, adv, staleness: int) -> None:
        step = trainer.step + 1
        if step not in self.capture_steps:
            return
        dev, model = trainer.device, trainer.model
        was = model.training
        model.train()  # the same mode as the update's forward
        logp, ent = response_logprobs(model, mb.sequences.to(dev), mb.attention_mask.to(dev), mb.prompt_len,
                                      trainer.cfg.rollout.temperature, trainer.cfg.model.fused_head)
        model.train(was)
        lo = trainer.cfg.loss
        b_lo, b_hi = (lo.beta_low, lo.beta_high) if lo.erc else (self.capture_beta, self.capture_beta)
        rmask = mb.response_mask.to(dev)
        keep, low, high, rho = erc_masks(ent.float(), mb.old_entropy.to(dev), rmask, b_lo, b_hi)
        ratio = torch.exp((logp.float() - mb.old_logp.to(dev)).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
        resp = mb.sequences[:, mb.prompt_len:]
        for i in range(resp.shape[0]):
            n = int(rmask[i].sum())
            self.records.append({
                "step": step, "staleness": staleness, "row": i, "advantage": float(adv[i]),
                "text": mb.texts[i], "answer": mb.answers[i],
                "tokens": token_strings(trainer.tok, resp[i, :n].tolist()),
                "old_entropy": [round(float(x), 6) for x in mb.old_entropy[i, :n]],
                "entropy": [round(float(x), 6) for x in ent[i, :n]],
                "rho": [round(float(x), 6) for x in rho[i, :n]],
                "ratio": [round(float(x), 6) for x in ratio[i, :n]],
                "erc_state": erc_states(keep[i, :n].tolist(), low[i, :n].tolist(), high[i, :n].tolist()),
                "erc_applied": bool(lo.erc), "beta_low": b_lo, "beta_high": b_hi,
            })


# ----------------------------------------------------------------------------- running
def run_arm(cfg: Config, out_dir, label: str = "run", seed: int | None = None, on_step: Callable | None = None,
            capture_steps=(), checkpoints: bool = True, resume: bool = False,
            sft: SFTCache | None = None) -> tuple[list[dict], list[dict]]:
    """Train one config to cfg.train.steps; returns (log records, token records), each tagged with
    label and seed (seed defaults to cfg.train.seed). ``checkpoints=False`` writes no checkpoint
    (cached comparisons never resume). ``sft``: the warm-up cache to use (the study runner passes one
    with a store folder and reads its ``start`` after); default: this process's."""
    seed = cfg.train.seed if seed is None else seed
    if not checkpoints:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, save_checkpoints=False, save_policy=False))
    capture, sft = TokenCapture(capture_steps), (sft if sft is not None else SFTCache())
    callbacks = [sft, capture] + ([OnStep(on_step)] if on_step is not None else [])
    tr = Trainer(cfg, out_dir, resume=resume, overwrite=not resume, callbacks=callbacks)
    sft.restore(tr)
    tr.fit()
    logs = [dict(r, label=label, seed=seed) for r in read_log(tr.log.path)]
    toks = [dict(r, label=label, seed=seed) for r in capture.records]
    return logs, toks


@dataclass
class Results(LogFrames):
    """Log rows made in the notebook as DataFrames (columns: the engine's metric names, label, seed)."""
    name: str
    log: pd.DataFrame
    tokens: pd.DataFrame | None
    meta: dict

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(self.log["label"]))

    @property
    def seeds(self) -> list[int]:
        return sorted(set(int(s) for s in self.log["seed"]))


def results_from_records(name: str, logs: list[dict], tokens: list[dict] | None = None, meta: dict | None = None) -> Results:
    """Results from in-memory records (a run made in the notebook)."""
    return Results(name, pd.DataFrame.from_records(logs), pd.DataFrame.from_records(tokens) if tokens else None, meta or {})


# ----------------------------------------------------------------------------- GPU notebook helpers
PAPER_PRESET = "gpu-paper-1.5b"
ONE_GPU_PRESET = "gpu-1x80gb-1.5b"


def cuda_report(cfg: Config | None = None) -> dict:
    """{"available", "message", and when available "name", "total_gb", "free_gb"}: a plain check
    to run before loading a 1.5B model. With ``cfg``, the message also carries the memory planner's
    estimate for that config on this device (``planner_estimate``)."""
    if not torch.cuda.is_available():
        return {"available": False, "message": "No CUDA GPU found (torch.cuda.is_available() is False): the paper "
                "recipe needs one; this notebook runs its quick CPU path with the tiny model instead."}
    free, total = torch.cuda.mem_get_info()
    name = torch.cuda.get_device_name(0)
    msg = (f"CUDA GPU: {name}, {total / 2**30:.1f} GiB total, {free / 2**30:.1f} GiB free. "
           f"{ONE_GPU_PRESET!r} is sized for one 80 GB GPU; {PAPER_PRESET!r} is the authors' 64-GPU recipe "
           "(one of its steps takes ~45-65 min on one H200 with vLLM).")
    rep = {"available": True, "message": msg, "name": name, "total_gb": total / 2**30, "free_gb": free / 2**30}
    if cfg is not None:
        est = planner_estimate(cfg, device_bytes=total)
        rep["plan"] = est
        rep["message"] += "\n" + est["message"]
    return rep


def planner_estimate(cfg: Config, device_bytes: int | None = None, device_name: str | None = None) -> dict:
    """The memory planner's peak-memory and time estimate (steps and evaluations) for ``cfg``:
    ercref.study.gpu_plan.planner_estimate, the source of the README's GPU table."""
    from .gpu_plan import planner_estimate as estimate

    return estimate(cfg, device_bytes=device_bytes, device_name=device_name)


# The authors' recipe, transcribed value by value from their scripts (Kwai-Klear/ERC) with file:line
# for each value: data/recipes/erc_authors_1.5b.json. recipe_diff compares a config against it.
AUTHORS_RECIPE = REPO_ROOT / "data" / "recipes" / "erc_authors_1.5b.json"
_SOURCE_PART = re.compile(r"^[\w./-]+:\d+(-\d+)?$")
_ENTRY_KEYS = ("setting", "authors", "value", "source", "ercref")


def load_authors_recipe(path=None, variant: str | None = None) -> list[dict]:
    """The entries of the authors' recipe table (default ``AUTHORS_RECIPE``), each with setting,
    authors (the value as their script writes it), value (in ercref's units), source ("path:line",
    several joined by "; "), ercref (the config field, or None with a "why"). ``variant`` ("gppo")
    replaces the entries its own table maps to the same fields. ValueError naming the file and
    the entry for a malformed table."""
    p = Path(path) if path is not None else AUTHORS_RECIPE
    if not p.is_file():
        raise ValueError(f"recipe table {str(p)!r} does not exist")
    try:
        data = json.loads(p.read_text())
    except ValueError as e:
        raise ValueError(f"recipe table {str(p)!r} is not valid JSON: {e}") from None
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"recipe table {str(p)!r} must hold a non-empty list under 'entries'")
    if variant is not None:
        variants = data.get("variants") or {}
        if variant not in variants:
            raise ValueError(f"variant must be one of {sorted(variants)} (recipe table {str(p)!r}), got {variant!r}")
        extra = variants[variant]["entries"]
        replaced = {e.get("ercref") for e in extra if e.get("ercref")}
        entries = [e for e in entries if e.get("ercref") not in replaced] + list(extra)
    seen: dict[str, int] = {}
    for i, e in enumerate(entries):
        where = f"recipe table {str(p)!r}, entry {i} ({e.get('setting', '?') if isinstance(e, dict) else e!r})"
        if not isinstance(e, dict) or any(k not in e for k in _ENTRY_KEYS):
            raise ValueError(f"{where}: every entry needs the keys {list(_ENTRY_KEYS)}")
        parts = [s.strip() for s in str(e["source"]).split(";")]
        bad = [s for s in parts if not _SOURCE_PART.match(s)]
        if bad:
            raise ValueError(f"{where}: source must be 'path:line' or 'path:line-line' (several joined by '; '), "
                             f"got {bad[0]!r}")
        field_name = e["ercref"]
        if field_name is None:
            if not isinstance(e.get("why"), str) or not e["why"].strip():
                raise ValueError(f"{where}: an entry with ercref null must say why in 'why'")
            continue
        if not isinstance(field_name, str) or field_name.count(".") < 1:
            raise ValueError(f"{where}: ercref must be a config field name 'section.field' or null, got {field_name!r}")
        if field_name in seen:
            raise ValueError(f"{where}: ercref field {field_name!r} is also mapped by entry {seen[field_name]}")
        seen[field_name] = i
    return entries


def _recipe_fields(entries: list[dict]) -> dict:
    return {e["ercref"]: e["value"] for e in entries if e["ercref"]}


# {config field: the authors' value} for every mapped entry, and one line per authors' setting the
# config cannot express (with its source and why).
PAPER_RECIPE = _recipe_fields(load_authors_recipe())
PAPER_NOT_IN_CONFIG = [f"{e['setting']} = {e['authors']} ({e['source']}): {e['why']}"
                       for e in load_authors_recipe() if not e["ercref"]]

# Where a preset deliberately differs from the authors' value, and why (recipe_diff's "known"
# column; tests/test_experiments.py checks that every difference of these presets is listed here
# and that every listed one is still a difference).
KNOWN_DIFFERENCES: dict[str, dict[str, str]] = {
    PAPER_PRESET: {
        "rollout.backend": "vLLM is an optional install; the preset samples with HF generate so it runs wherever "
                           "torch and transformers do. Set rollout.backend=vllm for the authors' engine (and speed).",
    },
    ONE_GPU_PRESET: {
        "rollout.prompts_per_step": "32 prompts per step instead of 128 (a quarter of the rollout) so a step fits "
                                    "one 80 GB GPU and takes minutes, not an hour",
        "train.minibatch_prompts": "4 instead of 16: keeps the authors' 8 optimizer steps per rollout batch "
                                   "(the off-policy staleness ERC is about) at 32 prompts per step",
        "rollout.max_new_tokens": "responses <= 4K tokens instead of 16K (memory and time grow with length)",
        "advantage.gen_batch_prompts": "64 prompts generated per step for 32 kept: the authors' 2x over-generation "
                                       "(256 for 128) at a quarter of the batch",
        "rollout.vllm_gpu_memory_utilization": "vLLM shares one GPU with training here (the authors offloaded "
                                               "FSDP parameters and optimizer state to CPU during rollout)",
        "rollout.vllm_sleep": "vLLM frees its weights and KV cache while the policy trains (one GPU for both; "
                              "the authors' engine kept them, on 64 GPUs with offloaded training state)",
        "data.max_prompt_tokens": "1K-token prompts: the math problems are short; less padding per row",
        "train.eval_every": "evaluate every 25 steps: one 32-sample evaluation of AIME at long lengths costs "
                            "more than several training steps on one GPU",
        "train.eval_k": "avg@8 instead of avg@32 during training (same temperature / top-p)",
        "train.eval_max_new_tokens": "8K-token evaluation responses instead of 32K",
    },
}


def recipe_diff(cfg: Config, recipe: dict | None = None, variant: str | None = None,
                known: dict[str, str] | None = None) -> pd.DataFrame:
    """Rows (field, authors, config, source, known) for every field where ``cfg`` differs from the
    authors' recipe table (``load_authors_recipe(variant=variant)``), or from ``recipe``
    ({field: value}) when given. ``known`` (default: KNOWN_DIFFERENCES of cfg's preset) explains
    deliberate differences; "" in that column marks an unexplained one."""
    if recipe is None:
        entries = load_authors_recipe(variant=variant)
        recipe, sources = _recipe_fields(entries), {e["ercref"]: e["source"] for e in entries if e["ercref"]}
    else:
        sources = {}
    known = KNOWN_DIFFERENCES.get(cfg.preset, {}) if known is None else known
    flat = _config_fields(cfg)
    for kw, param in (loss_keywords(cfg.loss.loss) or {}).items():  # unset loss keywords: the loss's defaults
        flat.setdefault(f"loss.loss_kwargs.{kw}", param.default)
    rows = []
    for key, theirs in recipe.items():
        if key not in flat:
            raise ValueError(f"recipe field {key!r} is not a config field")
        mine = flat[key]
        if isinstance(theirs, float) and not isinstance(theirs, bool):
            same = isinstance(mine, (int, float)) and not isinstance(mine, bool) and abs(mine - theirs) <= 1e-12 * max(1.0, abs(theirs))
        else:
            same = mine == theirs
        if not same:
            rows.append({"field": key, "authors": theirs, "config": mine, "source": sources.get(key, ""),
                         "known": known.get(key, "")})
    return pd.DataFrame(rows, columns=["field", "authors", "config", "source", "known"])


def _config_fields(cfg: Config) -> dict:
    """{"section.field": value} for every field of cfg (dict fields whole), plus one
    "loss.loss_kwargs.KEY" per loss keyword set in the config."""
    out = {f"{sec}.{name}": v for sec, fields in cfg.to_dict().items() if isinstance(fields, dict)
           for name, v in fields.items()}
    out.update({f"loss.loss_kwargs.{k}": v for k, v in cfg.loss.loss_kwargs.items()})
    return out


def write_verl_file(records: list[dict], path, data_source: str = "synthetic") -> Path:
    """Synthetic records -> a verl-format JSONL (prompt as chat messages, answer in
    reward_model.ground_truth): a local stand-in for the hub data in quick mode."""
    rows = [{"data_source": data_source, "prompt": [{"role": "user", "content": r["prompt"]}] if isinstance(r["prompt"], str)
             else r["prompt"], "reward_model": {"style": "rule", "ground_truth": r["answer"]}} for r in records]
    return write_jsonl(rows, path)


# Benchmarks: (loader kind, hub id or local file, split). AIME rows have problem / answer fields, as MATH-500.
BENCHMARKS = {
    "AIME24": ("math500", "HuggingFaceH4/aime_2024", "train"),
    "AIME25": ("math500", "math-ai/aime25", "test"),
    "MATH-500": ("math500", "HuggingFaceH4/MATH-500", "test"),
}


def evaluate_benchmarks(trainer: Trainer, benchmarks: dict[str, tuple], limit: int | None = None) -> pd.DataFrame:
    """avg@k and pass@k of the trainer's policy on each benchmark (name -> (kind, path, split)),
    with the run's eval settings (train.eval_k, eval temperature / top-p, math-verify judge when
    reward.judge is "math"). One row per benchmark."""
    from ercref.lm.data import with_system_prompt

    saved = trainer.eval_set
    rows = []
    try:
        for name, (kind, path, split) in benchmarks.items():
            recs = load_dataset_records(kind, path, split, limit=limit)
            trainer.eval_set = [with_system_prompt(r, trainer.cfg.data.system_prompt) for r in recs]
            rec = trainer.evaluate()
            k = trainer.cfg.train.eval_k
            rows.append({"benchmark": name, "prompts": len(recs), "k": k, "avg@k": rec[f"eval/avg@{k}"],
                         "pass@k": rec[f"eval/pass@{k}"], "mean length": rec["eval/len_mean"]})
    finally:
        trainer.eval_set = saved
    return pd.DataFrame(rows)
