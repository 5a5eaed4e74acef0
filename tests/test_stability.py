"""ercref.study.stability: per-run stability measures on synthetic engine logs with known answers,
plus one real cpu-tiny log written by the engine."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ercref.study import stability as S
from ercref.study.claims import step_to_step_std


def _log(entropy, grad=None, distinct=None, K=2, update_norm=None, evals=((0, 0.1), (10, 0.4)), erc=True):
    """rows in the engine's log format: per step, K minibatch rows then one step row; eval rows."""
    rows = [{"kind": "sft", "sft_step": 0, "sft/loss": 3.0}]
    rows += [{"kind": "eval", "step": s, "eval/avg@4": a, "eval/pass@4": min(1.0, 2 * a)} for s, a in evals]
    g = iter(grad) if grad is not None else None
    for t, h in enumerate(entropy, start=1):
        for k in range(K):
            mb = {"kind": "minibatch", "step": t, "staleness": k, "grad/norm": next(g) if g else 1.0,
                  "ppo/clip_frac_low": 0.001 * k, "ppo/clip_frac_high": 0.001}
            if erc:
                mb["erc/clip_frac"] = 0.1 * k
            if update_norm is not None:
                mb["optim/update_norm"] = update_norm[(t - 1) * K + k]
            rows.append(mb)
        st = {"kind": "step", "step": t, "entropy/old_mean": h, "grad/norm": 1.0}
        if distinct is not None:
            st["rollout/distinct_frac"] = distinct[t - 1]
        rows.append(st)
    return rows


def test_entropy_volatility_is_the_std_of_step_changes():
    h = [1.0, 0.8, 1.1, 0.7, 1.0, 0.9]
    assert S.entropy_volatility(_log(h)) == pytest.approx(np.diff(h).std(ddof=1))
    assert S.entropy_volatility(_log(h)) == step_to_step_std(h)
    assert S.entropy_volatility(_log([1.0, 0.9, 0.8, 0.7])) == pytest.approx(0.0, abs=1e-12)   # steady decline
    rows = _log(h)[::-1]                                                    # order in the file does not matter
    assert S.entropy_volatility(rows) == pytest.approx(np.diff(h).std(ddof=1))
    with pytest.raises(ValueError, match="at least 3"):
        S.entropy_volatility(_log([1.0, 0.9]))
    with pytest.raises(ValueError, match="entropy/old_mean"):
        S.entropy_volatility([{"kind": "step", "step": 1}])


def test_grad_norm_spikes_count_against_the_running_median():
    g = [1.0] * 6 + [3.5] + [1.0] * 3 + [2.9] + [10.0]      # 3.5 and 10 exceed 3 x median 1; 2.9 does not
    rows = _log([1.0] * 6, grad=g, K=2)
    assert S.grad_norm_spikes(rows) == 2
    assert S.grad_norm_spikes(rows, k=2.5) == 3
    assert S.grad_norm_spikes(rows, k=4.0) == 1
    # the first min_history minibatches only build the history: a huge first value is no spike
    assert S.grad_norm_spikes(_log([1.0] * 3, grad=[50.0, 1, 1, 1, 1, 1], K=2)) == 0
    assert S.grad_norm_spikes(_log([1.0] * 3, grad=[1, 1, 1, 1, 1, 9.0], K=2), min_history=5) == 1
    # a non-finite norm is a spike and stays out of the median
    assert S.grad_norm_spikes(_log([1.0] * 4, grad=[1.0] * 5 + [math.nan, 1.0, 3.5], K=2)) == 2
    # a window forgets old history: after a long run at 10, norms of 1 then 4 are a spike only within the window
    g = [10.0] * 20 + [1.0] * 5 + [4.0]
    assert S.grad_norm_spikes(_log([1.0] * 13, grad=g, K=2)) == 0
    assert S.grad_norm_spikes(_log([1.0] * 13, grad=g, K=2), window=5) == 1
    with pytest.raises(ValueError, match="k must be > 1"):
        S.grad_norm_spikes(rows, k=1.0)
    with pytest.raises(ValueError, match="window"):
        S.grad_norm_spikes(rows, window=2)


def test_collapse_step_by_entropy_or_diversity():
    h = [1.0, 0.8, 0.5, 0.04, 0.02]
    assert S.collapse_step(_log(h)) == 4
    assert S.collapse_step(_log(h), entropy_min=0.6) == 3
    assert S.collapse_step(_log([1.0, 0.9, 0.8])) is None
    d = [0.9, 0.5, 0.08, 0.05, 0.05]                      # diversity collapses at step 3, entropy at step 4
    assert S.collapse_step(_log(h, distinct=d)) == 4      # default: entropy only (see the module docstring)
    assert S.collapse_step(_log(h, distinct=d), distinct_min=0.1) == 3
    assert S.collapse_step(_log(h, distinct=d), distinct_min=0.01) == 4
    assert S.collapse_step(_log([1.0] * 5, distinct=[1.0, 1.0, 1.0, 1.0, 0.09])) is None
    assert S.collapse_step(_log([1.0] * 5, distinct=[1.0, 1.0, 1.0, 1.0, 0.09]), distinct_min=0.1) == 5


