"""The study runner (ercref.study.runner) and the trainer metrics it relies on: optim/update_norm
and rollout/distinct_frac, skip-if-cached, atomic results under a kill, the --hours budget, the
matched-step learning-rate rule, the tidy loader. Tiny settings: a few RL steps of the tiny model."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ercref.lm.config import make_config
from ercref.lm.step_metrics import distinct_fraction
from ercref.lm.trainer import Trainer
from ercref.study import cache, pairing, runner
from ercref.study.__main__ import main as study_main
from ercref.study.studies import STUDIES, Study, get_study, parse_tiny_cell, tiny_cell

REPO = Path(__file__).resolve().parents[1]
SMALL = {"sft.steps": 20, "sft.batch_size": 32, "rollout.prompts_per_step": 4, "rollout.group_size": 4,
         "train.minibatch_prompts": 2, "train.progress": False, "train.plot": False, "data.num_eval": 4,
         "train.eval_k": 2, "train.steps": 2, "train.threads": 1, "train.save_checkpoints": False,
         "train.save_policy": False, "train.eval_before_training": False}


def small_study(name="t", steps=2, seeds=(0,), est_run_s=30.0) -> Study:
    return Study(name, "cpu-tiny", {**SMALL, "train.steps": steps}, {"K2-lr0.001": {"optim.lr": 1e-3}},
                 {"DAPO": {"loss.erc": False}, "DAPO+ERC": {"loss.erc": True}}, list(seeds), est_run_s=est_run_s)


# ----------------------------------------------------------------------------- trainer metrics
def test_distinct_fraction_counts_rows_at_the_mask_only():
    tok = torch.tensor([[5, 6, 7], [5, 6, 9], [5, 6, 7], [1, 2, 3]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]], dtype=torch.bool)
    # rows 0 and 1 agree at their mask (5 6), row 2 is 5 6 7 (longer), row 3 differs
    assert float(distinct_fraction(tok, mask)) == pytest.approx(3 / 4)
    assert float(distinct_fraction(tok[:1].repeat(6, 1), mask[:1].repeat(6, 1))) == pytest.approx(1 / 6)
    assert float(distinct_fraction(torch.arange(12).view(4, 3), torch.ones(4, 3, dtype=torch.bool))) == 1.0
    g = torch.get_rng_state()
    distinct_fraction(tok, mask)
    assert torch.equal(g, torch.get_rng_state())   # the run's RNG stream is untouched


def _fit(tmp_path, lr_zero: bool):
    tr = Trainer(make_config("cpu-tiny", overrides=SMALL), tmp_path / ("zero" if lr_zero else "lr"))
    if lr_zero:  # the config refuses lr 0; the optimizer does not
        for g in tr.opt.param_groups:
            g["lr"] = 0.0
        tr.sched.base_lrs = [0.0] * len(tr.sched.base_lrs)
    mbs = []

    class Keep:
        def on_minibatch(self, trainer, rec):
            mbs.append((float(rec["optim/update_norm"]), float(rec["grad/norm"])))

    tr.callbacks.append(Keep())
    return tr.fit(), mbs


@pytest.mark.slow
def test_update_norm_and_distinct_frac_are_logged_and_sane(tmp_path):
    steps0, mb0 = _fit(tmp_path, lr_zero=True)
    steps1, mb1 = _fit(tmp_path, lr_zero=False)
    assert len(mb0) == len(mb1) == 2 * 2          # 2 steps x K = 2 minibatches
    assert all(u == 0.0 for u, _ in mb0)          # lr 0: AdamW moves nothing (weight decay is lr-scaled)
    assert any(g > 0 for _, g in mb1)
    assert all(0 < u < 1e3 for u, g in mb1 if g > 0)   # a nonzero gradient moves the weights
    for steps, mbs in ((steps0, mb0), (steps1, mb1)):
        for i, r in enumerate(steps):
            assert r["optim/update_norm"] == pytest.approx(sum(u for u, _ in mbs[2 * i: 2 * i + 2]) / 2, rel=1e-5)
            assert 1 / 16 <= r["rollout/distinct_frac"] <= 1.0


# ----------------------------------------------------------------------------- study definitions
def test_named_studies_are_well_formed():
    m = get_study("tiny-stability-map")
    assert {parse_tiny_cell(c) for c in m.cells} == {(k, lr) for k in (1, 2, 4, 8, 16) for lr in (3e-4, 1e-3, 3e-3)}
    assert m.seeds == [0, 1, 2, 3, 4] and m.base["train.steps"] >= 100
    for c in m.cells:
        assert {"DAPO", "DAPO+ERC"} <= set(m.arms_at(c))
    assert any("GPPO" in a for c in m.cells for a in m.arms_at(c))
    assert not all("GPPO" in m.arms_at(c) for c in m.cells)
    cfg = m.config("K8-lr0.001", "DAPO", 3)
    assert (cfg.train.minibatch_prompts, cfg.rollout.prompts_per_step, cfg.optim.lr, cfg.loss.erc, cfg.train.seed) == \
        (2, 16, 1e-3, False, 3)
    assert tiny_cell(4, 3e-3) == ("K4-lr0.003", {"train.minibatch_prompts": 4, "optim.lr": 3e-3})
    c = get_study("tiny-controls")
    assert {"DAPO", "DAPO+ERC", "DAPO+random-mask", "DAPO-matched-step", "DAPO+entropy-bonus", "DAPO+KL", "Clip-Cov",
            "KL-Cov", "DAPO+ERC-b0.01", "DAPO+ERC-b0.1", "DAPO+ERC-b0.2"} == set(c.arms)
    assert c.arms["DAPO+random-mask"]["loss.erc_mask"] == "random"
    assert set(STUDIES) == {"tiny-stability-map", "tiny-controls", "tiny-token-captures", "smollm2-learns",
                            "smollm2-collapse", "smollm2-dapo-vs-erc", "tiny6m-pilot",
                            "tiny6m-pilot2", "tiny6m-pilot3", "tiny6m-pilot4", "smollm2-pilot", "smollm2-pilot2",
                            "smollm2-pilot3", "smollm2-pilot4"}
    old = get_study("smollm2-dapo-vs-erc")        # notebook 04's 3-seed run: its committed cache is this definition
    assert cache.read_study_json(cache.study_dir(old.name) / "study.json") == json.loads(json.dumps(old.to_dict()))
    assert old.capture_steps == [3, 6, 9] and old.seeds == [0, 1, 2] and old.arms["DAPO+ERC"]["loss.beta_low"] == 0.05
    mc = get_study("smollm2-collapse").config("default", "DAPO+random-mask", 1)
    assert (mc.data.task, mc.reward.scheme, mc.loss.erc_mask, mc.train.steps) == ("mc-arith", "format", "random", 24)
    t = get_study("tiny-token-captures")
    assert list(t.arms) == ["DAPO+ERC"] and t.capture_steps == [25, 50, 75, 100] and t.base == m.base
    assert t.config("K8-lr0.001", "DAPO+ERC", 2).to_dict() == m.config("K8-lr0.001", "DAPO+ERC", 2).to_dict()
    sm = get_study("smollm2-learns").config("default", "DAPO", 0)
    assert (sm.data.task, sm.data.style, sm.reward.judge, sm.rollout.prompts_per_step // sm.train.minibatch_prompts) == \
        ("arith", "instruct", "math", 4)
    runs = c.runs()
    assert [a for _, a, _ in runs][-len(c.seeds) * len(c.default_cells):] == ["DAPO-matched-step"] * 5  # matched last
    with pytest.raises(ValueError, match="--cells"):
        c.runs(cells=["nope"])
    with pytest.raises(ValueError, match="folder"):
        Study("x", "cpu-tiny", {}, {"a b": {}}, {"A": {}}, [0])


# ----------------------------------------------------------------------------- matched-step rule
def test_matched_lr_rule():
    lr, scale = runner.matched_lr(1e-3, [0.5, 1.5], [2.0, 2.0, 2.0])
    assert scale == pytest.approx(0.5) and lr == pytest.approx(5e-4)
    with pytest.raises(ValueError, match="reference"):
        runner.matched_lr(1e-3, [1.0], [0.0])
    with pytest.raises(ValueError, match="at least one"):
        runner.matched_lr(1e-3, [], [1.0])


def _fake_run(root, cell, arm, seed, wall_s=10.0, norms=(1.0,)):
    """A finished run written by the cache's own writer (hashes in the meta)."""
    rows = [{"kind": "minibatch", "step": 1, "staleness": k, "optim/update_norm": n} for k, n in enumerate(norms)]
    rows.append({"kind": "step", "step": 1, "reward/mean": 0.5})
    cache.write_run(root, cell, arm, seed, {"cell": cell, "arm": arm, "seed": seed, "wall_s": wall_s}, rows)


