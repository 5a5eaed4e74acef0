"""Reference solutions of the notebooks' exercises, loaded on demand by
``ercref.study.teaching.solution(name)``: a notebook never defines them in a cell, so "Run All"
keeps the learner's own function and a notebook viewer shows no solution unless asked.

Each is a learner's version of something ercref computes, written the way the exercise asks;
the notebooks (and tests/test_teaching.py) check every one against ercref with
``teaching.check_exercise``. ercref's own code is the reference implementation, not these.

    entropy     notebook 01, exercise (a): entropy of a logit row, without overflow
    erc_keep    notebook 01, exercise (b): the entropy ratio and ERC's keep-mask
    gppo_loss   notebook 02, exercise 1:   GPPO's gradient-preserving bounds
    spikes      notebook 03: count gradient-norm spikes (3x the median of the earlier ones)
    paired_interval  notebook 04: the paired difference's mean and 95 % Student-t interval
    group_advantages notebook 05: GRPO's group-relative advantages
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .claims import t_quantile


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


def spikes(grad_norms):
    history, n_spikes = [], 0
    for g in grad_norms.tolist():
        if len(history) >= 5 and g > 3 * float(np.median(history)):
            n_spikes += 1
        history.append(g)
    return n_spikes


def paired_interval(erc, base):
    d = (erc - base).double()
    n = d.numel()
    half = t_quantile(0.975, n - 1) * float(d.std(unbiased=True)) / math.sqrt(n)
    m = float(d.mean())
    return m, m - half, m + half


def group_advantages(rewards, group_size):
    g = rewards.view(-1, group_size)                                    # (num_groups, G)
    adv = (g - g.mean(-1, keepdim=True)) / (g.std(-1, keepdim=True) + 1e-6)
    return adv.reshape(-1)


NAMES = ("entropy", "erc_keep", "gppo_loss", "spikes", "paired_interval", "group_advantages")