def test_final_accuracy_clip_by_staleness_and_update_norm():
    rows = _log([1.0, 0.9, 0.8], K=3, update_norm=[0.1 * i for i in range(9)])
    assert S.final_accuracy(rows) == 0.4                  # the eval at the largest step
    assert S.start_accuracy(rows) == 0.1                  # ... and at the smallest
    assert S.final_accuracy(rows, key="eval/pass@4") == 0.8
    assert S.final_accuracy(_log([1.0], evals=())) is None
    by_k = S.clip_by_staleness(rows)
    assert list(by_k) == [0, 1, 2]
    assert by_k[2] == pytest.approx((0.2, 0.003))
    assert S.mean_update_norm(rows) == pytest.approx(0.4)
    assert S.mean_update_norm(_log([1.0, 0.9])) is None
    assert all(math.isnan(e) for e, _ in S.clip_by_staleness(_log([1.0, 0.9], erc=False)).values())


def test_run_summary_keys_and_values():
    h = [1.0, 0.8, 1.1, 0.02]
    s = S.run_summary(_log(h, grad=[1.0] * 7 + [5.0], update_norm=[0.5] * 8))
    assert s["steps"] == 4 and s["collapse_step"] == 4 and s["grad_spikes"] == 1
    assert s["entropy_volatility"] == pytest.approx(np.diff(h).std(ddof=1))
    assert s["final_accuracy"] == 0.4 and s["update_norm"] == pytest.approx(0.5)
    assert s["erc_clip_k1"] == pytest.approx(0.1) and s["ppo_clip_k0"] == pytest.approx(0.001)
    assert S.run_summary(_log(h), entropy_min=0.001)["collapse_step"] is None
    with pytest.raises(ValueError, match="no 'step' record"):
        S.run_summary([{"kind": "eval", "step": 0, "eval/avg@4": 0.1}])


def test_run_summary_of_a_real_engine_log(tmp_path):
    from ercref.lm.config import make_config
    from ercref.lm.metrics_log import read_log
    from ercref.lm.trainer import run

    cfg = make_config("cpu-tiny", overrides={"train.steps": 4, "train.plot": False, "train.progress": False,
                                   "sft.steps": 20, "rollout.prompts_per_step": 4, "data.num_eval": 8})
    run(cfg, tmp_path, overwrite=True)
    s = S.run_summary(read_log(tmp_path / "metrics.jsonl"))
    assert s["steps"] == 4 and s["entropy_volatility"] >= 0 and isinstance(s["grad_spikes"], int)
    assert 0 <= s["final_accuracy"] <= 1 and s["erc_clip_k0"] == 0.0     # on-policy: rho = 1 exactly
    assert s["update_norm"] is None or s["update_norm"] > 0


def test_zero_gradient_minibatches_are_neither_spikes_nor_history():
    # after a collapse the norm is exactly 0 (no advantage): the median must not fall to 0
    norms = [1.0, 1.1, 0.9, 1.0, 1.05, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.2, 0.0, 0.95, 5.0]
    rows = [{"kind": "minibatch", "step": i + 1, "staleness": 0, "grad/norm": g} for i, g in enumerate(norms)]
    assert S.grad_norm_spikes(rows, k=3, min_history=5) == 1          # only the 5.0


def test_minibatches_without_policy_gradient_signal_are_skipped():
    # KL / entropy-bonus runs: after a collapse most minibatches carry only the auxiliary gradient
    # (small, never 0); they must not set the median, or every policy-gradient minibatch is a "spike"
    rows = []
    for i in range(60):
        silent = i >= 10 and i % 3 != 0
        g = 0.01 if silent else 1.0 + 0.1 * (i % 2)
        rows.append({"kind": "minibatch", "step": i + 1, "staleness": 0, "grad/norm": g,
                     "grad/zero_frac": 1.0 if silent else 0.4})
    assert S.grad_norm_spikes(rows) == 0
    rows[-1]["grad/norm"], rows[-1]["grad/zero_frac"] = 9.0, 0.2      # one real spike
    assert S.grad_norm_spikes(rows) == 1
    no_key = [{k: v for k, v in r.items() if k != "grad/zero_frac"} for r in rows]
    assert S.grad_norm_spikes(no_key) >= 5                          # without the signal metric: the old artefact
