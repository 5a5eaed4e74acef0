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
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    logp = (old + torch.randn(B, T, generator=g, dtype=torch.float64) * spread).requires_grad_()
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
