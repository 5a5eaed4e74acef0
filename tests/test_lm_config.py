"""LM engine configuration: typed sections, presets, overrides, config files, the command line
(tyro), and clear errors for bad input."""
import dataclasses
import json
import re
from typing import get_args, get_type_hints

import pytest
import torch

import ercref
from ercref.lm.config import (
    PRESETS,
    AdvantageConfig,
    Config,
    DataConfig,
    config_from_dict,
    make_config,
    parse_value,
    sections,
    validate_config,
)
from ercref.train import main as cli_main

CPU_ONLY = not torch.cuda.is_available()


def test_preset_then_file_then_overrides(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"loss": {"beta_low": 0.2, "loss": "gppo"}, "train": {"steps": 7}}))
    cfg = make_config("cpu-tiny", f, ["loss.beta_low=0.1", "loss.loss_kwargs.beta1=0.5", "loss.erc=false"])
    assert cfg.preset == "cpu-tiny"
    assert cfg.model.name == "tiny"                      # from the preset
    assert cfg.loss.loss == "gppo" and cfg.train.steps == 7  # from the file
    assert cfg.loss.beta_low == 0.1 and cfg.loss.erc is False  # the command line wins
    assert cfg.loss.loss_kwargs == {"beta1": 0.5}
    assert cfg.num_minibatches == cfg.rollout.prompts_per_step // cfg.train.minibatch_prompts


def test_loss_section_is_the_policy_loss_config():
    cfg = make_config("cpu-tiny", overrides=["loss.agg_mode=seq-mean-token-sum-norm", "loss.agg_norm=64",
                                             "loss.kl_coef=0.01", "loss.entropy_coef=0.001"])
    assert type(cfg.loss) is ercref.PolicyLossConfig
    assert (cfg.loss.agg_norm, cfg.loss.kl_coef, cfg.loss.entropy_coef) == (64.0, 0.01, 0.001)  # > 0 is allowed
    assert isinstance(cfg.advantage, AdvantageConfig)


def test_yaml_config_file(tmp_path):
    pytest.importorskip("yaml")
    f = tmp_path / "c.yaml"
    f.write_text("preset: cpu-tiny\nrollout:\n  group_size: 4\nloss:\n  erc: off\n")
    cfg = make_config(config_file=f)
    assert cfg.preset == "cpu-tiny" and cfg.rollout.group_size == 4 and cfg.loss.erc is False


def test_config_file_round_trip(tmp_path):
    cfg = make_config("cpu-smollm2", overrides=["loss.loss=gppo", "loss.loss_kwargs.beta1=0.5", "train.seed=3",
                                                "advantage.scale_by_std=no"])
    f = tmp_path / "c.json"
    f.write_text(json.dumps(cfg.to_dict()))
    assert make_config(config_file=f) == cfg


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_from_dict_inverts_to_dict(name):
    cfg = make_config(name, validate=False)
    assert config_from_dict(cfg.to_dict()) == cfg
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_config_saved_before_the_rename_still_loads():
    old = make_config("cpu-tiny").to_dict()
    old["loss"] = {"name": "dapo", "eps_low": 0.2, "eps_high": None, "clip_ratio_c": 10.0, "loss_kwargs": {},
                   "erc": True, "scale_adv_by_std": False, "dynamic_sampling": True}
    del old["advantage"]
    cfg = config_from_dict(old)
    assert cfg.loss.loss == "dapo" and cfg.loss.loss_kwargs == {"eps_low": 0.2, "clip_ratio_c": 10.0}
    assert cfg.advantage == AdvantageConfig(scale_by_std=False, dynamic_sampling=True)


def test_parse_value():
    assert parse_value("0.1") == 0.1 and parse_value("true") is True and parse_value("null") is None
    assert parse_value("[1, 2]") == [1, 2] and parse_value("dapo") == "dapo"


@pytest.mark.parametrize("text, expected", [
    ("on", True), ("off", False), ("ON", True), ("Off", False), ("true", True), ("False", False),
    ("1", True), ("0", False), ("yes", True), ("no", False)])
