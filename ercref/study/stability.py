"""Per-run stability measures, read from one run's engine log (ercref.lm.metrics_log.read_log rows:
kinds "step", "minibatch", "eval"; other kinds are ignored). One number per run, so the study can
compare arms per seed with ercref.study.claims.

    entropy_volatility(rows)   std of the step-to-step change of entropy/old_mean (claims.step_to_step_std)
    grad_norm_spikes(rows)     minibatches whose grad/norm > k x median of the previous minibatches' norms
                               (minibatches without a policy-gradient signal skipped)
    collapse_step(rows)        first step whose entropy/old_mean < entropy_min (optionally also:
                               rollout/distinct_frac < distinct_min) (None: never)
    final_accuracy(rows)       the last evaluation's eval/avg@k (None: no evaluation); start_accuracy the first
    clip_by_staleness(rows)    {k: (mean ERC clip fraction, mean PPO-clip fraction low + high)} over
                               the minibatches with staleness k
    mean_update_norm(rows)     mean ||theta_after - theta_before||_2 per optimizer step (optim/update_norm;
                               None when the log has none)
    run_summary(rows)          all of the above in one flat dict

Thresholds (named parameters, defaults):
    spike_k = 3.0          a grad-norm spike is a minibatch with norm > 3 x the running median of all
                           earlier minibatches (``spike_window`` = None) or of the last spike_window;
                           the first ``spike_min_history`` (= 5) minibatches only build the history.
                           A non-finite norm always counts as a spike (and stays out of the median).
    entropy_min = 0.05     nats per token; below it the top token holds roughly >= 99 % of the mass,
                           i.e. sampling is nearly greedy.
    distinct_min = None    answer diversity is off by default. rollout/distinct_frac is over the whole
                           batch, so a *correct* consistent policy scores low: 16 single-digit sums x 8
                           samples have ~10 distinct answers of 128 (0.08), under any useful threshold.
                           The event it was meant to catch, every response of the batch identical,
                           comes with entropy < 0.05 in the committed tiny-stability-map cache (most
                           runs with either event show both, about a step apart), so the entropy rule
                           alone is the default. Pass distinct_min to add it.

Measures only: no math of the method is defined here.
"""
from __future__ import annotations

import math

import numpy as np

from ercref.study.claims import step_to_step_std

SPIKE_K, SPIKE_MIN_HISTORY, ENTROPY_MIN, DISTINCT_MIN = 3.0, 5, 0.05, None


def _kind(rows, kind: str) -> list[dict]:
    out = [r for r in rows if r.get("kind") == kind]
    return sorted(out, key=lambda r: (r["step"], r.get("staleness", 0)))


def _col(recs: list[dict], key: str) -> np.ndarray:
    return np.array([r.get(key, math.nan) for r in recs], dtype=float)


def entropy_volatility(rows, key: str = "entropy/old_mean") -> float:
    """std(ddof=1) over steps of H[t+1] - H[t], H = ``key`` of the step rows (needs >= 3 steps)."""
    steps = _kind(rows, "step")
    if not any(key in r for r in steps):
        raise ValueError(f"no step row has {key!r}; is this an engine log (kind='step' rows)?")
    return step_to_step_std(_col(steps, key))


def grad_norm_spikes(rows, k: float = SPIKE_K, min_history: int = SPIKE_MIN_HISTORY, window: int | None = None,
                     key: str = "grad/norm", signal_key: str = "grad/zero_frac") -> int:
    """Count of minibatches i (in (step, staleness) order) with g_i > k * median(g_j, j < i) over the
    finite earlier norms of minibatches with a policy-gradient signal (the last ``window`` of them
    when given), once >= ``min_history`` exist. A non-finite g_i is a spike.

    A minibatch without a policy-gradient signal is neither a spike nor history: its norm is exactly
    0, or its ``signal_key`` (the share of response tokens whose policy-loss gradient is exactly 0;
    1 when every advantage in it is 0 or ERC clipped every token) is >= 1. Its norm then comes only
    from the auxiliary terms (positive NLL, KL, entropy bonus): after a collapse such minibatches
    are most of a run, and counting them would put the median at the auxiliary gradient's scale and
    call almost every ordinary policy-gradient minibatch a spike."""
    if not k > 1:
        raise ValueError(f"spike k must be > 1 (a spike is k x the running median), got {k!r}")
    if not (isinstance(min_history, int) and min_history >= 1):
        raise ValueError(f"min_history must be an int >= 1, got {min_history!r}")
    if window is not None and not (isinstance(window, int) and window >= min_history):
        raise ValueError(f"window must be None or an int >= min_history ({min_history}), got {window!r}")
    recs = _kind(rows, "minibatch")
    g, no_signal = _col(recs, key), _col(recs, signal_key) >= 1   # NaN (metric absent) -> signal assumed
    history, spikes = [], 0
    for x, silent in zip(g, no_signal):
        if not math.isfinite(x):
            spikes += 1
            continue
        if x == 0 or silent:
            continue
        past = history if window is None else history[-window:]
        if len(past) >= min_history and x > k * float(np.median(past)):
            spikes += 1
        history.append(x)
    return spikes


