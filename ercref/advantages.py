"""Group-relative advantages, DAPO's dynamic-sampling filter and overlong reward shaping.

Responses come in groups of G samples of the same prompt, laid out contiguously:
rewards (N,) with N = num_groups * G.

    GRPO:   A_i = (R_i - mean_group(R)) / (std_group(R) + eps),   eps = 1e-6
            (unbiased std, as verl; a group of one sample gets mean 0, std 1)
    no-std: A_i = R_i - mean_group(R)                               (Dr.GRPO)
"""
from __future__ import annotations

import torch

from ._checks import check_finite, check_float, check_positive, checked, require

Tensor = torch.Tensor


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    check_float("rewards", rewards)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (num_groups * group_size,), got shape {tuple(rewards.shape)}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int (an empty group has no baseline), got {group_size!r}")
    if rewards.numel() == 0:
        raise ValueError("rewards is empty: there is no group to compute advantages for")
    if rewards.numel() % group_size:
        raise ValueError(f"rewards has {rewards.numel()} entries, not a multiple of group_size={group_size}")
    check_finite("rewards", rewards)
    return rewards.view(-1, group_size)


@checked
def group_advantages(rewards: Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """(N,) rewards -> (N,) group-relative advantages. ``eps`` must be > 0 (a group of equal rewards
    has std 0: its advantages are 0 / eps = 0); rewards must be finite and small enough that the
    group mean and std do not overflow (checked: the advantages are finite)."""
    check_positive("eps", eps)
    g = _groups(rewards, group_size)
    if group_size == 1:
        mean, std = torch.zeros_like(g), torch.ones_like(g)
    else:
        mean, std = g.mean(-1, keepdim=True), g.std(-1, keepdim=True)
    adv = g - mean
    if scale_by_std:
        adv = adv / (std + eps)
    adv = adv.reshape(-1)
    require(torch.isfinite(adv).all(), lambda: "rewards give non-finite advantages (the group mean or std overflows "
            f"{rewards.dtype}; largest |reward| = {rewards.abs().max().item():.3g}): rescale the rewards")
    return adv


@checked
def dynamic_sampling_mask(rewards: Tensor, group_size: int) -> Tensor:
    """DAPO dynamic sampling: (N,) bool, False for every sample of a group whose rewards are all
    equal (its advantages are all zero, so it carries no learning signal)."""
    g = _groups(rewards, group_size)
    varied = (g != g[:, :1]).any(-1, keepdim=True)
    return varied.expand_as(g).reshape(-1)


@checked
def overlong_reward(lengths: Tensor, max_length: int, buffer_length: int) -> Tensor:
    """DAPO soft overlong punishment, added to the task reward. lengths (N,) -> (N,) float.

        R_len(y) = 0                                   if |y| <= L_max - L_buf
                 = ((L_max - L_buf) - |y|) / L_buf     if L_max - L_buf < |y| <= L_max
                 = -1                                  if |y| > L_max
    """
    check_positive("max_length", max_length)
    check_positive("buffer_length", buffer_length)
    if buffer_length > max_length:
        raise ValueError(f"buffer_length ({buffer_length}) must not exceed max_length ({max_length})")
    if not isinstance(lengths, torch.Tensor) or lengths.dtype == torch.bool or lengths.is_complex():
        raise ValueError("lengths must be a real tensor of response lengths")
    length = lengths.float()
    check_finite("lengths", length)
    start = max_length - buffer_length
    r = ((start - length) / buffer_length).clamp(max=0.0)
    return torch.where(length > max_length, torch.full_like(r, -1.0), r)
