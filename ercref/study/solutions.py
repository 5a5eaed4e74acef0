"""Reference solutions of the notebooks' exercises, loaded on demand by
``ercref.study.teaching.solution(name)``: a notebook never defines them in a cell, so "Run All"
keeps the learner's own function and a notebook viewer shows no solution unless asked.

Each is a learner's version of something ercref computes, written the way the exercise asks;
the notebooks (and tests/test_teaching.py) check every one against ercref with
``teaching.check_exercise``. ercref's own code is the reference implementation, not these.

    entropy     notebook 01, exercise (a): entropy of a logit row, without overflow
    erc_keep    notebook 01, exercise (b): the entropy ratio and ERC's keep-mask
    gppo_loss   notebook 02, exercise 1:   GPPO's gradient-preserving bounds
"""
from __future__ import annotations

import torch


def entropy(logits):
    z = logits.float()
    c = z - z.amax(dim=-1, keepdim=True)          # centred: the largest entry is 0, exp cannot overflow
    e = torch.exp(c)
    S = e.sum(-1)
    return torch.log(S) - (e * c).sum(-1) / S     # H = log S - sum_v e^{c_v} c_v / S


def erc_keep(entropy, old_entropy, response_mask, beta_low, beta_high):
    rho = (entropy + 1e-8) / (old_entropy + 1e-8)
    keep = (rho > 1 - beta_low) & (rho < 1 + beta_high) & response_mask.bool()   # strict on both sides
    return keep, rho


def gppo_loss(logp, old_logp, advantages, eps_low=0.2, eps_high=0.2):
    r = torch.exp(logp - old_logp)
    rd = r.detach()                     # sg(r)
    lo = (1 - eps_low) * r / rd         # value 1 - eps_low, gradient (1 - eps_low) d log pi
    hi = (1 + eps_high) * r / rd        # value 1 + eps_high, gradient (1 + eps_high) d log pi
    return torch.maximum(-advantages * r, -advantages * torch.clamp(r, lo, hi))


NAMES = ("entropy", "erc_keep", "gppo_loss")
