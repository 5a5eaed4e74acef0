"""LM engine configuration: typed sections, presets, overrides, config files, and clear errors for
bad input, refused when the config is built (before any model is). The command line is tested in
tests/test_lm_cli.py."""
import json
import math
import re
from typing import Literal, get_args, get_origin, get_type_hints

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ercref
from ercref.lm.config import (
    PRESETS,
    AdvantageConfig,
    Config,
    DataConfig,
    apply_overrides,
    check_token_budgets,
    config_from_dict,
    longest_rows,
    make_config,
    sections,
)
from ercref.lm.config_tools import Range, field_types
from ercref.lm.hardware import check_hardware

CPU_ONLY = not torch.cuda.is_available()


def test_preset_then_file_then_overrides(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"loss": {"beta_low": 0.2, "loss": "gppo"}, "train": {"steps": 7}}))
    cfg = make_config("cpu-tiny", f, ["loss.beta_low=0.1", "loss.loss_kwargs.beta1=0.5", "loss.erc=false"])
    assert cfg.preset == "cpu-tiny"
    assert cfg.model.name == "tiny"                      # from the preset
    assert cfg.loss.loss == "gppo" and cfg.train.steps == 7  # from the file
    assert cfg.loss.beta_low == 0.1 and cfg.loss.erc is False  # the overrides win
    assert cfg.loss.loss_kwargs == {"beta1": 0.5}
    assert cfg.num_minibatches == cfg.rollout.prompts_per_step // cfg.train.minibatch_prompts


def test_overrides_return_a_new_config_and_leave_the_old_one():
    base = make_config("cpu-tiny")
    new = apply_overrides(base, {"train.steps": 3, "loss.loss_kwargs.eps_high": 0.3})
    assert (new.train.steps, new.loss.loss_kwargs) == (3, {"eps_high": 0.3})
    assert base.train.steps == 20 and base.loss.loss_kwargs == {}
    assert PRESETS["cpu-tiny"].train.steps == 20            # presets are never changed by their users
    make_config("cpu-tiny").train.steps = 5
    assert make_config("cpu-tiny").train.steps == 20


def test_loss_section_is_the_policy_loss_config():
    cfg = make_config("cpu-tiny", overrides=["loss.agg_mode=seq-mean-token-sum-norm", "loss.agg_norm=64",
                                             "loss.kl_coef=0.01", "loss.entropy_coef=0.001"])
    assert type(cfg.loss) is ercref.PolicyLossConfig
    assert (cfg.loss.agg_norm, cfg.loss.kl_coef, cfg.loss.entropy_coef) == (64.0, 0.01, 0.001)
    assert isinstance(cfg.advantage, AdvantageConfig)


def test_yaml_config_file(tmp_path):
    pytest.importorskip("yaml")
    f = tmp_path / "c.yaml"
    f.write_text("preset: cpu-tiny\nrollout:\n  group_size: 4\nloss:\n  erc: off\noptim:\n  lr: 1e-5\n")
    cfg = make_config(config_file=f)
    assert cfg.preset == "cpu-tiny" and cfg.rollout.group_size == 4 and cfg.loss.erc is False
    assert cfg.optim.lr == 1e-5                          # YAML reads 1e-5 as a string; the field's type reads it


def test_config_file_round_trip(tmp_path):
    cfg = make_config("cpu-smollm2", overrides=["loss.loss=gppo", "loss.loss_kwargs.beta1=0.5", "train.seed=3",
                                                "advantage.scale_by_std=no"])
    f = tmp_path / "c.json"
    f.write_text(json.dumps(cfg.to_dict()))
    assert make_config(config_file=f) == cfg


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_from_dict_inverts_to_dict(name):
    cfg = make_config(name)
    assert config_from_dict(cfg.to_dict()) == cfg
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("text, expected", [
    ("on", True), ("off", False), ("ON", True), ("Off", False), ("true", True), ("False", False),
    ("1", True), ("0", False), ("yes", True), ("no", False)])
