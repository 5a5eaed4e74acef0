"""Engine runs for experiments (run_arm and its callbacks: the shared warm-up, the per-token
captures) and notebook 05's GPU and recipe helpers. The study cache: tests/test_study_cache.py;
the claim verdicts: tests/test_claims.py."""
from __future__ import annotations

import json

import pytest

from ercref.lm.config import make_config
from ercref.lm.data import load_dataset_records, make_synthetic
from ercref.study.experiments import (
    AUTHORS_RECIPE,
    KNOWN_DIFFERENCES,
    ONE_GPU_PRESET,
    PAPER_NOT_IN_CONFIG,
    PAPER_PRESET,
    PAPER_RECIPE,
    cuda_report,
    load_authors_recipe,
    planner_estimate,
    recipe_diff,
    results_from_records,
    run_arm,
    write_verl_file,
)
from ercref.study.plots import LivePlot
from ercref.study.studies import erc_arm
from ercref.study.token_view import token_table

ERC = "DAPO+ERC"


# ----------------------------------------------------------------------------- engine runs
@pytest.fixture(scope="module")
def two_arms(tmp_path_factory):
    """DAPO and DAPO+ERC, seed 0, 2 RL steps, token captures at step 2, one process (shared warm-up)."""
    d = tmp_path_factory.mktemp("runs")
    base = {"train.threads": 1, "train.progress": False, "train.plot": False, "train.steps": 2, "sft.steps": 30,
            "rollout.prompts_per_step": 8, "data.num_eval": 8, "train.seed": 0}
    logs, toks = [], []
    for label, beta in (("DAPO", None), (ERC, 0.05)):
        cfg = make_config("cpu-tiny", overrides={**base, **erc_arm("dapo", beta)})
        lg, tk = run_arm(cfg, d / label, label=label, capture_steps=[2], checkpoints=False)
        logs += lg
        toks += tk
    return results_from_records("two-arms", logs, toks)


@pytest.mark.slow
def test_run_arm_rows_are_tagged_and_complete(two_arms):
    res = two_arms
    assert res.labels == ["DAPO", ERC] and res.seeds == [0]
    for label in res.labels:
        st = res.steps[res.steps["label"] == label]
        assert list(st["step"]) == [1, 2]
        mb = res.minibatches[res.minibatches["label"] == label]
        assert sorted(set(mb["staleness"])) == [0, 1]   # K = 8 prompts / 4 per minibatch = 2 per step
        assert len(mb) == 2 * 2
    assert "erc/clip_frac" not in res.minibatches[res.minibatches["label"] == "DAPO"].dropna(axis=1, how="all")


@pytest.mark.slow
def test_shared_warmup_gives_identical_start(two_arms):
    ev0 = two_arms.evals[two_arms.evals["step"] == 0].set_index("label")["eval/avg@4"]
    assert ev0["DAPO"] == ev0[ERC]   # same seed, same reused SFT weights, same eval RNG


@pytest.mark.slow
def test_token_capture_matches_logged_metrics(two_arms):
    res = two_arms
    tt = token_table(res.tokens)
    erc = tt[tt["label"] == ERC]
    assert set(erc["step"]) == {2}
    # on-policy: rho = 1, up to float rounding (the rollout's forward and the trainer's may batch
    # differently, and BLAS kernels differ between CPUs)
    assert (erc[erc["staleness"] == 0]["rho"] - 1.0).abs().max() <= 1e-5
    inside = (erc["rho"] > 0.95) & (erc["rho"] < 1.05)
    edge = ((erc["rho"] - 0.95).abs() < 1e-5) | ((erc["rho"] - 1.05).abs() < 1e-5)  # rho is stored to 6 digits
    assert ((erc["erc_state"] == 0) == inside)[~edge].all()
    mb = res.minibatches
    for k, g in erc.groupby("staleness"):
        logged = mb[(mb["label"] == ERC) & (mb["step"] == 2) & (mb["staleness"] == k)]
        assert float(logged["erc/clip_frac"].iloc[0]) == pytest.approx(float(g["clipped"].mean()), abs=1e-6)
        assert float(logged["entropy/new_mean"].iloc[0]) == pytest.approx(float(g["entropy"].mean()), rel=1e-4)


