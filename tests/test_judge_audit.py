"""The judge audit (ercref.study.judge_audit): cached evaluation samples re-judged by the number judge."""
import pytest

from ercref.lm.config import config_from_dict, make_config
from ercref.lm.data import load_task
from ercref.study import cache, judge_audit
from ercref.study.studies import Study


def _cache(tmp_path, judge="math", task="arith"):
    over = {"data.task": task, "data.level": 2, "data.style": "instruct", "data.num_eval": 8, "reward.judge": judge}
    cfg = make_config("cpu-tiny", overrides=over).to_dict()
    study = Study("a", "cpu-tiny", over, {"K1": {}}, {"DAPO": {}}, [0, 1])
    root = cache.study_dir("a", tmp_path)
    root.mkdir(parents=True)
    cache.write_study_json(study, root)
    question = load_task(config_from_dict(cfg).data)[1][0]
    return root, cfg, question


def test_audit_counts_restated_questions_the_math_judge_credits(tmp_path):
    root, cfg, q = _cache(tmp_path)
    expr = q["prompt"].split("What is ")[1].split("?")[0]           # e.g. "48+64"
    answer = q["answer"]
    samples = {0: ["nonsense", f"{expr} is a classic example", f"{expr} = {answer}"],
               1: ["nonsense", f"The answer is {answer}.", f"I think {expr}"]}
    for seed, texts in samples.items():
        rows = [{"kind": "eval", "step": 5 * i, "eval/sample": t} for i, t in enumerate(texts)]
        cache.write_run(root, "K1", "DAPO", seed, {"config": cfg, "wall_s": 1.0}, rows)
    df = judge_audit.audit_samples("a", tmp_path)
    assert len(df) == 4 and (df["step"] > 0).all() and set(df["answer"]) == {answer}      # step 0 left out
    got = {(r.seed, r.step): (r.credited, r.confirmed) for r in df.itertuples()}
    assert got == {(0, 5): (True, False), (0, 10): (True, True), (1, 5): (True, True), (1, 10): (True, False)}
    text = judge_audit.audit_report("a", tmp_path)
    assert "credits 4, the number judge confirms 2, **2 restate the question**" in text and expr in text
    md = tmp_path / "page.md"
    md.write_text("x\n<!-- judge-audit: a -->\nold\n<!-- /judge-audit -->\n")
    assert judge_audit.refresh_audit_blocks(md, tmp_path) == ["a"] and text in md.read_text() and "old" not in md.read_text()


def test_audit_refuses_a_study_it_cannot_judge(tmp_path):
    with pytest.raises(ValueError, match="no cache"):
        judge_audit.audit_samples("nothing", tmp_path)
    root, cfg, q = _cache(tmp_path, judge="choice", task="mc-arith")
    cache.write_run(root, "K1", "DAPO", 0, {"config": cfg, "wall_s": 1.0}, [{"kind": "eval", "step": 5, "eval/sample": "B"}])
    with pytest.raises(ValueError, match="answers are not numbers"):
        judge_audit.audit_samples("a", tmp_path)
