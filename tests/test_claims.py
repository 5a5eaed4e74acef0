"""ercref.study.claims: the symmetric verdict rules (written before any study run), their edge
cases, the t quantiles and minimum detectable effect, and the claims table on synthetic logs."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ercref.study import claims as C
from ercref.study.claims import t_cdf, t_quantile

T975_4, T80_4 = 2.7764451, 0.9409646          # t_{0.975,4}, t_{0.80,4} (published tables)


# ----------------------------------------------------------------------------- t quantiles
@pytest.mark.parametrize("p,dof,expected", [(0.975, 1, 12.7062047), (0.975, 2, 4.3026527), (0.975, 4, T975_4),
                                            (0.975, 9, 2.2621572), (0.975, 30, 2.0422725), (0.80, 1, 1.3763819),
                                            (0.80, 4, T80_4), (0.95, 7, 1.8945786)])
def test_t_quantile_matches_published_values(p, dof, expected):
    assert t_quantile(p, dof) == pytest.approx(expected, abs=2e-6)
    assert t_quantile(1 - p, dof) == pytest.approx(-expected, abs=2e-6)


def test_t_quantile_against_a_printed_table():
    # a three-decimal table (one-sided 0.80 column): df 29 -> 0.854, df 120 -> 0.845
    assert t_quantile(0.80, 29) == pytest.approx(0.854, abs=5e-4)
    assert t_quantile(0.80, 120) == pytest.approx(0.845, abs=5e-4)


@pytest.mark.parametrize("dof", [1, 2, 3, 6, 11])
def test_t_cdf_matches_integrated_density(dof):
    # independent check: trapezoid integral of the t density from 0 to x, plus 1/2
    x = np.linspace(0.0, 3.0, 30001)
    dens = math.gamma((dof + 1) / 2) / (math.sqrt(dof * math.pi) * math.gamma(dof / 2)) * (1 + x ** 2 / dof) ** (-(dof + 1) / 2)
    cum = 0.5 + np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(x))])
    for xi in (0.3, 1.0, 2.5):
        i = int(round(xi / 3.0 * 30000))
        assert t_cdf(xi, dof) == pytest.approx(cum[i], abs=1e-7)
        assert t_cdf(-xi, dof) == pytest.approx(1 - cum[i], abs=1e-7)


def test_t_quantile_rejects_bad_input():
    with pytest.raises(ValueError, match="p must be"):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="dof"):
        t_quantile(0.9, 0)


# ----------------------------------------------------------------------------- minimum detectable effect
def test_mde_formula():
    v = [0.1, -0.2, 0.3, 0.0, -0.1]
    expected = (T975_4 + T80_4) * np.std(v, ddof=1) / math.sqrt(5)
    assert C.min_detectable_effect(v) == pytest.approx(expected, rel=1e-6)
    assert C.min_detectable_effect([0.3]) == math.inf


def test_mde_has_about_80_percent_power():
    # a true effect of MDE (computed from the true sd) is detected by the two-sided t test ~80% of the time
    rng = np.random.default_rng(0)
    n, sd, reps = 8, 1.0, 4000
    mde = (t_quantile(0.975, n - 1) + t_quantile(0.80, n - 1)) * sd / math.sqrt(n)
    x = rng.normal(mde, sd, size=(reps, n))
    t = x.mean(1) / (x.std(1, ddof=1) / math.sqrt(n))
    power = float(np.mean(t > t_quantile(0.975, n - 1)))
    assert 0.72 < power < 0.86


# ----------------------------------------------------------------------------- direction_verdict / paired_verdict
UP = [1.0, 1.1, 0.9, 1.05, 0.95]           # clearly above 0
DOWN = [-v for v in UP]
MIXED = [0.3, -0.2, 0.1, -0.4, 0.25]       # interval contains 0


@pytest.mark.parametrize("direction", [1, -1])
def test_direction_verdict_three_outcomes(direction):
    good, bad = (UP, DOWN) if direction > 0 else (DOWN, UP)
    v = C.direction_verdict(good, direction)
    assert v.label == C.REPRODUCED and v.n == 5 and v.direction == direction
    assert v.mean == pytest.approx(np.mean(good)) and (v.low > 0 if direction > 0 else v.high < 0)
    assert C.direction_verdict(bad, direction).label == C.CONTRADICTED
    v = C.direction_verdict(MIXED, direction)
    assert v.label == C.INCONCLUSIVE and v.low < 0 < v.high
    assert v.mde == pytest.approx((T975_4 + T80_4) * np.std(MIXED, ddof=1) / math.sqrt(5), rel=1e-6)
    assert f"MDE {v.mde:.4g} at n=5" in str(v)


def test_direction_verdict_against_a_threshold():
    shares = [0.62, 0.58, 0.66, 0.60, 0.64]
    assert C.direction_verdict(shares, +1, null=0.5).label == C.REPRODUCED
    assert C.direction_verdict([1 - s for s in shares], +1, null=0.5).label == C.CONTRADICTED
    assert C.direction_verdict([0.45, 0.55, 0.5, 0.6, 0.4], +1, null=0.5).label == C.INCONCLUSIVE
    assert "hypothesis: > 0.5" in str(C.direction_verdict(shares, +1, null=0.5))


def test_paired_verdict_cases_and_interval():
    base = {s: 1.0 + 0.1 * s for s in range(5)}
    better = {s: base[s] + d for s, d in zip(range(5), UP)}
    v = C.paired_verdict(better, base, +1, name="acc ERC - DAPO")
    assert v.label == C.REPRODUCED and v.mean == pytest.approx(1.0)
    h = T975_4 * np.std(UP, ddof=1) / math.sqrt(5)
    assert (v.low, v.high) == pytest.approx((1.0 - h, 1.0 + h), rel=1e-6)
    assert C.paired_verdict(better, base, -1).label == C.CONTRADICTED
    noisy = {s: base[s] + d for s, d in zip(range(5), MIXED)}
    v = C.paired_verdict(noisy, base, -1)
    assert v.label == C.INCONCLUSIVE and math.isfinite(v.mde) and v.mde > 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=2, max_size=12), st.sampled_from([1, -1]))
def test_direction_verdict_is_symmetric(values, direction):
    """Negating the data and the predicted direction gives the same label; flipping only the
    direction swaps supported and contradicted."""
    a = C.direction_verdict(values, direction)
    assert C.direction_verdict([-x for x in values], -direction).label == a.label
    swap = {C.REPRODUCED: C.CONTRADICTED, C.CONTRADICTED: C.REPRODUCED, C.INCONCLUSIVE: C.INCONCLUSIVE}
    assert C.direction_verdict(values, -direction).label == swap[a.label]
    assert a.low <= a.mean <= a.high and a.mde >= 0


# ----------------------------------------------------------------------------- band_verdict
def test_band_verdict_three_outcomes():
    band = (0.10, 0.40)
    v = C.band_verdict([0.19, 0.21, 0.20, 0.22, 0.18], band, "ERC clip rate")
    assert v.label == C.REPRODUCED and v.direction == 0 and v.band == band
    assert "hypothesis: in [0.1, 0.4]" in str(v)
    assert C.band_verdict([0.80, 0.85, 0.90, 0.82, 0.88], band).label == C.CONTRADICTED   # far above
    assert C.band_verdict([0.01, 0.02, 0.015, 0.012, 0.018], band).label == C.CONTRADICTED  # far below
    v = C.band_verdict([0.3, 0.5, 0.35, 0.45, 0.4], band)                                  # straddles 0.40
    assert v.label == C.INCONCLUSIVE and "MDE" in str(v)
    with pytest.raises(ValueError, match="band"):
        C.band_verdict([0.2, 0.3], (0.4, 0.1))


# ----------------------------------------------------------------------------- edge cases
def test_one_seed_is_inconclusive_with_infinite_mde():
    for v in (C.direction_verdict([5.0], +1), C.paired_verdict({0: 9.0}, {0: 1.0}, +1), C.band_verdict([0.2], (0.1, 0.4))):
        assert v.label == C.INCONCLUSIVE and v.n == 1
        assert (v.low, v.high, v.mde) == (-math.inf, math.inf, math.inf)
        assert "MDE inf at n=1" in str(v)


def test_zero_spread_gives_a_point_interval():
    assert C.direction_verdict([0.1, 0.1, 0.1], +1).label == C.REPRODUCED
    v = C.direction_verdict([0.0, 0.0, 0.0], +1)
    assert v.label == C.INCONCLUSIVE and v.mde == 0.0


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="values contains a NaN"):
        C.direction_verdict([0.1, float("nan"), 0.2], +1)
    with pytest.raises(ValueError, match="erc contains a NaN"):
        C.paired_verdict({0: float("nan"), 1: 0.0}, {0: 0.0, 1: 0.0}, +1)
    with pytest.raises(ValueError, match="base contains a NaN or inf"):
        C.paired_verdict({0: 0.0, 1: 0.0}, {0: float("inf"), 1: 0.0}, +1)
    with pytest.raises(ValueError, match="values is empty"):
        C.direction_verdict([], +1)
    with pytest.raises(ValueError, match="direction"):
        C.direction_verdict([0.1, 0.2], 0)
    with pytest.raises(ValueError, match="null"):
        C.direction_verdict([0.1, 0.2], 1, null=float("nan"))


def test_seeds_missing_in_one_arm():
    erc, base = {0: 1.0, 1: 2.0, 2: 3.5}, {0: 0.0, 1: 1.0, 2: 2.5, 7: 9.0}
    with pytest.raises(ValueError, match=r"seeds \[7\] are in one arm only.*drop_unpaired=True"):
        C.paired_verdict(erc, base, +1)
    v = C.paired_verdict(erc, base, +1, drop_unpaired=True)
    assert v.n == 3 and v.mean == pytest.approx(1.0) and v.label == C.REPRODUCED
    assert C.paired_difference(erc, base, drop_unpaired=True) == pytest.approx((1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="share no seed"):
        C.paired_differences({0: 1.0}, {1: 1.0}, drop_unpaired=True)


def test_verdict_str_is_one_line():
    for v in (C.direction_verdict(UP, 1), C.direction_verdict(MIXED, 1), C.band_verdict([0.2, 0.21], (0.1, 0.4))):
        s = str(v)
        assert "\n" not in s and s.startswith(v.label + ":") and "95% CI, n=" in s


# ----------------------------------------------------------------------------- measures
def test_beta_at_target_rate():
    # |rho - 1| = 0.00, 0.01, ..., 0.99: 20% of the tokens have |rho - 1| >= 0.8
    rho = 1.0 + np.arange(100) / 100 * np.where(np.arange(100) % 2, 1, -1)
    b = C.beta_at_target_rate(rho, 0.2)
    assert b == pytest.approx(0.792)
    assert np.mean(np.abs(rho - 1) >= b) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="target"):
        C.beta_at_target_rate(rho, 1.0)


def test_step_to_step_std():
    assert C.step_to_step_std([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(0.0)   # a straight trend does not fluctuate
    # diffs +1, -1, +1, -1: mean 0, sample variance 4 / 3
    assert C.step_to_step_std([0.0, 1.0, 0.0, 1.0, 0.0]) == pytest.approx(math.sqrt(4 / 3))
    with pytest.raises(ValueError, match="at least 3"):
        C.step_to_step_std([1.0, float("nan"), 2.0])


# ----------------------------------------------------------------------------- the claims table
def _synthetic_logs(acc_gap: float, seeds=(0, 1, 2, 3, 4), erc_rate: float = 0.27):
    """Logs with known properties: ERC clips erc_rate at k >= 1 (0 at k = 0), PPO 0.1%; clipped
    tokens have low entropy; ERC's entropy curve is smooth and the baseline's zig-zags; accuracy
    gap acc_gap (plus per-seed noise of sd ~0.005 when acc_gap != 0)."""
    rng = np.random.default_rng(0)
    steps, mbs, evals, toks = [], [], [], []
    for s in seeds:
        for label, erc in (("B", False), ("E", True)):
            for t in range(1, 11):
                zig = 0.0 if erc else (0.3 if t % 2 else -0.3)
                steps.append({"label": label, "seed": s, "step": t, C.ENTROPY_KEY: 1.0 - 0.01 * t + zig,
                              "grad/norm": 1.0 + (0.0 if erc else 0.5 * (t % 2)) + 0.01 * rng.random()})
                for k in range(4):
                    rec = {"label": label, "seed": s, "step": t, "staleness": k, "ppo/clip_frac_low": 0.0005,
                           "ppo/clip_frac_high": 0.0005}
                    if erc:
                        rec["erc/clip_frac"] = 0.0 if k == 0 else erc_rate
                    mbs.append(rec)
            noise = 0.005 * (s % 2) if (erc and acc_gap) else 0.0
            acc = 0.5 + (acc_gap + noise if erc else 0.0) + 0.01 * s
            evals += [{"label": label, "seed": s, "step": 0, "eval/avg@2": 0.3},
                      {"label": label, "seed": s, "step": 10, "eval/avg@2": acc}]
            for i in range(200):
                h = float(rng.uniform(0, 2))
                toks.append({"label": label, "seed": s, "old_entropy": h, "clipped": h < 0.3 and i % 2 == 0})
    return pd.DataFrame(steps), pd.DataFrame(mbs), pd.DataFrame(evals), pd.DataFrame(toks)


def _verdicts(table):
    return dict(zip(table["claim"], table["verdict"]))


def test_claims_table_reproduced_when_the_logs_show_the_claims():
    table, n = C.claims_table(*_synthetic_logs(acc_gap=0.1), erc="E", base="B")
    assert set(table.columns) == {"claim", "measure", "ERC", "baseline", "verdict", "detail", "note"}
    assert n["erc_clip_all"][0] == pytest.approx(0.75 * 0.27)
    assert n["low_entropy_share"][0] == pytest.approx(1.0)
    assert set(table["verdict"]) == {C.REPRODUCED}, table[["claim", "detail"]].to_string()
    for claim, v in n["verdicts"].items():     # the table's label is the Verdict's, recomputable from the seeds
        assert _verdicts(table)[claim] == v.label and v.n == 5
    again = C.paired_verdict(n["seeds/acc_erc"], n["seeds/acc_base"], +1)
    assert again.label == n["verdicts"]["4. accuracy improves"].label


def test_claims_table_contradicted_when_the_logs_show_the_opposite():
    steps, mbs, evals, toks = _synthetic_logs(acc_gap=-0.2, erc_rate=0.95)
    swapped = steps.assign(label=steps["label"].map({"E": "B", "B": "E"}))        # ERC's curves zig-zag now
    toks = toks.assign(old_entropy=2.0 - toks["old_entropy"])                     # clipped tokens are high-entropy
    table, n = C.claims_table(swapped, mbs, evals, toks, erc="E", base="B")
    v = _verdicts(table)
    assert n["acc_diff"][0] == pytest.approx(-0.2, abs=0.01)
    for claim in ("1a. ERC clips ~20% of tokens (band [10%, 40%])", "2. ERC-clipped tokens are mostly low-entropy",
                  "3. entropy curve fluctuates less", "3. grad norm curve fluctuates less", "4. accuracy improves"):
        assert v[claim] == C.CONTRADICTED, (claim, table.set_index("claim").loc[claim, "detail"])


def test_claims_table_inconclusive_reports_the_mde():
    table, n = C.claims_table(*_synthetic_logs(acc_gap=0.0), erc="E", base="B")   # identical accuracies
    row = table.set_index("claim").loc["4. accuracy improves"]
    assert row["verdict"] == C.INCONCLUSIVE and "MDE" in row["detail"]
    # too few seeds: one seed gives inconclusive everywhere, MDE inf
    table, _ = C.claims_table(*_synthetic_logs(acc_gap=0.1, seeds=(0,)), erc="E", base="B")
    assert set(table["verdict"]) == {C.INCONCLUSIVE} and table["detail"].str.contains("MDE inf at n=1").all()


def test_claims_table_ppo_ratio_is_tested_without_division():
    steps, mbs, evals, toks = _synthetic_logs(acc_gap=0.1)
    mbs = mbs.assign(**{"ppo/clip_frac_low": 0.05, "ppo/clip_frac_high": 0.05})   # PPO 10% vs ERC ~20%: ratio 0.5
    v = _verdicts(C.claims_table(steps, mbs, evals, toks, erc="E", base="B")[0])
    assert v["1b. PPO-clip clips < 0.1 x ERC's tokens"] == C.CONTRADICTED
    with pytest.raises(ValueError, match="max_ratio"):
        C.claims_table(steps, mbs, evals, toks, erc="E", base="B", max_ratio=2.0)


def test_claims_table_and_stability_read_the_same_entropy_curve():
    """Claim 3's entropy fluctuation is stability.entropy_volatility of the same run (one key, one rule)."""
    import inspect

    from ercref.study import stability

    assert inspect.signature(stability.entropy_volatility).parameters["key"].default == C.ENTROPY_KEY
    assert C.ENTROPY_KEY == "entropy/old_mean"           # the rollout policy's entropy, as the paper's curves
    steps, mbs, evals, toks = _synthetic_logs(acc_gap=0.1)
    steps = steps.assign(**{"entropy/new_mean": 5.0})    # a flat update-forward entropy must not be the one read
    _, n = C.claims_table(steps, mbs, evals, toks, erc="E", base="B")
    for label, arm in (("E", "erc"), ("B", "base")):
        for s, g in steps[steps["label"] == label].groupby("seed"):
            rows = [{"kind": "step", **r} for r in g.to_dict("records")]
            assert n[f"seeds/fluct_entropy_{arm}"][s] == pytest.approx(stability.entropy_volatility(rows))
    assert n["seeds/fluct_entropy_base"][0] > 0.1 > n["seeds/fluct_entropy_erc"][0]


def test_claims_table_without_tokens_says_claim_2_is_not_measured():
    steps, mbs, evals, toks = _synthetic_logs(acc_gap=0.1)
    table, n = C.claims_table(steps, mbs, evals, None, erc="E", base="B")
    with_tokens, _ = C.claims_table(steps, mbs, evals, toks, erc="E", base="B")
    row = table.set_index("claim").loc["2. ERC-clipped tokens are mostly low-entropy"]
    assert row["verdict"] == C.NOT_MEASURED and "tokens=None" in row["detail"]
    assert "2. ERC-clipped tokens are mostly low-entropy" not in n["verdicts"] and "low_entropy_share" not in n
    others = table[table["verdict"] != C.NOT_MEASURED]
    assert len(others) == len(with_tokens) - 1 and set(others["verdict"]) == {C.REPRODUCED}
    pd.testing.assert_frame_equal(others.reset_index(drop=True),
                                  with_tokens[with_tokens["claim"] != row.name].reset_index(drop=True))
