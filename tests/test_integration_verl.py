"""ercref's losses against verl's own implementations (oracles), and the verl plug-in.

verl is installed with `pip install --no-deps verl` plus ray, tensordict, omegaconf, codetiming
(see the Makefile); its `core_algos` imports on CPU.
"""
import pytest
import torch

import ercref

core_algos = pytest.importorskip("verl.trainer.ppo.core_algos", reason="verl is installed by `make test`; run make setup")
from verl.workers.config import ActorConfig  # noqa: E402

from ercref.integrations import verl as erc_verl  # noqa: E402


def _cfg(low=0.2, high=0.28, c=10.0):
    return ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1,
                       clip_ratio=low, clip_ratio_low=low, clip_ratio_high=high, clip_ratio_c=c)


def _inputs(seed, B=6, T=9, spread=0.6):
    g = torch.Generator().manual_seed(seed)
    nll = torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    delta = torch.randn(B, T, generator=g, dtype=torch.float64) * spread
    old = -nll - delta.clamp(min=0.0)                      # both old and logp stay log-probabilities (<= 0)
    logp = (old + delta).requires_grad_()
    adv = torch.randn(B, generator=g, dtype=torch.float64).unsqueeze(-1).expand(B, T).contiguous()
    mask = torch.rand(B, T, generator=g) > 0.25
    mask[:, 0] = True
    return logp, old, adv, mask


def _value_and_grad(fn, logp, *args, **kw):
    if logp.grad is not None:
        logp.grad = None
    loss, _ = fn(*args, **kw)
    loss.backward()
    return loss.detach().clone(), logp.grad.clone()


# (verl registry name, ercref loss, ercref kwargs from a verl config)
ORACLES = [
    ("vanilla", "ppo", lambda c: dict(eps_low=c.clip_ratio_low, eps_high=c.clip_ratio_high, clip_ratio_c=c.clip_ratio_c)),
    ("gspo", "gspo", lambda c: dict(eps_low=c.clip_ratio_low, eps_high=c.clip_ratio_high)),
    ("cispo", "cispo", lambda c: dict(eps_low=c.clip_ratio_low, eps_high=c.clip_ratio_high)),
]


