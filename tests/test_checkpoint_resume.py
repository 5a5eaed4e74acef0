"""Checkpoints and --resume: a run's files are deleted only by an explicit overwrite; damaged
checkpoints are detected by their manifests and skipped for the previous complete one; at most
keep_last + 1 checkpoints on disk; free disk checked before anything is written."""
import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ercref.lm import checkpoint as ckpt
from ercref.lm.config import make_config
from ercref.lm.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = ["sft.steps=0", "train.steps=1", "train.progress=false", "train.plot=false", "train.memory_check=off",
        "rollout.prompts_per_step=4", "rollout.group_size=2", "train.minibatch_prompts=2", "data.num_eval=4"]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under folder -> sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def flip(path: Path, bit: int = 8 * 100 + 3) -> None:
    data = bytearray(path.read_bytes())
    bit %= len(data) * 8
    data[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def cfg():
    return make_config("cpu-tiny", overrides=TINY)


@pytest.fixture
def run_dir(tmp_path, cfg):
    """A run folder with checkpoints of steps 1 and 2 (real Trainer states), a log and config.json."""
    tr = Trainer(cfg, tmp_path / "run")
    for step in (1, 2):
        tr.step = step
        tr.save()
    tr.log.write({"kind": "step", "step": 1})
    tr.log.write({"kind": "step", "step": 2})
    (tr.out / "config.json").write_text("{}")
    tr.lock.release()              # this Trainer never fits: let the tests' next Trainer (or CLI) claim the folder
    return tr.out


# ----------------------------------------------------------------------------- resume never erases a run
def test_resume_with_every_checkpoint_damaged_stops_naming_each_and_deletes_nothing(run_dir, cfg):
    ck = run_dir / "checkpoints"
    flip(ck / "ckpt-00000002.pt")
    (ck / "ckpt-00000001.pt").write_bytes((ck / "ckpt-00000001.pt").read_bytes()[:1000])  # truncated
    before = snapshot(run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ckpt.NoLoadableCheckpoint) as e:
            Trainer(cfg, run_dir, resume=True)
    msg = str(e.value)
    assert "ckpt-00000001.pt" in msg and "ckpt-00000002.pt" in msg and "sha256" in msg and "bytes but" in msg
    assert "--overwrite" in msg and "repair or move" in msg and "nothing was deleted" in msg
    assert isinstance(e.value, FileExistsError) and [p.name for p, _ in e.value.refused] == [
        "ckpt-00000002.pt", "ckpt-00000001.pt"]
    assert snapshot(run_dir) == before


def test_resume_of_checkpoints_written_without_manifests_stops_then_adopted_loads(run_dir, cfg):
    """Checkpoints of an ercref that wrote no manifest are not trusted blindly: the resume stops,
    naming write_manifest; once adopted, the run resumes from the newest."""
    ck = run_dir / "checkpoints"
    for m in ck.glob("*.json"):
        m.unlink()
    before = snapshot(run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ckpt.NoLoadableCheckpoint, match="(?s)has no manifest.*write_manifest"):
            Trainer(cfg, run_dir, resume=True)
    assert snapshot(run_dir) == before
    ckpt.write_manifest(ck / "ckpt-00000002.pt")
    tr = Trainer(cfg, run_dir, resume=True)
    assert tr.step == 2 and tr.resumed_from.name == "ckpt-00000002.pt"


def test_resume_in_a_format_the_safe_loader_refuses_stops_and_deletes_nothing(run_dir, cfg):
    """A checkpoint holding a pickled library object (an older ercref's RNG states), manifest and
    all: weights_only=True refuses it; with nothing else loadable the resume stops."""
    import pickle

    import numpy as np

    ck = run_dir / "checkpoints"
    for _, p in ckpt.list_checkpoints(ck):
        ckpt.remove_checkpoint(p)
    old = ck / "ckpt-00000003.pt"
    torch.save({"step": 3, "rng": {"numpy": np.random.get_state()}, "model": {}, "optimizer": {}, "scheduler": {},
                "cursor": 0}, old, pickle_module=pickle)
    ckpt.write_manifest(old)
    before = snapshot(run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ckpt.NoLoadableCheckpoint, match="(?s)ckpt-00000003.pt.*cannot be loaded safely"):
            Trainer(cfg, run_dir, resume=True)
    assert snapshot(run_dir) == before


def test_resume_with_a_log_but_no_checkpoint_stops(tmp_path, cfg):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "step", "step": 1}\n')
    with pytest.raises(FileExistsError, match="(?s)no checkpoint to continue from.*metrics.jsonl.*--overwrite"):
        Trainer(cfg, tmp_path, resume=True)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"kind": "step", "step": 1}\n'