def test_bool_override_words(text, expected):
    cfg = make_config("cpu-tiny", overrides=[f"loss.erc={text}"])
    assert cfg.loss.erc is expected


def test_bad_bool_and_number_name_the_field():
    with pytest.raises(ValueError, match=r"loss\.erc"):
        make_config("cpu-tiny", overrides=["loss.erc=maybe"])
    with pytest.raises(ValueError, match=r"train\.seed"):
        make_config("cpu-tiny", overrides=["train.seed=abc"])
    with pytest.raises(ValueError, match=r"optim\.lr"):
        make_config("cpu-tiny", overrides=["optim.lr=fast"])
    with pytest.raises(ValueError, match=r"loss\.loss_kwargs\.beta1"):
        make_config("cpu-tiny", overrides=["loss.loss=gppo", "loss.loss_kwargs.beta1=x"])


def test_presets_are_typed_configs():
    assert set(PRESETS) == {"cpu-tiny", "cpu-smollm2", "gpu-paper-1.5b", "gpu-1x80gb-1.5b"}
    for name, cfg in PRESETS.items():
        assert isinstance(cfg, Config) and cfg.preset == name
        assert make_config(name, validate=False) == cfg


def test_gpu_preset_is_the_papers_recipe():
    p = PRESETS["gpu-paper-1.5b"]
    assert p.model.name == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert (p.rollout.prompts_per_step, p.rollout.group_size, p.train.minibatch_prompts) == (128, 8, 16)
    assert (p.optim.lr, p.optim.warmup_steps, p.optim.weight_decay, p.optim.grad_clip) == (1e-6, 10, 0.1, 1.0)
    assert p.loss.loss == "dapo"
    assert p.loss.loss_kwargs == {"eps_low": 0.2, "eps_high": 0.28, "clip_ratio_c": 10.0}
    assert (p.loss.beta_low, p.loss.beta_high, p.loss.nll_coef, p.rollout.temperature) == (0.05, 0.05, 0.1, 1.0)
    assert p.advantage.dynamic_sampling is True and p.advantage.scale_by_std is True
    assert (p.train.eval_k, p.train.eval_temperature, p.train.eval_top_p) == (32, 0.6, 0.95)
    assert (p.reward.correct, p.reward.wrong, p.reward.no_think_close) == (1.0, -1.0, -0.5)
    cfg = make_config("gpu-paper-1.5b", validate=False)
    assert cfg.num_minibatches == 8  # 8 optimizer steps per rollout batch


def test_task_choices_match_the_data_module():
    from ercref.lm.data import REAL_TASKS, SYNTHETIC_TASKS
    assert get_args(get_type_hints(DataConfig)["task"]) == SYNTHETIC_TASKS + REAL_TASKS


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
    (["loss.loss=nope"], "unknown loss name 'nope'"),
    (["loss.agg_mode=sum"], "loss.agg_mode"),
    (["loss.loss_kwargs.beta1=0.5"], "loss.loss_kwargs"),             # dapo takes no beta1
    (["rollout.top_p=0"], "rollout.top_p"),
    (["rollout.group_size=0"], "rollout.group_size"),
    (["optim.lr=-1"], "optim.lr"),
    (["loss.kl_coef=-0.1"], "loss.kl_coef"),
    (["data.task=gsm8k"], "data.path"),
    (["reward.scheme=weird"], "reward.scheme"),
    (["model.dtype=fp8"], "model.dtype"),
    (["train.device=gpu"], "train.device"),
])
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        make_config("cpu-tiny", overrides=overrides)


