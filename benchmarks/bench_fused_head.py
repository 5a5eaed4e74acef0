"""LM head at long responses: per-token log-prob + entropy, forward and backward, three ways.

    python benchmarks/bench_fused_head.py [--rows 4096] [--hidden 576] [--vocab 49152] [--repeats 3]

  hf      the default HF path: logits = h W^T materialised [N, V], fp32 log-softmax, gather, entropy
  trl     TRL 1.16's chunked head (trl.kernels.chunked_logprob.ChunkedLogProbFunction, log_probs + entropy)
  ercref  ercref.fused_head.fused_logprobs_and_entropy (row tiles, recompute in backward)

Defaults are SmolLM2-135M's head (D = 576, V = 49,152) over 4,096 response tokens. Each method
runs in its own process; we report the median time of forward + backward and the peak resident
memory above the inputs' baseline (ru_maxrss), and the gradient agreement with the hf path.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _measure import bench_parser, case_args, median_time, peak_rss_mb, rss_mb, run_case  # noqa: E402


def main():
    a = bench_parser(__doc__, rows=4096, hidden=576, vocab=49_152, repeats=3, case=True).parse_args()
    if a.case:
        import torch
        torch.manual_seed(0)
        h = (torch.randn(a.rows, a.hidden) * 0.5).requires_grad_()
        W = (torch.randn(a.vocab, a.hidden) * 0.05).requires_grad_()
        labels = torch.randint(0, a.vocab, (a.rows,))
        g = torch.randn(a.rows)

        if a.case == "hf":
            def run():
                logits = h @ W.T
                logp_all = torch.log_softmax(logits.float(), -1)
                logp = logp_all.gather(-1, labels[:, None]).squeeze(-1)
                with torch.no_grad():
                    ent = -(logp_all.exp() * logp_all).sum(-1)
                return logp, ent
        elif a.case == "trl":
            from trl.kernels.chunked_logprob import ChunkedLogProbFunction
            from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

            def run():
                out = ChunkedLogProbFunction.apply(h, W, None, labels, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0,
                                                   ("entropy",))
                return out[0], out[1]
        else:
            from ercref.fused_head import fused_logprobs_and_entropy

            def run():
                return fused_logprobs_and_entropy(h, W, labels)

        def step():
            h.grad = W.grad = None
            logp, ent = run()
            (logp * g).sum().backward()
            return logp, ent

        base = max(rss_mb(), peak_rss_mb())
        logp, ent = step()
        t = median_time(step, a.repeats)
        extra = peak_rss_mb() - base
        torch.save({"logp": logp.detach(), "ent": ent.detach(), "gh": h.grad, "gw": W.grad}, f"/tmp/_fused_{a.case}.pt")
        print(json.dumps({"time_s": t, "extra_mb": extra}))
        return
    import torch
    args = case_args(a, "rows", "hidden", "vocab", "repeats")
    res = {c: run_case(__file__, c, *args) for c in ("hf", "trl", "ercref")}
    ref = torch.load("/tmp/_fused_hf.pt")
    logits_mb = a.rows * a.vocab * 4 / 2**20
    print(f"LM head fwd+bwd, N={a.rows} tokens, D={a.hidden}, V={a.vocab} (fp32 logits would be {logits_mb:.0f} MB); "
          f"median of {a.repeats}, one process per method")
    print(f"{'method':<8}{'time s':>9}{'peak extra MB':>15}{'vs hf mem':>11}{'vs hf time':>12}{'max |dW - dW_hf|':>19}")
    for c, r in res.items():
        got = torch.load(f"/tmp/_fused_{c}.pt")
        err = float((got["gw"] - ref["gw"]).abs().max())
        print(f"{c:<8}{r['time_s']:>9.2f}{r['extra_mb']:>15.0f}{r['extra_mb']/res['hf']['extra_mb']:>11.3f}"
              f"{r['time_s']/res['hf']['time_s']:>12.2f}{err:>19.1e}")
    print(f"ercref vs trl: memory {res['ercref']['extra_mb']/res['trl']['extra_mb']:.2f}x, "
          f"time {res['ercref']['time_s']/res['trl']['time_s']:.2f}x (target: memory <= 0.25x hf, and match or beat trl)")


if __name__ == "__main__":
    main()