def test_resume_of_an_empty_folder_starts_fresh(tmp_path, cfg):
    with pytest.warns(UserWarning, match="no loadable checkpoint"):
        tr = Trainer(cfg, tmp_path / "new", resume=True)
    assert tr.step == 0 and tr.resumed_from is None


def test_fresh_run_refuses_a_folder_with_a_log_unless_overwrite(tmp_path, cfg):
    """A run with train.save_checkpoints=false left only its log: a new run there refuses, and only
    overwrite deletes it."""
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"kind": "step", "step": 1}\n')
    with pytest.raises(FileExistsError, match="(?s)metrics.jsonl.*--resume.*--overwrite"):
        Trainer(cfg, tmp_path)
    assert log.read_text() == '{"kind": "step", "step": 1}\n'
    Trainer(cfg, tmp_path, overwrite=True).start()
    assert not log.exists()


@pytest.mark.parametrize("text", ['{"model_type": "llama", "hidden_size": 576}', "not json", "{}"])
def test_a_fresh_run_refuses_a_folder_whose_config_json_is_another(tmp_path, cfg, text):
    """A config.json that is not the one this run would write (a model folder's, another run's, or
    damaged) is a run file: a fresh run never replaces it without overwrite."""
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(FileExistsError, match=r"(?s)config\.json.*--overwrite"):
        Trainer(cfg, tmp_path)
    with pytest.raises(FileExistsError, match=r"(?s)config\.json.*--overwrite"):
        Trainer(cfg, tmp_path, resume=True)
    assert (tmp_path / "config.json").read_text() == text
    Trainer(cfg, tmp_path, overwrite=True).start()
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads(json.dumps(cfg.to_dict()))


def test_a_fresh_run_may_reuse_a_folder_holding_only_its_own_config_json(tmp_path, cfg):
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))   # a run stopped before its first log line
    tr = Trainer(cfg, tmp_path)
    assert tr.step == 0 and tr.resumed_from is None


def test_resume_from_another_models_checkpoint_names_the_models(run_dir, cfg):
    ck = run_dir / "checkpoints"
    ckpt.save_checkpoint(ck, 3, {"model": {"embed.weight": torch.zeros(2, 2)}, "optimizer": {}, "scheduler": {},
                                 "cursor": 0, "config": {"model": {"name": "smollm2-135m-instruct"}}}, keep_last=5)
    before = snapshot(run_dir)
    with pytest.raises(ValueError, match=r"(?s)ckpt-00000003\.pt.*another model.*'smollm2-135m-instruct'.*'tiny'"):
        Trainer(cfg, run_dir, resume=True)
    assert snapshot(run_dir) == before


def test_overwrite_deletes_checkpoints_with_their_manifests(run_dir, cfg):
    Trainer(cfg, run_dir, overwrite=True).start()
    assert list((run_dir / "checkpoints").iterdir()) == [] and not (run_dir / "metrics.jsonl").exists()


def test_resume_and_overwrite_together_are_refused(run_dir, cfg):
    before = snapshot(run_dir)
    with pytest.raises(ValueError, match="contradict"):
        Trainer(cfg, run_dir, resume=True, overwrite=True)
    assert snapshot(run_dir) == before


