"""Synthetic generators and the GSM8K / MATH-500 / verl loaders on files the project writes."""
import gzip
import json
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# ----------------------------------------------------------------------------- reading files: issue 13 item 8
GSM_ROW = {"question": "A café sells tea at 3 each; how much are two?", "answer": "3 + 3 = 6\n#### 6"}


def _gsm_line(row=GSM_ROW) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("name, data, expect", [
    ("latin1.jsonl", _gsm_line().encode("latin-1"), r"line 1: not UTF-8 text \(byte 0xe9.*re-save it as UTF-8"),
    ("invalid.jsonl", _gsm_line().encode() + b'{"question": "\xff", "answer": "#### 1"}\n',
     r"line 2: not UTF-8 text \(byte 0xff.*re-save it as UTF-8"),
    ("utf16_no_bom.jsonl", _gsm_line().encode("utf-16-le"), r"line 1: holds NUL bytes.*UTF-16.*re-save it as UTF-8"),
    ("packed.jsonl", gzip.compress(_gsm_line().encode()), r"is gzip-compressed.*decompress it.*packed\.jsonl\.gz"),
    ("packed.json", gzip.compress(_gsm_line().encode()), r"is gzip-compressed.*decompress it.*packed\.json\.gz"),
    ("broken.jsonl.gz", b"\x1f\x8b not really gzip", r"is named \.gz but is not valid gzip data"),
    ("table.jsonl", b"PAR1\x00\x00", r"is a parquet file.*name it \.parquet"),
    ("empty.json", b"", r"is empty: it holds no records"),
    ("blank.jsonl", b" \n\n\t\n", r"is empty: it holds no records"),
    ("bom_only.json", b"\xef\xbb\xbf\n", r"is empty: it holds no records"),
    ("deep.json", b"[" * 100_000, r"nested too deeply"),
    ("deep.jsonl", b"[" * 100_000 + b"\n", r"line 1: JSON nested too deeply"),
    ("junk.parquet", b"not parquet at all", r"is not a readable parquet file"),
])
def test_unreadable_files_are_value_errors_naming_the_file_and_the_fix(tmp_path, name, data, expect):
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(ValueError, match=re.escape(str(p)) + ".*" + expect) as e:
        D.read_rows(p)
    assert type(e.value) is ValueError  # not a bare UnicodeDecodeError / JSONDecodeError / RecursionError


@pytest.mark.parametrize("encode", [
    lambda t: t.encode("utf-8-sig"), lambda t: t.encode("utf-16"), lambda t: b"\xfe\xff" + t.encode("utf-16-be"),
    lambda t: t.encode("utf-32"), lambda t: gzip.compress(t.encode()),
], ids=["utf8-bom", "utf16-bom", "utf16-be-bom", "utf32-bom", "gzip"])
@pytest.mark.parametrize("suffix", [".jsonl", ".JSON"])
def test_byte_order_marks_and_gzip_are_read(tmp_path, encode, suffix):
    text = _gsm_line() + _gsm_line({"question": "2+2?", "answer": "#### 4"})
    data = encode(text)
    p = tmp_path / ("d" + suffix + (".gz" if data[:2] == b"\x1f\x8b" else ""))
    p.write_bytes(data)
    assert [r["answer"] for r in D.load_dataset_records("gsm8k", str(p))] == ["6", "4"]


def test_json_lines_with_line_separator_characters_and_a_bom_inside(tmp_path):
    """U+2028 / U+0085 are legal raw inside JSON strings (str.splitlines would break the line there),
    and a byte-order mark in the middle is what `cat a.jsonl b.jsonl` leaves behind."""
    rows = [{"question": "a\u2028b\u0085c\x0cd?", "answer": "#### 1"}, {"question": "e?", "answer": "#### 2"}]
    p = tmp_path / "cat.jsonl"
    p.write_bytes(_gsm_line(rows[0]).encode() + b"\xef\xbb\xbf" + _gsm_line(rows[1]).encode())
    assert [(i, r) for i, r in D.read_rows(p)] == [(1, rows[0]), (2, rows[1])]
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes(_gsm_line(rows[0]).replace("\n", "\r\n").encode() * 2)
    assert [i for i, _ in D.read_rows(crlf)] == [1, 2]