def test_one_results_system():
    """The study cache is the only results store: the single-file cache and its CLI are gone."""
    import ercref.study.experiments as ex

    for gone in ("Experiment", "run_experiment", "load_results", "merge_results", "cache_paths", "main",
                 "tiny_experiment", "TINY_BETAS", "arm_label"):
        assert not hasattr(ex, gone), gone
    from ercref.paths import REPO_ROOT

    assert not list((REPO_ROOT / "data" / "results").glob("*.jsonl"))      # every cache is a study folder


# ----------------------------------------------------------------------------- GPU-notebook helpers
def test_authors_recipe_table_is_complete_and_points_at_the_authors_files():
    table = json.loads(AUTHORS_RECIPE.read_text())
    entries = load_authors_recipe()
    named = " ".join([table["script"], *table["sources"].values(), *(v["script"] for v in table["variants"].values())])
    for e in entries:
        for part in e["source"].split(";"):
            path, lines = part.strip().rsplit(":", 1)
            assert path in named, f"{e['setting']}: {path} is not one of the table's named source files"
            assert all(int(n) >= 1 for n in lines.split("-"))
        assert e["ercref"] or e["why"].strip()
    mapped = {e["ercref"] for e in entries if e["ercref"]}
    # the values the paper states, each mapped to a config field
    for f in ("model.name", "rollout.prompts_per_step", "rollout.group_size", "rollout.max_new_tokens", "loss.beta_low",
              "loss.beta_high", "loss.nll_coef", "loss.loss_kwargs.eps_high", "loss.loss_kwargs.clip_ratio_c", "optim.lr",
              "optim.warmup_steps", "optim.weight_decay", "train.minibatch_prompts", "train.eval_k", "train.eval_every",
              "advantage.gen_batch_prompts", "advantage.dynamic_sampling_metric", "data.eval_paths"):
        assert f in mapped, f
    assert PAPER_RECIPE["loss.beta_high"] == 0.05 and PAPER_RECIPE["advantage.gen_batch_prompts"] == 256
    assert any("8 x 8" in line for line in PAPER_NOT_IN_CONFIG)      # the authors' 64 GPUs are said, with a source


@pytest.mark.parametrize("preset", [PAPER_PRESET, ONE_GPU_PRESET])
def test_preset_differs_from_the_authors_only_where_it_says_why(preset):
    diff = recipe_diff(make_config(preset, validate=False))
    unexplained = diff[diff["known"] == ""]
    assert unexplained.empty, f"{preset} differs from the authors' recipe without a reason:\n{unexplained}"
    stale = set(KNOWN_DIFFERENCES[preset]) - set(diff["field"])
    assert not stale, f"KNOWN_DIFFERENCES[{preset!r}] explains fields that no longer differ: {stale}"
    assert (diff["source"] != "").all()