def test_resume_skips_a_damaged_newest_checkpoint_naming_it(run_dir, cfg):
    flip(run_dir / "checkpoints" / "ckpt-00000002.pt")
    with pytest.warns(UserWarning, match=r"ckpt-00000002\.pt.*sha256"):
        tr = Trainer(cfg, run_dir, resume=True)
    assert tr.step == 1 and tr.resumed_from.name == "ckpt-00000001.pt"
    assert (run_dir / "checkpoints" / "ckpt-00000002.pt").exists()  # kept for the user to inspect


@pytest.mark.slow
def test_cli_resume_with_damaged_checkpoints_fails_cleanly_and_keeps_the_run(tmp_path):
    out = tmp_path / "run"
    cfg = make_config("cpu-tiny", overrides=TINY)
    tr = Trainer(cfg, out)
    tr.save()
    (out / "config.json").write_text(__import__("json").dumps(cfg.to_dict()))
    tr.log.write({"kind": "step", "step": 0})
    flip(out / "checkpoints" / "ckpt-00000000.pt")
    tr.lock.release()      # this Trainer is done with the folder; the CLI below must be able to claim it
    before = snapshot(out)
    p = subprocess.run([sys.executable, "-m", "ercref.train", "--out", str(out), "--resume"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "ckpt-00000000.pt" in p.stderr and "--overwrite" in p.stderr
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- integrity
def _two_checkpoints(d: Path) -> None:
    ckpt.save_checkpoint(d, 1, {"x": torch.arange(40.0)}, keep_last=5)
    ckpt.save_checkpoint(d, 2, {"x": torch.arange(40.0) * 2}, keep_last=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["ckpt-00000001.pt", "ckpt-00000001.json", "ckpt-00000002.pt", "ckpt-00000002.json"]),
       kind=st.sampled_from(["truncate", "flip", "append"]), where=st.floats(0.0, 1.0, exclude_max=True),
       bit=st.integers(0, 7))
def test_any_damage_to_any_checkpoint_file_is_detected_and_deletes_nothing(tmp_path_factory, which, kind, where, bit):
    """Truncated anywhere, one bit flipped anywhere, or bytes appended, in a checkpoint or its
    manifest: that checkpoint is refused (the other one loads), and every file stays as it was."""
    d = tmp_path_factory.mktemp("ck")
    _two_checkpoints(d)
    target = d / which
    data = bytearray(target.read_bytes())
    if kind == "truncate":
        data = data[: int(len(data) * where)]
    elif kind == "flip":
        data[int(len(data) * where)] ^= 1 << bit
    else:
        data += b"\0"
    target.write_bytes(bytes(data))
    before = snapshot(d)
    damaged = d / (which[:-5] + ".pt" if which.endswith(".json") else which)
    with pytest.raises(ckpt.DamagedCheckpoint, match=damaged.stem):
        ckpt.load_checkpoint(damaged)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path, state = ckpt.load_latest_valid(d)
    good = 3 - int(damaged.stem[-1])
    assert [damaged.name in str(w.message) for w in caught] == ([True] if good == 1 else [])  # newest first
    assert path.name == f"ckpt-{good:08d}.pt" and state["step"] == good
    assert torch.equal(state["x"], torch.arange(40.0) * good)
    assert snapshot(d) == before


def test_both_checkpoints_damaged_raises_and_deletes_nothing(tmp_path):
    _two_checkpoints(tmp_path)
    flip(tmp_path / "ckpt-00000001.json", 5)
    flip(tmp_path / "ckpt-00000002.pt", 12345)
    before = snapshot(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ckpt.NoLoadableCheckpoint) as e:
            ckpt.load_latest_valid(tmp_path)
    assert [p.name for p, _ in e.value.refused] == ["ckpt-00000002.pt", "ckpt-00000001.pt"]
    assert snapshot(tmp_path) == before


def test_manifest_records_the_files_size_and_sha256(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 7, {"x": torch.ones(3)})
    man = __import__("json").loads(ckpt.manifest_path(path).read_text())
    assert man["file"] == "ckpt-00000007.pt" and man["step"] == 7 and man["bytes"] == path.stat().st_size
    assert man["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    ckpt.verify_checkpoint(path)
    before = ckpt.manifest_path(path).read_bytes()
    assert ckpt.write_manifest(path).read_bytes() == before  # adopting rewrites the same bytes


# ----------------------------------------------------------------------------- disk
def _count_on_disk(d: Path) -> int:
    """Checkpoint files plus a writer's temporaries of checkpoint files."""
    return len(ckpt.list_checkpoints(d)) + len([p for p in d.glob(ckpt.TMP_GLOB) if ".pt." in p.name])


@pytest.fixture
def peak_during_write(monkeypatch):
    """The most checkpoint files on disk while torch.save writes (the new one's temporary included)."""
    seen = []
    real = torch.save

    def spy(obj, f, *a, **kw):
        real(obj, f, *a, **kw)
        seen.append(_count_on_disk(Path(f.fh.name).parent))

    monkeypatch.setattr(ckpt.torch, "save", spy)
    return seen


def test_never_more_than_keep_last_plus_one_on_disk(tmp_path, peak_during_write):
    d = tmp_path / "ck"
    d.mkdir()
    (d / ".ckpt-00000009.pt.tmp-123").write_bytes(b"half")  # a killed writer's temporary
    for s in range(1, 7):
        ckpt.save_checkpoint(d, s, {"x": torch.tensor([s])}, keep_last=2)
        assert [p.name for _, p in ckpt.list_checkpoints(d)] == [f"ckpt-{t:08d}.pt" for t in range(max(1, s - 1), s + 1)]
    assert max(peak_during_write) == 3 and not list(d.glob(ckpt.TMP_GLOB))


def test_a_lowered_keep_last_prunes_before_writing(tmp_path, peak_during_write):
    for s in range(1, 6):
        ckpt.save_checkpoint(tmp_path, s, {"x": torch.tensor([s])}, keep_last=5)
    peak_during_write.clear()
    ckpt.save_checkpoint(tmp_path, 6, {"x": torch.tensor([6])}, keep_last=1)
    assert peak_during_write == [2]
    assert [p.name for _, p in ckpt.list_checkpoints(tmp_path)] == ["ckpt-00000006.pt"]


def test_the_only_complete_checkpoint_is_never_pruned_before_the_new_one_is_complete(tmp_path, monkeypatch):
    """keep_last=1 with [complete step 1, unverifiable step 2]: step 1 survives the pre-write prune;
    a save that fails midway leaves it loadable (and no temporary)."""
    ckpt.save_checkpoint(tmp_path, 1, {"x": torch.tensor([1])}, keep_last=5)
    ckpt.save_checkpoint(tmp_path, 2, {"x": torch.tensor([2])}, keep_last=5)
    ckpt.manifest_path(tmp_path / "ckpt-00000002.pt").unlink()

    def broken(obj, f, *a, **kw):
        f.write(b"partial")
        raise OSError("device error while writing")

    monkeypatch.setattr(ckpt.torch, "save", broken)
    with pytest.raises(OSError, match="device error"):
        ckpt.save_checkpoint(tmp_path, 3, {"x": torch.tensor([3])}, keep_last=1)
    monkeypatch.undo()
    assert not list(tmp_path.glob(ckpt.TMP_GLOB)) and not (tmp_path / "ckpt-00000003.pt").exists()
    with pytest.warns(UserWarning, match="ckpt-00000002.pt.*no manifest"):
        path, state = ckpt.load_latest_valid(tmp_path)
    assert path.name == "ckpt-00000001.pt" and state["x"].item() == 1


def _fake_disk(monkeypatch, free: int):
    import shutil

    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 ** 12, 10 ** 12 - free, free))