def test_matched_overrides_read_the_cache(tmp_path):
    s = Study("m", "cpu-tiny", dict(SMALL), {"c": {"optim.lr": 2e-3}}, {"DAPO": {"loss.erc": False},
              "DAPO+ERC": {"loss.erc": True}, "DAPO-matched": {"loss.erc": False}}, [0, 1],
              matched={"DAPO-matched": ("DAPO+ERC", "DAPO")})
    root = tmp_path / "m"
    for seed in (0, 1):
        _fake_run(root, "c", "DAPO", seed, norms=(2.0, 2.0))
    _fake_run(root, "c", "DAPO+ERC", 0, norms=(1.0, 0.5))
    assert runner.matched_overrides(s, root, "c", "DAPO-matched") is None      # DAPO+ERC seed 1 missing
    _fake_run(root, "c", "DAPO+ERC", 1, norms=(1.5, 1.0))
    over = runner.matched_overrides(s, root, "c", "DAPO-matched")
    assert over["optim.lr"] == pytest.approx(2e-3 * 1.0 / 2.0) and over["_matched"]["scale"] == pytest.approx(0.5)
    cache.write_run(root, "c", "DAPO", 1, {"wall_s": 1.0}, [{"kind": "minibatch", "step": 1}])   # no update norm
    with pytest.raises(ValueError, match="update_norm"):
        runner.matched_overrides(s, root, "c", "DAPO-matched")


