"""The GPU figures the README and notebook 05 state come from the planner (ercref.study.gpu_plan):
the README's <!-- gpu-plan --> block must be gpu_plan_markdown(), no planner figure is typed elsewhere
in the README's GPU section or in notebook 05's prose, and the estimate counts the evaluations."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ercref.lm.config import make_config
from ercref.lm.memory import DEVICE_BYTES, estimate_eval_seconds, estimate_step_seconds, evaluations_per_run
from ercref.study import gpu_plan
from ercref.study.experiments import planner_estimate

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NB05 = ROOT / "notebooks" / "05_gpu_paper_recipe.ipynb"

# a memory or time figure: "53.7 GiB", "~31 min", "~5 h", "214 days", and words for one
FIGURE = re.compile(r"(?<![\w-])\d[\d.,]*\s*(?:GiB|GB|TB|min|minutes|h|hours|days|weeks)\b|tens of minutes|hours per step",
                    flags=re.I)
HARDWARE = re.compile(r"\b(?:40|80|141) ?GB\b")   # a GPU's size names the hardware, not an estimate


@pytest.fixture(scope="module")
def markdown() -> str:
    return gpu_plan.gpu_plan_markdown()


def _gpu_section(text: str) -> str:
    start = text.index("\n## GPU\n")
    return text[start:text.index("\n## ", start + 1)]


def test_readme_gpu_table_is_the_planners(markdown):
    block = gpu_plan.README_BLOCK.search(README.read_text())
    assert block, "README.md lacks the <!-- gpu-plan --> ... <!-- /gpu-plan --> block"
    assert block.group(2) == markdown, \
        "README.md's GPU table is not the planner's: run `python -m ercref.study.gpu_plan --readme`"


def test_readme_gpu_section_types_no_planner_figure():
    section = gpu_plan.README_BLOCK.sub("", _gpu_section(README.read_text()))
    typed = [m.group(0) for m in re.finditer(r"\d[\d.,]*\s*GiB|min(?:utes)? per step|h for \d+ steps", section)]
    assert not typed, f"README's GPU section types planner figures outside the generated block: {typed}"
    for stale in ("65.3 GiB", "~31 min", "~5 h", "~83 GB"):
        assert stale not in README.read_text()


def test_notebook_05_prose_types_no_gpu_figure():
    """Notebook 05's markdown states no memory or time figure of a GPU run (its code cells print them
    from the planner); a sentence about the CPU run's own time is allowed, as are GPU sizes."""
    nb = json.loads(NB05.read_text())
    found = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        text = HARDWARE.sub("", "".join(cell["source"]))
        for sentence in re.split(r"(?<=\.)\s+|\n\n", text):
            if "CPU" in sentence:
                continue
            found += [(i, m.group(0), sentence.strip()[:100]) for m in FIGURE.finditer(sentence)]
    assert not found, f"notebook 05's markdown types GPU figures (print them from the planner instead): {found}"


def test_the_figure_pattern_catches_the_stale_prose():
    for stale in ("one step takes tens of minutes", "~5 h for 200 steps", "65.3 GiB of an H100", "~31 min per step"):
        assert FIGURE.search(stale), stale
    assert FIGURE.search("an 80 GB GPU") and not FIGURE.search(HARDWARE.sub("", "an 80 GB GPU"))


def test_table_rows_are_the_planner_on_each_device(markdown):
    rows = gpu_plan.gpu_plan_rows()
    assert [(r["preset"], r["device"]) for r in rows] == [(p, d) for p in gpu_plan.GPU_PRESETS for d in gpu_plan.GPU_DEVICES]
    one = make_config("gpu-1x80gb-1.5b", validate=False)
    r = rows[0]
    assert r["eval_prompts"] == 60 and r["evaluations"] == evaluations_per_run(one) == 8
    assert r["step_s"] == pytest.approx(estimate_step_seconds(one, device_bytes=DEVICE_BYTES["H100 80GB"]).total)
    assert r["eval_s"] == pytest.approx(estimate_eval_seconds(one, eval_prompts=60,
                                                              device_bytes=DEVICE_BYTES["H100 80GB"]).seconds)
    assert r["run_s"] == pytest.approx(r["step_s"] * one.train.steps + r["evaluations"] * r["eval_s"])
    assert r["eval_backend"] == "vllm" and rows[2]["eval_backend"] == "hf"
    assert f"| `gpu-1x80gb-1.5b` | H100 80GB | {r['total_gb']:.1f} of 79.1 GiB ({r['peak_phase']}) |" in markdown
    assert gpu_plan.duration(r["run_s"]) in markdown.splitlines()[2]


def test_duration_units():
    assert gpu_plan.duration(90) == "1.5 min"
    assert gpu_plan.duration(3 * 3600) == "3.0 h"
    assert gpu_plan.duration(10 * 86400) == "10 days"


def test_planned_eval_prompts():
    assert gpu_plan.planned_eval_prompts(make_config("gpu-paper-1.5b", validate=False)) == 60   # AIME24 + AIME25
    cfg = make_config("cpu-tiny")
    assert gpu_plan.planned_eval_prompts(cfg) == cfg.data.num_eval


def test_planner_estimate_states_the_evaluations():
    """Notebook 05 prints this message and table: they include the evaluations' time on a GPU config,
    and no GPU time model for a CPU run."""
    gpu = planner_estimate(make_config("gpu-1x80gb-1.5b", validate=False), device_bytes=DEVICE_BYTES["H100 80GB"],
                           device_name="H100 80GB")
    assert "8 evaluations" in gpu["message"] and "h in all" in gpu["message"]
    assert "one evaluation" in gpu["table"] and "run total" in gpu["table"]
    cpu = planner_estimate(make_config("cpu-tiny"), device_bytes=8 * 2**30, device_name="CPU")
    assert "run total" not in cpu["table"] and cpu["fits"]


def test_refresh_readme_rewrites_only_the_block(tmp_path, markdown):
    text = README.read_text()
    copy = tmp_path / "README.md"
    copy.write_text(gpu_plan.README_BLOCK.sub(lambda m: m.group(1) + "| stale |\n" + m.group(3), text))
    assert gpu_plan.refresh_readme(copy) is True
    assert gpu_plan.README_BLOCK.search(copy.read_text()).group(2) == markdown
    assert gpu_plan.refresh_readme(copy) is False
    bare = tmp_path / "bare.md"
    bare.write_text("# no block\n")
    with pytest.raises(ValueError, match=r"bare\.md has no <!-- gpu-plan -->"):
        gpu_plan.refresh_readme(bare)
