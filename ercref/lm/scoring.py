"""Reward schemes: the reward of each response, from a judge's verdict (``ercref.lm.rewards``; the
math judge bounded in ``ercref.lm.judge_pool``) under a RewardConfig.

    binary   correct -> cfg.correct (1), else cfg.wrong (0)
    paper    the ERC paper: +1 correct, -1 wrong, -0.5 when require_think and there is no closing
             ``</think>`` tag (checked first: an unclosed thought is never judged)
    format   correct -> cfg.correct; wrong but well-formatted -> cfg.format_reward; else cfg.wrong.
             "Well-formatted" (``rewards.well_formatted``): choice judge: the response is a single
             letter A-D; math: it has a \\boxed{}; number: it is one numeral (or has a \\boxed{} one);
             exact: the first line is a (signed) integer.
DAPO overlong shaping (``ercref.overlong_reward``) is added when cfg.overlong_shaping is set.
"""
from __future__ import annotations

import warnings

import torch

from ercref import overlong_reward

from .judge_pool import DEFAULT_MAX_CHARS, DEFAULT_TIMEOUT_S, DEFAULT_WORKERS, check_texts, judge_pool, math_judge
from .rewards import THINK_CLOSE, choice_judge, exact_judge, number_judge, well_formatted

JUDGES = {"exact": exact_judge, "choice": choice_judge, "math": math_judge, "number": number_judge}
SCHEMES = ("binary", "paper", "format")


def score_responses(responses: list[str], answers: list[str], cfg, lengths: torch.Tensor | None = None,
                    max_new_tokens: int | None = None, stats: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards (N,) float32, correct (N,) bool) for N responses (str) under a RewardConfig.

    ``lengths`` (N,) response lengths in tokens (a tensor), needed for overlong shaping. The math judge runs in
    the shared ``judge_pool(cfg.judge_workers)`` with ``cfg.judge_timeout_s`` per response and
    ``cfg.judge_max_chars``; responses over budget score as wrong, are warned about, and are
    counted in ``stats`` (when a dict is given it receives ``JudgeStats.as_metrics()``:
    judge/timeouts, judge/truncated, judge/errors, judge/restarts, judge/seconds, judge/judged).
    A response or answer that is not a str is a TypeError naming its index."""
    check_texts(responses, answers)
    if lengths is not None and (not isinstance(lengths, torch.Tensor) or tuple(lengths.shape) != (len(responses),)):
        got = tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        raise ValueError(f"lengths must be a tensor of shape ({len(responses)},), one length in tokens per response, "
                         f"got {got}")
    if cfg.judge not in JUDGES:
        raise ValueError(f"judge must be one of {sorted(JUDGES)}, got {cfg.judge!r}")
    if cfg.scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {list(SCHEMES)}, got {cfg.scheme!r}")
    unclosed = [cfg.scheme == "paper" and cfg.require_think and THINK_CLOSE not in r for r in responses]
    todo = [i for i, skip in enumerate(unclosed) if not skip]
    correct = [False] * len(responses)
    if cfg.judge == "math":
        timeout_s = getattr(cfg, "judge_timeout_s", DEFAULT_TIMEOUT_S)
        pool = judge_pool(getattr(cfg, "judge_workers", DEFAULT_WORKERS))
        oks, js = pool.judge([responses[i] for i in todo], [answers[i] for i in todo], timeout_s,
                             getattr(cfg, "judge_max_chars", DEFAULT_MAX_CHARS))
        if js.timeouts or js.errors:
            warnings.warn(f"math judge: {js.timeouts} of {js.judged} responses went over the {timeout_s:g} s budget "
                          f"and {js.errors} failed; they score as wrong (raise reward.judge_timeout_s to give "
                          "them more time)", RuntimeWarning, stacklevel=2)
        if stats is not None:
            stats.update(js.as_metrics())
    else:
        judge = JUDGES[cfg.judge]
        oks = [judge(responses[i], answers[i]) for i in todo]
    for i, ok in zip(todo, oks):
        correct[i] = ok
    rewards = []
    for resp, skip, ok in zip(responses, unclosed, correct):
        if skip:
            r = cfg.no_think_close
        elif ok:
            r = cfg.correct
        elif cfg.scheme == "format" and well_formatted(resp, cfg.judge):
            r = cfg.format_reward
        else:
            r = cfg.wrong
        rewards.append(float(r))
    rew = torch.tensor(rewards, dtype=torch.float32)
    if cfg.overlong_shaping:
        if lengths is None:
            raise ValueError("lengths is required when overlong_shaping is on")
        max_len = cfg.overlong_max_length or max_new_tokens
        if not max_len:
            raise ValueError("overlong_max_length (or max_new_tokens) is required when overlong_shaping is on")
        rew = rew + overlong_reward(lengths, max_len, cfg.overlong_buffer)
    return rew, torch.tensor(correct, dtype=torch.bool)