def collapse_step(rows, entropy_min: float = ENTROPY_MIN, distinct_min: float | None = DISTINCT_MIN,
                  entropy_key: str = "entropy/old_mean", distinct_key: str = "rollout/distinct_frac") -> int | None:
    """First step with ``entropy_key`` < entropy_min, or (when ``distinct_min`` is given)
    ``distinct_key`` < distinct_min (a metric absent from a row is not tested there); None when no
    step meets either."""
    for r in _kind(rows, "step"):
        h, d = r.get(entropy_key, math.nan), r.get(distinct_key, math.nan)
        if (math.isfinite(h) and h < entropy_min) or (distinct_min is not None and math.isfinite(d) and d < distinct_min):
            return int(r["step"])
    return None


def _eval_accuracy(rows, key: str | None, index: int) -> float | None:
    evals = _kind(rows, "eval")
    if not evals:
        return None
    if key is None:
        key = next((c for r in evals for c in r if c.startswith("eval/avg@")), None)
        if key is None:
            raise ValueError("the eval rows carry no eval/avg@k; pass key=")
    have = [r for r in evals if key in r]
    return float(have[index][key]) if have else None


def final_accuracy(rows, key: str | None = None) -> float | None:
    """``key`` (default: the first eval/avg@k of the log) of the evaluation with the largest step;
    None when the log has no evaluation."""
    return _eval_accuracy(rows, key, -1)


def start_accuracy(rows, key: str | None = None) -> float | None:
    """The same for the evaluation with the smallest step (before training when it ran at step 0)."""
    return _eval_accuracy(rows, key, 0)


def clip_by_staleness(rows) -> dict[int, tuple[float, float]]:
    """{k: (mean erc/clip_frac, mean ppo/clip_frac_low + ppo/clip_frac_high)} over minibatches of
    staleness k (NaN where the log has no such metric, e.g. ERC off)."""
    out: dict[int, list] = {}
    for r in _kind(rows, "minibatch"):
        ppo = r.get("ppo/clip_frac_low", math.nan) + r.get("ppo/clip_frac_high", math.nan)
        out.setdefault(int(r["staleness"]), []).append((r.get("erc/clip_frac", math.nan), ppo))
    return {k: tuple(float(np.mean(c)) for c in zip(*v)) for k, v in sorted(out.items())}


def mean_update_norm(rows, key: str = "optim/update_norm") -> float | None:
    """Mean of ``key`` over minibatch rows (one per optimizer step); None when no row has it."""
    u = _col([r for r in _kind(rows, "minibatch") if key in r], key)
    return float(u.mean()) if u.size else None


def run_summary(rows, spike_k: float = SPIKE_K, spike_min_history: int = SPIKE_MIN_HISTORY,
                spike_window: int | None = None, entropy_min: float = ENTROPY_MIN,
                distinct_min: float | None = DISTINCT_MIN, acc_key: str | None = None) -> dict:
    """One flat dict per run: steps, entropy_volatility, grad_spikes, collapse_step (None: never),
    start_accuracy, final_accuracy, update_norm (None when not logged), erc_clip_k{k} and ppo_clip_k{k} per staleness."""
    rows = list(rows)
    steps = _kind(rows, "step")
    if not steps:
        raise ValueError("rows has no 'step' record; pass the rows of read_log(path) of one engine run")
    out = {
        "steps": int(steps[-1]["step"]),
        "entropy_volatility": entropy_volatility(rows),
        "grad_spikes": grad_norm_spikes(rows, spike_k, spike_min_history, spike_window),
        "collapse_step": collapse_step(rows, entropy_min, distinct_min),
        "start_accuracy": start_accuracy(rows, acc_key),
        "final_accuracy": final_accuracy(rows, acc_key),
        "update_norm": mean_update_norm(rows),
    }
    for k, (erc, ppo) in clip_by_staleness(rows).items():
        out[f"erc_clip_k{k}"], out[f"ppo_clip_k{k}"] = erc, ppo
    return out
