"""Multi-seed comparisons for notebooks 03-05: run arms x seeds with the engine, cache the logs
under data/results/, load them back. Orchestration only: every number comes from the engine's
Trainer (ercref.lm.trainer) and the core (ercref.erc_masks for the token view).

Cached layout of one experiment ``NAME`` (small files, committed):

    data/results/NAME.jsonl         every engine log line (kinds step / minibatch / eval / sft),
                                    plus "label" (arm) and "seed"
    data/results/NAME_tokens.jsonl  per-token captures (optional): one line per response at the
                                    capture steps, with the token strings, old / new entropy,
                                    importance ratio and the ERC state per token
    data/results/NAME.meta.json     preset, base overrides, arms, seeds, wall time, machine

Regenerate (``python -m ercref.study.experiments --help``):

    python -m ercref.study.experiments tiny      # notebook 03: 10 arms x 3 seeds, ~10 min (1 torch thread)
    python -m ercref.study.experiments smollm2   # notebook 04: 2 arms x 3 seeds, ~10 min per run (1 thread)

Arms can run in parallel processes (one torch thread each), then be merged:

    python -m ercref.study.experiments smollm2 --labels DAPO --results-dir /tmp/a
    python -m ercref.study.experiments smollm2 --labels DAPO+ERC --results-dir /tmp/b
    python -m ercref.study.experiments smollm2 --merge-from /tmp/a /tmp/b
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from ercref import erc_masks
from ercref.lm.config import Config, make_config
from ercref.lm.data import load_dataset_records, write_jsonl
from ercref.lm.metrics_log import read_log
from ercref.lm.rollout import response_logprobs
from ercref.lm.trainer import Callback, Trainer
from ercref.losses import LOG_RATIO_CLAMP, loss_keywords
from ercref.paths import REPO_ROOT

from .teaching import QUICK_ENV, quick_mode  # noqa: F401  (re-exported: notebooks import them from here)
from .token_view import erc_states, token_strings

RESULTS_DIR = REPO_ROOT / "data" / "results"
DOCS_IMG_DIR = REPO_ROOT / "docs" / "img"
# ----------------------------------------------------------------------------- experiment specs
@dataclass
class Experiment:
    """A named comparison: a preset plus shared overrides, and arms (label -> extra overrides)."""
    name: str
    preset: str
    base: dict
    arms: dict[str, dict]
    seeds: list[int]
    capture_steps: list[int] = field(default_factory=list)

    def config(self, label: str, seed: int, extra: dict | None = None) -> Config:
        if label not in self.arms:
            raise ValueError(f"label must be one of {list(self.arms)}, got {label!r}")
        over = {**self.base, **self.arms[label], "train.seed": seed, **(extra or {})}
        return make_config(self.preset, overrides=over)


def erc_arm(loss: str, beta: float | None, **extra) -> dict:
    """Overrides of one arm: loss name, ERC on (beta_low = beta_high = beta) or off (beta None)."""
    arm = {"loss.loss": loss, "loss.erc": beta is not None, **extra}
    if beta is not None:
        arm.update({"loss.beta_low": float(beta), "loss.beta_high": float(beta)})
    return arm


def arm_label(loss: str, beta: float | None) -> str:
    return loss.upper() if beta is None else f"{loss.upper()}+ERC b={beta:g}"


# Notebook 03: the tiny model on single-digit addition (cpu-tiny preset), 4 optimizer steps per batch.
TINY_BETAS = (0.02, 0.05, 0.1, 0.2)
GPPO_EPS = {"loss.loss_kwargs.eps_low": 0.2, "loss.loss_kwargs.eps_high": 0.2}   # GPPO+ERC in the paper: eps 0.2 / 0.2
TINY_BASE = {"train.threads": 1, "train.progress": False, "train.plot": False}


def tiny_experiment(seeds=(0, 1, 2), betas=TINY_BETAS, steps: int = 20, sft_steps: int = 120) -> Experiment:
    arms = {arm_label("dapo", None): erc_arm("dapo", None), arm_label("gppo", None): erc_arm("gppo", None, **GPPO_EPS)}
    for b in betas:
        arms[arm_label("dapo", b)] = erc_arm("dapo", b)
        arms[arm_label("gppo", b)] = erc_arm("gppo", b, **GPPO_EPS)
    base = {**TINY_BASE, "train.steps": steps, "sft.steps": sft_steps}
    return Experiment("tiny_beta_sweep", "cpu-tiny", base, arms, list(seeds))


# Notebook 04: SmolLM2-135M-Instruct, 4-option multiple choice, DAPO vs DAPO+ERC (beta 0.05).
SMOL_BASE = {"train.threads": 1, "train.progress": False, "train.plot": False, "train.steps": 10,
             "rollout.prompts_per_step": 8, "rollout.group_size": 4, "rollout.max_new_tokens": 12,
             "train.minibatch_prompts": 2,          # K = 4 optimizer steps per rollout batch
             "train.eval_k": 2, "data.num_eval": 32}


def smollm2_experiment(seeds=(0, 1, 2), steps: int = 10, capture_steps=(3, 6, 9)) -> Experiment:
    arms = {"DAPO": erc_arm("dapo", None), "DAPO+ERC": erc_arm("dapo", 0.05)}
    return Experiment("smollm2_dapo_vs_erc", "cpu-smollm2", {**SMOL_BASE, "train.steps": steps}, arms,
                      list(seeds), [s for s in capture_steps if s <= steps])


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
    once per (model, seed, sft, data) config in a process. ``restore(trainer)`` before ``fit`` loads a
    cached warm-up (and marks it done); ``on_sft_end`` stores a new one."""

    @staticmethod
    def key(cfg: Config) -> str:
        return json.dumps([cfg.model.name, cfg.model.init_seed, cfg.train.seed, dataclasses.asdict(cfg.sft),
                           dataclasses.asdict(cfg.data)], sort_keys=True, default=str)

    def restore(self, trainer: Trainer) -> bool:
        state = _SFT_CACHE.get(self.key(trainer.cfg))
        if state is None or trainer.step > 0:
            return False
        trainer.model.load_state_dict(state)
        trainer.model.eval()
        trainer.sft_done = True
        return True

    def on_sft_end(self, trainer: Trainer) -> None:
        _SFT_CACHE[self.key(trainer.cfg)] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


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
            capture_steps=(), checkpoints: bool = True, resume: bool = False) -> tuple[list[dict], list[dict]]:
    """Train one config to cfg.train.steps; returns (log records, token records), each tagged with
    label and seed (seed defaults to cfg.train.seed). ``checkpoints=False`` writes no checkpoint
    (cached comparisons never resume)."""
    seed = cfg.train.seed if seed is None else seed
    if not checkpoints:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, save_checkpoints=False, save_policy=False))
    capture, sft = TokenCapture(capture_steps), SFTCache()
    callbacks = [sft, capture] + ([OnStep(on_step)] if on_step is not None else [])
    tr = Trainer(cfg, out_dir, resume=resume, overwrite=not resume, callbacks=callbacks)
    sft.restore(tr)
    tr.fit()
    logs = [dict(r, label=label, seed=seed) for r in read_log(tr.log.path)]
    toks = [dict(r, label=label, seed=seed) for r in capture.records]
    return logs, toks


