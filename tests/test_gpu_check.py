"""scripts/gpu_check.py, the GPU check for a borrowed 15-minute GPU, on CPU: its --cpu-smoke mode runs every
section (tiny shapes) and reports each in one table and a JSON file; a section that raises is reported with
its traceback and the others still run; its model config is DeepSeek-R1-Distill-Qwen-1.5B's exact shape;
the wheels it carries are the ones the Makefile downloads; and the GPU environment's lock pins vLLM's torch.

`make test-gpu-versions` also runs the smoke mode with the GPU machine's torch 2.11.0 / transformers 5.17.0
(.venv-gpuver; the test for it is skipped where that environment was not built)."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
GPU_VERSIONS_PYTHON = ROOT / ".venv-gpuver" / "bin" / "python"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def run_smoke(python: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, str(SCRIPT), "--cpu-smoke", "--out", str(out), *extra], capture_output=True,
                          text=True, timeout=900, cwd=out, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


def check_smoke_report(proc: subprocess.CompletedProcess, out: Path) -> dict:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rep = json.loads((out / "gpu_check.json").read_text())
    sec = rep["sections"]
    assert list(sec) == list("abcdefg")
    text = (out / "gpu_check.txt").read_text()
    for key, s in sec.items():   # one summary line per section, in the file and on stdout
        line = next(ln for ln in text.splitlines() if ln.startswith(f"  {key}  {s['title']}"))
        assert s["status"] in line and line in proc.stdout
    for key in "abcdef":
        assert sec[key]["status"] == "ok", (key, sec[key])
    vllm = importlib.util.find_spec("vllm") is not None
    assert sec["g"]["status"] == ("ok" if vllm else "skipped")
    # a: two real steps with non-zero gradients on the configured device
    a = sec["a"]["results"]
    assert [s["step"] for s in a["steps"]] == [1, 2] and a["param_devices"] == ["cpu"]
    assert all(s["grad/norm"] > 0 for s in a["steps"])
    # b: each phase measured and planned
    b = sec["b"]["results"]
    assert set(b["measured"]) == {"old log-probs", "update", "evaluate"}
    assert all(b["plan"]["phases_gib"][p] > 0 and b["measured"][p]["seconds"] > 0 for p in b["measured"])
    # c: projections for every phase of a step, from measured rates
    c = sec["c"]["results"]
    assert set(c["projected_step_s"]) == {"generate", "old log-probs", "update"}
    assert all(v > 0 for v in c["projected_step_s"].values()) and c["projected_eval_s"] > 0
    assert c["head"]["tile_rows"] == 2 ** 24 // (4 * c["head"]["vocab"]) and c["head"]["cpu_tile_rows"] == 27
    # d: on-policy at staleness 0 with low entropies
    d = sec["d"]["results"]
    assert d["staleness0"]["logp/max_abs_diff_old"] == 0.0 and d["staleness0"]["erc/clip_frac"] == 0.0
    assert d["mean_entropy_random_text"] <= 0.5 and d["norm_scale"] > 1
    # e: bf16 errors of bf16's size, fp32 at fp32 accuracy
    e = sec["e"]["results"]["errors"]
    assert all(0 < x < 3e-2 for x in e["fused_bf16"] + e["plain_bf16"]) and max(e["fused_fp32"]) < 1e-5
    # f: the resumed Trainer holds the saved weights; the size matches the planned one
    f = sec["f"]["results"]
    assert f["restored"] is True and f["bytes"] > 0 and f["peak_disk_bytes"] == 2 * f["expected_bytes"]
    return rep


@pytest.mark.slow
def test_cpu_smoke_runs_every_section(tmp_path):
    rep = check_smoke_report(run_smoke(sys.executable, tmp_path), tmp_path)
    assert rep["environment"]["mode"] == "cpu-smoke" and rep["environment"]["torch"] == torch.__version__


@pytest.mark.slow
@pytest.mark.skipif(not GPU_VERSIONS_PYTHON.exists(), reason="needs .venv-gpuver (make test-gpu-versions builds it)")
def test_cpu_smoke_with_the_gpu_machines_versions(tmp_path):
    rep = check_smoke_report(run_smoke(str(GPU_VERSIONS_PYTHON), tmp_path), tmp_path)
    env = rep["environment"]
    assert env["torch"].startswith("2.11.0") and env["transformers"] == "5.17.0"
    # as on the GPU machine: tyro and its dependencies come from the carried wheels, not an install
    assert sorted(w.split("-")[0] for w in env["carried_wheels"]) == ["docstring_parser", "typeguard", "tyro"]


@pytest.mark.slow
def test_a_failing_section_is_reported_and_the_others_run(gc, tmp_path, monkeypatch, capsys):
    def boom(ck, s):
        raise RuntimeError("boom in section a")

    def unmet(ck, s):
        s.row("value", "42")
        s.expect(False, "the answer is 41")

    monkeypatch.setitem(gc.SECTIONS, "a", ("raises", boom))
    monkeypatch.setitem(gc.SECTIONS, "b", ("misses a check", unmet))
    rc = gc.main(["--cpu-smoke", "--only", "a,b,e", "--out", str(tmp_path), "--work", str(tmp_path)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "[a] FAILED" in err and "Traceback" in err and "boom in section a" in err
    sec = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert sec["a"]["status"] == "failed" and "RuntimeError: boom in section a" in sec["a"]["error"]
    assert sec["a"]["summary"] == "RuntimeError: boom in section a"
    assert sec["b"]["status"] == "check failed" and sec["b"]["problems"] == ["the answer is 41"]
    assert sec["b"]["summary"].startswith("NOT the answer is 41")
    assert sec["e"]["status"] == "ok" and sec["e"]["results"]["errors"]["fused_fp32"]   # ran after the failure


def test_sections_past_the_time_budget_are_skipped(gc, tmp_path):
    rc = gc.main(["--cpu-smoke", "--only", "d,e", "--time-budget-s", "0", "--out", str(tmp_path)])
    sec = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert rc == 0 and [s["status"] for s in sec.values()] == ["skipped", "skipped"]
    assert "time budget" in sec["d"]["summary"]


def test_unknown_section_is_refused(gc, capsys):
    with pytest.raises(SystemExit) as e:
        gc.main(["--cpu-smoke", "--only", "a,z"])
    assert e.value.code == 2 and "unknown section(s) ['z']" in capsys.readouterr().err


def test_without_cuda_says_what_to_run():
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the real check")
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--cpu-smoke" in proc.stderr


def test_model_config_is_the_1_5b_shape(gc):
    from transformers import AutoModelForCausalLM, Qwen2Config

    from ercref.lm.memory import KNOWN_MODELS, ModelShape

    raw = json.loads(gc.MODEL_CONFIG.read_text())
    known = KNOWN_MODELS["deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"]
    shape = ModelShape.from_hf_config(raw)
    for name in ("layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab", "tied_embeddings",
                 "qkv_bias"):
        assert getattr(shape, name) == getattr(known, name), name
    cfg = gc.model_config(smoke=False)
    assert isinstance(cfg, Qwen2Config) and cfg.eos_token_id == 151643
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    assert sum(p.numel() for p in model.parameters()) == known.counted_params == 1_777_088_000
    tiny = gc.model_config(smoke=True)
    assert tiny.model_type == "qwen2" and tiny.vocab_size == 512 and tiny.num_hidden_layers == 2


def test_synthetic_tokenizer_covers_the_vocabulary(gc):
    from ercref.lm.models import ARITH_CHARS

    tok = gc.synthetic_tokenizer(600, 550)
    assert len(tok) == 600 and tok.eos_token_id == tok.pad_token_id == 550
    text = "What is 12 + 34? A: 46"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert len(tok(ARITH_CHARS, add_special_tokens=False)["input_ids"]) == len(ARITH_CHARS)
    assert tok.decode([599]) == "<|t599|>"
    assert "user: hi" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                 add_generation_prompt=True)
    with pytest.raises(ValueError, match="eos_id must lie in"):
        gc.synthetic_tokenizer(600, 600)


def test_carried_wheels_go_on_sys_path(gc, tmp_path, monkeypatch):
    pure = tmp_path / "ercref_probe_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(pure, "w") as z:
        z.writestr("ercref_probe_pkg/__init__.py", "VALUE = 7\n")
    (tmp_path / "native-1.0-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"")
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert gc.use_carried_wheels(tmp_path) == [pure.name]          # the binary wheel is not put on the path
    assert gc.use_carried_wheels(tmp_path) == []                   # once only
    assert sys.path[-1] == str(pure)                               # installed packages still come first
    monkeypatch.delitem(sys.modules, "ercref_probe_pkg", raising=False)
    import ercref_probe_pkg
    assert ercref_probe_pkg.VALUE == 7


def test_the_makefile_downloads_the_carried_wheels_from_the_lock(gc):
    make = (ROOT / "Makefile").read_text()
    rule = re.search(r"^gpu-check-wheels:.*?(?=^\S)", make, re.S | re.M).group(0)
    assert "--python-version 3.12 --platform manylinux_2_28_x86_64" in rule
    carried = re.search(r"^GPU_CARRIED\s*:=\s*(.+)$", make, re.M).group(1).split()
    assert sorted(carried) == sorted(gc.CARRIED_PACKAGES)
    lock = (ROOT / "requirements.lock").read_text()
    for name in carried:
        assert re.search(rf"^{re.escape(name)}==", lock, re.M), name


def test_gpu_environment_lock_pins_vllms_torch():
    lock = (ROOT / "requirements-gpu.lock").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock, re.M))
    assert pins["vllm"] == "0.32.0" and pins["torch"] == "2.13.0"
    major, minor = (int(x) for x in pins["transformers"].split(".")[:2])
    assert (major, minor) < (5, 20)                     # vllm 0.32.0's bound
    import tomllib

    lm = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["lm"]
    for req in lm:                                      # everything ercref.lm imports is locked too
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower()
        assert name in {k.lower() for k in pins}, name
    assert "make lock-gpu" in lock.splitlines()[0]