# ----------------------------------------------------------------------------- budget
def test_hours_budget_stops_starting_runs(tmp_path):
    s = small_study(seeds=(0, 1, 2), est_run_s=7200.0)
    res = runner.run_study(s, tmp_path, hours=0.5, workers=1, log=lambda *a: None)   # prior: 2 h per run
    assert res["done"] == [] and len(res["not_started"]) == 6
    root = cache.study_dir("t", tmp_path)
    _fake_run(root, "K2-lr0.001", "DAPO", 0, wall_s=3000.0)     # the cache's measured time replaces the prior
    res = runner.run_study(s, tmp_path, hours=0.5, arms=["DAPO"], workers=1, log=lambda *a: None)
    assert res["done"] == [] and res["skipped_cached"] == 1 and res["not_started"] == [("K2-lr0.001", "DAPO", 1),
                                                                                      ("K2-lr0.001", "DAPO", 2)]
    st = runner.status(s, tmp_path)
    assert st.set_index("arm").loc["DAPO", "cached"] == 1
    assert st["left_cpu_h"].sum() == pytest.approx((2 * 3000 + 3 * 3000) / 3600)


def test_changed_definition_is_refused(tmp_path):
    cache.write_study_json(small_study(), tmp_path)
    cache.write_study_json(small_study(seeds=(0, 1)), tmp_path)     # more seeds: fine
    s = small_study()
    s.arms["DAPO"] = {"loss.erc": False, "optim.lr": 5e-4}
    with pytest.raises(ValueError, match="arm 'DAPO'"):
        cache.write_study_json(s, tmp_path)


def test_changed_capture_steps_are_refused(tmp_path):
    cache.write_study_json(small_study(), tmp_path)
    s = small_study()
    s.capture_steps = [1]
    with pytest.raises(ValueError, match="capture_steps"):
        cache.write_study_json(s, tmp_path)