def run_experiment(exp: Experiment, results_dir=None, labels: list[str] | None = None, extra: dict | None = None,
                   work_dir=None, verbose: bool = True) -> Results:
    """Run every (seed, arm) of ``exp`` (seeds outer, so paired arms finish together), appending to
    the cache files after each run (a partial run leaves usable results). Returns the Results."""
    results_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    results_dir.mkdir(parents=True, exist_ok=True)
    labels = labels or list(exp.arms)
    paths = cache_paths(exp.name, results_dir)
    for p in (paths["log"], paths["tokens"]):
        p.unlink(missing_ok=True)
    tmp_root = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix=f"ercref-{exp.name}-"))
    t0 = time.perf_counter()
    run_times = []
    try:
        for seed in exp.seeds:
            for label in labels:
                cfg = exp.config(label, seed, extra)
                t1 = time.perf_counter()
                logs, toks = run_arm(cfg, tmp_root / f"{_slug(label)}-s{seed}", label, seed,
                                     capture_steps=exp.capture_steps, checkpoints=False)
                dt = time.perf_counter() - t1
                run_times.append({"label": label, "seed": seed, "wall_s": round(dt, 1)})
                _append_jsonl(paths["log"], logs)
                if toks:
                    _append_jsonl(paths["tokens"], toks)
                if verbose:
                    steps = [r for r in logs if r["kind"] == "step"]
                    print(f"[{exp.name}] {label} seed {seed}: {len(steps)} steps in {dt:.1f} s", flush=True)
                _write_meta(paths["meta"], exp, extra, labels, run_times, time.perf_counter() - t0, complete=False)
    finally:
        if work_dir is None:
            shutil.rmtree(tmp_root, ignore_errors=True)
    _write_meta(paths["meta"], exp, extra, labels, run_times, time.perf_counter() - t0, complete=True)
    return load_results(exp.name, results_dir)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_").lower()


