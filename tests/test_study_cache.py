"""The study cache on disk (ercref.study.cache): a run is trusted only when its files check out.
Damaged, truncated or half-written runs, stray files and invalid JSON are reported naming the file,
never counted as finished, set aside (never deleted) and rerun; --status and the runner agree."""
from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ercref.study import cache, runner
from ercref.study.__main__ import main as study_main
from ercref.study.studies import Study

ROOT = Path(__file__).resolve().parents[1]
ROWS = [{"kind": "step", "step": s, "reward/mean": 0.1 * s, "entropy/old_mean": 1.0} for s in (1, 2, 3)]
TOKENS = [{"step": 2, "staleness": 1, "tokens": ["a", "b"], "old_entropy": [0.5, 0.25], "erc_state": [0, -1]}]
META = {"study": "t", "cell": "c", "arm": "A", "seed": 0, "wall_s": 12.5, "finished": "2026-01-01 00:00:00"}


def _run(root, seed=0, tokens=False):
    cache.write_run(root, "c", "A", seed, {**META, "seed": seed}, ROWS, TOKENS if tokens else None)
    return cache.run_paths(root, "c", "A", seed)


def _problems(root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cache.finished_runs(root)[1]


def test_written_run_reads_back_with_its_hashes(tmp_path):
    log, meta = _run(tmp_path, tokens=True)
    run = cache.read_run(tmp_path, "c", "A", 0)
    assert run.rows == ROWS and run.tokens == TOKENS and run.hashed and run.meta["wall_s"] == 12.5
    files = json.loads(meta.read_text())["integrity"]["files"]
    assert set(files) == {"seed0.jsonl.gz", "seed0.tokens.gz"} and files["seed0.jsonl.gz"]["bytes"] == log.stat().st_size
    assert cache.check_run(tmp_path, "c", "A", 0) == cache.RunState("finished")
    assert cache.check_run(tmp_path, "c", "A", 1) == cache.RunState("missing")
    assert not list(tmp_path.rglob(".*tmp*"))                              # no temporary file left behind


def test_truncated_log_is_damaged_named_and_never_finished(tmp_path):
    log, _ = _run(tmp_path)
    log.write_bytes(log.read_bytes()[:-7])
    state = cache.check_run(tmp_path, "c", "A", 0)
    assert state.state == "damaged" and "seed0.jsonl.gz" in state.problem and "truncated" in state.problem
    assert not cache.is_cached(tmp_path, "c", "A", 0)
    with pytest.raises(cache.DamagedRunError, match=r"seed0\.jsonl\.gz"):
        cache.read_run_log(log)                                             # gzip's own check, no raw EOFError


def test_meta_without_log_and_log_without_meta(tmp_path):
    log, meta = _run(tmp_path)
    log.unlink()
    st_ = cache.check_run(tmp_path, "c", "A", 0)
    assert st_.state == "damaged" and "seed0.meta.json" in st_.problem and "missing" in st_.problem
    log2, meta2 = _run(tmp_path, seed=1)
    meta2.unlink()                                                           # an interrupted write: data, no meta
    st2 = cache.check_run(tmp_path, "c", "A", 1)
    assert st2.state == "damaged" and "seed1.jsonl.gz" in st2.problem and "meta" in st2.problem


def test_invalid_json_meta_and_study_json_name_the_file_and_line(tmp_path):
    _, meta = _run(tmp_path)
    meta.write_text('{"wall_s": 1,\n  "seed": }')
    st_ = cache.check_run(tmp_path, "c", "A", 0)
    assert st_.state == "damaged" and "seed0.meta.json, line 2" in st_.problem
    (tmp_path / "study.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"study\.json, line 1: invalid JSON"):
        cache.load_study(tmp_path.name, tmp_path.parent)
    (tmp_path / "study.json").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match=r"study\.json: not UTF-8"):
        cache.read_study_json(tmp_path / "study.json")


def test_invalid_json_line_in_a_log_names_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl.gz"
    p.write_bytes(gzip.compress(b'{"kind": "step"}\n{"kind": \n'))
    with pytest.raises(cache.DamagedRunError, match=r"x\.jsonl\.gz, line 2: invalid JSON"):
        cache.read_run_log(p)
    p.write_bytes(gzip.compress(b'[1, 2]\n'))
    with pytest.raises(cache.DamagedRunError, match="line 1: a row must be a JSON object"):
        cache.read_run_log(p)


def test_edited_meta_and_unlisted_tokens_are_damaged(tmp_path):
    _, meta = _run(tmp_path)
    meta.write_text(meta.read_text().replace('"wall_s": 12.5', '"wall_s": 99.5'))  # valid JSON, other bytes
    assert "own hash" in cache.check_run(tmp_path, "c", "A", 0).problem
    _run(tmp_path, seed=1)
    cache.tokens_path(tmp_path, "c", "A", 1).write_bytes(gzip.compress(b"{}\n"))
    assert "not listed" in cache.check_run(tmp_path, "c", "A", 1).problem


def test_stray_files_are_reported_by_name_and_not_loaded(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    cache.write_study_json(Study("t", "cpu-tiny", {}, {"c": {}}, {"A": {}}, [0]), root)
    _run(root)
    (root / "runs" / "c" / "A" / "notes.txt").write_text("mine")
    (root / "runs" / "c" / "A" / ".seed3.jsonl.gz.tmp-99").write_bytes(b"half")
    (root / "runs" / "stray.json").write_text("{}")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = cache.load_study("t", tmp_path)
    assert any("notes.txt: stray file" in str(w.message) for w in seen)
    assert len(res.runs) == 1 and len(res.problems) == 3
    assert {Path(p.split(":")[0]).name for p in res.problems} == {"notes.txt", ".seed3.jsonl.gz.tmp-99", "stray.json"}
    assert (root / "runs" / "c" / "A" / "notes.txt").read_text() == "mine"      # reported, never removed


@pytest.mark.slow
def test_committed_caches_load_without_a_problem():
    """Every committed run carries integrity data, so any edit of its files is detected (every study
    folder with runs/; a branching study keeps its records elsewhere, ercref.study.branch_records)."""
    for study in sorted(p.name for p in (ROOT / "data" / "results").iterdir()
                        if (p / "study.json").is_file() and (p / "runs").is_dir()):
        runs, problems = cache.finished_runs(cache.study_dir(study), rows=False, tokens=False)
        assert runs and problems == [], study
        assert all(r.hashed for r in runs), f"{study}: `python -m ercref.study {study} --add-integrity`"


def test_add_integrity_hashes_legacy_runs_then_detects_an_edit_and_leaves_damaged_ones(tmp_path):
    for seed in (0, 1):
        log, meta = cache.run_paths(tmp_path, "c", "A", seed)
        log.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({**META, "seed": seed}))                # the keys metas had before hashes
        log.write_bytes(cache.jsonl_gz_bytes(ROWS))
    damaged = cache.run_paths(tmp_path, "c", "A", 1)[0]
    damaged.write_bytes(damaged.read_bytes()[:-3])
    log_bytes = cache.run_paths(tmp_path, "c", "A", 0)[0].read_bytes()
    done, problems = cache.add_integrity(tmp_path)
    assert [p.name for p in done] == ["seed0.meta.json"] and len(problems) == 1 and "seed1" in problems[0]
    run = cache.read_run(tmp_path, "c", "A", 0)
    assert run.hashed and run.rows == ROWS and run.meta["wall_s"] == META["wall_s"]
    assert cache.run_paths(tmp_path, "c", "A", 0)[0].read_bytes() == log_bytes     # data files untouched
    assert cache.add_integrity(tmp_path)[0] == []                                   # hashed runs are left alone
    meta = cache.run_paths(tmp_path, "c", "A", 0)[1]
    meta.write_text(meta.read_text().replace('"wall_s": 12.5', '"wall_s": 1.0'))   # an edit of the meta
    assert "own hash" in cache.check_run(tmp_path, "c", "A", 0).problem


def test_unhashed_meta_with_a_damaged_log_is_not_trusted(tmp_path):
    log, meta = cache.run_paths(tmp_path, "c", "A", 0)
    log.parent.mkdir(parents=True)
    meta.write_text(json.dumps(META))                                     # the keys metas had before hashes
    log.write_bytes(cache.jsonl_gz_bytes(ROWS))
    assert cache.is_cached(tmp_path, "c", "A", 0)
    log.write_bytes(cache.jsonl_gz_bytes(ROWS)[:-3])
    assert "truncated" in cache.check_run(tmp_path, "c", "A", 0).problem
    meta.write_text(json.dumps({**META, "integrty": {}}))                 # a damaged key: not an old meta
    log.write_bytes(cache.jsonl_gz_bytes(ROWS))
    assert "unknown keys" in cache.check_run(tmp_path, "c", "A", 0).problem


@pytest.mark.parametrize("log_bytes, phrase", [
    (b"", "not gzip data"),                                               # emptied
    (b'{"kind": "step", "step": 1}\n', "not gzip data"),                 # overwritten with plain text
    (gzip.compress(b""), "holds no rows"),                                # a log with no rows
])
def test_unhashed_meta_with_an_empty_or_plain_log_is_not_finished(tmp_path, log_bytes, phrase):
    log, meta = cache.run_paths(tmp_path, "c", "A", 0)
    log.parent.mkdir(parents=True)
    meta.write_text(json.dumps(META))
    log.write_bytes(log_bytes)
    state = cache.check_run(tmp_path, "c", "A", 0)
    assert state.state == "damaged" and "seed0.jsonl.gz" in state.problem and phrase in state.problem
    assert cache.finished_runs(tmp_path, warn=False)[0] == []


def test_a_run_like_file_with_a_leading_zero_seed_is_stray(tmp_path):
    log, meta = _run(tmp_path)
    (log.parent / "seed01.jsonl.gz").write_bytes(log.read_bytes())
    runs, problems = cache.finished_runs(tmp_path, warn=False)
    assert [r.seed for r in runs] == [0] and len(problems) == 1 and "seed01.jsonl.gz: stray file" in problems[0]


@pytest.mark.parametrize("wall", ["missing", None, "12 s", -1.0])
def test_a_run_whose_meta_has_no_usable_wall_time_counts_as_cached_with_no_time(tmp_path, wall):
    s = Study("t", "cpu-tiny", {}, {"c": {}}, {"A": {}}, [0, 1], est_run_s=30.0)
    root = cache.study_dir("t", tmp_path)
    log, meta = cache.run_paths(root, "c", "A", 0)
    log.parent.mkdir(parents=True)
    meta.write_text(json.dumps({k: v for k, v in META.items() if k != "wall_s"}
                               | ({} if wall == "missing" else {"wall_s": wall})))
    log.write_bytes(cache.jsonl_gz_bytes(ROWS))
    _run(root, seed=1)
    times = runner.cached_wall_times(root)
    assert sorted((t["seed"], t["wall_s"]) for t in times) == [(0, None), (1, 12.5)]
    assert runner.estimate_run_s(times, "c", "A", 99.0) == 12.5
    st_ = runner.status(s, tmp_path)
    assert st_["cached"].sum() == 2 and st_["damaged"].sum() == 0 and st_["left_cpu_h"].sum() == 0


# ----------------------------------------------------------------------------- any damage is detected
@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    _run(root, tokens=True)
    return {p.name: p.read_bytes() for p in (root / "runs" / "c" / "A").iterdir()}


def _damaged(tmp_path, pristine, name, data):
    d = tmp_path / "runs" / "c" / "A"
    d.mkdir(parents=True, exist_ok=True)
    for n, b in pristine.items():
        (d / n).write_bytes(data if n == name else b)
    return cache.check_run(tmp_path, "c", "A", 0)


FILES = ["seed0.jsonl.gz", "seed0.tokens.gz", "seed0.meta.json"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(FILES), where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_any_bit_flip_of_any_cache_file_is_detected(tmp_path, pristine, name, where, bit):
    data = bytearray(pristine[name])
    i = int(where * len(data))
    data[i] ^= 1 << bit
    state = _damaged(tmp_path, pristine, name, bytes(data))
    assert state.state == "damaged" and name in state.problem, (name, i, bit, state)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(FILES), keep=st.floats(0, 1, exclude_max=True))
def test_any_truncation_of_any_cache_file_is_detected(tmp_path, pristine, name, keep):
    data = pristine[name][:int(keep * len(pristine[name]))]
    state = _damaged(tmp_path, pristine, name, data)
    assert state.state == "damaged" and name in state.problem, (name, len(data), state)


# ----------------------------------------------------------------------------- runner and --status agree
SMALL = {"sft.steps": 20, "sft.batch_size": 32, "rollout.prompts_per_step": 4, "rollout.group_size": 4,
         "train.minibatch_prompts": 2, "train.progress": False, "train.plot": False, "data.num_eval": 4,
         "train.eval_k": 2, "train.steps": 1, "train.threads": 1, "train.save_checkpoints": False,
         "train.save_policy": False, "train.eval_before_training": False}


@pytest.mark.slow
def test_status_and_runner_agree_and_a_damaged_run_is_set_aside_and_rerun(tmp_path, capsys):
    s = Study("t", "cpu-tiny", SMALL, {"c": {}}, {"A": {"loss.erc": False}}, [0, 1, 2], est_run_s=30.0)
    root = cache.study_dir("t", tmp_path)
    root.mkdir()
    cache.write_study_json(s, root)
    _run(root, seed=0)
    bad_log, _ = _run(root, seed=1)
    bad_log.write_bytes(bad_log.read_bytes()[:-5])                      # truncated
    damaged = bad_log.read_bytes()
    with pytest.warns(UserWarning, match="seed1.jsonl.gz"):
        st_ = runner.status(s, tmp_path)
    assert st_["cached"].sum() == 1 and st_["damaged"].sum() == 1 and "seed1.jsonl.gz" in st_.attrs["problems"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert study_main(["t", "--status", "--results-dir", str(tmp_path)], studies={"t": lambda: s}) == 0
    out = capsys.readouterr().out
    assert "cached 1 / 3 runs, 1 damaged" in out and "damaged (will be rerun)" in out and "seed1.jsonl.gz" in out
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = runner.run_study(s, tmp_path, workers=1, log=lines.append)
    assert res["skipped_cached"] == 1 and sorted(r["seed"] for r in res["done"]) == [1, 2]   # the same split
    assert any("seed 1 is not a finished run" in x and "seed1.jsonl.gz" in x for x in lines)
    assert cache.is_cached(root, "c", "A", 1) and cache.read_run(root, "c", "A", 0).rows == ROWS  # seed 0 untouched
    aside = sorted((root / cache.SET_ASIDE / "c" / "A").iterdir())
    assert [p.name.split(".")[0] for p in aside] == ["seed1", "seed1"]                 # log and meta, kept
    assert any(p.read_bytes() == damaged for p in aside)
    assert runner.status(s, tmp_path)["cached"].sum() == 3


@pytest.mark.parametrize("cell, arm, seed, named", [
    ("../escape", "erc", 0, "cell"), ("c", "a/b", 0, "arm"), ("c", "..", 0, "arm"), ("", "erc", 0, "cell"),
    ("c", "erc", -1, "seed"), ("c", "erc", True, "seed"), ("c", "erc", 1.0, "seed"),
])
def test_a_run_name_that_could_not_be_found_again_is_refused_before_writing(tmp_path, cell, arm, seed, named):
    """A cell or arm that is not one folder name would land outside runs/CELL/ARM (or be a stray
    file); a seed that is not an int >= 0 gives a file name the scan does not read back."""
    with pytest.raises(ValueError, match=f"^{named} must be"):
        cache.write_run(tmp_path, cell, arm, seed, {"seed": seed}, [{"kind": "step", "step": 1}])
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_a_study_folder_that_is_a_file_is_named_not_read_as_empty(tmp_path):
    f = tmp_path / "study"
    f.write_text("not a folder")
    with pytest.raises(ValueError, match="is a file, not a study folder") as e:
        cache.finished_runs(f, warn=False)
    assert str(f) in str(e.value)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cell=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=0, max_size=6),
       arm=st.sampled_from(["erc", "a/b", "..", ".", "", "DAPO+ERC", "x\\y"]), seed=st.integers(-3, 10 ** 6))
