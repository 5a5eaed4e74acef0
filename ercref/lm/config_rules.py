"""The rules between sections of a run's config, checked when a ``Config`` is built (each section
checks its own fields; ercref.lm.config_tools). Each rule raises ValueError naming the fields
involved and what would be valid, so a config that cannot give a meaningful run is refused before
any model is built."""
from __future__ import annotations

from typing import Any

# the synthetic tasks (ercref.lm.data.SYNTHETIC_TASKS) by the form of their answers
LETTER_TASKS = ("mc-arith",)               # a letter A-D
NUMBER_TASKS = ("arith", "word", "max")    # a number


def longest_rows(cfg: Any) -> dict[str, int]:
    """{token budget field: tokens of the longest row it must hold} (prompt + the most new tokens)."""
    d, r, t = cfg.data, cfg.rollout, cfg.train
    return {"rollout.max_tokens_per_generate": d.max_prompt_tokens + max(r.max_new_tokens, t.eval_max_new_tokens),
            "rollout.max_tokens_per_logprob": d.max_prompt_tokens + r.max_new_tokens,
            "train.max_tokens_per_forward": d.max_prompt_tokens + r.max_new_tokens}


def check_token_budgets(cfg: Any) -> None:
    """A token budget (> 0) must hold one longest row; ValueError naming the budget's field."""
    for name, longest in longest_rows(cfg).items():
        section, key = name.split(".")
        budget = getattr(getattr(cfg, section), key)
        if budget and budget < longest:
            raise ValueError(
                f"{name}={budget} cannot hold one longest row of {longest} tokens (data.max_prompt_tokens "
                f"{cfg.data.max_prompt_tokens} + max new tokens); raise it to at least {longest} (0: no limit) or "
                "lower data.max_prompt_tokens / the max new tokens")


def check_overlong_buffer(cfg: Any) -> None:
    """With overlong shaping, L_max - L_buf >= 0 at every length limit the rewards are scored under."""
    r = cfg.reward
    if not r.overlong_shaping:
        return
    limits = [r.overlong_max_length] if r.overlong_max_length else [
        cfg.rollout.max_new_tokens, cfg.train.eval_max_new_tokens or cfg.rollout.max_new_tokens]
    if r.overlong_buffer > min(limits):
        raise ValueError(f"reward.overlong_buffer ({r.overlong_buffer}) must be at most the length limit it "
                         f"ends at ({min(limits)}: reward.overlong_max_length, or else rollout.max_new_tokens "
                         "and train.eval_max_new_tokens); lower it or raise the limit")


def check_dynamic_sampling(cfg: Any) -> None:
    """Dynamic sampling must be able to fill a step: advantage.max_gen_batches rounds of
    advantage.gen_batch_prompts prompts hold at least rollout.prompts_per_step groups."""
    a, n = cfg.advantage, cfg.rollout.prompts_per_step
    if a.dynamic_sampling and a.gen_batch_prompts and a.gen_batch_prompts * a.max_gen_batches < n:
        raise ValueError(
            f"advantage.gen_batch_prompts ({a.gen_batch_prompts}) x advantage.max_gen_batches ({a.max_gen_batches}) "
            f"prompts can never fill rollout.prompts_per_step ({n}) groups, even if every group is kept: every step "
            f"would train on fewer prompts. Raise gen_batch_prompts to at least {-(-n // a.max_gen_batches)}, raise "
            "max_gen_batches, or set gen_batch_prompts=0 (rollout.prompts_per_step per round)")


def check_judge_task(cfg: Any) -> None:
    """The choice judge reads a letter A-D: a synthetic task that answers with a number would score
    every response as wrong (no reward signal)."""
    task, judge = cfg.data.task, cfg.reward.judge
    if judge == "choice" and task in NUMBER_TASKS:
        raise ValueError(f"reward.judge='choice' reads a letter A-D, but data.task={task!r} answers with a number, "
                         "so every response would score as wrong; use reward.judge='exact' (or 'number') for it, or "
                         f"a multiple-choice task ({', '.join(LETTER_TASKS)})")


def judge_task_caveat(cfg: Any) -> str | None:
    """What the Trainer warns about (a config that is valid but rewards the wrong thing), or None: the
    math judge on a synthetic computation task credits restating the question, since math-verify finds
    the expression "48+64" equal to the answer 112."""
    if cfg.reward.judge == "math" and cfg.data.task == "arith":
        return (f"reward.judge='math' on data.task={cfg.data.task!r}: math-verify credits a response that restates "
                "the question's expression ('48+64 is ...' equals 112), and RL learns to do that; "
                "reward.judge='number' reads the response's final number instead")
    return None


def check_reward_order(cfg: Any) -> None:
    """A correct answer earns more than a wrong one: with reward.correct <= reward.wrong the advantages
    push the policy away from correct answers (or, equal, carry no signal at all)."""
    r = cfg.reward
    if r.correct <= r.wrong:
        raise ValueError(f"reward.correct ({r.correct:g}) must be greater than reward.wrong ({r.wrong:g}): "
                         "otherwise RL rewards wrong answers (or, equal, learns nothing from the judge)")


MAX_SYNTHETIC_RECORDS = 1_000_000   # generated in memory when the Trainer is built, before the memory planner runs


def check_synthetic_size(cfg: Any) -> None:
    """A synthetic task is generated in memory, record by record, when the run is built: a count far
    beyond any run's needs (e.g. data.num_eval=10**9) would stall or exhaust memory before any check."""
    d = cfg.data
    if d.task not in LETTER_TASKS + NUMBER_TASKS:
        return
    for name in ("num_train", "num_eval"):
        n = getattr(d, name)
        if n > MAX_SYNTHETIC_RECORDS:
            raise ValueError(f"data.{name}={n} asks for more generated {d.task!r} records than the "
                             f"{MAX_SYNTHETIC_RECORDS:,} a synthetic task may generate in memory; lower it (a run "
                             "draws rollout.prompts_per_step prompts per step; evaluation reads data.num_eval)")


def check_rules(cfg: Any) -> None:
    """Every rule between sections, in order; the first broken one raises."""
    if cfg.rollout.prompts_per_step % cfg.train.minibatch_prompts:
        raise ValueError(
            f"train.minibatch_prompts ({cfg.train.minibatch_prompts}) must divide rollout.prompts_per_step "
            f"({cfg.rollout.prompts_per_step}): the rollout batch is split into equal minibatches")
    for rule in (check_token_budgets, check_overlong_buffer, check_dynamic_sampling, check_judge_task,
                 check_reward_order, check_synthetic_size):
        rule(cfg)