def test_bool_override_words(text, expected):
    assert make_config("cpu-tiny", overrides=[f"loss.erc={text}"]).loss.erc is expected


def test_none_and_json_values():
    cfg = make_config("cpu-tiny", overrides=["data.system_prompt=none", "loss.agg_norm=null",
                                             'data.task=gsm8k', 'data.path=x.jsonl', 'data.eval_paths={"a": "b.json"}'])
    assert cfg.data.system_prompt is None and cfg.loss.agg_norm is None and cfg.data.eval_paths == {"a": "b.json"}
    assert make_config("cpu-tiny", overrides=["model.name=none"]).model.name == "none"   # a string field keeps it


def test_bad_bool_and_number_name_the_field():
    for override, field in [("loss.erc=maybe", "loss.erc"), ("train.seed=abc", "train.seed"),
                            ("optim.lr=fast", "optim.lr"), ("train.steps=2.5", "train.steps"),
                            ("optim.lr=NaN", "optim.lr"), ("optim.lr=Infinity", "optim.lr")]:
        with pytest.raises(ValueError, match=re.escape(field)):
            make_config("cpu-tiny", overrides=[override])
    with pytest.raises(ValueError, match=r"loss\.loss_kwargs\.beta1 must be a finite number"):
        make_config("cpu-tiny", overrides=["loss.loss=gppo", "loss.loss_kwargs.beta1=x"])


def test_presets_are_typed_configs():
    assert set(PRESETS) == {"cpu-tiny", "cpu-smollm2", "gpu-paper-1.5b", "gpu-1x80gb-1.5b"}
    for name, cfg in PRESETS.items():
        assert isinstance(cfg, Config) and cfg.preset == name
        assert make_config(name) == cfg and make_config(name) is not cfg


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
    assert p.num_minibatches == 8  # 8 optimizer steps per rollout batch
    one = PRESETS["gpu-1x80gb-1.5b"]
    assert one.loss == p.loss and one.optim == p.optim and one.num_minibatches == 8
    assert (one.rollout.backend, one.rollout.prompts_per_step, one.train.steps) == ("vllm", 32, 200)


def test_task_choices_match_the_data_module():
    from ercref.lm.config import REAL_TASKS as CONFIG_REAL
    from ercref.lm.data import REAL_TASKS, SYNTHETIC_TASKS
    assert get_args(get_type_hints(DataConfig)["task"]) == SYNTHETIC_TASKS + REAL_TASKS
    assert CONFIG_REAL == REAL_TASKS


def test_config_module_is_a_leaf():
    """ercref.lm.config imports only the core and its own helpers (config_tools, config_rules, presets): no engine module."""
    import ast
    from pathlib import Path

    import ercref.lm.config as mod
    nodes = [n for n in ast.walk(ast.parse(Path(mod.__file__).read_text())) if isinstance(n, ast.ImportFrom)]
    assert {n.module for n in nodes if n.level} == {"config_tools", "config_rules", "presets"}
    assert {n.module for n in nodes if not n.level and n.module.startswith("ercref")} <= {"ercref.losses",
                                                                                          "ercref.objective"}


# ----------------------------------------------------------------------------- the machine (ercref.lm.hardware)
@pytest.mark.skipif(not CPU_ONLY, reason="checks the CPU-only failure")
def test_gpu_preset_fails_fast_on_cpu(tmp_path):
    cfg = make_config("gpu-paper-1.5b")          # the values are valid anywhere: the machine is checked at the run
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        check_hardware(cfg)
    from ercref.lm.trainer import Trainer
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()       # refused before anything was built or written