@pytest.mark.slow
def test_token_captures_are_cached_next_to_the_run_and_loaded(tmp_path):
    s = small_study(name="cap", steps=2)
    s.arms = {"DAPO+ERC": {"loss.erc": True}}
    s.capture_steps = [2]
    res = runner.run_study(s, tmp_path, workers=1, log=lambda *a: None)
    assert [r["arm"] for r in res["done"]] == ["DAPO+ERC"]
    root = cache.study_dir("cap", tmp_path)
    tp = cache.tokens_path(root, "K2-lr0.001", "DAPO+ERC", 0)
    recs = cache.read_run_log(tp)
    assert tp.read_bytes()[:2] == b"\x1f\x8b" and len(recs) == 16          # 4 prompts x 4 samples, once at step 2
    assert {r["step"] for r in recs} == {2} and {r["staleness"] for r in recs} == {0, 1}
    assert all(len(r["old_entropy"]) == len(r["tokens"]) == len(r["erc_state"]) >= 1 for r in recs)
    loaded = cache.load_study("cap", tmp_path)
    assert len(loaded.runs) == 1 and len(loaded.tokens) == 16                # the tokens file is not a run
    assert set(loaded.tokens["label"]) == {"DAPO+ERC"} and set(loaded.tokens["cell"]) == {"K2-lr0.001"}
    s.capture_steps = []                       # the capture's extra no-grad forward leaves the run unchanged
    runner.run_study(s, tmp_path / "plain", workers=1, log=lambda *a: None)
    plain = cache.read_run_log(cache.run_paths(cache.study_dir("cap", tmp_path / "plain"), "K2-lr0.001", "DAPO+ERC", 0)[0])
    captured = cache.read_run_log(cache.run_paths(root, "K2-lr0.001", "DAPO+ERC", 0)[0])
    drop = {"time/", "perf/"}

    def metrics(rows):
        return [{k: v for k, v in r.items() if not any(k.startswith(x) for x in drop)} for r in rows if r["kind"] != "sft"]
    assert metrics(plain) == metrics(captured) and not cache.tokens_path(tmp_path / "plain" / "cap", "K2-lr0.001",
                                                                           "DAPO+ERC", 0).exists()


def test_a_bad_arm_fails_before_any_run(tmp_path):
    s = small_study()
    s.arms["DAPO"] = {"loss.loss": "no_such_loss"}
    with pytest.raises(ValueError, match="no_such_loss"):
        runner.run_study(s, tmp_path, workers=1, log=lambda *a: None)
    assert not (cache.study_dir("t", tmp_path) / "runs").exists()


# ----------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    res = runner.run_study(small_study(), d, workers=2, log=lambda *a: None)
    return d, res


@pytest.mark.slow
def test_runs_are_cached_and_skipped(two_runs):
    d, res = two_runs
    assert sorted((r["arm"], r["seed"]) for r in res["done"]) == [("DAPO", 0), ("DAPO+ERC", 0)]
    root = cache.study_dir("t", d)
    log, meta = cache.run_paths(root, "K2-lr0.001", "DAPO+ERC", 0)
    m = json.loads(meta.read_text())
    assert m["config"]["loss"]["erc"] is True and m["seed"] == 0 and m["wall_s"] > 0
    assert {"platform", "cpu", "torch", "torch_threads"} <= set(m["machine"]) and m["machine"]["torch_threads"] == 1
    assert "git_commit" in m and m["ercref_version"]
    other = json.loads(cache.run_paths(root, "K2-lr0.001", "DAPO", 0)[1].read_text())
    start = m["start_policy"]                    # both arms ran at once, one stored the warm-up, both started from it
    assert start["sha256"] == other["start_policy"]["sha256"] and len(start["sha256"]) == 64
    assert (root / start["file"]).is_file() and {start["source"], other["start_policy"]["source"]} <= {"computed", "stored"}
    assert pairing.paired_seeds({0: m}, {0: other}).label == "verified pairing"
    assert log.name.endswith(".jsonl.gz") and log.read_bytes()[:2] == b"\x1f\x8b"   # gzip JSON Lines
    rows = cache.read_run_log(log)
    assert {"sft", "step", "minibatch", "eval"} <= {r["kind"] for r in rows}
    plain = log.with_name("plain.jsonl")                                          # a plain .jsonl reads too
    plain.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cache.read_run_log(plain) == rows
    plain.unlink()
    before = log.stat().st_mtime_ns
    again = runner.run_study(small_study(), d, workers=2, log=lambda *a: None)
    assert again["done"] == [] and again["skipped_cached"] == 2 and log.stat().st_mtime_ns == before
    assert not list(root.rglob(".*tmp*"))


@pytest.mark.slow
def test_loader_returns_tidy_frames(two_runs):
    d, _ = two_runs
    res = cache.load_study("t", d)
    for df in (res.steps, res.minibatches, res.evals):
        assert {"cell", "arm", "seed"} <= set(df.columns)
    assert len(res.steps) == 2 * 2 and len(res.minibatches) == 2 * 2 * 2      # arms x steps (x K)
    assert set(res.steps["arm"]) == {"DAPO", "DAPO+ERC"} and set(res.steps["cell"]) == {"K2-lr0.001"}
    assert res.steps.groupby("arm")["step"].apply(list).to_dict() == {"DAPO": [1, 2], "DAPO+ERC": [1, 2]}
    assert "erc/clip_frac" in res.minibatches.columns and "optim/update_norm" in res.minibatches.columns
    assert len(res.runs) == 2 and res.definition["name"] == "t" and res.tokens is None   # no capture_steps: no tokens
    with pytest.raises(ValueError, match="no cached study"):
        cache.load_study("nothing", d)


_KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_study_runner import small_study
from ercref.study.__main__ import main
main(["t", "--workers", "1", "--results-dir", sys.argv[1]], studies={{"t": lambda: small_study(steps=400)}})
"""


@pytest.mark.slow
def test_a_killed_study_leaves_no_partial_run(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "OMP_NUM_THREADS": "1"}
    (tmp_path / "tmp").mkdir()
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT.format(tests=str(REPO / "tests")), str(tmp_path / "res")],
                            cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:   # wait until the worker's engine has logged an RL step, then kill the study (parent and worker)
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            logs = list((tmp_path / "tmp").glob("ercref-t-*/run/metrics.jsonl"))
            if logs and '"kind": "step"' in logs[0].read_text():
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert logs, "the run never started"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    root = cache.study_dir("t", tmp_path / "res")
    assert (root / "study.json").is_file()
    assert not list((root / "runs").rglob("seed*")) if (root / "runs").exists() else True
    assert not cache.is_cached(root, "K2-lr0.001", "DAPO", 0)
    assert cache.load_study("t", tmp_path / "res").steps.empty


_STOP_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_study_runner import small_study
from ercref.study.__main__ import main
study = small_study(steps={after})
study.arms["DAPO"] = {{**study.arms["DAPO"], "train.steps": 400}}
raise SystemExit(main(["t", "--workers", "1", "--results-dir", sys.argv[1]], studies={{"t": lambda: study}}))
"""