def test_too_little_disk_is_refused_before_anything_is_written_or_pruned(tmp_path, monkeypatch):
    for s in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, s, {"x": torch.zeros(10)}, keep_last=3)
    before = snapshot(tmp_path)
    state = {"x": torch.zeros(2 ** 20)}                               # 4 MiB
    _fake_disk(monkeypatch, free=2 ** 20)
    with pytest.raises(ckpt.InsufficientDiskSpace) as e:
        ckpt.save_checkpoint(tmp_path, 4, state, keep_last=1)         # would prune steps 1 and 2 first
    msg = str(e.value)
    need = ckpt.state_bytes(dict(state, step=4, rng=ckpt.rng_state()))
    assert str(tmp_path) in msg and f"{need:,} bytes" in msg and f"{2 ** 20:,} bytes" in msg and "keep_last" in msg
    assert isinstance(e.value, OSError) and snapshot(tmp_path) == before
    _fake_disk(monkeypatch, free=need)
    ckpt.save_checkpoint(tmp_path, 4, state, keep_last=1)
    assert [p.name for _, p in ckpt.list_checkpoints(tmp_path)] == ["ckpt-00000004.pt"]


def test_pruned_bytes_count_as_free(tmp_path, monkeypatch):
    for s in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, s, {"x": torch.zeros(2 ** 18)}, keep_last=3)   # 1 MiB each
    state = {"x": torch.zeros(2 ** 20)}                               # 4 MiB
    need = ckpt.state_bytes(dict(state, step=4, rng=ckpt.rng_state()))
    freed = sum((tmp_path / f"ckpt-{s:08d}.pt").stat().st_size for s in (1, 2))
    _fake_disk(monkeypatch, free=need - freed)                         # enough once steps 1, 2 are pruned
    ckpt.save_checkpoint(tmp_path, 4, state, keep_last=1)
    assert [p.name for _, p in ckpt.list_checkpoints(tmp_path)] == ["ckpt-00000004.pt"]