@pytest.mark.skipif(not CPU_ONLY, reason="checks the CPU-only failure")
@pytest.mark.parametrize("overrides, match", [
    (["rollout.backend=vllm"], "rollout.backend='vllm' needs a CUDA"),
    (["rollout.backend=vllm", "train.device=auto"], "rollout.backend='vllm' needs a CUDA GPU"),
    (["model.bf16_autocast=true"], "model.bf16_autocast"),
    (["model.name=./no-such-model"], "model.name"),
])
def test_cuda_only_options_fail_clearly_on_cpu(overrides, match):
    with pytest.raises(ValueError, match=match):
        check_hardware(make_config("cpu-tiny", overrides=overrides))


def test_cpu_presets_pass_the_hardware_check():
    for name in ("cpu-tiny", "cpu-smollm2"):
        assert check_hardware(make_config(name)) is None


# ----------------------------------------------------------------------------- bad values, named
@pytest.mark.parametrize("overrides, field", [
    (["train.minibatch_prompts=3"], "train.minibatch_prompts"),      # 3 does not divide 16
    (["loss.beta_low=1.5"], "loss.beta_low"),
    (["loss.beta_low=0"], "loss.beta_low"),
    (["loss.beta_high=-0.1"], "loss.beta_high"),
    (["loss.loss=nope"], "unknown loss name 'nope'"),
    (["loss.agg_mode=sum"], "loss.agg_mode"),
    (["loss.loss_kwargs.beta1=0.5"], "loss.loss_kwargs"),             # dapo takes no beta1
    (["loss.loss_kwargs.eps_low=1"], "loss.loss_kwargs.eps_low"),     # 1 - eps_low must stay positive
    (["loss.loss_kwargs.eps_low=0"], "loss.loss_kwargs.eps_low"),
    (["loss.loss_kwargs.eps_high=-0.2"], "loss.loss_kwargs.eps_high"),
    (["loss.loss_kwargs.clip_ratio_c=0.5"], "loss.loss_kwargs.clip_ratio_c"),  # the dual clip needs c > 1
    (["loss.loss=gppo", "loss.loss_kwargs.beta1=-1"], "loss.loss_kwargs.beta1"),
    (["loss.loss=gspo", "loss.loss_kwargs.eps_low=2"], "loss.loss_kwargs.eps_low"),
    (["rollout.top_p=0"], "rollout.top_p"),
    (["rollout.group_size=0"], "rollout.group_size"),
    (["optim.lr=-1"], "optim.lr"),
    (["optim.beta2=1"], "optim.beta2"),
    (["loss.kl_coef=-0.1"], "loss.kl_coef"),
    (["data.task=gsm8k"], "data.path"),
    (["data.seed=-1"], "data.seed"),
    (["train.seed=4294967296"], "train.seed"),
    (["data.level=5"], "data.level"),
    (["reward.scheme=weird"], "reward.scheme"),
    (["reward.overlong_shaping=true", "reward.overlong_buffer=5"], "reward.overlong_buffer"),  # > max_new_tokens 4
    (["reward.overlong_shaping=true", "reward.overlong_max_length=3"], "reward.overlong_buffer"),
    (["model.dtype=fp8"], "model.dtype"),
    (["model.dtype=float16"], "model.dtype=float16"),
    (["model.name= "], "model.name"),
    (["train.device=gpu"], "train.device"),
    (["train.max_tokens_per_forward=100"], "train.max_tokens_per_forward"),
])
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        make_config("cpu-tiny", overrides=overrides)


def test_overlong_buffer_within_the_limit_is_accepted():
    cfg = make_config("cpu-tiny", overrides=["reward.overlong_shaping=true", "reward.overlong_buffer=4"])
    assert cfg.reward.overlong_buffer == cfg.rollout.max_new_tokens == 4
    with pytest.raises(ValueError, match="reward.overlong_buffer"):    # evaluation scores under a shorter limit
        make_config("cpu-tiny", overrides=["reward.overlong_shaping=true", "rollout.max_new_tokens=8",
                                           "reward.overlong_buffer=6", "train.eval_max_new_tokens=5"])


