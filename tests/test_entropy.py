"""Chunked full-vocabulary entropy (and log-probs) against a float64 reference, and its memory.

    H(pi, t) = - sum_v p_v log p_v,   p = softmax(z / tau),   0 log 0 := 0 (masked vocabulary, z = -inf)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import ercref

CHUNKS = [1, 7, 16, 64, None]  # 50 rows: 7 and 16 do not divide the rows, 64 is larger than them


def reference_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """float64, written out: p = exp(z - logsumexp z); H = -sum p log p with 0 log 0 = 0."""
    z = logits.double() / temperature
    logz = z - torch.logsumexp(z, dim=-1, keepdim=True)
    p = torch.exp(logz)
    plogp = torch.where(p > 0, p * logz, torch.zeros_like(p))
    return -plogp.sum(-1)


def _logits(shape, scale=3.0, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=gen, dtype=torch.float32)).to(dtype)


@pytest.mark.parametrize("chunk_rows", CHUNKS)
@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
def test_fp32_entropy_matches_float64_reference(chunk_rows, temperature):
    logits = _logits((5, 10, 301))
    logits[0, 0, 0] = 40.0  # one nearly deterministic row (entropy ~ 0)
    H = ercref.entropy_from_logits(logits, temperature=temperature, chunk_rows=chunk_rows)
    assert H.dtype == torch.float32 and H.shape == (5, 10)
    ref = reference_entropy(logits, temperature)
    torch.testing.assert_close(H.double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_rows", [3, None])
def test_bf16_entropy_within_2e_2_of_the_fp32_inputs_reference(chunk_rows):
    logits = _logits((4, 9, 500), scale=2.0)
    ref = reference_entropy(logits)  # reference on the original (unrounded) logits
    H = ercref.entropy_from_logits(logits.bfloat16(), chunk_rows=chunk_rows)
    assert H.dtype == torch.float32
    assert float(((H.double() - ref).abs() / ref.abs()).max()) <= 2e-2
    # the arithmetic itself is fp32: on the bf16-rounded values it is exact to fp32 precision
    torch.testing.assert_close(H.double(), reference_entropy(logits.bfloat16()), rtol=1e-5, atol=1e-6)


def test_fp16_input_is_accumulated_in_fp32():
    # large logits: exp in fp16 would overflow (max 65504), a sum in fp16 would lose precision
    logits = _logits((6, 2000), scale=6.0).half()
    H = ercref.entropy_from_logits(logits, chunk_rows=4)
    assert H.dtype == torch.float32
    torch.testing.assert_close(H.double(), reference_entropy(logits), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_rows", [2, None])
def test_masked_vocabulary_minus_inf_logits(chunk_rows):
    logits = _logits((5, 40), seed=1)
    logits[:, 10:] = float("-inf")           # only 10 live entries per row
    logits[4, 1:] = float("-inf")            # one row with a single live entry: H = 0
    for temperature in (1.0, 0.7):
        H = ercref.entropy_from_logits(logits, temperature=temperature, chunk_rows=chunk_rows)
        ref = reference_entropy(logits[:, :10], temperature)
        ref[4] = 0.0
        torch.testing.assert_close(H.double(), ref, rtol=1e-5, atol=1e-6)
        assert float(H[:4].max()) <= torch.log(torch.tensor(10.0)) + 1e-6


def test_uniform_logits_have_entropy_log_v():
    H = ercref.entropy_from_logits(torch.zeros(3, 1000), chunk_rows=2)
    torch.testing.assert_close(H, torch.full((3,), float(torch.log(torch.tensor(1000.0)))))


def test_differentiable_path_matches_reference_value_and_closed_form_gradient():
    """dH/dz_v = -p_v (log p_v + H) / tau, and 0 for masked (-inf) entries."""
    tau = 0.8
    logits = _logits((3, 4, 50), seed=2).double()
    logits[0, 0, 5:] = float("-inf")
    logits.requires_grad_(True)
    H = ercref.entropy_from_logits(logits, temperature=tau, chunk_rows=5)
    ref = reference_entropy(logits.detach(), tau)
    torch.testing.assert_close(H, ref, rtol=1e-10, atol=1e-12)
    w = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad((H * w).sum(), logits)
    logz = torch.log_softmax(logits.detach() / tau, -1)
    p = logz.exp()
    dH = -torch.where(p > 0, p * (logz + ref.unsqueeze(-1)), torch.zeros_like(p)) / tau
    assert torch.isfinite(g).all() and torch.all(g[0, 0, 5:] == 0)
    torch.testing.assert_close(g, w.unsqueeze(-1) * dH, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("chunk_rows", [1, 3, None])
def test_logprobs_and_entropy_match_reference(chunk_rows):
    logits = _logits((2, 7, 120), seed=3)
    logits[1, 2, 7] = 30.0  # nearly deterministic position: H ~ 1e-11, any cancellation shows here
    labels = torch.randint(0, 120, (2, 7), generator=torch.Generator().manual_seed(0))
    ref_logp = torch.log_softmax(logits.double() / 0.9, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    logp, H = ercref.logprobs_and_entropy(logits, labels, temperature=0.9, chunk_rows=chunk_rows)
    # logp = z - logsumexp(z) cancels in fp32: absolute error ~ 1e-6 * |z| (|z| up to ~12 here)
    torch.testing.assert_close(logp.double(), ref_logp, rtol=1e-5, atol=3e-5)
    torch.testing.assert_close(H.double(), reference_entropy(logits, 0.9), rtol=1e-5, atol=1e-6)
    assert not H.requires_grad
    lp2 = ercref.logprobs_from_logits(logits, labels, temperature=0.9, chunk_rows=chunk_rows)
    torch.testing.assert_close(lp2.double(), ref_logp, rtol=1e-5, atol=3e-5)


def _autograd_logp_entropy(logits, labels, temperature):
    """Plain autograd on the full logits: logp = log_softmax gathered, H = -(softmax * log_softmax).sum."""
    logz = torch.log_softmax(logits.float() / temperature, -1)
    p = logz.exp()
    H = -(p * torch.where(p > 0, logz, torch.zeros_like(logz))).sum(-1)  # mask log p, not p log p (NaN grad)
    return logz.gather(-1, labels.unsqueeze(-1)).squeeze(-1), H


@pytest.mark.parametrize("chunk_rows", [1, 4, 16, None])  # 4 and 16 do not divide the 14 rows
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_entropy_grad_matches_plain_autograd_on_full_logits(chunk_rows, temperature):
    """Upstream gradients on logp and H at once: dz = [g_logp (onehot - p) - g_H p (log p + H)] / tau."""
    logits = _logits((2, 7, 120), seed=4)
    logits[0, 3, 50:] = float("-inf")  # masked vocabulary: zero gradient there, no NaN
    labels = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    g_lp, g_H = torch.randn(2, 7, generator=gen), torch.randn(2, 7, generator=gen)
    z1 = logits.clone().requires_grad_(True)
    lp1, H1 = ercref.logprobs_and_entropy(z1, labels, temperature, chunk_rows=chunk_rows, entropy_grad=True)
    assert H1.requires_grad and lp1.requires_grad
    ((lp1 * g_lp).sum() + (H1 * g_H).sum()).backward()
    z2 = logits.clone().requires_grad_(True)
    lp2, H2 = _autograd_logp_entropy(z2, labels, temperature)
    ((lp2 * g_lp).sum() + (H2 * g_H).sum()).backward()
    torch.testing.assert_close(lp1, lp2, rtol=1e-5, atol=3e-5)
    torch.testing.assert_close(H1, H2, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(z1.grad).all() and torch.all(z1.grad[0, 3, 50:] == 0)
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-5, atol=1e-5)


def test_entropy_grad_with_only_one_output_used():
    logits = _logits((11, 60), seed=5).requires_grad_(True)
    labels = torch.randint(0, 60, (11,), generator=torch.Generator().manual_seed(3))
    lp, H = ercref.logprobs_and_entropy(logits, labels, 0.8, chunk_rows=4, entropy_grad=True)
    (g_H,) = torch.autograd.grad(H.sum(), logits, retain_graph=True)  # logp unused: its gradient is None
    (g_lp,) = torch.autograd.grad(lp.sum(), logits)                   # H unused: the plain logp backward
    lp_ref, H_ref = _autograd_logp_entropy(logits, labels, 0.8)
    torch.testing.assert_close(g_H, torch.autograd.grad(H_ref.sum(), logits, retain_graph=True)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_lp, torch.autograd.grad(lp_ref.sum(), logits)[0], rtol=1e-5, atol=1e-5)


def test_entropy_grad_false_keeps_entropy_detached_and_logp_gradient_unchanged():
    logits = _logits((9, 40), seed=6).requires_grad_(True)
    labels = torch.randint(0, 40, (9,), generator=torch.Generator().manual_seed(4))
    lp0, H0 = ercref.logprobs_and_entropy(logits, labels, 0.7, chunk_rows=4)
    assert lp0.requires_grad and not H0.requires_grad
    lp1, H1 = ercref.logprobs_and_entropy(logits, labels, 0.7, chunk_rows=4, entropy_grad=True)
    assert H1.requires_grad
    torch.testing.assert_close(H1.detach(), H0, rtol=0, atol=0)
    (ga,) = torch.autograd.grad(lp0.sum(), logits)
    (gb,) = torch.autograd.grad(lp1.sum(), logits)
    torch.testing.assert_close(ga, gb, rtol=0, atol=0)


def test_entropy_grad_bf16_logits_accumulate_in_fp32():
    logits = _logits((6, 300), scale=2.0, seed=7)
    labels = torch.randint(0, 300, (6,), generator=torch.Generator().manual_seed(5))
    zb = logits.bfloat16().requires_grad_(True)
    lp, H = ercref.logprobs_and_entropy(zb, labels, chunk_rows=4, entropy_grad=True)
    assert H.dtype == torch.float32
    (lp.sum() + H.sum()).backward()
    assert zb.grad.dtype == torch.bfloat16
    z32 = zb.detach().float().requires_grad_(True)  # same (bf16-rounded) values, fp32 autograd
    lp_ref, H_ref = _autograd_logp_entropy(z32, labels, 1.0)
    (lp_ref.sum() + H_ref.sum()).backward()
    torch.testing.assert_close(zb.grad.float(), z32.grad, rtol=1e-2, atol=1e-3)


# ----------------------------------------------------------------------------- memory
_MEMORY_PROBE = textwrap.dedent(
    """
    import json, sys, torch
    torch.set_num_threads(1)
    from ercref import entropy_from_logits

    def kb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1])

    def extra_peak_mb(fn):
        # reset the high-water mark to the current RSS, run, read the new high-water mark
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = kb("VmRSS:")
        out = fn()
        return (kb("VmHWM:") - base) / 1024, out

    def naive(x):  # materialises fp32 copies of the whole B*T*V tensor
        z = x.float()
        return -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1)

    N, V = 256, 50_000
    logits = torch.randn(N, V, generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16)
    for fn in (lambda x: entropy_from_logits(x, chunk_rows=16), entropy_from_logits, naive):
        fn(logits[:2])  # warm up code paths (kernels, lazy imports) outside the measurement
    res = {}
    res["chunk16"], h1 = extra_peak_mb(lambda: entropy_from_logits(logits, chunk_rows=16))
    res["default"], h2 = extra_peak_mb(lambda: entropy_from_logits(logits))
    res["naive"], h3 = extra_peak_mb(lambda: naive(logits))
    res["agree"] = float((h1 - h3).abs().max()) < 1e-3 and float((h2 - h3).abs().max()) < 1e-3
    print(json.dumps(res))
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_chunked_entropy_peak_memory_is_a_fraction_of_one_fp32_copy():
    """Measured in a fresh process: peak RSS increase (VmHWM after reset) while computing the
    entropy of 256 x 50,000 bf16 logits. One fp32 copy of the logits is 51.2 MB; the naive
    softmax * log_softmax, measured the same way, must need at least that (control), while the
    chunked path needs its two chunk buffers: 2 x 16 x V x 4 B = 6.4 MB with chunk_rows=16, and
    2 x 16 MiB with the default chunk."""
    proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    one_fp32_copy_mb = 256 * 50_000 * 4 / 2**20
    assert res["agree"]
    assert res["naive"] >= one_fp32_copy_mb, res            # the measurement sees a full copy
    assert res["chunk16"] <= 0.25 * one_fp32_copy_mb, res   # 6.1 MiB of buffers expected
    default_buffers_mb = 2 * ercref.entropy.DEFAULT_CHUNK_ELEMENTS * 4 / 2**20
    assert res["default"] <= min(1.15 * default_buffers_mb + 2, 0.8 * one_fp32_copy_mb), res
