"""Synthetic generators and the GSM8K / MATH-500 / verl loaders on files the project writes."""
import json
import re

import pytest

from ercref.lm import data as D


def test_synthetic_is_seeded_and_answers_are_right():
    for level in (1, 2, 3, 4):
        a = D.make_synthetic("arith", 40, level=level, seed=3)
        assert a == D.make_synthetic("arith", 40, level=level, seed=3)
        assert a != D.make_synthetic("arith", 40, level=level, seed=4)
        for r in a:  # independent check: Python evaluates the expression
            expr = r["prompt"].rstrip("=")
            assert re.fullmatch(r"[\d+\-*()]+", expr)
            assert int(r["answer"]) == eval(expr)  # noqa: S307 (digits and + - * ( ) only)


def test_multiple_choice_has_one_correct_letter():
    for r in D.make_synthetic("mc-arith", 50, seed=1, style="instruct"):
        a, b = map(int, re.search(r"What is (\d) \+ (\d)\?", r["prompt"]).groups())
        options = dict(re.findall(r"^([ABCD])\) (\d+)$", r["prompt"], flags=re.M))
        assert sorted(options) == list("ABCD") and len(set(options.values())) == 4
        assert int(options[r["answer"]]) == a + b
    letters = {r["answer"] for r in D.make_synthetic("mc-arith", 200, seed=2)}
    assert letters == set("ABCD")  # the answer position is shuffled


def test_word_problems():
    for r in D.make_synthetic("word", 30, seed=0, style="instruct"):
        nums = list(map(int, re.findall(r"\d+", r["prompt"])))
        expect = nums[0] + nums[1] if "more" in r["prompt"] else nums[0] - nums[1]
        assert int(r["answer"]) == expect and r["prompt"].endswith("Answer with just the number.")


def test_bad_synthetic_args():
    with pytest.raises(ValueError, match="task"):
        D.make_synthetic("poetry", 3)
    with pytest.raises(ValueError, match="level"):
        D.make_synthetic("arith", 3, level=9)
    with pytest.raises(ValueError, match="n must"):
        D.make_synthetic("arith", 0)


def test_jsonl_roundtrip(tmp_path):
    recs = D.make_synthetic("arith", 5, level=2, style="instruct")
    p = D.write_jsonl(recs, tmp_path / "a.jsonl")
    assert [r for _, r in D.read_rows(p)] == recs


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    d = tmp_path_factory.mktemp("fx")
    D.write_fixtures(d, d / "synthetic")
    return d


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_gsm8k_loader(fixtures, ext):
    recs = D.load_dataset_records("gsm8k", str(fixtures / f"gsm8k_sample.{ext}"))
    assert [r["answer"] for r in recs] == ["72", "10", "5000"]  # '#### 5,000' -> '5000'
    assert recs[0]["prompt"].startswith("Natalia sold clips") and "\\boxed{}" in recs[0]["prompt"]


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_math500_loader(fixtures, ext):
    recs = D.load_dataset_records("math500", str(fixtures / f"math500_sample.{ext}"))
    assert recs[1]["answer"] == "\\frac{3}{4}" and recs[0]["source"] == "math500"


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_verl_loader_keeps_chat_messages(fixtures, ext):
    recs = D.load_dataset_records("verl", str(fixtures / f"verl_sample.{ext}"))
    assert recs[0]["answer"] == "56" and recs[1]["answer"] == "\\frac{3}{4}"
    assert [m["role"] for m in recs[1]["prompt"]] == ["system", "user"]
    assert recs[0]["source"] == "KlearReasoner-MathSub-30K"


def test_checked_in_fixtures_match_the_writer(tmp_path):
    """data/fixtures in the repo are exactly what `python -m ercref.lm.data --write-fixtures` writes."""
    D.write_fixtures(tmp_path, tmp_path / "syn")
    for name in ("gsm8k_sample.jsonl", "math500_sample.jsonl", "verl_sample.jsonl"):
        assert (D.FIXTURE_DIR / name).read_text() == (tmp_path / name).read_text()


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "gsm8k.jsonl"
    with pytest.raises(ValueError, match=re.escape(str(missing))):
        D.load_dataset_records("gsm8k", str(missing))
    with pytest.raises(ValueError, match="does not exist"):
        D.load_dataset_records("verl", "./not/here.parquet")


def test_malformed_record_names_file_line_and_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    rows = [{"question": "1+1?", "answer": "#### 2"}, {"question": "2+2?"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"bad\.jsonl.*line 2.*'answer'"):
        D.load_dataset_records("gsm8k", str(p))
    p.write_text(json.dumps({"question": "q", "answer": "no final line"}) + "\n")
    with pytest.raises(ValueError, match=r"line 1.*####"):
        D.load_dataset_records("gsm8k", str(p))
    v = tmp_path / "bad_verl.jsonl"
    v.write_text(json.dumps({"prompt": [{"role": "user", "content": "x"}], "reward_model": {"style": "rule"}}) + "\n")
    with pytest.raises(ValueError, match=r"line 1.*reward_model\.ground_truth"):
        D.load_dataset_records("verl", str(v))
    v.write_text(json.dumps({"prompt": "not messages", "reward_model": {"ground_truth": "1"}}) + "\n")
    with pytest.raises(ValueError, match=r"line 1.*'prompt'"):
        D.load_dataset_records("verl", str(v))
    j = tmp_path / "broken.jsonl"
    j.write_text('{"question": "q", "answer": "#### 1"}\n{not json\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl.*line 2"):
        D.load_dataset_records("gsm8k", str(j))


def test_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        D.load_dataset_records("imagenet", "x.jsonl")


def test_hub_is_used_only_for_names_that_are_not_local(monkeypatch, tmp_path):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return [{"question": "What is 2+2?", "answer": "2+2=4\n#### 4"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    recs = D.load_dataset_records("gsm8k", "openai/gsm8k", split="test")
    assert calls == [("openai/gsm8k", "main", "test")] and recs[0]["answer"] == "4"
    with pytest.raises(ValueError, match="does not exist"):  # looks like a file: never sent to the hub
        D.load_dataset_records("gsm8k", str(tmp_path / "gsm8k.parquet"))
    assert len(calls) == 1


def test_system_prompt_wraps_prompts():
    from ercref.lm.config import DataConfig

    train, eval_ = D.load_task(DataConfig(task="mc-arith", num_train=3, num_eval=2, style="instruct",
                                          system_prompt="Answer briefly."))
    assert all(r["prompt"][0] == {"role": "system", "content": "Answer briefly."} for r in train + eval_)
    assert train[0]["prompt"][1]["role"] == "user"