def test_token_budget_rule_is_one_function():
    cfg = make_config("gpu-paper-1.5b")
    rows = longest_rows(cfg)
    assert rows["train.max_tokens_per_forward"] == 4096 + 16384
    assert rows["rollout.max_tokens_per_generate"] == 4096 + 32768      # eval responses are longer
    cfg.train.max_tokens_per_forward = rows["train.max_tokens_per_forward"] - 1
    with pytest.raises(ValueError, match=r"train\.max_tokens_per_forward=20479 .*longest row of 20480"):
        check_token_budgets(cfg)


def test_unknown_field_and_preset():
    with pytest.raises(ValueError, match="loss.betalow") as e:
        make_config("cpu-tiny", overrides=["loss.betalow=0.1"])
    assert "beta_low" in str(e.value) and "agg_norm" in str(e.value)   # the valid names are listed
    with pytest.raises(ValueError, match="'loss.name'"):                 # no old names are translated
        make_config("cpu-tiny", overrides=["loss.name=gppo"])
    with pytest.raises(ValueError, match="advantage"):
        make_config("cpu-tiny", overrides=["nosection.x=1"])
    with pytest.raises(ValueError, match="unknown preset 'cpu-huge'"):
        make_config("cpu-huge")
    with pytest.raises(ValueError, match="section.field=value"):
        make_config("cpu-tiny", overrides=["loss.beta_low"])
    with pytest.raises(ValueError, match="only a dict field takes a key"):
        make_config("cpu-tiny", overrides=["train.steps.x=1"])


def test_preset_is_not_an_override(tmp_path):
    """Setting "preset" among the fields would relabel a config without loading the preset's values."""
    with pytest.raises(ValueError, match="--preset NAME"):
        make_config("cpu-tiny", overrides=["preset=cpu-smollm2"])
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"preset": "cpu-smollm2", "train": {"steps": 3}}))
    cfg = make_config(config_file=f)                   # a file names where it starts
    assert cfg.preset == "cpu-smollm2" and cfg.model.name == "smollm2-135m-instruct" and cfg.train.steps == 3
    assert make_config("cpu-smollm2", f) == cfg
    with pytest.raises(ValueError, match="preset 'cpu-smollm2'.*preset 'cpu-tiny'"):
        make_config("cpu-tiny", f)


@pytest.mark.parametrize("content, match", [
    (b'{"train": {"steps": 5,}}', r"c\.json', line 1 column 23: not valid JSON"),
    (b'{"train":\n {"steps": 5}\n\n"loss": 1}', r"c\.json', line 4 column 1: not valid JSON"),
    (b'{"train": {"steps": 5}}\n\xff\xfe', r"c\.json', line 2: byte 0xff is not UTF-8"),
    (b"[1, 2]", r"c\.json' must hold a mapping of sections"),
    (b'{"train": 5}', r"config section 'train' must be a mapping"),
])
def test_bad_config_files_name_the_file_and_line(tmp_path, content, match):
    f = tmp_path / "c.json"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        make_config("cpu-tiny", f)


@pytest.mark.parametrize("content, match", [
    (b"train:\n  steps: [5\nloss: {a: 1\n", r"c\.yaml', line 3: not valid YAML"),
    (b"train:\n  steps: 5\n\tloss: 1\n", r"c\.yaml', line 3: not valid YAML"),
    (b"train:\n  steps: 5\n# \xe9t\xe9\n", r"c\.yaml', line 3: byte 0xe9 is not UTF-8"),
    (b"", r"c\.yaml' must hold a mapping of sections, .* got NoneType"),
])
def test_bad_yaml_files_name_the_file_and_line(tmp_path, content, match):
    pytest.importorskip("yaml")
    f = tmp_path / "c.yaml"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        make_config("cpu-tiny", f)