def test_unknown_field_and_preset():
    with pytest.raises(ValueError, match="loss.betalow") as e:
        make_config("cpu-tiny", overrides=["loss.betalow=0.1"])
    assert "beta_low" in str(e.value) and "agg_norm" in str(e.value)   # the valid names are listed
    with pytest.raises(ValueError, match=r"renamed to loss\.loss"):
        make_config("cpu-tiny", overrides=["loss.name=gppo"])
    with pytest.raises(ValueError, match="advantage"):
        make_config("cpu-tiny", overrides=["nosection.x=1"])
    with pytest.raises(ValueError, match="unknown preset 'cpu-huge'"):
        make_config("cpu-huge")
    with pytest.raises(ValueError, match="section.field=value"):
        make_config("cpu-tiny", overrides=["loss.beta_low"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="nope.json"):
        make_config("cpu-tiny", tmp_path / "nope.json")


# ----------------------------------------------------------------------------- command line
def _cli_config(capsys, *args) -> dict:
    assert cli_main([*args, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


def _help_blocks(capsys, monkeypatch, *args) -> dict[str, tuple[str, str]]:
    """{"--section.field": (its flag line, the help text below it)} from --help (flattened)."""
    monkeypatch.setenv("COLUMNS", "100")
    assert cli_main([*args, "--help"]) == 0
    blocks, current = {}, None
    for raw in capsys.readouterr().out.splitlines():    # boxed (terminal) or plain (pipe) layout
        ln = raw.replace("│", " ").rstrip()
        m = re.match(r" {1,3}(--[\w.-]+)", ln)           # a flag starts in the group's first column
        if m:
            current = m.group(1)
            blocks[current] = [ln.strip(), ""]
        elif current is not None and ln.startswith("    "):   # its help text, indented further
            blocks[current][1] += " " + ln.strip()
        else:
            current = None
    return {k: (" ".join(first.split()), " ".join(rest.split())) for k, (first, rest) in blocks.items()}


@pytest.mark.parametrize("preset", [None, "cpu-tiny", "gpu-paper-1.5b"])
def test_help_lists_every_field_with_its_default(capsys, monkeypatch, preset):
    cfg = make_config(preset, validate=False) if preset else Config()
    blocks = _help_blocks(capsys, monkeypatch, *(["--preset", preset] if preset else []))
    for flag in ("--preset", "--config", "--set", "--out", "--resume", "--overwrite", "--list-presets", "--print-config"):
        assert flag in blocks
    n = 0
    for sec_name, sec_type in sections().items():
        for f in dataclasses.fields(sec_type):
            flag = f"--{sec_name}.{f.name.replace('_', '-')}"
            assert flag in blocks, f"{flag} missing from --help"
            first, rest = blocks[flag]
            block = f"{first} {rest}"
            assert "(default:" in block, f"{flag} shows no default"
            value = getattr(getattr(cfg, sec_name), f.name)
            if isinstance(value, dict):
                value = " ".join(f"{k}={v}" for k, v in value.items())
            assert f"(default: {value})" in block, f"{flag}: default {value!r} not in {block!r}"
            help_text = rest.split("(default:")[0].strip() or re.sub(r"^\S+(, \S+)?( \S+)?", "", first).split("(default:")[0]
            assert help_text.strip(), f"{flag} has no help text: {block!r}"
            n += 1
    assert n == sum(len(dataclasses.fields(t)) for t in sections().values()) > 70


def test_cli_set_bool_words(capsys):
    assert _cli_config(capsys, "--preset", "cpu-tiny", "--set", "loss.erc=off")["loss"]["erc"] is False
    assert _cli_config(capsys, "--preset", "cpu-tiny", "--set", "loss.erc=off", "--set", "loss.erc=on")["loss"]["erc"] is True


def test_cli_typed_flags_reach_the_config(capsys):
    d = _cli_config(capsys, "--preset", "cpu-tiny", "--loss.agg-mode", "seq-mean-token-sum-norm", "--loss.agg-norm", "32",
                    "--loss.no-erc", "--advantage.dynamic-sampling", "--train.steps", "3")
    assert d["loss"]["agg_norm"] == 32.0 and d["loss"]["agg_mode"] == "seq-mean-token-sum-norm"
    assert d["loss"]["erc"] is False and d["advantage"]["dynamic_sampling"] is True and d["train"]["steps"] == 3
    d = _cli_config(capsys, "--preset", "cpu-tiny", "--set", "loss.agg_norm=16")
    assert d["loss"]["agg_norm"] == 16.0
    d = _cli_config(capsys, "--preset", "gpu-paper-1.5b", "--loss.loss-kwargs", "eps_low=0.1", "clip_ratio_c=none")
    assert d["loss"]["loss_kwargs"] == {"eps_low": 0.1, "clip_ratio_c": None}     # the flag replaces the dict
    d = _cli_config(capsys, "--preset", "cpu-tiny", "--loss.loss", "gppo", "--loss.loss-kwargs", "beta1=0.5")
    assert d["loss"]["loss"] == "gppo" and d["loss"]["loss_kwargs"] == {"beta1": 0.5}


def test_cli_precedence(capsys, tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"train": {"steps": 7, "seed": 4}, "loss": {"beta_low": 0.2}}))
    d = _cli_config(capsys, "--preset", "cpu-tiny", "--config", str(f), "--set", "train.steps=8",
                    "--set", "loss.beta_low=0.3", "--loss.beta-low", "0.4")
    assert (d["train"]["steps"], d["train"]["seed"], d["loss"]["beta_low"], d["model"]["name"]) == (8, 4, 0.4, "tiny")


def test_cli_set_bad_value_names_the_field(capsys):
    assert cli_main(["--preset", "cpu-tiny", "--set", "train.seed=abc", "--print-config"]) == 2
    assert "train.seed" in capsys.readouterr().err
    assert cli_main(["--preset", "cpu-tiny", "--set", "loss.betalow=1", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "loss.betalow" in err and "beta_low" in err


def test_cli_reports_bad_config_without_traceback(capsys):
    assert cli_main(["--preset", "cpu-tiny", "--set", "train.minibatch_prompts=5", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert "train.minibatch_prompts" in err and "Traceback" not in err
    assert cli_main(["--preset", "cpu-tiny", "--loss.beta-low", "1.5", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "beta_low" in err and "Traceback" not in err


def test_cli_print_config(capsys):
    printed = _cli_config(capsys, "--preset", "cpu-tiny", "--set", "loss.beta_high=0.07")
    assert printed["loss"]["beta_high"] == 0.07 and printed["preset"] == "cpu-tiny"


def test_cli_list_presets(capsys):
    assert cli_main(["--list-presets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)


def test_cli_resume_needs_a_saved_config(capsys, tmp_path):
    assert cli_main(["--out", str(tmp_path), "--resume"]) == 2
    assert "config.json" in capsys.readouterr().err
    assert cli_main(["--resume"]) == 2
    assert "--out" in capsys.readouterr().err


def test_cli_resume_uses_the_saved_config(capsys, tmp_path):
    saved = make_config("cpu-tiny", overrides=["train.steps=3", "loss.beta_low=0.2"])
    (tmp_path / "config.json").write_text(json.dumps(saved.to_dict()))
    d = _cli_config(capsys, "--out", str(tmp_path), "--resume", "--set", "train.steps=5")
    assert d["train"]["steps"] == 5 and d["loss"]["beta_low"] == 0.2 and d["preset"] == "cpu-tiny"


def test_cli_passes_overwrite_to_the_trainer(monkeypatch, tmp_path):
    import ercref.lm.trainer as trainer

    seen = {}

    def fake_run(cfg, out, resume=False, overwrite=False):
        seen.update(cfg=cfg, out=out, resume=resume, overwrite=overwrite)
        return []

    monkeypatch.setattr(trainer, "run", fake_run)
    assert cli_main(["--preset", "cpu-tiny", "--out", str(tmp_path), "--overwrite"]) == 0
    assert seen["overwrite"] is True and seen["resume"] is False and str(seen["out"]) == str(tmp_path)
    assert isinstance(seen["cfg"], Config)


def test_every_cpu_preset_validates():
    for name in ("cpu-tiny", "cpu-smollm2"):
        assert isinstance(validate_config(make_config(name)), Config)


def test_validate_config_catches_attributes_set_after_construction():
    cfg = make_config("cpu-tiny")
    cfg.train.steps = 0
    with pytest.raises(ValueError, match=r"train\.steps"):
        validate_config(cfg)
