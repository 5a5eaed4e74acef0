"""Judges and reward schemes: math-verify on real answers, exact match, multiple choice, the
paper's +1/-1/-0.5 scheme, the format reward and DAPO overlong shaping."""
import pytest
import torch

from ercref.lm.config import RewardConfig
from ercref.lm.rewards import choice_judge, exact_judge, math_judge, score_responses


@pytest.mark.parametrize("response, answer, ok", [
    ("Half of 48 is 24, so 48 + 24 = 72.\n\\boxed{72}", "72", True),
    ("So the total is $\\boxed{\\frac{3}{4}}$.", "\\frac{3}{4}", True),
    ("\\boxed{0.75}", "\\frac{3}{4}", True),                      # decimal vs fraction
    ("\\boxed{6/8}", "\\frac{3}{4}", True),                       # unsimplified fraction
    ("The answer is \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{\\frac{2}{3}}", "\\frac{3}{4}", False),
    ("\\boxed{71}", "72", False),
    ("I don't know.", "72", False),
    ("<think>maybe \\boxed{5}</think> The answer is \\boxed{56}.", "56", True),  # judged after </think>
    ("<think>it is \\boxed{56}</think> The answer is \\boxed{5}.", "56", False),
])
def test_math_verify_judge(response, answer, ok):
    assert math_judge(response, answer) is ok


def test_exact_and_choice_judges():
    assert exact_judge("8", "8") and exact_judge(" 8.\nmore", "8") and not exact_judge("18", "8")
    assert not exact_judge("The answer is 8", "8")
    assert choice_judge("B", "B") and choice_judge("The answer is C.", "C") and not choice_judge("D) 7", "C")
    assert not choice_judge("no letter here", "A")


def test_paper_scheme():
    cfg = RewardConfig(judge="math", scheme="paper", correct=1.0, wrong=-1.0, no_think_close=-0.5, require_think=True)
    resp = ["<think>...</think> \\boxed{72}", "<think>...</think> \\boxed{7}", "<think>never closed \\boxed{72}"]
    r, ok = score_responses(resp, ["72"] * 3, cfg)
    assert r.tolist() == [1.0, -1.0, -0.5] and ok.tolist() == [True, False, False]
    cfg.require_think = False
    r, _ = score_responses(["\\boxed{72}"], ["72"], cfg)
    assert r.tolist() == [1.0]


def test_format_scheme_rewards_a_well_formed_wrong_answer():
    cfg = RewardConfig(judge="choice", scheme="format", correct=1.0, wrong=0.0, format_reward=0.2)
    r, ok = score_responses(["B", "A", "I think the answer is maybe A or B"], ["B", "B", "B"], cfg)
    assert r.tolist() == pytest.approx([1.0, 0.2, 0.0]) and ok.tolist() == [True, False, False]


def test_overlong_shaping_is_added():
    cfg = RewardConfig(judge="exact", scheme="binary", overlong_shaping=True, overlong_max_length=10, overlong_buffer=4)
    lengths = torch.tensor([6, 8, 10, 11])
    r, _ = score_responses(["8"] * 4, ["8"] * 4, cfg, lengths)
    # 1 + R_len with R_len = 0 (<= 6), (6 - 8)/4, (6 - 10)/4, -1 (> 10)
    assert r.tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0])
    with pytest.raises(ValueError, match="lengths"):
        score_responses(["8"], ["8"], cfg)


def test_mismatched_lengths():
    with pytest.raises(ValueError, match="same length"):
        score_responses(["a"], ["a", "b"], RewardConfig())