def _descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            kids = {int(c) for t in Path(f"/proc/{p}/task").iterdir() for c in (t / "children").read_text().split()}
        except (FileNotFoundError, ProcessLookupError):
            continue
        out |= kids
        todo += kids
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _start_long_study(tmp_path, steps_after: int = 400):
    """The runner of a study whose first run (DAPO) has 400 RL steps and the others ``steps_after``,
    in a new session, once its worker has logged an RL step: (process, the runner's descendants)."""
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "OMP_NUM_THREADS": "1"}
    (tmp_path / "tmp").mkdir()
    proc = subprocess.Popen([sys.executable, "-c", _STOP_SCRIPT.format(tests=str(REPO / "tests"), after=steps_after),
                             str(tmp_path / "res")],
                            cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 90
    logs = []
    while time.time() < deadline and proc.poll() is None:
        logs = list((tmp_path / "tmp").glob("ercref-t-*/run/metrics.jsonl"))
        if logs and '"kind": "step"' in logs[0].read_text():
            break
        time.sleep(0.5)
    if proc.poll() is not None or not logs:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the run never started: " + proc.stdout.read().decode()[-2000:])
    return proc, _descendants(proc.pid)


def _wait_gone(pids, seconds: float) -> set[int]:
    deadline = time.time() + seconds
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    return {p for p in pids if _alive(p)}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from Linux's /proc")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_stopping_the_runner_stops_its_workers_and_their_runs(tmp_path, how):
    """``kill PID`` of the runner (not of its process group) stops the worker and its run too: on
    SIGTERM the runner stops it and says so; after SIGKILL the orphaned worker stops itself. Either
    way the run's temporary folder is removed and nothing of it is cached."""
    proc, workers = _start_long_study(tmp_path)
    assert workers, "the runner has no worker process"
    try:
        os.kill(proc.pid, getattr(signal, how))
        out = proc.communicate(timeout=60)[0].decode()
        left = _wait_gone(workers, runner.ORPHAN_POLL_S + runner.ORPHAN_GRACE_S + 20)
        assert not left, f"worker(s) {sorted(left)} still running after the runner got {how}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    if how == "SIGTERM":
        assert "stopped: 0 run(s) finished and cached" in out and "run the same command again" in out, out[-2000:]
    assert not list((tmp_path / "tmp").glob("ercref-t-*")), "the stopped run's temporary folder was left behind"
    assert not cache.is_cached(cache.study_dir("t", tmp_path / "res"), "K2-lr0.001", "DAPO", 0)


@pytest.mark.slow
def test_cli_list_and_status(two_runs, capsys):
    d, _ = two_runs
    assert study_main(["--list"]) == 0
    assert "tiny-stability-map" in capsys.readouterr().out
    assert study_main(["t", "--status", "--results-dir", str(d)], studies={"t": small_study}) == 0
    assert "cached 2 / 2 runs" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        study_main(["t", "--cells", "nope", "--status"], studies={"t": small_study})


def test_testbed_study_takes_the_pilots_setting_and_adds_the_controls(tmp_path):
    from ercref.study.studies import testbed_study

    t = testbed_study("tb", "smollm2-pilot2", "K8-lr0.0003", "K1-lr1e-05", range(10), None)
    pilot = get_study("smollm2-pilot2")
    assert set(t.cells) == {"K8-lr0.0003", "K1-lr1e-05"} and t.seeds == list(range(10)) and t.preset == pilot.preset
    assert set(t.arms) == {"DAPO", "DAPO+ERC", "DAPO+random-mask", "DAPO-matched-step"}
    assert t.matched == {"DAPO-matched-step": ("DAPO+ERC", "DAPO")}
    dapo, erc = t.config("K8-lr0.0003", "DAPO", 3), t.config("K8-lr0.0003", "DAPO+ERC", 3)
    same = pilot.config("K8-lr0.0003", "DAPO", 3).to_dict()
    same["train"]["log_update_norm"] = True          # the matched step reads the update norms: the one difference
    assert dapo.to_dict() == same
    assert (erc.loss.erc, erc.loss.beta_low, t.config("K8-lr0.0003", "DAPO+random-mask", 0).loss.erc_mask) == \
        (True, 0.05, "random")
    assert [u for u in t.runs() if u[1] == "DAPO-matched-step"] == t.runs()[-20:]   # matched arms run last
    with pytest.raises(ValueError, match="not cells of the pilot"):
        testbed_study("tb", "smollm2-pilot2", "K16-lr0.0003", "K1-lr1e-05", range(10), None)
    with pytest.raises(ValueError, match=">= 5 distinct seeds"):
        testbed_study("tb", "smollm2-pilot2", "K8-lr0.0003", "K1-lr1e-05", [0, 1, 1, 2], None)
    bad = tmp_path / "h.json"
    bad.write_text(json.dumps({"study_kind": "learning", "holm": True, "hypotheses": [
        {"id": "H1", "cell": "K8-lr0.001", "arm": "DAPO+ERC", "baseline": "DAPO", "measure": "final_accuracy",
         "direction": "higher", "text": "a cell the study does not have"}]}))
    with pytest.raises(ValueError, match="names a cell or arm"):
        testbed_study("tb", "smollm2-pilot2", "K8-lr0.0003", "K1-lr1e-05", range(10), str(bad))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from Linux's /proc")
def test_a_worker_stopped_alone_is_one_failed_run_and_the_runner_goes_on(tmp_path):
    proc, workers = _start_long_study(tmp_path, steps_after=2)
    try:
        worker = [p for p in workers if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(worker) == 1, f"one spawned worker expected, got {worker}"
        os.kill(worker[0], signal.SIGTERM)
        out = proc.communicate(timeout=120)[0].decode()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
    assert "DAPO seed 0 FAILED: SystemExit" in out and "1 run(s) done" in out and "1 failed" in out, out[-2000:]
    assert proc.returncode == 1
    assert not list((tmp_path / "tmp").glob("ercref-t-*")), "the stopped run's temporary folder was left behind"


def test_a_run_records_the_commit_it_started_at(tmp_path, monkeypatch):
    """A commit made while a run trains (the cache is committed as it fills) is not the run's code."""
    calls = iter(["abc-at-start", "def-at-end"])
    monkeypatch.setattr(runner, "git_commit", lambda: next(calls))
    s = small_study(steps=1)
    root = cache.study_dir("t", tmp_path)
    root.mkdir(parents=True)
    cache.write_study_json(s, root)
    runner.run_unit(s, root, "K2-lr0.001", "DAPO", 0)
    meta = json.loads(cache.run_paths(root, "K2-lr0.001", "DAPO", 0)[1].read_text())
    assert meta["git_commit"] == "abc-at-start"