def test_recipe_diff_reports_each_difference_with_its_source():
    cfg = make_config(PAPER_PRESET, overrides={"optim.lr": 2e-6, "loss.beta_high": 0.2}, validate=False)
    d = recipe_diff(cfg).set_index("field")
    assert d.loc["optim.lr", "authors"] == 1e-6 and d.loc["optim.lr", "config"] == 2e-6 and d.loc["optim.lr", "known"] == ""
    assert d.loc["optim.lr", "source"] == "recipe/dapo/1_5B_perf_run_dapo_ours_math_szp_ae_dapo_erc_1_05.sh:123"
    assert d.loc["loss.beta_high", "source"].endswith(".sh:108")
    assert "optim.weight_decay" not in d.index
    tiny = recipe_diff(make_config("cpu-tiny")).set_index("field")
    assert tiny.loc["model.name", "config"] == "tiny" and tiny.loc["optim.lr", "authors"] == PAPER_RECIPE["optim.lr"]
    assert "loss.beta_low" not in tiny.index                     # cpu-tiny uses the authors' beta
    gppo = recipe_diff(make_config(PAPER_PRESET, validate=False), variant="gppo").set_index("field")
    assert gppo.loc["loss.loss", "authors"] == "gppo" and gppo.loc["loss.loss_kwargs.eps_high", "authors"] == 0.2
    assert recipe_diff(make_config(PAPER_PRESET, overrides={"loss.loss": "gppo", "loss.loss_kwargs":
                                                            {"eps_low": 0.2, "eps_high": 0.2}}, validate=False),
                       variant="gppo").set_index("field").index.tolist() == ["rollout.backend"]
    with pytest.raises(ValueError, match="not.a_field"):
        recipe_diff(make_config("cpu-tiny"), {"not.a_field": 1})


def _table(tmp_path, entries, **extra):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"entries": entries, **extra}))
    return p


def test_load_authors_recipe_names_the_file_and_entry_of_a_bad_table(tmp_path):
    ok = {"setting": "lr", "authors": "1e-6", "value": 1e-6, "source": "a/b.sh:3", "ercref": "optim.lr"}
    assert load_authors_recipe(_table(tmp_path, [ok]))[0]["value"] == 1e-6
    cases = [
        ([{k: v for k, v in ok.items() if k != "source"}], "entry 0 .*needs the keys"),
        ([dict(ok, source="a/b.sh")], "source must be 'path:line'"),
        ([dict(ok, source="a/b.sh:3; c.py:x")], "c.py:x"),
        ([dict(ok, ercref=None)], "must say why"),
        ([dict(ok, ercref="lr")], "section.field"),
        ([ok, dict(ok, setting="again")], "entry 1 .*also mapped by entry 0"),
        ([], "non-empty list"),
    ]
    for entries, msg in cases:
        with pytest.raises(ValueError, match=msg) as e:
            load_authors_recipe(_table(tmp_path, entries))
        assert "t.json" in str(e.value)
    with pytest.raises(ValueError, match="variant must be one of"):
        load_authors_recipe(_table(tmp_path, [ok], variants={}), variant="gppo")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
        load_authors_recipe(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="does not exist"):
        load_authors_recipe(tmp_path / "missing.json")


def test_one_gpu_preset_keeps_the_recipe_and_fits_one_80gb_gpu():
    one, paper = make_config(ONE_GPU_PRESET, validate=False), make_config(PAPER_PRESET, validate=False)
    assert one.model == paper.model and one.loss == paper.loss and one.optim == paper.optim
    assert one.num_minibatches == paper.num_minibatches == 8        # the same staleness structure
    assert one.rollout.backend == "vllm" and one.rollout.max_new_tokens <= 4096
    est = planner_estimate(one, device_bytes=80 * 10**9)
    assert est["available"] and est["fits"], est["message"]
    assert est["step_s"] * one.train.steps <= 26 * 3600, est["message"]    # about a day or less


def test_verl_file_round_trip(tmp_path):
    recs = make_synthetic("arith", 5, 1, seed=3)
    back = load_dataset_records("verl", str(write_verl_file(recs, tmp_path / "v.jsonl")))
    assert [r["answer"] for r in back] == [r["answer"] for r in recs]
    assert [r["prompt"][0]["content"] for r in back] == [r["prompt"] for r in recs]


def test_cuda_report_and_live_plot_arguments(tmp_path):
    import torch

    rep = cuda_report()
    assert rep["available"] == torch.cuda.is_available() and "CUDA" in rep["message"]
    with pytest.raises(ValueError, match="every"):
        LivePlot(tmp_path / "m.jsonl", every=0)