@pytest.mark.parametrize("name, content, match", [
    ("c.json", b'{"train": {"steps": 2},\n "loss": {},\n "train": {"steps": 3}}', r"c\.json', line 3: 'train' appears twice"),
    ("c.json", b'{"train": {"steps": 2, "steps": 3}}', r"c\.json', line 1: 'steps' appears twice"),
    ("c.yaml", b"train:\n  steps: 2\nloss: {}\ntrain:\n  seed: 1\n", r"c\.yaml', line 4: 'train' appears twice"),
    ("c.yaml", b"train: {steps: 2, steps: 3}\n", r"c\.yaml', line 1: 'steps' appears twice"),
])
def test_a_key_given_twice_in_a_config_file_is_refused_naming_the_line(tmp_path, name, content, match):
    """JSON and YAML parsers keep the last of two equal keys: the first section or value would be lost."""
    if name.endswith(".yaml"):
        pytest.importorskip("yaml")
    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        make_config("cpu-tiny", f)


def test_numpy_scalars_are_taken_as_python_values():
    """Values from a NumPy sweep (np.logspace, np.arange) are numbers: taken, stored as Python types."""
    np = pytest.importorskip("numpy")
    cfg = make_config("cpu-tiny", overrides={"train.steps": np.int64(3), "optim.lr": np.float32(0.5),
                                             "loss.erc": np.bool_(False), "loss.beta_low": np.float64(0.1)})
    assert (cfg.train.steps, cfg.optim.lr, cfg.loss.erc, cfg.loss.beta_low) == (3, 0.5, False, 0.1)
    assert [type(v) for v in (cfg.train.steps, cfg.optim.lr, cfg.loss.erc)] == [int, float, bool]
    for dotted, bad in (("train.steps", np.int64(0)), ("optim.lr", np.float64("nan")), ("train.steps", np.float64(3.0)),
                        ("loss.erc", np.int64(1)), ("train.steps", torch.tensor(3)), ("train.steps", np.bool_(True))):
        with pytest.raises(ValueError, match=re.escape(dotted) + " must be"):
            make_config("cpu-tiny", overrides={dotted: bad})


def test_the_judge_time_budget_is_refused_where_the_judge_would_refuse_it():
    from ercref.lm import judge_pool
    from ercref.lm.config import RewardConfig

    assert field_types(RewardConfig)["judge_timeout_s"].__metadata__[0].high == judge_pool.MAX_TIMEOUT_S
    for bad in (judge_pool.MAX_TIMEOUT_S * 1.0001, 1e308):
        with pytest.raises(ValueError, match=r"reward\.judge_timeout_s must be a finite number in \(0, 86400\]"):
            make_config("cpu-tiny", overrides={"reward.judge_timeout_s": bad})


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="nope.json"):
        make_config("cpu-tiny", tmp_path / "nope.json")
    with pytest.raises(ValueError, match="is not a file"):
        make_config("cpu-tiny", tmp_path)


# ----------------------------------------------------------------------------- every field, property
def _fields() -> list[tuple[str, object]]:
    return [(f"{sec}.{name}", tp) for sec, cls in sections().items() for name, tp in field_types(cls).items()]


