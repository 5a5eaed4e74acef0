"""What ERC costs inside one loss-plus-backward call, measured against the same call without ERC.

    python benchmarks/bench_erc_cost.py [--batch 8] [--seq 512] [--vocab 49152] [--repeats 7]

The call goes from LM-head logits (B, T, V) to the backward of the scalar loss, as a trainer's
update does: log-probs and the current entropy from one chunked pass (the entropy is computed in
both arms: it is the entropy metric every RL trainer logs), DAPO loss, token-mean, backward.
The ERC arm adds the entropy ratio, the mask and the stop-gradient wrapper. Arms are interleaved
and the median is reported. A second line times the loss alone, from (B, T) inputs.

With --full-step, a third line times a whole update step of SmolLM2-135M-Instruct (forward,
fused log-prob/entropy head, loss, backward, AdamW) on 8 sequences x 96 tokens, ERC on vs off.
"""
from __future__ import annotations

import os
import sys
from functools import partial

import torch

import ercref

sys.path.insert(0, os.path.dirname(__file__))
from _measure import bench_parser, paired_median  # noqa: E402


def main():
    ap = bench_parser(__doc__, batch=8, seq=512, vocab=49_152, repeats=7)
    ap.add_argument("--full-step", action="store_true")
    a = ap.parse_args()
    if a.full_step:
        return full_step(a.repeats)
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

    for name, fn, reps in (("loss+backward from logits", full, a.repeats),
                           ("loss alone from (B,T)", loss_only, a.repeats * 20)):
        off, on = paired_median(partial(fn, False), partial(fn, True), reps)
        print(f"{name:<27} B={B} T={T} V={V}: without ERC {off*1e3:8.2f} ms, with ERC {on*1e3:8.2f} ms, "
              f"ratio {on/off:.3f}x (target <= 1.02x for the full call)")


def full_step(repeats: int):
    from ercref.fused_head import fused_logprobs_and_entropy
    from ercref.lm.models import load_smollm2

    torch.manual_seed(0)
    model, _ = load_smollm2()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    B, T = 8, 96
    ids = torch.randint(0, model.config.vocab_size, (B, T + 1))
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        h = model.model(input_ids=ids[:, :-1]).last_hidden_state
        old_logp, old_ent = fused_logprobs_and_entropy(h, head, ids[:, 1:])
    mask, adv = torch.ones(B, T, dtype=torch.bool), torch.randn(B)
    cfgs = {erc: ercref.PolicyLossConfig(loss="dapo", erc=erc, nll_coef=0.0) for erc in (False, True)}

    def step(erc):
        opt.zero_grad(set_to_none=True)
        h = model.model(input_ids=ids[:, :-1]).last_hidden_state
        logp, ent = fused_logprobs_and_entropy(h, head, ids[:, 1:])
        loss, _ = ercref.compute_policy_loss(cfgs[erc], logp, old_logp, adv, mask, ent, old_ent)
        loss.backward()
        opt.step()

    off, on = paired_median(partial(step, False), partial(step, True), repeats)
    print(f"full update step, SmolLM2-135M, B={B} T={T}: without ERC {off:.2f} s, with ERC {on:.2f} s, "
          f"ratio {on/off:.3f}x (target <= 1.02x)")


if __name__ == "__main__":
    main()