def test_trainer_save_and_save_policy_check_the_disk(run_dir, cfg, monkeypatch):
    tr = Trainer(cfg, run_dir, resume=True)
    before = snapshot(run_dir)
    _fake_disk(monkeypatch, free=1000)
    tr.step = 3
    with pytest.raises(ckpt.InsufficientDiskSpace, match="checkpoint ckpt-00000003.pt"):
        tr.save()
    with pytest.raises(ckpt.InsufficientDiskSpace, match="the policy folder"):
        ckpt.save_policy(tr.model, tr.tok, tr.out)
    assert snapshot(run_dir) == before and not (run_dir / "policy").exists()


def test_expected_checkpoint_bytes_match_a_real_trainer_checkpoint(tmp_path, cfg):
    """The planner's formula (parameters, dtype, tensors) and the estimate from the state both bound
    the real file from above, within 5 %."""
    tr = Trainer(cfg, tmp_path)
    params = [p for p in tr.model.parameters()]
    for p in params:
        p.grad = torch.ones_like(p)
    tr.opt.step()                                                       # AdamW's moments exist
    path = tr.save()
    size = path.stat().st_size
    state = torch.load(path, weights_only=True)
    planned = ckpt.expected_checkpoint_bytes(sum(p.numel() for p in params), 4, len(params))
    for est in (ckpt.state_bytes(state), planned):
        assert size <= est <= 1.05 * size, (size, est)
    assert ckpt.peak_checkpoint_disk_bytes(planned, keep_last=2) == 3 * planned
    assert 0 < planned - ckpt.expected_checkpoint_bytes(sum(p.numel() for p in params), 4) < 3 * 1024 * len(params)
    for bad in ((0, 4, 1), (10, True, 1), (10, 4, -1), (10.0, 4, 1)):
        with pytest.raises(ValueError, match=r"expected_checkpoint_bytes: \w+ must be an int >= [01], got"):
            ckpt.expected_checkpoint_bytes(*bad)
    assert ckpt.expected_checkpoint_bytes(np.int64(1000), np.int32(4)) == ckpt.expected_checkpoint_bytes(1000, 4)
    for bad, name in (((planned, -3), "keep_last"), ((planned, 0), "keep_last"), ((float("nan"), 2), "checkpoint_bytes"),
                      ((-1, 2), "checkpoint_bytes"), ((planned, True), "keep_last")):
        with pytest.raises(ValueError, match=f"peak_checkpoint_disk_bytes: {name} must be an int"):
            ckpt.peak_checkpoint_disk_bytes(*bad)