@pytest.mark.parametrize("verl_name,ours,kw", ORACLES, ids=[o[0] for o in ORACLES])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_ercref_losses_match_verl_oracles(verl_name, ours, kw, agg):
    verl_fn = core_algos.get_policy_loss_fn(verl_name)
    for seed in range(40):
        cfg = _cfg(low=0.2, high=0.28, c=3.0 + seed % 5) if verl_name != "gspo" else _cfg(low=3e-4, high=4e-4)
        logp, old, adv, mask = _inputs(seed, spread=0.6 if verl_name != "gspo" else 1e-3)
        v_val, v_grad = _value_and_grad(verl_fn, logp, old, logp, adv, mask, loss_agg_mode=agg, config=cfg)

        def ours_fn():
            per_tok, _ = ercref.LOSSES[ours](logp, old, adv, mask, **kw(cfg))
            return ercref.aggregate(per_tok, mask, agg), None

        o_val, o_grad = _value_and_grad(ours_fn, logp)
        torch.testing.assert_close(o_val, v_val, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(o_grad, v_grad, rtol=1e-10, atol=1e-12)
        assert (v_grad != 0).any()


def test_registered_erc_loss_with_wide_beta_equals_verl_vanilla():
    names = erc_verl.register_erc_policy_losses(beta_low=0.999999, beta_high=1e9, prefix="ercwide_")
    assert "ercwide_ppo" in names and "ercwide_gppo" in names
    fn = core_algos.get_policy_loss_fn("ercwide_ppo")
    cfg = _cfg()
    for seed in range(20):
        logp, old, adv, mask = _inputs(seed)
        ent = torch.rand_like(old) + 0.1
        ref_val, ref_grad = _value_and_grad(core_algos.get_policy_loss_fn("vanilla"), logp, old, logp, adv, mask, config=cfg)
        with erc_verl.erc_entropies(ent * 1.3, ent):
            val, grad = _value_and_grad(fn, logp, old, logp, adv, mask, config=cfg)
        assert torch.equal(val, ref_val) and torch.equal(grad, ref_grad)


def test_registered_erc_loss_zeroes_gradient_of_entropy_clipped_tokens_inside_verl():
    erc_verl.register_erc_policy_losses(beta_low=0.05, beta_high=0.05)
    fn = core_algos.get_policy_loss_fn("erc_dapo")
    cfg = _cfg()
    logp, old, adv, mask = _inputs(7, B=8, T=16)
    old_ent = torch.rand_like(old) + 0.2
    ent = old_ent * (1 + 0.1 * torch.randn_like(old))  # about 60 % of tokens leave the 0.95..1.05 band
    rho = (ent + 1e-8) / (old_ent + 1e-8)
    clipped = ((rho <= 0.95) | (rho >= 1.05)) & mask
    kept = mask & ~clipped
    assert clipped.any() and kept.any()
    with erc_verl.erc_entropies(ent, old_ent):
        loss, metrics = fn(old, logp, adv, mask, loss_agg_mode="token-mean", config=cfg)
    loss.backward()
    assert torch.all(logp.grad[clipped] == 0)
    ppo_active = ((adv > 0) & (logp.exp() / old.exp() > 1.28)) | ((adv < 0) & (logp.exp() / old.exp() < 0.8))
    assert torch.all(logp.grad[kept & ~ppo_active] != 0)
    assert metrics["actor/erc_clip_frac"] == pytest.approx(clipped.sum().item() / mask.sum().item())
    assert all(type(v) is float for v in metrics.values())  # python floats, like verl's own losses


def test_erc_loss_outside_entropy_context_explains_what_is_missing():
    erc_verl.register_erc_policy_losses()
    logp, old, adv, mask = _inputs(0)
    with pytest.raises(RuntimeError, match="erc_entropies"):
        core_algos.get_policy_loss_fn("erc_dapo")(old, logp, adv, mask, config=_cfg())


def test_erc_ppo_loss_requires_entropies_from_the_actor():
    with pytest.raises(ValueError, match="calculate_entropy"):
        erc_verl.erc_ppo_loss(_cfg(), {"log_probs": torch.zeros(1, 2)}, {})


# ----------------------------------------------------------------------------- the multi-GPU path: patch + launch script
import base64  # noqa: E402
import hashlib  # noqa: E402
import importlib.metadata  # noqa: E402
import py_compile  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PATCH = ROOT / "scripts" / "verl_0.9.1_erc.patch"
LAUNCH = ROOT / "scripts" / "verl_erc_1.5b.sh"
PATCHED = ["verl/trainer/ppo/ray_trainer.py", "verl/trainer/ppo/v1/trainer_base.py", "verl/workers/engine_workers.py"]


def _verl_site() -> Path:
    import verl

    return Path(verl.__file__).resolve().parents[1]


def _pristine(rel: str) -> bool:
    """True when the installed file is byte-for-byte the one verl's wheel shipped (its RECORD hash)."""
    dist = importlib.metadata.distribution("verl")
    rec = {str(f): f.hash for f in dist.files}[rel]
    digest = base64.urlsafe_b64encode(hashlib.sha256((_verl_site() / rel).read_bytes()).digest()).rstrip(b"=").decode()
    return rec.mode == "sha256" and rec.value == digest


def test_trainer_patch_applies_cleanly_to_verl_0_9_1(tmp_path):
    assert importlib.metadata.version("verl") == "0.9.1"
    patch_bin = shutil.which("patch")
    if patch_bin is None:
        pytest.skip("the `patch` program is not installed")
    site = _verl_site()
    if not all(_pristine(rel) for rel in PATCHED):  # e.g. scripts/verl_erc_1.5b.sh ran in this environment
        out = subprocess.run([patch_bin, "-R", "--dry-run", "-p1", "-d", str(site)], stdin=PATCH.open(),
                             capture_output=True, text=True)
        assert out.returncode == 0, f"installed verl is modified and is not 0.9.1 + this patch:\n{out.stdout}{out.stderr}"
        pytest.skip("installed verl already carries the patch (it reverses cleanly); cannot re-check the forward apply")
    for rel in PATCHED:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(site / rel, tmp_path / rel)
    dry = subprocess.run([patch_bin, "--dry-run", "-p1", "-d", str(tmp_path)], stdin=PATCH.open(), capture_output=True,
                         text=True)
    assert dry.returncode == 0 and "FAILED" not in dry.stdout and "offset" not in dry.stdout.lower(), dry.stdout + dry.stderr
    subprocess.run([patch_bin, "-p1", "-d", str(tmp_path)], stdin=PATCH.open(), check=True, capture_output=True)
    for rel in PATCHED:
        py_compile.compile(str(tmp_path / rel), doraise=True)
    trainer_v0 = (tmp_path / PATCHED[0]).read_text()
    assert 'old_log_prob.batch["old_entropy"] = old_log_prob.batch.pop("entropys")' in trainer_v0
    assert '\n                            old_log_prob.batch.pop("entropys")\n' not in trainer_v0   # no longer dropped
    assert 'fields=data.select("old_log_probs", "entropy", "old_entropy")' in (tmp_path / PATCHED[1]).read_text()
    workers = (tmp_path / PATCHED[2]).read_text()
    assert "self.loss_fn = partial(erc_ppo_loss, config=actor_config)" in workers and "\nimport os\n" in workers
    # what the patched worker calls exists with those names, and erc_ppo_loss reads the key the trainers now write
    assert callable(erc_verl.erc_ppo_loss) and callable(erc_verl.register_erc_policy_losses)
    import inspect

    assert '"old_entropy"' in inspect.getsource(erc_verl.erc_ppo_loss)


def _launch_overrides(**env) -> list[str]:
    out = subprocess.run(["bash", str(LAUNCH), "--print-overrides"], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/home/u", **env})
    return out.stdout.splitlines()


def test_launch_script_overrides_are_verl_0_9_1_config_keys_with_the_authors_values():
    from omegaconf import OmegaConf

    from ercref.study.experiments import PAPER_RECIPE

    base = OmegaConf.load(_verl_site() / "verl" / "trainer" / "config" / "_generated_ppo_trainer.yaml")
    lines = _launch_overrides()
    assert all("=" in line and not line.startswith("+") for line in lines)   # only keys verl already has
    OmegaConf.set_struct(base, True)
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist(lines))   # struct mode: an unknown key raises here
    c = OmegaConf.to_container(merged, resolve=False)
    a, r = c["actor_rollout_ref"]["actor"], c["actor_rollout_ref"]["rollout"]
    # the launch script encodes the same values as the authors' table (data/recipes/erc_authors_1.5b.json)
    checks = {
        "rollout.prompts_per_step": c["data"]["train_batch_size"], "advantage.gen_batch_prompts": c["data"]["gen_batch_size"],
        "rollout.group_size": r["n"], "rollout.max_new_tokens": c["data"]["max_response_length"],
        "data.max_prompt_tokens": c["data"]["max_prompt_length"], "rollout.temperature": r["temperature"],
        "rollout.top_p": r["top_p"], "loss.loss_kwargs.eps_low": a["clip_ratio_low"],
        "loss.loss_kwargs.eps_high": a["clip_ratio_high"], "loss.loss_kwargs.clip_ratio_c": a["clip_ratio_c"],
        "loss.agg_mode": a["loss_agg_mode"], "optim.lr": a["optim"]["lr"], "optim.warmup_steps": a["optim"]["lr_warmup_steps"],
        "optim.weight_decay": a["optim"]["weight_decay"], "optim.grad_clip": a["grad_clip"],
        "train.minibatch_prompts": a["ppo_mini_batch_size"], "train.eval_k": r["val_kwargs"]["n"],
        "train.eval_temperature": r["val_kwargs"]["temperature"], "train.eval_top_p": r["val_kwargs"]["top_p"],
        "train.eval_every": c["trainer"]["test_freq"], "train.save_every": c["trainer"]["save_freq"],
        "rollout.vllm_gpu_memory_utilization": r["gpu_memory_utilization"], "loss.entropy_coef": a["entropy_coeff"],
        "loss.kl_coef": a["kl_loss_coef"], "advantage.max_gen_batches": c["algorithm"]["filter_groups"]["max_num_gen_batches"],
    }
    for field_name, verl_value in checks.items():
        ours = PAPER_RECIPE[field_name]
        assert (verl_value == ours) if isinstance(ours, str) else float(verl_value) == float(ours), field_name
    assert a["policy_loss"]["loss_mode"] == "erc_dapo" and a["calculate_entropy"] is True
    assert c["algorithm"]["filter_groups"]["metric"] == "acc" and c["trainer"]["val_before_train"] is False
    assert c["data"]["truncation"] == "left" and r["name"] == "vllm"
    assert c["reward"]["custom_reward_function"]["path"].endswith("scripts/verl_erc_reward.py")
    assert (c["trainer"]["nnodes"], c["trainer"]["n_gpus_per_node"]) == (8, 8)     # the authors' 64 GPUs
    gppo = dict(line.split("=", 1) for line in _launch_overrides(LOSS="erc_gppo", CLIP_HIGH="0.2", NNODES="1"))
    assert gppo["actor_rollout_ref.actor.policy_loss.loss_mode"] == "erc_gppo"
    assert gppo["actor_rollout_ref.actor.clip_ratio_high"] == "0.2" and gppo["trainer.nnodes"] == "1"
    assert "erc_dapo" in erc_verl.register_erc_policy_losses() and "erc_gppo" in erc_verl.register_erc_policy_losses()


def test_verl_reward_function_is_the_papers_reward():
    pytest.importorskip("math_verify")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import verl_erc_reward as rw
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert rw.compute_score("math", "<think>so</think> The answer is \\boxed{42}.", "42") == {"score": 1.0, "acc": 1.0}
    assert rw.compute_score("math", "<think>so</think> \\boxed{41}", "42") == {"score": -1.0, "acc": 0.0}
    assert rw.compute_score("math", "\\boxed{42} but never closes the thought", "42") == {"score": -0.5, "acc": 0.0}
    assert rw.compute_score("math", "<think>x</think> \\boxed{7}", ["7"])["acc"] == 1.0