def test_directory_and_fifo_are_not_data_files(tmp_path):
    d = tmp_path / "train.jsonl"
    d.mkdir()
    with pytest.raises(ValueError, match=re.escape(str(d)) + r".*is a directory"):
        D.load_dataset_records("gsm8k", str(d))
    rel = tmp_path / "plain_dir"
    rel.mkdir()
    with pytest.raises(ValueError, match=r"is a directory, not a data file"):  # no suffix, exists: never the hub
        D.load_dataset_records("gsm8k", str(rel))
    if hasattr(os, "mkfifo"):
        f = tmp_path / "pipe.jsonl"
        os.mkfifo(f)
        with pytest.raises(ValueError, match=re.escape(str(f)) + r".*FIFO"):
            D.load_dataset_records("gsm8k", str(f))  # and does not block waiting for a writer


def test_upper_case_suffixes_are_files_not_hub_ids(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("sent to the hub"))
    monkeypatch.chdir(tmp_path)
    for name in ("train.JSON", "train.JSONL", "train.Parquet", "train.jsonl.GZ"):
        with pytest.raises(ValueError, match=re.escape(name) + "' does not exist"):
            D.load_dataset_records("gsm8k", name)
    (tmp_path / "pretty.JSON").write_text(json.dumps(GSM_ROW, indent=2))  # one object over several lines
    assert D.load_dataset_records("gsm8k", "pretty.JSON")[0]["answer"] == "6"


@pytest.mark.parametrize("kind, row, expect", [
    ("gsm8k", {"question": "q?", "answer": "#### "}, r"field 'answer' has nothing after '####'"),
    ("gsm8k", {"question": "  ", "answer": "#### 1"}, r"field 'question' is empty: fill it in or drop the record"),
    ("gsm8k", {"question": ["q"], "answer": "#### 1"}, r"field 'question' must be a string, got array"),
    ("math500", {"problem": "p?", "answer": ""}, r"field 'answer' is empty"),
    ("math500", {"problem": "p?", "answer": True}, r"field 'answer' must be a string or a number, got boolean"),
    ("verl", {"prompt": [{"role": "user", "content": None}], "reward_model": {"ground_truth": "1"}},
     r"field 'prompt\[0\]\.content' must be a string, got null"),
    ("verl", {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": ""}],
              "reward_model": {"ground_truth": "1"}}, r"field 'prompt\[1\]\.content' is empty"),
    ("verl", {"prompt": [{"role": 3, "content": "x"}], "reward_model": {"ground_truth": "1"}},
     r"field 'prompt\[0\]\.role' must be a string, got number"),
    ("verl", {"prompt": [{"role": "user", "content": "x"}], "reward_model": {"ground_truth": []}},
     r"field 'reward_model\.ground_truth' is an empty list: give the reference answer"),
    ("verl", {"prompt": [{"role": "user", "content": "x"}], "reward_model": {"ground_truth": [""]}},
     r"field 'reward_model\.ground_truth\[0\]' is empty"),
    ("verl", {"prompt": [{"role": "user", "content": "x"}], "reward_model": {"ground_truth": " "}},
     r"field 'reward_model\.ground_truth' is empty"),
    ("verl", {"prompt": [{"role": "user", "content": "x"}], "reward_model": {"ground_truth": {"a": 1}}},
     r"field 'reward_model\.ground_truth' must be a string or a number, got object"),
])
def test_bad_records_name_file_line_and_field(tmp_path, kind, row, expect):
    p = tmp_path / "recs.jsonl"
    good = {"gsm8k": {"question": "q", "answer": "#### 1"}, "math500": {"problem": "p", "answer": "1"},
            "verl": {"prompt": [{"role": "user", "content": "x"}], "reward_model": {"ground_truth": "1"}}}[kind]
    p.write_text(json.dumps(good) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"recs\.jsonl' line 3: malformed record, " + expect):
        D.load_dataset_records(kind, str(p))


def test_numeric_ground_truth_and_lists_are_kept_as_text(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "x"}], "reward_model": {"ground_truth": gt}, "data_source": None}
            for gt in (72, 0.5, ["\\frac{1}{2}", "0.5"], " 7 ")]
    p = tmp_path / "v.json"
    p.write_text(json.dumps(rows))
    recs = D.load_dataset_records("verl", str(p))
    assert [r["answer"] for r in recs] == ["72", "0.5", "\\frac{1}{2}", "7"]
    assert {r["source"] for r in recs} == {"verl"}  # a null data_source is the default, not the string "None"