def _invalid(tp) -> st.SearchStrategy:
    """Values no field of type tp accepts: the wrong type, non-finite numbers, numbers outside its Range."""
    meta = list(getattr(tp, "__metadata__", ()))
    base = get_args(tp)[0] if meta else tp
    optional = type(None) in get_args(base) and get_origin(base) is not Literal
    if optional:
        base = next(a for a in get_args(base) if a is not type(None))
    words = st.text(alphabet="xyz@!# ", min_size=1, max_size=8)    # text no number or bool is read from
    junk = [st.just([1]), st.just(object())] + ([] if optional else [st.none()])
    if base is bool:
        return st.one_of(*junk, st.integers(), st.floats(), words)
    if base is int:
        out = [*junk, st.booleans(), st.floats(allow_nan=True), words]
        for r in (m for m in meta if isinstance(m, Range)):
            if r.low > -math.inf:
                out.append(st.integers(max_value=math.ceil(r.low) - 1))
            if r.high < math.inf:
                out.append(st.integers(min_value=int(r.high) + 1))
        return st.one_of(*out)
    if base is float:
        out = [*junk, st.booleans(), words, st.sampled_from([math.nan, math.inf, -math.inf])]
        for r in (m for m in meta if isinstance(m, Range)):
            if r.low > -math.inf:
                out.append(st.floats(max_value=r.low, exclude_max=not r.low_open, allow_nan=False,
                                     allow_infinity=False))
            if r.high < math.inf:
                out.append(st.floats(min_value=r.high, exclude_min=not r.high_open, allow_nan=False,
                                     allow_infinity=False))
        return st.one_of(*out)
    if get_origin(base) is Literal:
        return st.one_of(*junk, st.integers(), st.text().filter(lambda s: s not in get_args(base)))
    if base is str:
        return st.one_of(*junk, st.integers(), st.booleans())
    if get_origin(base) is dict:
        return st.one_of(*junk, st.integers(), words, st.just({"": "x"}), st.just({1: "x"}))
    raise AssertionError(f"no invalid values known for a field of type {tp!r}")


FIELDS = _fields()


def test_every_field_is_covered():
    assert len(FIELDS) == sum(len(field_types(c)) for c in sections().values()) > 80
    for _, tp in FIELDS:
        _invalid(tp)                                   # raises for a kind of field it knows no bad values of


def _is_text(tp) -> bool:
    """A field any text is a value of (str, str | None)."""
    return tp in (str, str | None)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(FIELDS).flatmap(lambda f: st.tuples(st.just(f[0]), _invalid(f[1]))))
def test_every_fields_invalid_values_are_refused_naming_it(field_value):
    """For every field of every section, a value of the wrong type, a non-finite number or a number
    outside the field's range is refused when the config is built, by an error naming the field."""
    dotted, value = field_value
    with pytest.raises(ValueError, match=re.escape(dotted)):
        apply_overrides(PRESETS["cpu-tiny"], {dotted: value})


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([d for d, tp in FIELDS if not _is_text(tp)]), st.text(alphabet="xyz@!# ", min_size=1, max_size=8))
def test_every_fields_bad_text_is_refused_naming_it(dotted, text):
    """The same from the command line (--set) or a config file: text that is no value of the field."""
    with pytest.raises(ValueError, match=re.escape(dotted)):
        make_config("cpu-tiny", overrides=[f"{dotted}={text}"])


@pytest.mark.parametrize("section, kwargs, field", [
    (DataConfig, {"seed": -1}, "data.seed"),
    (DataConfig, {"num_eval": 0}, "data.num_eval"),
    (DataConfig, {"task": "verl", "path": "x.jsonl", "eval_paths": {"a/b": "x.json"}}, "data.eval_paths.a/b"),
    (DataConfig, {"eval_paths": {"aime": "x.json"}}, "data.eval_paths needs a real data.task"),
])
def test_sections_check_themselves_when_built_directly(section, kwargs, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        section(**kwargs)


@pytest.mark.parametrize("field", ["rollout.temperature", "train.eval_temperature"])
def test_a_temperature_whose_logits_overflow_is_refused_when_the_config_is_built(field):
    """logits / T overflows float32 for T ~ 1e-45; generation would crash minutes in, after the warm-up."""
    with pytest.raises(ValueError, match=rf"{field} must be a finite number >= 1e-06"):
        make_config("cpu-tiny", overrides=[f"{field}=1e-45"])
    assert getattr(make_config("cpu-tiny", overrides=[f"{field}=1e-4"]).rollout if field.startswith("rollout")
                   else make_config("cpu-tiny", overrides=[f"{field}=1e-4"]).train, field.split(".")[1]) == 1e-4
