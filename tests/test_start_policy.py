"""A seed's stored starting policy (ercref.study.start_policy, experiments.SFTCache with a store
folder) and pairing by its hash (ercref.study.pairing)."""
import pytest
import torch

from ercref.lm.config import make_config
from ercref.lm.trainer import Trainer
from ercref.study import experiments, pairing
from ercref.study.start_policy import load_start, save_start, start_file, state_sha256

SMALL = {"sft.steps": 6, "sft.batch_size": 8, "rollout.prompts_per_step": 4, "rollout.group_size": 4,
         "train.minibatch_prompts": 2, "train.progress": False, "train.plot": False, "data.num_eval": 4,
         "train.eval_k": 2, "train.steps": 2, "train.threads": 1, "train.save_checkpoints": False,
         "train.save_policy": False, "train.eval_before_training": False}
SHA_A, SHA_B = "a" * 64, "b" * 64


def state():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(3, 4, generator=g), "b": torch.zeros(4), "n": torch.tensor([1, 2], dtype=torch.int64)}


# ----------------------------------------------------------------------------- hashing and storing
def test_the_hash_sees_one_flipped_bit_and_ignores_key_order():
    s = state()
    h = state_sha256(s)
    assert h == state_sha256(dict(reversed(list(s.items())))) == state_sha256({k: v.clone() for k, v in s.items()})
    flipped = {k: v.clone() for k, v in s.items()}
    flipped["w"].view(torch.int32)[0, 0] ^= 1                       # the lowest mantissa bit of one weight
    assert state_sha256(flipped) != h
    assert state_sha256({**s, "b": s["b"].double()}) != h           # the dtype counts
    assert state_sha256({**s, "b": s["b"].view(2, 2)}) != h          # and the shape


def test_a_stored_policy_loads_bit_for_bit_and_is_never_replaced(tmp_path):
    s = state()
    path = start_file(tmp_path / "start", 3, "key")
    assert path.name.startswith("seed3-") and path.suffix == ".safetensors"
    sha, wrote = save_start(path, s, "key")
    assert wrote and sha == state_sha256(s)
    back, sha2 = load_start(path)
    assert sha2 == sha and set(back) == set(s) and all(torch.equal(back[k], s[k]) for k in s)
    other = {k: v + 1 if v.is_floating_point() else v for k, v in s.items()}
    before = path.read_bytes()
    assert save_start(path, other, "key") == (sha, False)           # the first stored policy stays
    assert path.read_bytes() == before and [p.name for p in path.parent.iterdir()] == [path.name]


def test_a_damaged_or_missing_stored_policy_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "seed0-x.safetensors"
    with pytest.raises(ValueError, match="seed0-x.safetensors cannot be read"):
        load_start(path)
    save_start(path, state(), "key")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF                                                # one byte of the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="seed0-x.safetensors: its tensors hash to"):
        load_start(path)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot be read"):
        load_start(path)


# ----------------------------------------------------------------------------- SFTCache with a store
def _trainer(tmp_path, name, **over):
    return Trainer(make_config("cpu-tiny", overrides={**SMALL, **over}), tmp_path / name, overwrite=True)


@pytest.mark.slow
def test_the_warm_up_is_stored_once_and_loaded_by_a_fresh_process(tmp_path, monkeypatch):
    store = tmp_path / "study" / "start"
    monkeypatch.setattr(experiments, "_SFT_CACHE", {})
    first = experiments.SFTCache(store)
    tr = _trainer(tmp_path, "a")
    tr.callbacks.append(first)
    assert not first.restore(tr)
    tr.start()                                                      # runs the warm-up, then on_sft_end
    files = list(store.iterdir())
    assert len(files) == 1 and first.start["source"] == "computed"
    assert first.start["sha256"] == state_sha256(tr.model.state_dict()) and first.start["file"] == f"start/{files[0].name}"
    monkeypatch.setattr(experiments, "_SFT_CACHE", {})               # another process: nothing in memory
    second = experiments.SFTCache(store)
    tr2 = _trainer(tmp_path, "b")
    assert second.restore(tr2) and tr2.sft_done
    assert second.start == {**first.start, "source": "stored"}
    assert all(torch.equal(a, b) for a, b in zip(tr.model.state_dict().values(), tr2.model.state_dict().values()))
    third = experiments.SFTCache(store)                              # the same process again: from memory
    assert third.restore(_trainer(tmp_path, "c")) and third.start == {**first.start, "source": "memory"}
    other_seed = experiments.SFTCache(store)
    assert not other_seed.restore(_trainer(tmp_path, "d", **{"train.seed": 1}))   # another seed: its own warm-up


def test_no_warm_up_records_the_initial_weights_hash(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "_SFT_CACHE", {})
    c = experiments.SFTCache(tmp_path / "start")
    tr = _trainer(tmp_path, "a", **{"sft.steps": 0})
    assert not c.restore(tr)
    assert c.start == {"sha256": state_sha256(tr.model.state_dict()), "file": None, "source": "initial"}
    assert not (tmp_path / "start").exists()


@pytest.mark.slow
def test_a_run_from_the_stored_policy_equals_a_run_that_computed_it(tmp_path, monkeypatch):
    cfg = make_config("cpu-tiny", overrides=SMALL)
    store = tmp_path / "start"
    runs = []
    for name in ("computed", "stored"):
        monkeypatch.setattr(experiments, "_SFT_CACHE", {})
        sft = experiments.SFTCache(store)
        logs, _ = experiments.run_arm(cfg, tmp_path / name, checkpoints=False, sft=sft)
        runs.append(([{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))}
                      for r in logs if r["kind"] != "sft"], sft.start))
    (a, sa), (b, sb) = runs
    assert sa["source"] == "computed" and sb["source"] == "stored" and sa["sha256"] == sb["sha256"]
    assert len(a) > 2 and a == b


# ----------------------------------------------------------------------------- pairing
def meta(sha):
    return {"start_policy": None if sha is None else {"sha256": sha, "file": None, "source": "computed"}}


def test_pairs_are_verified_unverified_or_left_out_by_their_starting_hash():
    a = {0: meta(SHA_A), 1: meta(SHA_A), 2: meta(None), 3: meta(SHA_A), 4: meta(SHA_A)}
    b = {0: meta(SHA_A), 1: meta(SHA_B), 2: meta(SHA_A), 3: {}, 5: meta(SHA_A)}
    p = pairing.paired_seeds(a, b)
    assert (p.verified, p.unverified, p.mismatched, p.seeds) == ([0], [2, 3], [1], [0, 2, 3])
    assert p.label == "unverified pairing (seeds [1] left out: different starting policies)"
    assert pairing.paired_seeds({0: meta(SHA_A)}, {0: meta(SHA_A)}).label == "verified pairing"
    assert pairing.paired_seeds({0: meta(SHA_A)}, {0: meta(SHA_B)}).label.startswith("no pair")
    assert pairing.pair_state(meta(SHA_B), meta(SHA_B)) == pairing.VERIFIED


def test_a_malformed_start_policy_field_is_refused():
    with pytest.raises(ValueError, match="start_policy must be null or an object whose sha256"):
        pairing.start_hash({"start_policy": {"sha256": "xyz"}})
    with pytest.raises(ValueError, match="start_policy"):
        pairing.start_hash({"start_policy": "abc"})
    assert pairing.start_hash({"config": {}}) is None
