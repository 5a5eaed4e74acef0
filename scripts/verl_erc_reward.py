"""The authors' reward for verl runs (scripts/verl_erc_1.5b.sh): ercref's math-verify judge under the
paper's scheme, +1 correct, -1 wrong, -0.5 when the response never closes its ``</think>`` (not judged),
exactly the ``gpu-paper-1.5b`` preset's reward section (data/recipes/erc_authors_1.5b.json cites the
authors' lines for each value).

verl calls ``compute_score(data_source, solution_str, ground_truth, extra_info)`` once per response
(``reward.custom_reward_function.path=<this file>``). The returned "acc" (1.0 correct, else 0.0) is what
``algorithm.filter_groups.metric=acc`` reads: the authors' dynamic sampling drops a group whose
responses all have the same accuracy.
"""
from __future__ import annotations

from ercref.lm.config import make_config
from ercref.lm.scoring import score_responses

REWARD = make_config("gpu-paper-1.5b").reward


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **_) -> dict:
    """{"score": reward, "acc": 1.0 if correct else 0.0} for one response."""
    if isinstance(ground_truth, (list, tuple)):  # some verl data sets store a list of accepted answers
        ground_truth = ground_truth[0] if ground_truth else ""
    rewards, correct = score_responses([str(solution_str)], [str(ground_truth)], REWARD)
    return {"score": float(rewards[0]), "acc": float(correct[0])}
