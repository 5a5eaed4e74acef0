"""ercref.study.verdict_rules: one test per rule (each fails if its rule is removed), the wording,
the tally and bad input."""
from __future__ import annotations

import pytest

from ercref.study import claims
from ercref.study import verdict_rules as vr

SEEDS = range(5)
OTHER = {s: 1.0 for s in SEEDS}
LOWER = {s: 0.8 - 0.01 * s for s in SEEDS}        # ERC lower than the other arm in every seed
HIGHER = {s: 1.2 + 0.01 * s for s in SEEDS}
MIXED = {s: 1.0 + d for s, d in zip(SEEDS, (0.3, -0.2, 0.1, -0.4, 0.25))}


def test_rule1_k1_is_not_a_test_even_when_the_numbers_would_give_a_verdict():
    assert vr.erc_can_act(1) and vr.erc_can_act(15) and not vr.erc_can_act(0)
    j = vr.judge(LOWER, OTHER, -1, erc_can_act=vr.erc_can_act(0))
    assert j.label == vr.NOT_A_TEST == "not a test (identical by construction)"
    assert j.status == vr.IDENTICAL and j.verdict is None and not j.counted and j.n == 5
    assert vr.judge(LOWER, OTHER, -1, erc_can_act=True).label == vr.SUPPORTED


def test_rule2_fewer_than_five_paired_seeds_get_no_verdict():
    four = {s: LOWER[s] for s in range(4)}
    j = vr.judge(four, {s: 1.0 for s in range(4)}, -1)
    assert j.label == "too few seeds (4)" == vr.too_few_seeds(4) and j.status == vr.FEW_SEEDS and not j.counted
    # unpaired seeds do not count: 5 ERC seeds, 4 of them paired
    assert vr.judge(LOWER, {s: 1.0 for s in range(4)}, -1, drop_unpaired=True).label == vr.too_few_seeds(4)
    assert vr.judge(LOWER, OTHER, -1).label == vr.SUPPORTED and vr.MIN_PAIRED_SEEDS == 5


def test_rule3_no_accuracy_verdict_unless_the_reference_learned():
    flat = {s: [0.10, 0.12, 0.11, 0.13] for s in SEEDS}
    gain = vr.learning_gain(flat)
    assert gain == pytest.approx(0.03) and not vr.learned(gain)
    j = vr.judge(HIGHER, OTHER, +1, accuracy=True, learning_gain=gain, reference="DAPO")
    assert j.label == "no verdict (DAPO did not learn)" and j.status == vr.NOT_LEARNED and not j.counted
    assert "+0.030 < +0.10" in j.reason
    rising = {s: [0.10, 0.30, 0.25] for s in SEEDS}
    assert vr.learned(vr.learning_gain(rising))
    assert vr.judge(HIGHER, OTHER, +1, accuracy=True, learning_gain=vr.learning_gain(rising)).label == vr.SUPPORTED
    # the rule is for accuracy measures only: a stability measure needs no learning
    assert vr.judge(HIGHER, OTHER, +1, accuracy=False, learning_gain=gain).label == vr.SUPPORTED


def test_rule3_learning_gain_is_the_seed_mean_curve_best_minus_first():
    # each seed peaks once at a different evaluation (+0.2): per-seed peaks would say +0.2, the
    # seed-mean curve rises by 0.2 / 3 at most
    curves = {s: [0.1, 0.1, 0.1, 0.1] for s in range(3)}
    for s in range(3):
        curves[s][s + 1] = 0.3
    assert vr.learning_gain(curves) == pytest.approx(0.2 / 3) and not vr.learned(vr.learning_gain(curves))
    # learned then collapsed: the best evaluation counts, not the last
    assert vr.learning_gain({0: [0.1, 0.4, 0.0], 1: [0.1, 0.3, 0.0]}) == pytest.approx(0.25)
    assert vr.learned(0.10) and not vr.learned(0.0999)
    with pytest.raises(ValueError, match=r"same number \(>= 2\) of evaluations"):
        vr.learning_gain({0: [0.1, 0.2], 1: [0.1]})
    with pytest.raises(ValueError, match=r"curves\[1\] holds a NaN"):
        vr.learning_gain({0: [0.1, 0.2], 1: [0.1, float("nan")]})


def test_rule4_the_hypothesis_wording_supported_not_supported_contradicted():
    assert vr.judge(LOWER, OTHER, -1).label == "supported"
    assert vr.judge(HIGHER, OTHER, -1).label == "contradicted"
    j = vr.judge(MIXED, OTHER, -1, name="entropy volatility: DAPO+ERC - DAPO")
    assert j.label == "not supported" and j.counted
    text = str(j)
    assert "hypothesis: < 0" in text and "MDE" in text and "paper" not in text and "reproduced" not in text
    assert j.verdict == claims.paired_verdict(MIXED, OTHER, -1, "entropy volatility: DAPO+ERC - DAPO")
    # one-sample (a share against 0.5) and a band
    assert vr.judge({s: 0.8 for s in SEEDS}, None, +1, null=0.5).label == vr.SUPPORTED
    band = vr.judge({s: 0.2 + 0.01 * s for s in SEEDS}, band=(0.1, 0.4))
    assert band.label == vr.SUPPORTED and band.status == vr.VERDICT and not band.counted   # a description


