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
