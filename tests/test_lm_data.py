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
    for name in ("gsm8k_sample.jsonl", "math500_sample.jsonl", "verl_sample.jsonl", "aime_verl_sample.json"):
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


# verl format of the authors' AIME evaluation files: JSON Lines saved as .json, bare problem, no instruction
AIME_ROWS = [
    {"prompt": [{"role": "user", "content": "Find the remainder when $2^{10}$ is divided by $1000$."}],
     "reward_model": {"ground_truth": "24"}, "data_source": "math_longcot_math_verify", "ability": "MATH"},
    {"prompt": [{"role": "user", "content": "How many primes are less than $30$?"}],
     "reward_model": {"ground_truth": "10", "style": "rule-lighteval/MATH_v2"}, "data_source": "math_longcot_math_verify"},
    {"prompt": [{"role": "user", "content": "Compute $1+2+\\cdots+20$."}],
     "reward_model": {"ground_truth": "210"}, "data_source": "math_longcot_math_verify", "__index_level_0__": 0.0},
]


def test_json_lines_saved_as_json_loads_through_the_trainer_task_loader(tmp_path):
    from ercref.lm.config import DataConfig

    p = tmp_path / "aime.json"
    p.write_text("".join(json.dumps(r) + "\n" for r in AIME_ROWS))
    with pytest.raises(json.JSONDecodeError):  # not one JSON document: the case read_rows must handle
        json.loads(p.read_text())
    assert [i for i, _ in D.read_rows(p)] == [1, 2, 3]
    recs = D.load_dataset_records("verl", str(p))
    assert [r["answer"] for r in recs] == ["24", "10", "210"]
    assert recs[0]["prompt"] == [{"role": "user", "content": AIME_ROWS[0]["prompt"][0]["content"]}]  # bare problem
    assert {r["source"] for r in recs} == {"math_longcot_math_verify"}
    train, eval_ = D.load_task(DataConfig(task="verl", path=str(p), eval_path=str(p), num_eval=2))
    assert train == recs and eval_ == recs[:2]


def test_json_array_and_single_object_files(tmp_path):
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps(AIME_ROWS, indent=2))
    assert [r["answer"] for r in D.load_dataset_records("verl", str(arr))] == ["24", "10", "210"]
    one = tmp_path / "one.json"
    one.write_text(json.dumps(AIME_ROWS[1], indent=2))
    assert [r["answer"] for r in D.load_dataset_records("verl", str(one))] == ["10"]
    bad = tmp_path / "mixed.json"
    bad.write_text(json.dumps([AIME_ROWS[0], "not a record"]))
    with pytest.raises(ValueError, match=r"mixed\.json.*record 2.*JSON object"):
        D.read_rows(bad)


def test_shipped_aime_fixture_is_json_lines_with_bare_problems():
    p = D.FIXTURE_DIR / "aime_verl_sample.json"
    assert len(p.read_text().splitlines()) == 3
    recs = D.load_dataset_records("verl", str(p))
    assert [r["answer"] for r in recs] == ["87", "24", "39"]
    assert all(len(r["prompt"]) == 1 and r["prompt"][0]["role"] == "user" and "boxed" not in r["prompt"][0]["content"]
               for r in recs)


@pytest.mark.parametrize("name", ["aime.json", "aime.jsonl"])
def test_malformed_line_names_file_and_line(tmp_path, name):
    p = tmp_path / name
    lines = [json.dumps(r) for r in AIME_ROWS]
    lines[1] = lines[1][:-5]  # cut: line 2 is not valid JSON
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{re.escape(name)}.*line 2: not valid JSON") as e:
        D.load_dataset_records("verl", str(p))
    assert not isinstance(e.value, json.JSONDecodeError)  # a plain ValueError with the location, not the parser's
    p.write_text("{broken\n" + lines[0] + "\n")
    with pytest.raises(ValueError, match=rf"{re.escape(name)}.*line 1: not valid JSON"):
        D.read_rows(p)
    arr = tmp_path / "arr.json"
    arr.write_text("[\n" + lines[0] + ",\n{oops}\n]")
    with pytest.raises(ValueError, match=r"arr\.json.*line 3: not valid JSON"):
        D.read_rows(arr)


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
