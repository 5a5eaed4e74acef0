"""The command line ``python -m ercref.train`` (tyro): --help lists every field with its default,
typed flags and --set reach the config, and bad input or option combinations stop with an error
naming the option, field or file before anything is built."""
import dataclasses
import json
import re

import pytest

from ercref.lm.config import PRESETS, Config, make_config, sections
from ercref.train import main as cli_main


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
    cfg = make_config(preset)
    blocks = _help_blocks(capsys, monkeypatch, *(["--preset", preset] if preset else []))
    for flag in ("--preset", "--config", "--set", "--out", "--resume", "--overwrite", "--list-presets", "--print-config"):
        assert flag in blocks and blocks[flag][1], f"{flag} missing from --help or without help text"
    assert "--preset" in blocks and "--cfg.preset" not in blocks      # the run option, not the config's label
    n = 0
    for sec_name, sec_type in sections().items():
        for f in dataclasses.fields(sec_type):
            flag = f"--{sec_name}.{f.name.replace('_', '-')}"
            assert flag in blocks, f"{flag} missing from --help"
            first, rest = blocks[flag]
            block = f"{first} {rest}"
            value = getattr(getattr(cfg, sec_name), f.name)
            if isinstance(value, dict):
                value = " ".join(f"{k}={v}" for k, v in value.items())
            assert f"(default: {value})" in block, f"{flag}: default {value!r} not in {block!r}"
            help_text = rest.split("(default:")[0].strip() or re.sub(r"^\S+(, \S+)?( \S+)?", "", first).split("(default:")[0]
            assert help_text.strip(), f"{flag} has no help text: {block!r}"
            n += 1
    assert n == sum(len(dataclasses.fields(t)) for t in sections().values()) > 80


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
    assert d["preset"] == "cpu-tiny"


def test_cli_set_bad_value_names_the_field(capsys):
    assert cli_main(["--preset", "cpu-tiny", "--set", "train.seed=abc", "--print-config"]) == 2
    assert "train.seed" in capsys.readouterr().err
    assert cli_main(["--preset", "cpu-tiny", "--set", "loss.betalow=1", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "loss.betalow" in err and "beta_low" in err


def test_cli_reports_bad_config_without_traceback(capsys, tmp_path):
    out = tmp_path / "run"
    for args, field in [(["--set", "train.minibatch_prompts=5"], "train.minibatch_prompts"),
                        (["--set", "loss.loss_kwargs.eps_low=1"], "loss.loss_kwargs.eps_low"),
                        (["--set", "loss.loss_kwargs.clip_ratio_c=0.5"], "loss.loss_kwargs.clip_ratio_c"),
                        (["--set", "data.seed=-1"], "data.seed"),
                        (["--loss.loss-kwargs", "eps_low=1"], "eps_low"),
                        (["--data.seed", "-1"], "data.seed"),
                        (["--loss.beta-low", "1.5"], "beta_low")]:
        assert cli_main(["--preset", "cpu-tiny", *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert field in err and "Traceback" not in err, (args, err)
        assert not out.exists()                        # refused before anything was built or written


def test_set_preset_is_an_error_not_ignored(capsys):
    assert cli_main(["--preset", "cpu-tiny", "--set", "preset=cpu-smollm2", "--print-config"]) == 2
    assert "--preset NAME" in capsys.readouterr().err


def test_overwrite_and_resume_together_are_an_error(capsys, tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "step", "step": 1}\n')
    assert cli_main(["--preset", "cpu-tiny", "--out", str(tmp_path), "--overwrite", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--resume" in err
    assert (tmp_path / "metrics.jsonl").read_text() == '{"kind": "step", "step": 1}\n'   # nothing touched


@pytest.mark.parametrize("name, content, match", [
    ("c.json", b'{"train": {"steps": 5,}}', r"c\.json', line 1 column 23"),
    ("c.json", b'{"train": {"steps": 5}}\n\x80', r"c\.json', line 2: byte 0x80"),
    ("c.yaml", b"train:\n  steps: [5\n", r"c\.yaml', line 3"),
])
def test_cli_bad_config_file_names_file_and_line(capsys, tmp_path, name, content, match):
    if name.endswith(".yaml"):
        pytest.importorskip("yaml")
    f = tmp_path / name
    f.write_bytes(content)
    assert cli_main(["--config", str(f), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and "Traceback" not in err


def test_cli_bad_preset_name_lists_the_presets(capsys):
    assert cli_main(["--preset", "cpu-huge"]) == 2
    err = capsys.readouterr().err
    assert "cpu-huge" in err and "cpu-tiny" in err


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
    (tmp_path / "config.json").write_text('{"loss": {"name": "dapo"}}')          # unknown field: named, with the file
    assert cli_main(["--out", str(tmp_path), "--resume", "--print-config"]) == 2
    assert "loss.name" in capsys.readouterr().err


def test_cli_passes_overwrite_to_the_trainer(monkeypatch, tmp_path):
    import ercref.lm.trainer as trainer

    seen = {}

    class FakeTrainer:
        def __init__(self, cfg, out, resume=False, overwrite=False):
            seen.update(cfg=cfg, out=out, resume=resume, overwrite=overwrite)

        def fit(self):
            return []

    monkeypatch.setattr(trainer, "Trainer", FakeTrainer)
    assert cli_main(["--preset", "cpu-tiny", "--out", str(tmp_path), "--overwrite"]) == 0
    assert seen["overwrite"] is True and seen["resume"] is False and str(seen["out"]) == str(tmp_path)
    assert isinstance(seen["cfg"], Config) and seen["cfg"] == PRESETS["cpu-tiny"]


def test_cli_reports_what_the_trainer_refuses(monkeypatch, capsys, tmp_path):
    import ercref.lm.trainer as trainer

    def refuse(*args, **kwargs):
        raise ValueError("preset 'x' needs a CUDA GPU")

    monkeypatch.setattr(trainer, "Trainer", refuse)
    assert cli_main(["--preset", "cpu-tiny", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "Traceback" not in err


@pytest.mark.slow
def test_cli_full_disk_at_a_save_is_a_clean_error(capsys, tmp_path, monkeypatch):
    """A checkpoint that would not fit the disk stops the run before anything is written, with an
    error naming the folder and the way on, not a traceback."""
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    out = tmp_path / "run"
    sets = ["train.steps=1", "sft.steps=2", "train.progress=false", "train.plot=false",
            "train.eval_before_training=false", "data.num_eval=2", "train.eval_k=1"]
    rc = cli_main(["--preset", "cpu-tiny", "--out", str(out)] + [a for s in sets for a in ("--set", s)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "--resume" in err and "free" in err
    assert not list((out / "checkpoints").glob("*.pt")) if (out / "checkpoints").exists() else True
