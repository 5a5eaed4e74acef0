"""Bad engine configs fail at once, naming the field and the fix (issue: fuzz of the CLI and configs)."""
import json

import pytest

from ercref.lm.config import make_config
from ercref.lm.hardware import check_hardware
from ercref.lm.models import check_model_name


def test_float16_parameters_are_refused_before_anything_is_built():
    with pytest.raises(ValueError, match=r"model\.dtype=float16.*loss scaling.*float32"):
        make_config("cpu-tiny", overrides=["model.dtype=float16"])
    assert make_config("cpu-tiny", overrides=["model.dtype=bfloat16"]).model.dtype == "bfloat16"


@pytest.mark.parametrize("name,match", [
    ("smolm2-135m", "check the spelling"),                 # a typo of a special name: no hub round trip
    ("./no-such-model", "looks like a local path"),
    ("/tmp/ercref-no-such-model", "looks like a local path"),
    ("org/sub/name", "looks like a local path"),
])
def test_model_names_that_cannot_load_fail_at_once(name, match):
    with pytest.raises(ValueError, match=match):
        check_model_name(name)
    with pytest.raises(ValueError, match="model.name"):
        check_hardware(make_config("cpu-tiny", overrides=[f"model.name={name}"]))


def test_offline_hub_id_not_in_cache_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="not in the local Hugging Face cache"):
        check_model_name("no-such-org/no-such-model")


def test_existing_folder_and_special_names_pass(tmp_path):
    for name in ("tiny", "smollm2-135m-instruct", "SmolLM2-135M-Instruct", str(tmp_path)):
        check_model_name(name)


def test_plot_of_a_resumed_run_whose_eval_k_changed(tmp_path):
    """A run resumed with another eval_k logs eval/avg@2 then eval/avg@4: the plot draws both."""
    from ercref.lm.run_plot import plot_run

    log = tmp_path / "metrics.jsonl"
    recs = [{"kind": "eval", "step": 0, "eval/avg@2": 0.1}]
    recs += [{"kind": "step", "step": s, "reward/mean": 0.1 * s, "reward/accuracy": 0.1} for s in (1, 2, 3)]
    recs += [{"kind": "eval", "step": 3, "eval/avg@4": 0.3}]
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    png = plot_run(log, tmp_path / "plot.png")
    assert png.stat().st_size > 10_000


# ----------------------------------------------------------------------------- properties
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ercref.lm.config import parse_bool  # noqa: E402

BOOL_WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


@given(st.sampled_from(sorted(BOOL_WORDS)), st.lists(st.booleans(), min_size=5, max_size=5))
def test_bool_words_in_any_case_mean_what_they_say(word, upper):
    text = "".join(c.upper() if u else c for c, u in zip(word, upper * 2, strict=False))
    assert parse_bool(text) is BOOL_WORDS[word]


@given(st.text(min_size=0, max_size=12).filter(lambda t: t.strip().lower() not in BOOL_WORDS))
def test_anything_else_is_not_a_bool(text):
    with pytest.raises(ValueError, match="not a bool"):
        parse_bool(text)


# ----------------------------------------------------------------------------- planner and scoring arguments
import torch  # noqa: E402

from ercref.lm import memory  # noqa: E402
from ercref.lm.scoring import score_responses  # noqa: E402


@pytest.mark.parametrize("call", [
    lambda: memory.plan_memory({"train": {}}), lambda: memory.estimate_step_seconds({"train": {}}),
    lambda: memory.estimate_eval_seconds({"train": {}}), lambda: memory.suggest_budgets({"train": {}}, 10 ** 9),
])
def test_the_planner_names_a_cfg_that_is_not_a_config(call):
    with pytest.raises(TypeError, match="cfg must be an ercref.lm.config.Config"):
        call()


def test_the_planner_names_a_bad_model_name_and_eval_backend():
    with pytest.raises(ValueError, match="name must be a model name"):
        memory.model_shape(None)
    with pytest.raises(ValueError, match="eval_backend must be 'hf', 'vllm' or None"):
        memory.estimate_run_seconds(make_config("cpu-tiny"), eval_backend="foo")


@pytest.mark.parametrize("lengths", [torch.tensor([4]), torch.tensor([[4, 0, 0]]), [4, 0, 0]])
def test_response_lengths_must_give_one_length_per_response(lengths):
    """Overlong shaping adds a penalty per response: a (1,) tensor would broadcast one response's
    penalty to all of them."""
    cfg = make_config("cpu-tiny", overrides={"reward.overlong_shaping": True}).reward
    with pytest.raises(ValueError, match=r"lengths must be a tensor of shape \(3,\)"):
        score_responses(["1", "2", "3"], ["1", "2", "3"], cfg, lengths=lengths, max_new_tokens=4)
    rewards, _ = score_responses(["1", "2", "3"], ["1", "2", "3"], cfg, lengths=torch.tensor([4, 0, 0]), max_new_tokens=4)
    assert rewards.tolist() == [0.0, 1.0, 1.0]


def test_the_planner_counts_the_supervised_warm_up():
    """The warm-up trains on all sft.batch_size rows in one forward + backward: a batch too large for
    the device is refused by the plan (naming sft.batch_size), not found by an out-of-memory error."""
    big = memory.plan_memory(make_config("cpu-tiny", overrides={"sft.batch_size": 10 ** 6}), device_bytes=8 * 2 ** 30)
    assert big.peak_phase == "sft" and not big.fits and "sft.batch_size (now 1000000" in big.message()
    small = memory.plan_memory(make_config("cpu-tiny", overrides={"sft.batch_size": 8}), device_bytes=8 * 2 ** 30)
    assert 0 < small.phases["sft"] < big.phases["sft"] / 1000
    assert "sft" not in memory.plan_memory(make_config("cpu-tiny", overrides={"sft.steps": 0}), device_bytes=8 * 2 ** 30).phases
