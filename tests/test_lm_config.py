"""LM engine configuration: presets, overrides, config files, and clear errors for bad input."""
import json

import pytest
import torch

from ercref.lm.config import PRESETS, Config, make_config, parse_value, validate_config
from ercref.train import main as cli_main

CPU_ONLY = not torch.cuda.is_available()


def test_preset_then_file_then_overrides(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"loss": {"beta_low": 0.2, "name": "gppo"}, "train": {"steps": 7}}))
    cfg = make_config("cpu-tiny", f, ["loss.beta_low=0.1", "loss.loss_kwargs.beta1=0.5", "loss.erc=false"])
    assert cfg.preset == "cpu-tiny"
    assert cfg.model.name == "tiny"                      # from the preset
    assert cfg.loss.name == "gppo" and cfg.train.steps == 7  # from the file
    assert cfg.loss.beta_low == 0.1 and cfg.loss.erc is False  # the command line wins
    assert cfg.loss.loss_kwargs == {"beta1": 0.5}
    assert cfg.num_minibatches == cfg.rollout.prompts_per_step // cfg.train.minibatch_prompts


def test_yaml_config_file(tmp_path):
    pytest.importorskip("yaml")
    f = tmp_path / "c.yaml"
    f.write_text("preset: cpu-tiny\nrollout:\n  group_size: 4\n")
    cfg = make_config(config_file=f)
    assert cfg.preset == "cpu-tiny" and cfg.rollout.group_size == 4


def test_parse_value():
    assert parse_value("0.1") == 0.1 and parse_value("true") is True and parse_value("null") is None
    assert parse_value("[1, 2]") == [1, 2] and parse_value("dapo") == "dapo"


def test_gpu_preset_is_the_papers_recipe():
    p = PRESETS["gpu-paper-1.5b"]
    assert p["model.name"] == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert (p["rollout.prompts_per_step"], p["rollout.group_size"], p["train.minibatch_prompts"]) == (128, 8, 16)
    assert (p["optim.lr"], p["optim.warmup_steps"], p["optim.weight_decay"], p["optim.grad_clip"]) == (1e-6, 10, 0.1, 1.0)
    assert (p["loss.eps_low"], p["loss.eps_high"], p["loss.clip_ratio_c"]) == (0.2, 0.28, 10.0)
    assert (p["loss.beta_low"], p["loss.beta_high"], p["loss.nll_coef"], p["rollout.temperature"]) == (0.05, 0.05, 0.1, 1.0)
    assert (p["train.eval_k"], p["train.eval_temperature"], p["train.eval_top_p"]) == (32, 0.6, 0.95)
    assert (p["reward.correct"], p["reward.wrong"], p["reward.no_think_close"]) == (1.0, -1.0, -0.5)
    cfg = make_config("gpu-paper-1.5b", validate=False)
    assert cfg.num_minibatches == 8  # 8 optimizer steps per rollout batch


@pytest.mark.skipif(not CPU_ONLY, reason="checks the CPU-only failure")
def test_gpu_preset_fails_fast_on_cpu():
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        make_config("gpu-paper-1.5b")


@pytest.mark.skipif(not CPU_ONLY, reason="checks the CPU-only failure")
@pytest.mark.parametrize("overrides, match", [
    (["rollout.backend=vllm"], "rollout.backend='vllm' needs a CUDA"),
    (["rollout.backend=vllm", "train.device=auto"], "rollout.backend='vllm' needs a CUDA GPU"),
    (["model.bf16_autocast=true"], "model.bf16_autocast"),
])
def test_cuda_only_options_fail_clearly_on_cpu(overrides, match):
    with pytest.raises(ValueError, match=match):
        make_config("cpu-tiny", overrides=overrides)


@pytest.mark.parametrize("overrides, field", [
    (["train.minibatch_prompts=3"], "train.minibatch_prompts"),      # 3 does not divide 16
    (["loss.beta_low=1.5"], "loss.beta_low"),
    (["loss.beta_low=0"], "loss.beta_low"),
    (["loss.beta_high=-0.1"], "loss.beta_high"),
    (["loss.name=nope"], "loss.name"),
    (["rollout.top_p=0"], "rollout.top_p"),
    (["rollout.group_size=0"], "rollout.group_size"),
    (["optim.lr=-1"], "optim.lr"),
    (["loss.kl_coef=0.1"], "loss.kl_coef"),
    (["data.task=gsm8k"], "data.path"),
    (["reward.scheme=weird"], "reward.scheme"),
])
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make_config("cpu-tiny", overrides=overrides)


def test_unknown_field_and_preset():
    with pytest.raises(ValueError, match="loss.betalow"):
        make_config("cpu-tiny", overrides=["loss.betalow=0.1"])
    with pytest.raises(ValueError, match="unknown preset 'cpu-huge'"):
        make_config("cpu-huge")
    with pytest.raises(ValueError, match="section.field=value"):
        make_config("cpu-tiny", overrides=["loss.beta_low"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="nope.json"):
        make_config("cpu-tiny", tmp_path / "nope.json")


def test_cli_reports_bad_config_without_traceback(capsys):
    assert cli_main(["--preset", "cpu-tiny", "--set", "train.minibatch_prompts=5", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert "train.minibatch_prompts" in err and "Traceback" not in err


def test_cli_print_config(capsys):
    assert cli_main(["--preset", "cpu-tiny", "--set", "loss.beta_high=0.07", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["loss"]["beta_high"] == 0.07 and printed["preset"] == "cpu-tiny"


def test_every_cpu_preset_validates():
    for name in ("cpu-tiny", "cpu-smollm2"):
        assert isinstance(validate_config(make_config(name)), Config)