def compact(record: dict, digits: int = 6) -> dict:
    """Floats rounded to ``digits`` significant digits (cached files stay small; the metrics are
    float32 anyway, whose resolution is ~7 digits)."""
    return {k: (float(f"{v:.{digits}g}") if isinstance(v, float) else v) for k, v in record.items()}


def _append_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "a") as fh:
        for r in records:
            fh.write(json.dumps(compact(r)) + "\n")


def _write_meta(path: Path, exp: Experiment, extra, labels, run_times, wall_s: float, complete: bool) -> None:
    meta = {"name": exp.name, "preset": exp.preset, "base_overrides": exp.base, "extra_overrides": extra or {},
            "arms": {k: exp.arms[k] for k in labels}, "seeds": exp.seeds, "capture_steps": exp.capture_steps,
            "runs": run_times, "wall_s": round(wall_s, 1), "complete": complete,
            "machine": {"cpus": os.cpu_count(), "torch_threads": 1, "platform": platform.platform(),
                        "torch": torch.__version__},
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    path.write_text(json.dumps(meta, indent=2))


# ----------------------------------------------------------------------------- loading
def cache_paths(name: str, results_dir=None) -> dict[str, Path]:
    d = Path(results_dir) if results_dir is not None else RESULTS_DIR
    return {"log": d / f"{name}.jsonl", "tokens": d / f"{name}_tokens.jsonl", "meta": d / f"{name}.meta.json"}


class LogFrames:
    """``.steps`` / ``.minibatches`` / ``.evals``: the rows of ``self.log`` (engine log rows with a
    "kind" column) of one kind, all-empty columns dropped; an empty log gives an empty frame."""
    log: pd.DataFrame

    def kind(self, kind: str) -> pd.DataFrame:
        if self.log.empty:
            return self.log.iloc[0:0].copy()
        return self.log[self.log["kind"] == kind].dropna(axis=1, how="all").reset_index(drop=True)

    @property
    def steps(self) -> pd.DataFrame:
        return self.kind("step")

    @property
    def minibatches(self) -> pd.DataFrame:
        return self.kind("minibatch")

    @property
    def evals(self) -> pd.DataFrame:
        return self.kind("eval")


@dataclass
class Results(LogFrames):
    """One experiment's logs as DataFrames (columns: the engine's metric names, label, seed)."""
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


def load_results(name: str, results_dir=None) -> Results:
    """Results of a cached experiment; ValueError naming the file when it is missing or empty."""
    paths = cache_paths(name, results_dir)
    if not paths["log"].is_file():
        raise ValueError(f"no cached results {str(paths['log'])!r}; regenerate with "
                         f"`python -m ercref.study.experiments` (see its --help)")
    recs = [json.loads(line) for line in paths["log"].read_text().splitlines() if line.strip()]
    if not recs:
        raise ValueError(f"cached results {str(paths['log'])!r} hold no records")
    for r in recs:
        if "label" not in r or "seed" not in r:
            raise ValueError(f"cached results {str(paths['log'])!r}: a record has no label/seed")
    tokens = None
    if paths["tokens"].is_file():
        tokens = pd.DataFrame.from_records([json.loads(line) for line in paths["tokens"].read_text().splitlines() if line.strip()])
    meta = json.loads(paths["meta"].read_text()) if paths["meta"].is_file() else {}
    return Results(name, pd.DataFrame.from_records(recs), tokens, meta)


def merge_results(name: str, parts: list, results_dir=None) -> Results:
    """Combine caches of one experiment written in parts (e.g. arms run by parallel processes, each
    with its own --results-dir) into ``results_dir``. Meta: the union of arms, seeds and runs;
    ``wall_s`` is the longest part (elapsed, parts in parallel), ``run_wall_s`` the sum over runs."""
    logs, toks, metas = [], [], []
    for d in parts:
        paths = cache_paths(name, d)
        if not paths["log"].is_file() or not paths["meta"].is_file():
            raise ValueError(f"part {str(d)!r} holds no complete cache of {name!r}")
        logs.append(paths["log"].read_text())
        if paths["tokens"].is_file():
            toks.append(paths["tokens"].read_text())
        metas.append(json.loads(paths["meta"].read_text()))
    out = cache_paths(name, results_dir)
    out["log"].parent.mkdir(parents=True, exist_ok=True)
    out["log"].write_text("".join(logs))
    if toks:
        out["tokens"].write_text("".join(toks))
    meta = dict(metas[0])
    runs = [r for m in metas for r in m["runs"]]   # the runs each part finished (a part may have been stopped early)
    arms = {k: v for m in metas for k, v in m["arms"].items()}
    meta["arms"] = {k: arms[k] for k in dict.fromkeys(r["label"] for r in runs)}
    meta["seeds"] = sorted({r["seed"] for r in runs})
    meta["runs"] = runs
    meta["wall_s"] = max(m["wall_s"] for m in metas)
    meta["run_wall_s"] = round(sum(r["wall_s"] for r in runs), 1)
    meta["parallel_parts"] = len(metas)
    done = {(r["label"], r["seed"]) for r in runs}
    meta["complete"] = all((a, s) in done for a in meta["arms"] for s in meta["seeds"])  # every arm x seed
    out["meta"].write_text(json.dumps(meta, indent=2))
    return load_results(name, results_dir)


def results_from_records(name: str, logs: list[dict], tokens: list[dict] | None = None, meta: dict | None = None) -> Results:
    """Results from in-memory records (a run made in the notebook)."""
    return Results(name, pd.DataFrame.from_records(logs), pd.DataFrame.from_records(tokens) if tokens else None, meta or {})


def token_table(tokens: pd.DataFrame) -> pd.DataFrame:
    """One row per response token of the captures: label, seed, step, staleness, old_entropy,
    entropy, rho, ratio, erc_state (-1 / 0 / +1), clipped (bool)."""
    rows = []
    for r in tokens.itertuples(index=False):
        for t in range(len(r.tokens)):
            rows.append({"label": r.label, "seed": r.seed, "step": r.step, "staleness": r.staleness,
                         "token": r.tokens[t], "old_entropy": r.old_entropy[t], "entropy": r.entropy[t],
                         "rho": r.rho[t], "ratio": r.ratio[t], "erc_state": r.erc_state[t],
                         "clipped": r.erc_state[t] != 0, "erc_applied": r.erc_applied})
    return pd.DataFrame.from_records(rows)


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
    """The memory planner's (ercref.lm.memory) peak-memory and step-time estimate for ``cfg`` on a
    device of ``device_bytes`` (None: the detected one): {"available", "message", and when available
    "total_gb", "fits", "step_s", "table"}. Pure arithmetic, so it runs on CPU for a GPU config."""
    try:
        from ercref.lm.memory import estimate_step_seconds, plan_memory
    except ImportError:  # the planner is part of the engine; kept optional for older checkouts
        return {"available": False, "message": "memory planner: not available (ercref.lm.memory is missing)"}
    plan = plan_memory(cfg, device_bytes=device_bytes, device_name=device_name)
    step = estimate_step_seconds(cfg, device_bytes=plan.device_bytes)
    msg = (f"memory planner: peak {plan.total_bytes / 2**30:.1f} GiB of {plan.device_bytes / 2**30:.1f} GiB "
           f"({plan.device_name}): {'fits' if plan.fits else 'does NOT fit'}; {step.text()}, "
           f"~{step.total * cfg.train.steps / 3600:.1f} h for {cfg.train.steps} steps without evaluation "
           "(estimates, not measurements)")
    return {"available": True, "message": msg, "total_gb": plan.total_bytes / 2**30, "fits": bool(plan.fits),
            "step_s": float(step.total), "table": plan.table()}


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


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ercref.study.experiments",
                                 description="Regenerate the cached comparisons the notebooks re-plot (data/results/).")
    ap.add_argument("which", choices=["tiny", "smollm2", "all"])
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2)")
    ap.add_argument("--steps", type=int, default=None, help="RL steps per run")
    ap.add_argument("--results-dir", default=None, help=f"default {RESULTS_DIR}")
    ap.add_argument("--labels", nargs="+", default=None, help="run only these arms (e.g. to split arms over processes, "
                    "then combine the folders with merge_results)")
    ap.add_argument("--merge-from", nargs="+", default=None, metavar="DIR",
                    help="instead of running: merge the caches of this experiment found in these folders")
    args = ap.parse_args(argv)
    kw = {k: v for k, v in (("seeds", args.seeds), ("steps", args.steps)) if v}
    todo = [make(**kw) for name, make in (("tiny", tiny_experiment), ("smollm2", smollm2_experiment))
            if args.which in (name, "all")]
    if args.merge_from:
        for exp in todo:
            res = merge_results(exp.name, args.merge_from, args.results_dir)
            print(f"[{exp.name}] merged {len(args.merge_from)} parts: arms {res.labels}, seeds {res.seeds}")
        return 0
    for exp in todo:
        t0 = time.perf_counter()
        res = run_experiment(exp, args.results_dir, labels=args.labels)
        print(f"[{exp.name}] done: {len(res.labels)} arms x {len(res.seeds)} seeds in {time.perf_counter() - t0:.0f} s "
              f"-> {cache_paths(exp.name, args.results_dir)['log']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
