"""The README's usage example is executed here, and its claims about the project files checked."""
import pathlib
import re

import torch

import ercref

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _example_blocks():
    tail = README.split("<!-- readme-example: run by tests/test_readme.py -->", 1)[1]
    return re.findall(r"```python\n(.*?)```", tail, flags=re.S)[:2]


def test_readme_usage_example_runs_and_erc_zeroes_clipped_gradients(capsys):
    first, second = _example_blocks()
    ns: dict = {}
    exec(compile(first, "README.md:example", "exec"), ns)
    assert "ERC clipped" in capsys.readouterr().out
    rho = (ns["entropy"] + 1e-8) / (ns["old_entropy"] + 1e-8)
    clipped = (rho <= 0.95) | (rho >= 1.05)
    assert clipped.any() and (~clipped).any()
    # with nll_coef the positive responses still get the NLL gradient; the policy gradient of clipped
    # tokens is zero, so on negative-reward rows (no NLL) clipped tokens have exactly zero grad
    neg = (ns["rewards"] != 1).unsqueeze(-1).expand_as(clipped)
    assert torch.all(ns["logp"].grad[clipped & neg] == 0)
    assert torch.all(ns["logp"].grad[~clipped & neg] != 0)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in ns["metrics"].values())
    assert all(type(v) is float for v in ns["logged"].values()) and ns["logged"].keys() == ns["metrics"].keys()
    assert abs(ns["logged"]["erc/clip_frac"] - clipped.float().mean().item()) < 1e-6
    exec(compile(second, "README.md:example2", "exec"), ns)
    assert torch.isfinite(ns["loss"]) and abs(float(ns["m_erc"]["erc/clip_frac"]) - clipped.float().mean().item()) < 1e-6


def test_readme_lists_every_registered_loss_and_agg_mode():
    for name in ercref.LOSSES:
        assert f"`{name}`" in README, name
    for mode in ercref.AGG_MODES:
        assert f"`{mode}`" in README, mode


def test_environment_yml_mirrors_requirements_and_torch_pin():
    env = (ROOT / "environment.yml").read_text()
    make = (ROOT / "Makefile").read_text()
    pin = re.search(r"^TORCH\s*:=\s*(\S+)", make, flags=re.M).group(1)
    assert pin in env
    assert "-r requirements.lock" in env
    lock = (ROOT / "requirements.lock").read_text()
    assert "uv pip compile" in lock                             # produced by a tool (make lock), not by hand
    pinned = [line for line in lock.splitlines() if line and not line.startswith((" ", "#"))]
    assert pinned and all("==" in line for line in pinned), "every locked line is an exact version"
    assert not any(line.startswith(("torch==", "nvidia-", "triton==", "cuda-")) for line in pinned), "no CUDA torch"
    reqs = (ROOT / "requirements.txt").read_text()
    torch_req = re.search(r"^torch(\S*)", reqs, flags=re.M).group(1)
    from packaging.specifiers import SpecifierSet
    assert pin.split("==")[1] in SpecifierSet(torch_req), "requirements.txt must accept the Makefile's torch pin"
