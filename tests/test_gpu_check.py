"""scripts/gpu_check.py (issue 10's one GPU check) runs its whole code path on CPU with --cpu-smoke.

The GPU run itself needs CUDA; what is checked here is that the script runs end to end, that its
table holds every row the GPU run reports, and that the numbers it computes are sane: two logged
training steps, a planner estimate that fits, fp32 head gradients at float64 accuracy and bf16 ones
within bf16's precision.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_every_check(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--json", str(out)], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    rows = dict(rep["rows"])
    for key in ("planner estimate", "measured peak", "training steps", "vLLM weight sync",
                "fused head, bf16 autocast: grad error", "plain autograd, bf16 autocast: grad error",
                "fused head, fp32: grad error", "plan: gpu-1x80gb-1.5b, H100 80GB"):
        assert key in rows, key
        assert key in proc.stdout                       # the printed table
    res = rep["results"]
    assert [s["step"] for s in res["steps"]] == [1, 2]
    assert res["plan"]["available"] and res["plan"]["fits"] and res["plan"]["total_gb"] > 0
    assert res["rss_peak_gb"] > 0 and res["vllm_sync"] is None
    head = res["head"]
    assert head["tokens"] >= 256
    for h_err, w_err in (head["fused_bf16"], head["plain_bf16"]):
        assert 0 < h_err < 3e-2 and 0 < w_err < 3e-2   # bf16 matmuls: errors of bf16's precision, not of a bug
    assert max(head["fused_fp32"]) < 1e-5               # fp32 path: float64 accuracy up to fp32 rounding
    assert all(math.isfinite(v) for pair in (head["fused_bf16"], head["plain_bf16"]) for v in pair)


def test_gpu_check_without_cuda_says_what_to_run():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the real check")
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--cpu-smoke" in proc.stderr