def test_save_checkpoint_refuses_a_state_that_is_not_a_dict(tmp_path):
    with pytest.raises(TypeError, match="state must be a dict"):
        ckpt.save_checkpoint(tmp_path, 1, [("x", torch.ones(2))])
    assert not list(tmp_path.iterdir())


def test_state_bytes_counts_shared_storage_once():
    w = torch.zeros(1000)
    assert ckpt.state_bytes({"a": w, "b": w, "c": w[:10]}) == 4000 + ckpt.PER_STORAGE_BYTES + ckpt.FIXED_BYTES


def test_a_state_that_cannot_be_saved_is_named_and_the_same_step_checkpoint_stays_loadable(tmp_path):
    """A value torch.save cannot pickle (a lambda) is a TypeError naming its key; an earlier checkpoint
    of the same step keeps its manifest, so it still verifies and loads."""
    ckpt.save_checkpoint(tmp_path, 3, {"x": torch.ones(2)})
    with pytest.raises(TypeError, match=r"state\['f'\] \(function\)") as e:
        ckpt.save_checkpoint(tmp_path, 3, {"x": torch.zeros(2), "f": lambda: 1})
    assert "ckpt-00000003.pt" in str(e.value) and "nothing was written" in str(e.value)
    assert ckpt.load_checkpoint(tmp_path / "ckpt-00000003.pt", required=("x",))["x"].tolist() == [1.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000003.json", "ckpt-00000003.pt"]


# ----------------------------------------------------------------------------- one Trainer per folder
def test_a_second_trainer_on_a_folder_in_use_is_refused_and_the_first_run_is_intact(tmp_path, cfg):
    """The same command started twice (or a notebook cell re-run mid-run): both would pass the "is the
    folder free?" checks before either wrote, then replace each other's checkpoints and log."""
    first = Trainer(cfg, tmp_path / "run")
    with pytest.raises(FileExistsError, match=r"in use by another ercref run .*pick another --out"):
        Trainer(cfg, tmp_path / "run")
    first.fit()
    after = snapshot(tmp_path / "run")
    assert any(k.startswith("checkpoints/") for k in after) and "metrics.jsonl" in after
    with pytest.raises(FileExistsError, match="already holds"):     # released after fit: the usual checks speak
        Trainer(cfg, tmp_path / "run")
    assert snapshot(tmp_path / "run") == after
    Trainer(cfg, tmp_path / "run", resume=True).fit()                 # and a resume may claim it


def test_a_fit_that_stops_with_an_error_releases_the_folder(tmp_path, cfg):
    """A notebook cell interrupted mid-fit (KeyboardInterrupt) keeps its Trainer alive in the kernel: the
    cell must still run again, resuming, instead of being refused as 'in use by another ercref run'."""
    from ercref.lm.trainer import Callback

    class Interrupt(Callback):
        def on_fit_start(self, trainer):
            trainer.save()
            raise KeyboardInterrupt

    first = Trainer(cfg, tmp_path / "run", callbacks=[Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    again = Trainer(cfg, tmp_path / "run", resume=True)       # `first` is still referenced here
    assert again.resumed_from is not None and again.resumed_from.name == "ckpt-00000000.pt"


def test_an_out_that_is_a_file_is_refused_naming_it(tmp_path, cfg):
    out = tmp_path / "run"
    out.write_text("a user's file")
    with pytest.raises(FileExistsError, match=r"--out .*run is a file"):
        Trainer(cfg, out)
    assert out.read_text() == "a user's file"
