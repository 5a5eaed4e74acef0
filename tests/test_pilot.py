"""The pilot's criteria (ercref.study.pilot) on synthetic logs and a synthetic cache: each rule's
threshold, the met / not met / incomplete states, the overlap check of the evaluation set."""
import pytest

from ercref.lm.config import make_config
from ercref.study import cache, pilot
from ercref.study.pilot import INCOMPLETE, MET, NOT_MET, RunFacts, degrades, learns, run_facts
from ercref.study.studies import Study

HELD_OUT = {"data.level": 2, "data.num_train": 2000, "data.num_eval": 256}   # >= 200 disjoint eval problems


def config(k: int = 1, lr: float = 1e-3, **extra) -> dict:
    return make_config("cpu-tiny", overrides={**HELD_OUT, "rollout.prompts_per_step": 16,
                                              "train.minibatch_prompts": 16 // k, "optim.lr": lr, **extra}).to_dict()


def log(accs, entropy=None, every=25, prompts=230) -> list[dict]:
    """Rows of a run: evaluations accs at steps 0, every, 2 every, ...; one step row per step with
    entropy/old_mean from ``entropy`` (a function of the step; default 1.0)."""
    steps = every * (len(accs) - 1)
    rows = [{"kind": "step", "step": s, "entropy/old_mean": (entropy or (lambda _: 1.0))(s)} for s in range(1, steps + 1)]
    rows += [{"kind": "eval", "step": i * every, "eval/avg@2": a, "eval/prompts": prompts} for i, a in enumerate(accs)]
    return rows


def facts(accs, collapse=None, k=1, problems=230, overlap=0) -> RunFacts:
    return RunFacts(k=k, lr=1e-3, evals=tuple((25 * i, a) for i, a in enumerate(accs)), collapse=collapse,
                    eval_problems=problems, overlap=overlap)


SEEDS = [0, 1, 2, 3, 4]


def test_run_facts_reads_gain_peak_drop_and_collapse_from_a_log():
    rows = log([0.2, 0.5, 0.3], entropy=lambda s: 1.0 if s < 40 else 0.01)
    f = run_facts(rows, config(k=16), check_overlap=False)
    assert (f.k, f.start, f.peak, f.final, f.collapse, f.eval_problems) == (16, 0.2, 0.5, 0.3, 40, 230)
    assert f.gain == pytest.approx(0.1) and f.drop == pytest.approx(0.2)
    assert f.learned_before_collapse and f.degraded and f.overlap is None
    with pytest.raises(ValueError, match=">= 2 evaluations"):
        run_facts(log([0.2]), config(), check_overlap=False)
    with pytest.raises(ValueError, match="train.minibatch_prompts"):
        pilot.staleness_k({"rollout": {"prompts_per_step": 16}})


def test_learns_needs_every_seed_to_gain_020_on_200_disjoint_problems():
    good = {s: facts([0.2, 0.3, 0.4 + 0.01 * s]) for s in SEEDS}
    assert learns(good, SEEDS).state == MET
    assert "seed 0: 0.200 -> peak 0.400 -> final 0.400 (gain +0.200" in learns(good, SEEDS).detail
    assert learns({**good, 3: facts([0.2, 0.39])}, SEEDS).state == NOT_MET          # gain 0.19 in one seed
    assert learns({**good, 3: facts([0.2, 0.5], problems=199)}, SEEDS).state == NOT_MET
    assert learns({**good, 3: facts([0.2, 0.5], overlap=1)}, SEEDS).state == NOT_MET
    part = {s: good[s] for s in (0, 1, 2)}
    assert learns(part, SEEDS).state == INCOMPLETE and "missing [3, 4]" in learns(part, SEEDS).detail
    assert learns({0: facts([0.3, 0.31])}, SEEDS).state == NOT_MET                   # one failing seed decides it
    assert learns({s: facts([0.2, 0.5], overlap=None) for s in SEEDS}, SEEDS).state == INCOMPLETE


def test_degrades_counts_drops_of_010_and_collapses_after_learning():
    stable = facts([0.2, 0.4, 0.35], k=16)                        # drop 0.05: not degraded
    drop = facts([0.2, 0.5, 0.4], k=16)                           # drop 0.10
    learned_collapse = facts([0.2, 0.3, 0.3], collapse=30, k=16)  # +0.10 at step 25, collapse at 30
    early_collapse = facts([0.2, 0.3, 0.3], collapse=10, k=16)    # collapsed before it had learned
    assert (stable.degraded, drop.degraded, learned_collapse.degraded, early_collapse.degraded) == \
        (False, True, True, False)
    met = {0: drop, 1: drop, 2: learned_collapse, 3: stable, 4: early_collapse}
    assert degrades({"K16-lr0.001": met}, SEEDS).state == MET
    two = {0: drop, 1: drop, 2: stable, 3: stable, 4: early_collapse}
    assert degrades({"K16-lr0.001": two}, SEEDS).state == NOT_MET
    assert degrades({"K16-lr0.001": {0: drop, 1: drop, 2: stable, 3: stable}}, SEEDS).state == INCOMPLETE
    both = degrades({"K16-lr0.001": two, "K16-lr0.003": met}, SEEDS)    # any one stale cell suffices
    assert both.state == MET and "K16-lr0.003 (met): 3 of 5 cached seeds degraded (3 after learning)" in both.detail \
        and "K16-lr0.001 (not met): 2 of 5" in both.detail
    assert degrades({}, SEEDS).state == NOT_MET


def test_a_fall_from_the_first_evaluation_degrades_but_is_not_counted_as_after_learning():
    fall = facts([0.33, 0.12, 0.2], k=16)                           # peak = first evaluation, drop 0.13
    assert fall.degraded and not fall.learned
    c = degrades({"K16-lr0.0003": {s: fall for s in SEEDS}}, SEEDS)
    assert c.state == MET and "5 of 5 cached seeds degraded (0 after learning)" in c.detail


def test_eval_overlap_finds_training_prompts_in_the_evaluation_set():
    n, overlap = pilot.eval_overlap(config())
    assert n >= 200 and overlap == 0
    n1, overlap1 = pilot.eval_overlap(make_config("cpu-tiny").to_dict())   # single-digit sums: 100 prompts in all
    assert n1 <= 32 and overlap1 > 0


def test_eval_problems_count_distinct_problems_not_evaluation_rows():
    """arith level 3 has 720 problems: 500 generated evaluation problems minus the training prompts
    leave ~300 rows but only ~210 distinct problems, and the pilot's >= 200 criterion counts those."""
    from ercref.study.studies import STUDIES

    cfg = STUDIES["smollm2-pilot2"]().config("K1-lr1e-05", "DAPO", 0).to_dict()
    distinct, overlap = pilot.eval_overlap(cfg)
    rows = log([0.2, 0.5, 0.3], prompts=300)
    f = run_facts(rows, cfg)
    assert overlap == 0 and distinct < 300 and f.eval_problems == distinct
    assert run_facts(rows, cfg, check_overlap=False).eval_problems == 300


def test_pilot_criteria_read_the_cache(tmp_path):
    study = Study("p", "cpu-tiny", HELD_OUT, {"K1-lr0.001": {}, "K16-lr0.001": {}}, {"DAPO": {}}, [0, 1, 2])
    root = cache.study_dir("p", tmp_path)
    root.mkdir(parents=True)
    cache.write_study_json(study, root)
    for s in (0, 1, 2):
        cache.write_run(root, "K1-lr0.001", "DAPO", s, {"config": config(k=1), "wall_s": 100.0},
                        log([0.1, 0.3, 0.35]) + [{"kind": "step", "step": 51, "time/step_s": 2.0}])
    for s, accs in ((0, [0.1, 0.5, 0.3]), (1, [0.1, 0.5, 0.2]), (2, [0.1, 0.2, 0.2])):
        cache.write_run(root, "K16-lr0.001", "DAPO", s, {"config": config(k=16), "wall_s": 50.0}, log(accs))
    c_learn, c_deg = pilot.pilot_criteria("p", tmp_path)
    assert (c_learn.state, c_deg.state) == (MET, NOT_MET)                # 2 of 3 degraded, none missing
    assert "K1-lr0.001: 3 of 3 seeds cached" in c_learn.detail and "0 in training" in c_learn.detail
    table = pilot.criteria_table([c_learn, c_deg])
    assert table.splitlines()[2].startswith("| learns |") and "**met**" in table and "**not met**" in table
    prof = pilot.step_profile("p", tmp_path)
    assert prof["K1-lr0.001"]["time/step_s"] == 2.0 and prof["K1-lr0.001"]["wall_s"] == 100.0
    md = tmp_path / "results.md"
    md.write_text("# R\nkept\n<!-- pilot-report: p -->\nstale\n<!-- /pilot-report -->\nkept below\n")
    assert pilot.refresh_pilot_blocks(md, tmp_path) == ["p"]
    rep = pilot.pilot_report("p", tmp_path)
    assert md.read_text() == "# R\nkept\n<!-- pilot-report: p -->\n" + rep + "<!-- /pilot-report -->\nkept below\n"
    assert rep.startswith("Pilot `p` (") and "6 runs, 0.12 run-hours" in rep and table.rstrip("\n") in rep
    assert "- K1-lr0.001: step_s 2, wall_s 100, steps 3" in rep and "Judge caveat" not in rep   # the exact judge
    with pytest.raises(ValueError, match="no cache"):
        pilot.pilot_criteria("absent", tmp_path)
    study.cells["K8-lr0.001"] = {"rollout.prompts_per_step": 16, "train.minibatch_prompts": 2}   # defined, not run
    cache.write_study_json(study, root)
    c_deg = pilot.pilot_criteria("p", tmp_path)[1]
    assert c_deg.state == INCOMPLETE and "K8-lr0.001 (incomplete): 0 of 0 cached seeds degraded (0 after learning) (missing [0, 1, 2])" \
        in c_deg.detail
    # a second K = 1 cell (on-policy at another learning rate) is a control: shown, not a criterion's input
    study.cells["K1-lr0.01"] = {"optim.lr": 0.01}
    cache.write_study_json(study, root)
    for s in (0, 1):
        cache.write_run(root, "K1-lr0.01", "DAPO", s, {"config": config(k=1), "wall_s": 10.0}, log([0.1, 0.5, 0.2]))
    c_learn2, c_deg2 = pilot.pilot_criteria("p", tmp_path)
    assert (c_learn2, c_deg2) == (c_learn, c_deg) and "K1-lr0.01" not in c_learn2.detail + c_deg2.detail
    assert list(pilot.on_policy_controls("p", tmp_path)) == ["K1-lr0.01"]
    assert "On-policy control K1-lr0.01 (K = 1 at another learning rate" in pilot.pilot_report("p", tmp_path)
    assert "seed 1: 0.100 -> peak 0.500 -> final 0.200 (gain +0.100, drop 0.300), collapse never DEGRADED" \
        in pilot.pilot_report("p", tmp_path)


def test_the_candidate_testbed_task_model_and_study():
    from ercref.lm.data import make_synthetic, train_eval_split
    from ercref.lm.models import TINY_MODELS, load_model
    from ercref.study.studies import get_study

    recs = make_synthetic("max", 500, seed=3)
    assert all(r["answer"] == str(max(int(x) for x in r["prompt"][4:-2].split(","))) for r in recs)
    assert all(len(r["answer"]) == 2 and r["prompt"][4:6] != r["prompt"][7:9] for r in recs)   # two different numbers
    assert make_synthetic("max", 1, style="instruct")[0]["prompt"].endswith("Answer with just the number.")
    train, held_out = train_eval_split("max", 2000, 300)
    assert len(held_out) >= 200 and not {r["prompt"] for r in held_out} & {r["prompt"] for r in train}
    assert TINY_MODELS["tiny"] == {}                                  # the committed caches' model is unchanged
    model, _ = load_model("tiny-6m", seed=1)
    assert 5e6 < sum(p.numel() for p in model.parameters()) < 2e7 and model.config.num_hidden_layers == 6
    s = get_study("tiny6m-pilot")
    assert list(s.arms) == ["DAPO"] and s.seeds == [0, 1, 2, 3, 4]
    cfg = s.config("K1-lr0.0003", "DAPO", 0)
    assert (cfg.model.name, cfg.data.task, cfg.loss.erc, pilot.staleness_k(cfg.to_dict())) == ("tiny-6m", "max", False, 1)
    assert pilot.staleness_k(s.config("K16-lr0.001", "DAPO", 0).to_dict()) == 16
    assert pilot.eval_overlap(cfg.to_dict()) == (len({r["prompt"] for r in held_out}), 0)
    s2 = get_study("tiny6m-pilot2")
    stale2 = {"K4-lr0.0003": {"train.minibatch_prompts": 4, "optim.lr": 3e-4},
              "K8-lr0.0003": {"train.minibatch_prompts": 2, "optim.lr": 3e-4}}
    assert (s2.name, s2.base["sft.steps"], s2.base["train.steps"]) == ("tiny6m-pilot2", 200, 120)
    assert s2.cells == {**s.cells, **stale2}
    s3 = get_study("tiny6m-pilot3")
    assert (s3.base["sft.steps"], s3.base["train.steps"], s3.base["train.log_update_norm"]) == (200, 200, False)
    assert {c: (pilot.staleness_k(s3.config(c, "DAPO", 0).to_dict()), s3.config(c, "DAPO", 0).optim.lr)
            for c in s3.cells} == {"K1-lr0.0006": (1, 6e-4), "K4-lr0.0006": (4, 6e-4), "K8-lr0.0006": (8, 6e-4)}
    s4 = get_study("tiny6m-pilot4")
    cfg4 = s4.config("K1-lr0.0003", "DAPO", 0)
    assert (cfg4.sft.steps, cfg4.sft.target_accuracy, cfg4.train.steps, cfg4.train.eval_every) == (400, 0.30, 300, 25)
    assert {c: pilot.staleness_k(s4.config(c, "DAPO", 0).to_dict()) for c in s4.cells} == \
        {"K1-lr0.0003": 1, "K4-lr0.0003": 4, "K8-lr0.0003": 8, "K16-lr0.0003": 16}
    assert "stopped once the sampled accuracy" in s4.description
    sp = get_study("smollm2-pilot")
    cfg_sp = sp.config("K1-lr1e-05", "DAPO", 0)
    assert (cfg_sp.data.level, cfg_sp.reward.judge, cfg_sp.train.steps, cfg_sp.train.minibatch_prompts) == (2, "math", 30, 8)
    assert {c: pilot.staleness_k(sp.config(c, "DAPO", 0).to_dict()) for c in sp.cells} == \
        {"K1-lr1e-05": 1, "K8-lr1e-05": 8, "K8-lr3e-05": 8, "K8-lr0.0001": 8, "K8-lr0.0003": 8}
    held_out, overlap = pilot.eval_overlap(cfg_sp.to_dict())
    assert held_out >= pilot.MIN_EVAL_PROBLEMS and overlap == 0        # the criterion's eval set, checked up front


def test_a_collapse_onto_right_answers_is_a_solved_task_not_a_degradation():
    """Collapse after learning counts, unless the run ends at >= SOLVED within DROP of its peak: a
    policy that solved the task may turn deterministic. A fall of DROP still counts at any level."""
    solved = facts([0.2, 1.0, 0.99], collapse=40, k=8)
    assert solved.learned_before_collapse and solved.solved_collapse and not solved.degraded
    assert facts([0.2, 0.9, 0.89], collapse=40, k=8).degraded            # collapsed below SOLVED
    assert facts([0.2, 1.0, 0.96], collapse=None, k=8).degraded is False   # no collapse, no fall
    fell = facts([0.2, 1.0, 0.9], collapse=40, k=8)
    assert fell.degraded and not fell.solved_collapse
    c = degrades({"K8-lr0.0003": {s: solved for s in SEEDS}}, SEEDS)
    assert c.state == NOT_MET and "0 of 5 cached seeds degraded" in c.detail
    assert "(collapse on a solved task: not counted)" in c.detail


def test_two_operation_pilot_holds_out_distinct_problems_none_in_training():
    """arith level 4 has 259,200 problems: the 300 generated evaluation problems are distinct and
    none is one of the 320 training prompts, so the >= 200 criterion does not depend on the filter."""
    from ercref.study.studies import STUDIES

    study = STUDIES["smollm2-pilot3"]()
    cfg = study.config("K8-lr0.0003", "DAPO", 0).to_dict()
    assert (cfg["data"]["level"], cfg["rollout"]["max_new_tokens"], cfg["train"]["steps"], cfg["reward"]["judge"]) == \
        (4, 24, 40, "number")
    assert pilot.eval_overlap(cfg) == (300, 0)
    assert {"K1-lr1e-05", "K8-lr0.0003", "K1-lr0.0003"} == set(study.cells)


def test_a_pilot_scored_by_the_math_judge_on_arithmetic_says_so(tmp_path):
    study = Study("m", "cpu-tiny", HELD_OUT, {"K1-lr0.001": {}}, {"DAPO": {}}, [0])
    root = cache.study_dir("m", tmp_path)
    root.mkdir(parents=True)
    cache.write_study_json(study, root)
    cache.write_run(root, "K1-lr0.001", "DAPO", 0, {"config": config(**{"reward.judge": "math"}), "wall_s": 1.0},
                    log([0.2, 0.5]))
    rep = pilot.pilot_report("m", tmp_path)
    assert "**Judge caveat**" in rep and "restates the question" in rep and "judge_audit m" in rep
