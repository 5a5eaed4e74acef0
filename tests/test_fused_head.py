"""The fused chunked LM head equals the unfused path (logits materialised), in value and gradient."""
import pytest
import torch

from ercref import logprobs_and_entropy
from ercref.fused_head import fused_logprobs_and_entropy


def _case(seed, N=45, D=24, V=157, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g, dtype=dtype)
    W = torch.randn(V, D, generator=g, dtype=dtype) * 0.3
    labels = torch.randint(0, V, (N,), generator=g)
    return h, W, labels


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("chunk_rows", [1, 7, 64])
def test_fused_head_gradients_equal_unfused_within_1e5_fp32_relative(temperature, chunk_rows):
    for seed in range(5):
        h, W, labels = _case(seed)
        g = torch.randn(h.shape[0], generator=torch.Generator().manual_seed(100 + seed))
        h1, W1 = h.clone().requires_grad_(), W.clone().requires_grad_()
        lp1, ent1 = fused_logprobs_and_entropy(h1, W1, labels, temperature, chunk_rows=chunk_rows)
        (lp1 * g).sum().backward()
        h2, W2 = h.clone().requires_grad_(), W.clone().requires_grad_()
        lp2, ent2 = logprobs_and_entropy(h2 @ W2.T, labels, temperature)
        (lp2 * g).sum().backward()
        torch.testing.assert_close(lp1, lp2, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ent1, ent2, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(W1.grad, W2.grad, rtol=1e-5, atol=1e-5)
        assert not ent1.requires_grad


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_rows", [1, 7, 64])  # 45 rows: 7 does not divide them, 64 exceeds them
def test_fused_entropy_grad_equals_unfused_and_plain_autograd_within_1e5_fp32(temperature, chunk_rows):
    """Upstream gradients on logp and H at once; the reference materialises the logits and
    differentiates H = -(softmax * log_softmax).sum(-1) with plain autograd."""
    for seed in range(3):
        h, W, labels = _case(seed)
        gen = torch.Generator().manual_seed(200 + seed)
        g_lp, g_H = torch.randn(h.shape[0], generator=gen), torch.randn(h.shape[0], generator=gen)
        grads, outs = [], []
        for path in ("fused", "unfused", "autograd"):
            h1, W1 = h.clone().requires_grad_(), W.clone().requires_grad_()
            if path == "fused":
                lp, H = fused_logprobs_and_entropy(h1, W1, labels, temperature, chunk_rows=chunk_rows, entropy_grad=True)
            elif path == "unfused":
                lp, H = logprobs_and_entropy(h1 @ W1.T, labels, temperature, chunk_rows=chunk_rows, entropy_grad=True)
            else:
                logz = torch.log_softmax((h1 @ W1.T) / temperature, -1)
                lp, H = logz.gather(-1, labels[:, None]).squeeze(-1), -(logz.exp() * logz).sum(-1)
            assert H.requires_grad
            ((lp * g_lp).sum() + (H * g_H).sum()).backward()
            outs.append((lp.detach(), H.detach()))
            grads.append((h1.grad, W1.grad))
        for (lp, H), (gh, gw) in zip(outs[:2], grads[:2]):
            torch.testing.assert_close(lp, outs[2][0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(H, outs[2][1], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(gh, grads[2][0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(gw, grads[2][1], rtol=1e-5, atol=1e-5)


def test_fused_entropy_grad_only_entropy_used_and_bf16():
    h, W, labels = _case(4, N=13)
    h1, W1 = h.clone().requires_grad_(), W.clone().requires_grad_()
    _, H = fused_logprobs_and_entropy(h1, W1, labels, 0.8, chunk_rows=5, entropy_grad=True)
    H.sum().backward()  # logp unused: its upstream gradient is None
    h2, W2 = h.clone().requires_grad_(), W.clone().requires_grad_()
    logz = torch.log_softmax((h2 @ W2.T) / 0.8, -1)
    (-(logz.exp() * logz).sum(-1)).sum().backward()
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(W1.grad, W2.grad, rtol=1e-5, atol=1e-5)
    hb, Wb = h.bfloat16().requires_grad_(), W.bfloat16().requires_grad_()
    lpb, Hb = fused_logprobs_and_entropy(hb, Wb, labels, 0.8, chunk_rows=5, entropy_grad=True)
    assert Hb.dtype == torch.float32
    (lpb.sum() + Hb.sum()).backward()
    assert hb.grad.dtype == Wb.grad.dtype == torch.bfloat16
    assert torch.isfinite(hb.grad.float()).all() and torch.isfinite(Wb.grad.float()).all()


def test_fused_head_gradcheck_float64():
    h, W, labels = _case(0, N=9, D=5, V=13, dtype=torch.float64)
    h.requires_grad_(), W.requires_grad_()
    for tau in (1.0, 0.7):
        assert torch.autograd.gradcheck(lambda h, W: fused_logprobs_and_entropy(h, W, labels, tau, chunk_rows=4)[0], (h, W))


def test_fused_head_bf16_close_to_fp32_and_batched_shapes():
    h, W, labels = _case(3, N=24)
    lp32, ent32 = fused_logprobs_and_entropy(h.view(4, 6, -1), W, labels.view(4, 6))
    assert lp32.shape == (4, 6) and ent32.dtype == torch.float32
    lpb, entb = fused_logprobs_and_entropy(h.bfloat16().view(4, 6, -1), W.bfloat16(), labels.view(4, 6))
    assert lpb.dtype == torch.float32
    torch.testing.assert_close(entb, ent32, rtol=2e-2, atol=5e-2)
    torch.testing.assert_close(lpb, lp32, rtol=2e-2, atol=1e-1)


def test_fused_head_bad_input_names_the_argument():
    h, W, labels = _case(0)
    with pytest.raises(ValueError, match="weight"):
        fused_logprobs_and_entropy(h, W[:, :5], labels)
    with pytest.raises(ValueError, match="labels"):
        fused_logprobs_and_entropy(h, W, labels[:-1])
    with pytest.raises(ValueError, match="labels"):
        fused_logprobs_and_entropy(h, W, labels + 10_000)
    with pytest.raises(ValueError, match="temperature"):
        fused_logprobs_and_entropy(h, W, labels, temperature=0.0)
    bad = h.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fused_logprobs_and_entropy(bad, W, labels)
