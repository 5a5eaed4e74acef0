"""Rules between config sections (ercref.lm.config_rules) and config files and configs changed after
they were built: each is refused with an error naming the fields (or the file) before any model is
built."""
import pytest

from ercref.lm.config import make_config
from ercref.lm.hardware import check_hardware


@pytest.mark.parametrize("overrides, names", [
    ({"advantage.dynamic_sampling": True, "advantage.gen_batch_prompts": 4},
     ("advantage.gen_batch_prompts", "advantage.max_gen_batches", "rollout.prompts_per_step")),
    ({"reward.judge": "choice", "data.task": "arith"}, ("reward.judge", "data.task")),
    ({"reward.judge": "choice", "data.task": "max"}, ("reward.judge", "data.task")),
    ({"reward.correct": 0.0, "reward.wrong": 0.0}, ("reward.correct", "reward.wrong")),
    ({"reward.scheme": "paper", "reward.correct": -1.0, "reward.wrong": 1.0}, ("reward.correct", "reward.wrong")),
    ({"data.num_eval": 10**9}, ("data.num_eval", "1,000,000")),        # would generate 10**9 records first
    ({"data.task": "max", "data.num_train": 10**7}, ("data.num_train", "'max'")),
])
def test_a_config_that_cannot_give_a_meaningful_run_is_refused_when_built(overrides, names):
    with pytest.raises(ValueError) as e:
        make_config("cpu-tiny", overrides=overrides)
    assert all(n in str(e.value) for n in names), str(e.value)


@pytest.mark.parametrize("overrides", [
    {"advantage.dynamic_sampling": True, "advantage.gen_batch_prompts": 4, "advantage.max_gen_batches": 4},
    {"advantage.dynamic_sampling": True, "advantage.gen_batch_prompts": 0},
    {"advantage.dynamic_sampling": False, "advantage.gen_batch_prompts": 4},
    {"reward.judge": "choice", "data.task": "mc-arith"},
    {"reward.judge": "exact", "data.task": "mc-arith"},
    {"reward.correct": 0.5, "reward.wrong": -2.0},
    {"data.num_eval": 1_000_000},
])
def test_the_rules_leave_meaningful_configs_alone(overrides):
    cfg = make_config("cpu-tiny", overrides=overrides)
    assert all(getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]) == v for k, v in overrides.items())


@pytest.mark.parametrize("field, value, name", [
    ("train", ("steps", -5), "train.steps"),
    ("optim", ("lr", float("nan")), "optim.lr"),
    ("reward", ("judge", "choice"), "reward.judge"),
    ("rollout", ("prompts_per_step", 6), "train.minibatch_prompts"),
])
def test_a_field_changed_after_the_config_was_built_is_refused_before_a_run_starts(field, value, name):
    cfg = make_config("cpu-tiny")
    setattr(getattr(cfg, field), *value)
    with pytest.raises(ValueError, match="changed after it was built") as e:
        check_hardware(cfg)     # the Trainer's first call
    assert name in str(e.value)


def test_something_other_than_a_config_is_refused_by_name():
    with pytest.raises(TypeError, match="cfg must be an ercref.lm.config.Config"):
        check_hardware({"train": {"steps": 3}})


@pytest.mark.parametrize("name, text, phrase", [
    ("bool_key.yaml", "train:\n  on: 3\n", "the key True in 'train'"),
    ("int_key.yaml", "loss:\n  loss_kwargs:\n    1: 0.2\n", "the key 1 in 'loss.loss_kwargs'"),

    ("big.yaml", "train:\n  steps: 1" + "0" * 5000 + "\n", "cannot be read"),
])
def test_config_file_values_python_cannot_take_name_the_file(tmp_path, name, text, phrase):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ValueError) as e:
        make_config(config_file=p)
    assert name in str(e.value) and phrase in str(e.value), str(e.value)


def test_the_rules_know_every_synthetic_task_by_its_answer():
    from ercref.lm.config_rules import LETTER_TASKS, NUMBER_TASKS
    from ercref.lm.data import SYNTHETIC_TASKS
    assert sorted(LETTER_TASKS + NUMBER_TASKS) == sorted(SYNTHETIC_TASKS)


def test_the_rules_module_imports_no_engine_module():
    """config_rules is a helper of the leaf ercref.lm.config: it imports nothing of ercref."""
    import ast
    from pathlib import Path

    import ercref.lm.config_rules as mod
    nodes = [n for n in ast.walk(ast.parse(Path(mod.__file__).read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [n for n in nodes if isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").startswith("ercref"))]


def test_an_integer_over_pythons_digit_limit_in_a_json_file_is_refused_by_its_field(tmp_path):
    p = tmp_path / "big.json"
    p.write_text('{"train": {"steps": 1' + "0" * 5000 + "}}")
    with pytest.raises(ValueError, match=r"train.steps must be an integer >= 1, got <an integer of 5001 digits>"):
        make_config(config_file=p)


@pytest.mark.parametrize("field, value", [("data.path", "mine.jsonl"), ("data.eval_path", "held_out.jsonl"),
                                          ("data.eval_paths", {"aime": "aime.json"})])
def test_a_data_file_given_with_a_synthetic_task_is_refused_not_ignored(field, value):
    """A synthetic task generates its prompts: a data file given with one would never be read, and the
    run would train on arithmetic instead of the user's data."""
    with pytest.raises(ValueError, match=f"{field} needs a real data.task"):
        make_config("cpu-tiny", overrides={field: value})
    cfg = make_config("cpu-tiny", overrides={field: value, "data.task": "gsm8k", "data.path": "mine.jsonl"})
    assert cfg.data.task == "gsm8k"


def test_the_math_judge_on_a_computation_task_is_warned_about_when_a_run_starts(tmp_path):
    from ercref.lm.config_rules import judge_task_caveat
    from ercref.lm.trainer import Trainer

    math_arith = make_config("cpu-tiny", overrides={"reward.judge": "math", "data.task": "arith"})
    assert "restates the question" in judge_task_caveat(math_arith) and "'number'" in judge_task_caveat(math_arith)
    for judge in ("number", "exact"):
        assert judge_task_caveat(make_config("cpu-tiny", overrides={"reward.judge": judge, "data.task": "arith"})) is None
    with pytest.warns(UserWarning, match="credits a response that restates"):
        trainer = Trainer(math_arith, tmp_path / "run")
    rec = trainer.evaluate()            # the evaluation logs the final-number accuracy beside the math judge's
    k = math_arith.train.eval_k
    assert 0 <= rec[f"eval/final_number_avg@{k}"] <= 1