# ----------------------------------------------------------------------------- properties of the readers
PROPS = settings(max_examples=60, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])
_texts = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(lambda s: s.strip())


@st.composite
def _gsm_rows(draw):
    return [{"question": draw(_texts), "answer": f"work\n#### {draw(st.integers(-10**6, 10**6))}",
             "extra": draw(st.one_of(st.none(), st.integers(), _texts))} for _ in range(draw(st.integers(1, 4)))]


@PROPS
@given(rows=_gsm_rows(), layout=st.sampled_from(["jsonl", "json-array", "json-lines"]),
       codec=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32"]), gz=st.booleans(), upper=st.booleans(),
       ascii_only=st.booleans())
def test_property_any_layout_encoding_and_suffix_case_round_trips(tmp_path, rows, layout, codec, gz, upper, ascii_only):
    """Every way the reader promises to accept gives back exactly the records written."""
    dump = lambda r: json.dumps(r, ensure_ascii=ascii_only)  # noqa: E731
    text = dump(rows) if layout == "json-array" else "".join(dump(r) + "\n" for r in rows)
    suffix = ".jsonl" if layout == "jsonl" else ".json"
    name = "data" + (suffix.upper() if upper else suffix) + (".gz" if gz else "")
    data = text.encode(codec)
    p = tmp_path / name
    p.write_bytes(gzip.compress(data) if gz else data)
    assert [r for _, r in D.read_rows(p)] == rows
    assert [r["answer"] for r in D.load_dataset_records("gsm8k", str(p))] == [r["answer"].split("#### ")[1] for r in rows]


@PROPS
@given(data=st.one_of(st.binary(max_size=64),
                      st.sampled_from([b"\x1f\x8b", b"\xef\xbb\xbf", b"\xff\xfe", b"PAR1", b"[", b"{", b"\x00"]).flatmap(
                          lambda head: st.binary(max_size=32).map(lambda tail: head + tail))),
       name=st.sampled_from(["a.jsonl", "a.json", "a.JSON", "a.parquet", "a.jsonl.gz", "a.json.gz", "noext"]))
def test_property_arbitrary_bytes_load_or_raise_a_value_error_naming_the_file(tmp_path, data, name):
    p = tmp_path / name
    p.write_bytes(data)
    try:
        rows = D.read_rows(p)
    except ValueError as e:
        assert type(e) is ValueError and str(p) in str(e)
    else:
        assert all(isinstance(i, int) and i >= 1 and isinstance(r, dict) for i, r in rows)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _texts | st.just(""),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts, inner, max_size=3),
                     max_leaves=8)
_verl_rows = st.fixed_dictionaries({
    "prompt": st.one_of(_json, st.lists(st.fixed_dictionaries({"role": _json | _texts, "content": _json | _texts}),
                                        max_size=3)),
    "reward_model": st.one_of(_json, st.fixed_dictionaries({"ground_truth": _json | st.lists(_json, max_size=2)})),
}, optional={"data_source": _json})


@PROPS
@given(kind_row=st.one_of(
    st.tuples(st.just("verl"), _verl_rows),
    st.tuples(st.just("gsm8k"), st.fixed_dictionaries({}, optional={"question": _json, "answer": _json | _texts.map(
        lambda s: "x\n#### " + s)})),
    st.tuples(st.just("math500"), st.fixed_dictionaries({}, optional={"problem": _json, "answer": _json}))))
def test_property_records_are_checked_where_they_are_read(tmp_path, kind_row):
    """Any JSON object either becomes a well-formed record or is a ValueError naming file, line and field."""
    kind, row = kind_row
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps(row) + "\n")
    try:
        (rec,) = D.load_dataset_records(kind, str(p))
    except ValueError as e:
        assert type(e) is ValueError and re.search(r"r\.jsonl' line 1: malformed record, .*field '[\w.\[\]]+'", str(e))
        return
    assert isinstance(rec["answer"], str) and rec["answer"].strip() and isinstance(rec["source"], str)
    msgs = [{"role": "user", "content": rec["prompt"]}] if isinstance(rec["prompt"], str) else rec["prompt"]
    assert msgs and all(isinstance(m[k], str) and m[k].strip() for m in msgs for k in ("role", "content"))