def test_rule5_primary_or_exploratory_is_printed():
    assert vr.judge(LOWER, OTHER, -1).role == vr.EXPLORATORY and str(vr.judge(LOWER, OTHER, -1)).startswith("[exploratory]")
    p = vr.judge(LOWER, OTHER, -1, primary=True)
    assert p.role == vr.PRIMARY and str(p).startswith("[primary] supported")
    assert str(vr.judge(LOWER, OTHER, -1, erc_can_act=False, primary=True)).startswith("[primary] not a test")


def test_rule6_tally_prints_the_count_expected_by_chance():
    js = [vr.judge(LOWER, OTHER, -1), vr.judge(MIXED, OTHER, -1), vr.judge(HIGHER, OTHER, -1, primary=True),
          vr.judge(LOWER, OTHER, -1, erc_can_act=False), vr.judge({0: 1.0}, {0: 2.0}, -1),
          vr.judge(HIGHER, OTHER, +1, accuracy=True, learning_gain=0.0),
          vr.judge({s: 0.2 for s in SEEDS}, band=(0.1, 0.4))]
    assert vr.expected_by_chance(40) == pytest.approx(2.0) and vr.expected_by_chance(3, alpha=0.1) == pytest.approx(0.3)
    line = vr.tally(js)
    assert line.startswith("Of 3 tests (1 primary, 2 exploratory): 1 supported, 1 not supported, 1 contradicted; "
                           "about 0.15 would exclude 0 by chance alone if no arm differed (0.05 x 3 tests")
    assert ("Not counted: 1 not a test (identical by construction, K = 1); 1 too few seeds; "
            "1 accuracy without a verdict (the reference arm did not learn).") in line
    assert vr.tally([]).startswith("Of 0 tests") and "Not counted" not in vr.tally([])


def test_the_rules_apply_in_order():
    """K = 1 wins over too few seeds, which wins over not learned."""
    few = {s: 1.0 for s in range(2)}
    assert vr.judge(few, few, -1, erc_can_act=False, accuracy=True, learning_gain=0.0).status == vr.IDENTICAL
    assert vr.judge(few, few, -1, accuracy=True, learning_gain=0.0).status == vr.FEW_SEEDS


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="direction must be"):
        vr.judge(LOWER, OTHER, 0)
    with pytest.raises(ValueError, match="accuracy=True needs learning_gain"):
        vr.judge(LOWER, OTHER, +1, accuracy=True)
    with pytest.raises(ValueError, match="band tests one arm"):
        vr.judge(LOWER, OTHER, band=(0.1, 0.4))
    with pytest.raises(ValueError, match="max_staleness must be an int >= 0"):
        vr.erc_can_act(-1)
    with pytest.raises(ValueError, match="max_staleness"):
        vr.erc_can_act(True)
    with pytest.raises(ValueError, match="gain must be a number < inf"):
        vr.learned(float("nan"))
    assert not vr.learned(-float("inf"))              # no gain could be measured: not learned
    with pytest.raises(ValueError, match="n_tests must be an int >= 0"):
        vr.expected_by_chance(-1)
    with pytest.raises(ValueError, match=r"seeds \[4\] are in one arm only"):
        vr.judge(LOWER, {s: 1.0 for s in range(4)}, -1)


def test_judge_verdict_gives_what_judge_gives():
    v = claims.paired_verdict(LOWER, OTHER, -1, "x")
    assert vr.judge_verdict(v) == vr.judge(LOWER, OTHER, -1, name="x")
    assert vr.judge_verdict(v, erc_can_act=False).label == vr.NOT_A_TEST
    assert vr.judge_verdict(v, accuracy=True, learning_gain=0.05).label == "no verdict (DAPO did not learn)"
    four = claims.paired_verdict({s: LOWER[s] for s in range(4)}, {s: 1.0 for s in range(4)}, -1)
    assert vr.judge_verdict(four).label == vr.too_few_seeds(4)


def test_ruled_claims_table_applies_the_rules_to_the_papers_claims():
    from test_claims import _synthetic_logs  # baseline "B" learns: eval 0.3 -> 0.5 + 0.01 seed

    steps, mbs, evals, toks = _synthetic_logs(acc_gap=0.1)
    table, n = vr.ruled_claims_table(steps, mbs, evals, toks, erc="E", base="B")
    assert n["learning_gain"] == pytest.approx(0.22) and set(table["verdict"]) == {vr.SUPPORTED}
    assert table["counted"].tolist() == [False, False, True, True, True, True, True]   # 1a, 1a' are bands
    assert n["tally"].startswith("Of 5 tests (0 primary, 5 exploratory): 5 supported")
    # the baseline did not learn: claim 4 has no verdict, the others keep theirs
    flat = evals.assign(**{"eval/avg@2": evals["eval/avg@2"].where(evals["label"] == "E", 0.3)})
    table, n = vr.ruled_claims_table(steps, mbs, flat, toks, erc="E", base="B")
    acc = table.set_index("claim").loc["4. accuracy improves"]
    assert acc["verdict"] == "no verdict (B did not learn)" and acc["status"] == vr.NOT_LEARNED and not acc["counted"]
    assert (table["status"] == vr.VERDICT).sum() == 6
    # K = 1 (staleness 0 only): no claim is a test
    on_policy = mbs[mbs["staleness"] == 0]
    table, n = vr.ruled_claims_table(steps, on_policy, evals, toks, erc="E", base="B")
    assert set(table["verdict"]) == {vr.NOT_A_TEST} and not table["counted"].any()
