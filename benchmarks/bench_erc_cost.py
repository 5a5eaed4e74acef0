"""What ERC costs inside one loss-plus-backward call, measured against the same call without ERC.

    python benchmarks/bench_erc_cost.py [--batch 8] [--seq 512] [--vocab 49152] [--repeats 7]

The call goes from LM-head logits (B, T, V) to the backward of the scalar loss, as a trainer's
update does: log-probs and the current entropy from one chunked pass (the entropy is computed in
both arms: it is the entropy metric every RL trainer logs), DAPO loss, token-mean, backward.
The ERC arm adds the entropy ratio, the mask and the stop-gradient wrapper. Arms are interleaved
and the median is reported. A second line times the loss alone, from (B, T) inputs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

import ercref


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=49_152)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    torch.manual_seed(0)
    B, T, V = a.batch, a.seq, a.vocab
    logits = (torch.randn(B, T, V) * 2).requires_grad_()
    labels = torch.randint(0, V, (B, T))
    mask = torch.rand(B, T) > 0.1
    with torch.no_grad():
        old_logp, old_ent = ercref.logprobs_and_entropy(logits + 0.05 * torch.randn_like(logits), labels)
    adv = torch.randn(B)
    cfgs = {erc: ercref.PolicyLossConfig(loss="dapo", erc=erc, nll_coef=0.0) for erc in (False, True)}

    def full(erc):
        logits.grad = None
        logp, ent = ercref.logprobs_and_entropy(logits, labels)
        loss, _ = ercref.compute_policy_loss(cfgs[erc], logp, old_logp, adv, mask, ent, old_ent)
        loss.backward()

    logp_leaf = old_logp.clone().add_(0.01).requires_grad_()
    ent_leaf = old_ent * 1.02

    def loss_only(erc):
        logp_leaf.grad = None
        loss, _ = ercref.compute_policy_loss(cfgs[erc], logp_leaf, old_logp, adv, mask, ent_leaf, old_ent)
        loss.backward()

    for name, fn, reps in (("loss+backward from logits", full, a.repeats), ("loss alone from (B,T)", loss_only, a.repeats * 20)):
        fn(False), fn(True)  # warm-up
        times = {False: [], True: []}
        for _ in range(reps):
            for erc in (False, True):
                t = time.perf_counter()
                fn(erc)
                times[erc].append(time.perf_counter() - t)
        off, on = statistics.median(times[False]), statistics.median(times[True])
        print(f"{name:<27} B={B} T={T} V={V}: without ERC {off*1e3:8.2f} ms, with ERC {on*1e3:8.2f} ms, "
              f"ratio {on/off:.3f}x (target <= 1.02x for the full call)")


if __name__ == "__main__":
    main()
