"""Evaluation of the trainer's policy: avg@k and pass@k on its eval set (``Trainer.evaluate`` calls
``evaluate_policy``).

Every eval prompt gets train.eval_k samples at train.eval_temperature / train.eval_top_p, of at most
train.eval_max_new_tokens tokens (0: rollout.max_new_tokens), judged like the training rewards.

Generation:
    rollout.backend = "hf"    HF generate, under a forked torch RNG seeded by ``eval_seed(train.seed, step)``
    rollout.backend = "vllm"  the trainer's vLLM engine, the one that samples the rollouts, so it serves the
                              same weights (synced when the run starts, after a resume and after every
                              optimizer phase); its max_model_len holds the evaluation's prompt + response
                              (VLLMGenerator.from_config). The evaluation's requests carry their own seeds
                              (request i: ``eval_request_seed(train.seed, step) + i``), so their samples do
                              not depend on the engine's sampling state, and the torch RNG (which vLLM's
                              samplers also draw from) is forked around the call.

Either way, evaluating never changes the training trajectory: the random numbers the training steps
draw are the same with or without evaluations.
"""
from __future__ import annotations

import torch

# request seeds of one evaluation: eval_request_seed(seed, step) + row, rows < SEED_STRIDE
SEED_STRIDE = 1 << 20


def eval_seed(seed: int, step: int) -> int:
    """The torch seed of the HF evaluation after ``step`` training steps of a run seeded ``seed``."""
    return seed * 100_003 + step


def eval_request_seed(seed: int, step: int) -> int:
    """The vLLM seed of the evaluation's first request (request i gets this + i)."""
    return eval_seed(seed, step) * SEED_STRIDE


def pass_at_k(correct: torch.Tensor) -> tuple[float, float]:
    """correct (n_prompts, k) bool -> (avg@k, pass@k): mean accuracy over all samples, and the
    fraction of prompts with at least one correct sample (the unbiased pass@k with n = k)."""
    c = correct.float()
    return float(c.mean()), float(c.max(-1).values.mean())


def eval_set_metrics(records: list[dict], correct: torch.Tensor) -> dict:
    """Per named eval set (records tagged ``"eval_set": name`` by data.load_task; eval/avg@k itself
    pools every record): {"eval/<name>/avg@k", "eval/<name>/pass@k", "eval/<name>/prompts"}.
    correct (n_prompts, k) bool, rows in the order of records."""
    k = correct.shape[1]
    names = [rec.get("eval_set") for rec in records]
    out = {}
    for name in dict.fromkeys(n for n in names if n):
        rows = torch.tensor([i for i, n in enumerate(names) if n == name])
        avg, pas = pass_at_k(correct[rows])
        out.update({f"eval/{name}/avg@{k}": avg, f"eval/{name}/pass@{k}": pas, f"eval/{name}/prompts": len(rows)})
    return out


def final_number_accuracy(texts: list[str], answers: list[str], k: int) -> float | None:
    """The share of ``texts`` (k responses per answer, answer-major) whose final number is the answer
    (rewards.number_judge), or None when some answer is not a number. Logged next to the math judge's
    accuracy (eval/final_number_avg@k): a gap is the judge crediting something else, such as a restated
    question."""
    from .rewards import number_judge, numeral_value

    if len(texts) != k * len(answers):
        raise ValueError(f"texts must hold k={k} responses per answer ({k * len(answers)}), got {len(texts)}")
    if not answers or any(numeral_value(a) is None for a in answers):
        return None
    return sum(number_judge(t, answers[i // k]) for i, t in enumerate(texts)) / len(texts)


def eval_max_new_tokens(cfg) -> int:
    """The evaluation's response length limit: train.eval_max_new_tokens, or rollout.max_new_tokens for 0."""
    return cfg.train.eval_max_new_tokens or cfg.rollout.max_new_tokens


def evaluate_policy(trainer) -> dict:
    """Evaluate ``trainer``'s policy on ``trainer.eval_set`` (module docstring); logs the record
    (kind "eval"), calls the callbacks' on_eval and returns the record: eval/avg@k, eval/pass@k,
    eval/reward_mean, eval/len_mean, eval/prompts, eval/sample, per named set eval/<name>/..., the
    judge's counters, and under the math judge with numeric answers eval/final_number_avg@k."""
    cfg = trainer.cfg
    t, k = cfg.train, cfg.train.eval_k
    max_new = eval_max_new_tokens(cfg)
    gen_fn = None
    if trainer.vllm is not None:
        engine = trainer.vllm
        if engine.syncs == 0:      # never synced (evaluate() before start()): serve the policy, not the folder's weights
            engine.sync_weights(trainer.model)
        first_seed = eval_request_seed(t.seed, trainer.step)
        gen_fn = lambda ids, am: engine(ids, am, max_new, t.eval_temperature, t.eval_top_p, seed=first_seed)  # noqa: E731
    batch = trainer.sample_responses(trainer.eval_set, k, eval_seed(t.seed, trainer.step), t.eval_temperature,
                                     t.eval_top_p, max_new, gen_fn)
    rewards, correct = trainer.score(batch, max_new)
    avg, pas = pass_at_k(correct.view(-1, k))
    rec = {"kind": "eval", "step": trainer.step, f"eval/avg@{k}": avg, f"eval/pass@{k}": pas,
           "eval/reward_mean": float(rewards.mean()), "eval/len_mean": float(batch.response_lengths.float().mean()),
           "eval/prompts": len(trainer.eval_set), "eval/sample": batch.texts[0]}
    if cfg.reward.judge == "math":
        final = final_number_accuracy(batch.texts, [r["answer"] for r in trainer.eval_set], k)
        if final is not None:
            rec[f"eval/final_number_avg@{k}"] = final
    rec.update(eval_set_metrics(trainer.eval_set, correct.view(-1, k)))
    rec.update(trainer.drain_judge_stats(prefix="eval/"))
    trainer.log.write(rec)
    trainer._emit("on_eval", rec)
    return rec
