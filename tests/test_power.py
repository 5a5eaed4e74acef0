"""Seeds for a confirmatory study from a pilot's spread (ercref.study.power): the MDE formula, the seed
search, its power on simulated paired data, and the endpoints read from pilot runs and a cache."""
import math

import numpy as np
import pytest

from ercref.lm.config import make_config
from ercref.study import cache, power
from ercref.study.claims import t_quantile
from ercref.study.pilot import RunFacts
from ercref.study.studies import Study


def config(k: int) -> dict:
    return make_config("cpu-tiny", overrides={"rollout.prompts_per_step": 16, "train.minibatch_prompts": 16 // k}).to_dict()


def log(accs, every=20) -> list[dict]:
    rows = [{"kind": "step", "step": s, "entropy/old_mean": 1.0} for s in range(1, every * (len(accs) - 1) + 1)]
    return rows + [{"kind": "eval", "step": i * every, "eval/avg@2": a, "eval/prompts": 237} for i, a in enumerate(accs)]


def facts(accs, collapse=None, k=8) -> RunFacts:
    return RunFacts(k=k, lr=1e-3, evals=tuple((20 * i, a) for i, a in enumerate(accs)), collapse=collapse,
                    eval_problems=237, overlap=0)


def test_mde_is_the_paired_t_formula_with_holm_and_no_pairing_credit():
    want = (2.262157 + 0.883404) * math.sqrt(2) / math.sqrt(10)     # t_{0.975,9}, t_{0.80,9}
    assert power.mde(1.0, 10) == pytest.approx(want, rel=1e-5)
    assert power.mde(1.0, 10, correlation=0.5) == pytest.approx(want / math.sqrt(2), rel=1e-5)   # sd_diff = sd
    holm = (t_quantile(1 - 0.05 / 6, 9) + t_quantile(0.8, 9)) * math.sqrt(2 / 10)
    assert power.mde(1.0, 10, tests=3) == pytest.approx(holm) and holm > want
    assert power.mde(0.5, 10) == pytest.approx(want / 2)
    for bad, match in (({"n": 1}, "n"), ({"tests": 0}, "tests"), ({"alpha": 1.5}, "alpha"),
                       ({"correlation": 1.0}, "correlation"), ({"power": 1.0}, "power")):
        with pytest.raises(ValueError, match=match):
            power.mde(1.0, **{"n": 10, **bad})
    with pytest.raises(ValueError, match="sd"):
        power.mde(float("nan"), 10)


def test_seeds_needed_is_the_first_count_that_reaches_the_effect_and_at_least_ten():
    n = power.seeds_needed(1.0, 0.5, tests=3)
    assert n > 10 and power.mde(1.0, n, tests=3) <= 0.5 < power.mde(1.0, n - 1, tests=3)
    assert power.seeds_needed(0.01, 0.5) == 10 and power.seeds_needed(0.0, 0.1) == 10   # the floor
    assert power.seeds_needed(1.0, 0.001) is None and power.seeds_needed(1.0, 0.0) is None
    assert power.seeds_needed(0.01, 0.5, min_seeds=3) == 3
    with pytest.raises(ValueError, match="effect"):
        power.seeds_needed(1.0, -0.1)


def test_an_effect_of_one_mde_is_found_four_times_in_five_on_simulated_pairs():
    rng = np.random.default_rng(0)
    sd, n, sims = 0.07, 12, 4000
    effect = power.mde(sd, n)                                     # paired difference sd: sqrt(2) sd
    a = rng.normal(0.5, sd, (sims, n))
    b = rng.normal(0.5 + effect, sd, (sims, n))                   # independent arms: correlation 0
    d = b - a
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    rate = float(np.mean(np.abs(t) > t_quantile(0.975, n - 1)))
    assert 0.77 < rate < 0.83                                     # power 0.80 (the t approximation)
    null = a[:, :n] - rng.normal(0.5, sd, (sims, n))
    tn = null.mean(1) / (null.std(1, ddof=1) / math.sqrt(n))
    assert float(np.mean(np.abs(tn) > t_quantile(0.975, n - 1))) < 0.07


def test_endpoints_degradation_and_seeds_from_pilot_runs():
    cell = {0: facts([0.3, 0.6, 0.4]), 1: facts([0.3, 0.5, 0.3]), 2: facts([0.3, 0.55, 0.5], collapse=30),
            3: facts([0.3, 0.4, 0.4])}
    v = power.endpoint_values(cell)
    assert v["drop"] == pytest.approx({0: 0.2, 1: 0.2, 2: 0.05, 3: 0.0})
    assert v["collapse_step"] == {0: 40.0, 1: 40.0, 2: 30.0, 3: 40.0}       # no collapse: the last step
    rows = {r.endpoint: r for r in power.power_for_cell(cell, "K8-lr0.001")}
    assert rows["drop"].degradation == pytest.approx(0.1125) and rows["drop"].target == pytest.approx(0.05625)
    assert rows["final_accuracy"].degradation == rows["drop"].degradation
    assert rows["collapse_step"].degradation == pytest.approx(40 - 37.5)
    sd = float(np.std([0.4, 0.3, 0.5, 0.4], ddof=1))
    assert rows["final_accuracy"].sd == pytest.approx(sd)
    n = rows["final_accuracy"].seeds
    assert n == power.seeds_needed(sd, 0.05625, tests=3) and rows["final_accuracy"].mde_at_seeds <= 0.05625
    assert "| final_accuracy | K8-lr0.001 | 4 |" in power.power_table(list(rows.values()))
    with pytest.raises(ValueError, match=">= 2 pilot seeds"):
        power.power_for_cell({0: facts([0.3, 0.1])}, "K8")


def test_the_destabilising_cell_and_the_command_read_the_cache(tmp_path, capsys):
    study = Study("p", "cpu-tiny", {}, {"K1-lr0.001": {}, "K8-lr0.001": {}, "K16-lr0.001": {}}, {"DAPO": {}}, [0, 1, 2])
    root = cache.study_dir("p", tmp_path)
    root.mkdir(parents=True)
    cache.write_study_json(study, root)
    for s, (a8, a16) in enumerate((([0.3, 0.5, 0.3], [0.3, 0.4, 0.35]), ([0.3, 0.6, 0.3], [0.3, 0.3, 0.3]),
                                   ([0.3, 0.5, 0.45], [0.3, 0.35, 0.3]))):
        cache.write_run(root, "K8-lr0.001", "DAPO", s, {"config": config(k=8)}, log(a8))
        cache.write_run(root, "K16-lr0.001", "DAPO", s, {"config": config(k=16)}, log(a16))
    assert power.main(["p", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| final_accuracy | K8-lr0.001 | 3 |" in out and "K16" not in out   # 2 of 3 degraded at K8, 0 at K16
    with pytest.raises(SystemExit):
        power.main(["p", "--results-dir", str(tmp_path), "--cell", "K4-lr0.001"])
    assert "not a cached stale cell" in capsys.readouterr().err
    # the docs block: the same table, with the seed range; refreshed in place; an uncached cell named
    md = tmp_path / "page.md"
    md.write_text("x\n<!-- power-report: p K8-lr0.001 -->\nold\n<!-- /power-report -->\ny\n")
    assert power.refresh_power_blocks(md, tmp_path) == ["p K8-lr0.001"]
    text = md.read_text()
    rows = power.power_for_cell({s: f for s, f in power.pilot_facts("p", tmp_path, check_overlap=False)[1]
                                 ["K8-lr0.001"].items()}, "K8-lr0.001")
    assert power.power_table(rows) in text and "old" not in text and text.startswith("x\n") and text.endswith("y\n")
    assert ("not reachable" in text) == any(r.seeds is None for r in rows)
    with pytest.raises(ValueError, match="not a cached stale cell"):
        power.power_report("p", "K4-lr0.001", tmp_path)
