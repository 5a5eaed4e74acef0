"""Judges (is a response correct?) and reward schemes (what number does it get?).

Judges, each ``judge(response, answer) -> bool``:
    exact    synthetic tasks: the response's first line, stripped of spaces and a trailing '.', equals
             the answer (the tiny model answers "8<eos>"; "The answer is 8" is wrong under this judge)
    choice   multiple choice: the first stand-alone letter A-D in the response equals the answer letter
    math     math-verify (``math_verify.parse`` / ``verify``): the \\boxed{} answer, or the last
             expression, of the response is mathematically equal to the reference (fractions,
             decimals, LaTeX). Text after the last ``</think>`` is judged when there is one.

Schemes (reward of one response, before overlong shaping):
    binary   correct -> cfg.correct (1), else cfg.wrong (0)
    paper    the ERC paper: +1 correct, -1 wrong, -0.5 when require_think and there is no closing
             ``</think>`` tag (checked first: an unclosed thought is never judged)
    format   correct -> cfg.correct; wrong but well-formatted -> cfg.format_reward; else cfg.wrong.
             "Well-formatted": choice judge: the response is a single letter A-D; math: it has a
             \\boxed{}; exact: the first line is a (signed) integer.
DAPO overlong shaping (``ercref.overlong_reward``) is added when cfg.overlong_shaping is set.
"""
from __future__ import annotations

import re

import torch

THINK_CLOSE = "</think>"
_LETTER = re.compile(r"(?<![A-Za-z])([ABCD])(?![A-Za-z])")
_INT = re.compile(r"^[+-]?\d+$")


def _first_line(text: str) -> str:
    return text.strip().split("\n")[0].strip().rstrip(".").replace(" ", "")


def exact_judge(response: str, answer: str) -> bool:
    return _first_line(response) == str(answer).strip().replace(" ", "")


def choice_letter(response: str) -> str | None:
    m = _LETTER.search(response)
    return m.group(1) if m else None


def choice_judge(response: str, answer: str) -> bool:
    return choice_letter(response) == str(answer).strip().upper()


def _after_think(text: str) -> str:
    return text.rsplit(THINK_CLOSE, 1)[-1] if THINK_CLOSE in text else text


def math_judge(response: str, answer: str) -> bool:
    """math-verify: parse the reference (wrapped in $...$ when it is bare LaTeX) and the response, verify."""
    from math_verify import parse, verify

    gold = parse(answer if "$" in answer or "\\boxed" in answer else f"${answer}$")
    if not gold:
        gold = parse(answer)
    pred = parse(_after_think(response))
    if not gold or not pred:
        return False
    try:
        return bool(verify(gold, pred))
    except Exception:  # math-verify raises on exotic expressions; an unverifiable answer is wrong
        return False


JUDGES = {"exact": exact_judge, "choice": choice_judge, "math": math_judge}


def well_formatted(response: str, judge: str) -> bool:
    if judge == "choice":
        return re.fullmatch(r"\s*\(?[ABCD]\)?\.?\s*", response) is not None
    if judge == "math":
        return "\\boxed{" in _after_think(response)
    return _INT.match(_first_line(response)) is not None


def score_responses(responses: list[str], answers: list[str], cfg, lengths: torch.Tensor | None = None,
                    max_new_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards (N,) float32, correct (N,) bool) for N responses under a RewardConfig.

    ``lengths`` (N,) response lengths in tokens, needed for overlong shaping."""
    if len(responses) != len(answers):
        raise ValueError(f"responses ({len(responses)}) and answers ({len(answers)}) must have the same length")
    if cfg.judge not in JUDGES:
        raise ValueError(f"judge must be one of {sorted(JUDGES)}, got {cfg.judge!r}")
    judge = JUDGES[cfg.judge]
    rewards, correct = [], []
    for resp, ans in zip(responses, answers):
        if cfg.scheme == "paper" and cfg.require_think and THINK_CLOSE not in resp:
            ok, r = False, cfg.no_think_close
        else:
            ok = judge(resp, ans)
            if cfg.scheme == "paper":
                r = cfg.correct if ok else cfg.wrong
            elif cfg.scheme == "format":
                r = cfg.correct if ok else (cfg.format_reward if well_formatted(resp, cfg.judge) else cfg.wrong)
            elif cfg.scheme == "binary":
                r = cfg.correct if ok else cfg.wrong
            else:
                raise ValueError(f"scheme must be 'binary', 'paper' or 'format', got {cfg.scheme!r}")
        rewards.append(float(r))
        correct.append(ok)
    rew = torch.tensor(rewards, dtype=torch.float32)
    if cfg.overlong_shaping:
        from ercref import overlong_reward

        if lengths is None:
            raise ValueError("lengths is required when overlong_shaping is on")
        max_len = cfg.overlong_max_length or max_new_tokens
        if not max_len:
            raise ValueError("overlong_max_length (or max_new_tokens) is required when overlong_shaping is on")
        rew = rew + overlong_reward(lengths, max_len, cfg.overlong_buffer)
    return rew, torch.tensor(correct, dtype=torch.bool)