def test_every_run_name_write_run_accepts_is_found_again_by_the_scan(tmp_path_factory, cell, arm, seed):
    """write_run either refuses a name (nothing written) or its run is the one unit the scan finds,
    with no stray file: no name lands outside runs/CELL/ARM or under a file name the scan skips."""
    root = tmp_path_factory.mktemp("names")
    try:
        cache.write_run(root, cell, arm, seed, {"seed": seed}, [{"kind": "step", "step": 1}])
    except ValueError:
        assert not any(p.is_file() for p in root.rglob("*"))
        return
    scan = cache.scan_runs(root)
    assert scan.runs == [(cell, arm, seed)] and scan.stray == []
    assert cache.is_cached(root, cell, arm, seed)


def test_a_results_dir_that_is_a_file_is_refused_by_name(tmp_path):
    """Before: `--status --results-dir FILE` printed 'cached 0 / N runs' and exited 0."""
    f = tmp_path / "results.txt"
    f.write_text("not a cache")
    with pytest.raises(ValueError, match=r"^results_dir '.*results\.txt' is a file, not a folder"):
        cache.study_dir("toy", f)
    assert cache.study_dir("toy", tmp_path) == tmp_path / "toy"
    s = Study("t", "cpu-tiny", {}, {"c": {}}, {"A": {}}, [0])
    with pytest.raises(SystemExit) as e:                              # the CLI: an error naming the file, not "0 / 1"
        study_main(["t", "--status", "--results-dir", str(f)], studies={"t": lambda: s})
    assert e.value.code == 2


def test_the_cli_adds_integrity_naming_damaged_runs(tmp_path, capsys):
    from ercref.study.__main__ import main
    from ercref.study.studies import STUDIES

    name = sorted(STUDIES)[0]
    root = cache.study_dir(name, tmp_path)
    log, meta = cache.run_paths(root, "c", "A", 0)
    log.parent.mkdir(parents=True)
    meta.write_text(json.dumps(META))
    log.write_bytes(cache.jsonl_gz_bytes(ROWS)[:-3])                     # truncated: never blessed
    assert main([name, "--results-dir", str(tmp_path), "--add-integrity"]) == 1
    out = capsys.readouterr().out
    assert "damaged (not hashed; rerun it)" in out and "seed0" in out and "added to 0 run(s)" in out
    assert "integrity" not in meta.read_text()
