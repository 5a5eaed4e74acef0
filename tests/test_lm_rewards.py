"""Judges and reward schemes: math-verify on real answers, exact match, multiple choice, the
paper's +1/-1/-0.5 scheme, the format reward and DAPO overlong shaping."""
import os
import signal
import subprocess
import sys
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ercref.lm import judge_pool as JP
from ercref.lm import judge_worker, rewards
from ercref.lm.config import RewardConfig
from ercref.lm.judge_pool import JudgePool, judge_pool, math_judge
from ercref.lm.rewards import choice_judge, exact_judge, normalize_text
from ercref.lm.scoring import JUDGES, score_responses


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


@pytest.mark.parametrize("hedge, letters", [("B and C", "BC"), ("B or C", "BC"), ("B, C", "BC"), ("B/C", "BC"),
                                            ("(B) and (C)", "BC"), ("The answer is A or D.", "AD")])
def test_choice_judge_does_not_reward_a_hedge(hedge, letters):
    """Two different letters offered as alternatives are no choice: whichever of them is right, the
    response is judged wrong (else hedging earns the reward whenever its first letter is right)."""
    assert not any(choice_judge(hedge, letter) for letter in letters)


def test_choice_judge_still_reads_one_choice_beside_other_letters():
    assert choice_judge("Answer: B. Not A", "B") and choice_judge("B and B", "B")
    assert choice_judge("The answer is D", "D") and not choice_judge("The answer is D", "A")


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


# ----------------------------------------------------------------------------- a bounded judge
ADVERSARIAL = {
    "1 MB of digits": "\\boxed{" + "7" * 1_000_000 + "}",
    "nested parentheses": "\\boxed{" + "(" * 2000 + "1" + ")" * 2000 + "}",
    "power tower": "\\boxed{9^{9^{9^{9^{9}}}}}",
    "binomial power": "\\boxed{(x+1)^{100000}}",
    "huge power": "\\boxed{10^{10^{10}}}",
}
NORMAL = [("So $\\boxed{72}$.", "72", True), ("\\boxed{0.75}", "\\frac{3}{4}", True), ("\\boxed{71}", "72", False),
          ("<think>hmm</think> \\boxed{\\frac{6}{8}}", "\\frac{3}{4}", True)]


@pytest.fixture
def pool():
    p = JudgePool(2)
    yield p
    p.close()
    assert p.pids == []  # close() leaves no worker behind


def test_adversarial_responses_cost_a_bounded_time_and_score_wrong(pool):
    """math-verify spends its full 5 s timeout (per parse and per comparison) on each of these;
    under a 0.5 s budget a batch of them finishes in about n / workers budgets, normal answers in
    the same batch are judged right, and nothing raises."""
    budget = 0.5
    resp = list(ADVERSARIAL.values()) * 2 + [r for r, _, _ in NORMAL]
    answers = ["72"] * (2 * len(ADVERSARIAL)) + [a for _, a, _ in NORMAL]
    ok, stats = pool.judge(resp, answers, timeout_s=budget)
    assert ok == [False] * (2 * len(ADVERSARIAL)) + [e for _, _, e in NORMAL]
    assert stats.judged == len(resp) and stats.truncated == 2  # the 1 MB responses: only the tail is read
    assert stats.timeouts >= 2 * 4  # at least the four that stall math-verify
    n_slow = 2 * len(ADVERSARIAL)
    bound = n_slow * (1.25 * budget + 0.1) / pool.workers + 30.0  # generous: worker start-up, a loaded machine
    assert stats.seconds < bound, (stats, bound)  # math-verify alone: >= 8 x 5 s


def test_the_judge_works_from_a_worker_thread():
    """math-verify's own timeout uses signal.alarm and raises off the main thread; this judge does not."""
    cfg = RewardConfig(judge="math", scheme="binary")
    out = []
    t = threading.Thread(target=lambda: out.append(score_responses([r for r, _, _ in NORMAL], [a for _, a, _ in NORMAL], cfg)))
    t.start()
    t.join(120)
    (rewards, correct), = out
    assert correct.tolist() == [e for _, _, e in NORMAL] and rewards.tolist() == [float(e) for _, _, e in NORMAL]
    assert math_judge("\\boxed{56}", "56") is True  # the main thread too


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_worker_that_never_answers_is_killed_and_replaced(pool):
    """The backstop for a judge stuck where the in-worker timer cannot interrupt it (C code): the
    parent kills the worker at 1.25 x budget + 0.1 s; that response is wrong, the rest are judged."""
    pool.start(wait=True)  # both workers ready
    os.kill(pool.pids[0], signal.SIGSTOP)  # frozen: will take a task and never answer
    resp = [r for r, _, _ in NORMAL] * 2
    ok, stats = pool.judge(resp, [a for _, a, _ in NORMAL] * 2, timeout_s=0.5)
    assert stats.timeouts == 1 and stats.restarts == 1 and stats.errors == 0
    assert sum(a != b for a, b in zip(ok, [e for _, _, e in NORMAL] * 2)) <= 1  # only the frozen one's response
    os.kill(pool.pids[1], signal.SIGKILL)  # a worker lost while idle: replaced, no response lost
    ok, stats = pool.judge(resp, [a for _, a, _ in NORMAL] * 2)
    assert ok == [e for _, _, e in NORMAL] * 2 and stats.restarts == 1 and stats.timeouts == 0


def test_score_responses_counts_and_warns_about_responses_over_budget():
    cfg = RewardConfig(judge="math", scheme="paper", correct=1.0, wrong=-1.0, judge_timeout_s=0.3)
    stats = {}
    with pytest.warns(RuntimeWarning, match=r"1 of 2 responses .*0\.3 s.*reward\.judge_timeout_s"):
        r, ok = score_responses([ADVERSARIAL["power tower"], "\\boxed{72}"], ["72", "72"], cfg, stats=stats)
    assert r.tolist() == [-1.0, 1.0] and ok.tolist() == [False, True]
    assert stats["judge/timeouts"] == 1 and stats["judge/judged"] == 2 and stats["judge/seconds"] > 0


def test_budget_config_fields_are_validated_and_match_the_judge_defaults():
    cfg = RewardConfig()
    assert (cfg.judge_timeout_s, cfg.judge_max_chars, cfg.judge_workers) == (
        JP.DEFAULT_TIMEOUT_S, JP.DEFAULT_MAX_CHARS, JP.DEFAULT_WORKERS)
    for field, bad in (("judge_timeout_s", 0), ("judge_timeout_s", float("nan")), ("judge_max_chars", 0),
                       ("judge_workers", -1)):
        with pytest.raises(ValueError, match=rf"reward\.{field}"):
            RewardConfig(**{field: bad})
    with pytest.raises(ValueError, match="workers"):
        JudgePool(-1)


@pytest.mark.parametrize("module", [rewards, judge_worker], ids=["rewards", "judge_worker"])
def test_the_worker_files_load_alone_without_torch(module):
    """A judge worker loads judge_worker.py and rewards.py by path (no package import): neither may
    need torch or the package."""
    code = ("import importlib.util as u, sys; s = u.spec_from_file_location('w', sys.argv[1]); m = u.module_from_spec(s); "
            "sys.modules['w'] = m; s.loader.exec_module(m); assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'ercref' not in sys.modules, 'package imported'")
    subprocess.run([sys.executable, "-c", code, module.__file__], check=True, timeout=60)


# ----------------------------------------------------------------------------- normalisation before judging
@pytest.mark.parametrize("judge, response, answer", [
    ("math", "\\boxed{７２}", "72"),                         # full-width digits
    ("math", "\\boxed{\\frac{３}{４}}", "0.75"),
    ("math", "\\boxed{72}", "７２"),                         # in the reference too
    ("math", "\\boxed{1\\,000\\,000}", "1000000"),          # thin-space digit groups
    ("math", "\\boxed{1\\;000}", "1000"),
    ("math", "The answer is −5", "-5"),                      # U+2212 minus
    ("exact", "８", "8"), ("exact", "−3", "-3"), ("exact", "１\u2009０００", "1000"),
    ("choice", "b", "B"), ("choice", "(c).", "C"), ("choice", "d)", "D"), ("choice", "Ｂ", "B"),
    ("choice", "The answer is (a)", "A"),
])
def test_normalised_before_judging(judge, response, answer):
    assert JUDGES[judge](response, answer) is True


@pytest.mark.parametrize("judge, response, answer", [
    ("math", "\\boxed{1\\,00}", "100"),          # not a group of three: left alone
    ("math", "\\boxed{−5}", "5"),
    ("choice", "a cat ate B", "A"),              # the article "a" is not a choice; B is
    ("choice", "I think c", "C"),                # a bare lower-case letter inside a sentence is not a choice
    ("exact", "１２", "21"),
])
def test_normalisation_does_not_invent_answers(judge, response, answer):
    assert JUDGES[judge](response, answer) is False


def test_lower_case_choice_counts_as_well_formatted():
    cfg = RewardConfig(judge="choice", scheme="format", correct=1.0, wrong=0.0, format_reward=0.2)
    r, ok = score_responses(["b", "(a)", "maybe a"], ["B", "B", "B"], cfg)
    assert r.tolist() == pytest.approx([1.0, 0.2, 0.0]) and ok.tolist() == [True, False, False]


# ----------------------------------------------------------------------------- properties
PROPS = settings(max_examples=40, deadline=None, derandomize=True)
_ascii = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)


def _wide(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if 0x21 <= ord(c) <= 0x7E else c for c in s)


@PROPS
@given(s=_ascii, n=st.integers(-10**9, 10**9))
def test_property_normalisation_maps_wide_forms_to_ascii_and_is_idempotent(s, n):
    assert normalize_text(_wide(s)) == normalize_text(s) and normalize_text(normalize_text(s)) == normalize_text(s)
    text = f"{n:,}".replace(",", "\\,").replace("-", "\u2212")
    assert normalize_text(text) == str(n) and exact_judge(_wide(str(n)).replace("\uff0d", "\u2212"), str(n))


@PROPS
@given(letter=st.sampled_from("ABCD"), form=st.sampled_from(["{}", "({})", "{})", "({}).", " {} \n"]),
       lower=st.booleans(), wide=st.booleans())
def test_property_every_spelling_of_the_right_letter_is_right(letter, form, lower, wide):
    resp = form.format(letter.lower() if lower else letter)
    resp = _wide(resp) if wide else resp
    assert choice_judge(resp, letter) and not choice_judge(resp, "ABCD"[("ABCD".index(letter) + 1) % 4])


_atoms = st.one_of(st.integers(0, 10**6).map(str), st.sampled_from(["x", "\\pi", "\\infty", "e", "\\sqrt{2}"]))
_latex = st.recursive(_atoms, lambda e: st.one_of(
    st.tuples(e, e).map(lambda t: f"{t[0]}^{{{t[1]}}}"), st.tuples(e, e).map(lambda t: f"\\frac{{{t[0]}}}{{{t[1]}}}"),
    e.map(lambda a: f"({a})"), st.tuples(e, e).map(lambda t: f"{t[0]}+{t[1]}"), e.map(lambda a: f"{a}!")), max_leaves=10)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(expr=_latex, noise=st.text(max_size=40))
def test_property_any_response_is_judged_within_its_budget_and_never_raises(expr, noise):
    """Whatever the response (random nested powers, fractions, factorials, stray text), the judge
    returns a bool per response within one budget (generous slack for a worker restart)."""
    budget = 0.3
    ok, stats = judge_pool(2).judge([f"{noise} \\boxed{{{expr}}}", noise], [expr, "1"], timeout_s=budget)
    assert all(isinstance(o, bool) for o in ok) and stats.judged == 2
    assert stats.seconds < 2 * (1.25 * budget + 0.1) + 20.0


# ----------------------------------------------------------------------------- long and grouped numbers
BIG = "7" * 5000          # longer than Python's int-string limit (4,300 digits)
MINUS = "\u2212"


@pytest.mark.parametrize("response, answer, ok", [
    (f"\\boxed{{{BIG}}}", BIG, True),
    (f"\\boxed{{{MINUS}{BIG}}}", f"-{BIG}", True),
    (f"The answer is \\boxed{{-{BIG}}}", f"{MINUS}{BIG}", True),
    (f"\\boxed{{{BIG[:-1]}8}}", BIG, False),              # one digit off
    (f"\\boxed{{{BIG}}}", f"-{BIG}", False),               # the sign matters
    ("\\boxed{1,000}", "1000", True),
    ("\\boxed{1000}", "1,000", True),
    ("So the total is 1,000,000.", "1000000", True),
    (f"\\boxed{{{MINUS}1,000}}", "-1000", True),
    ("\\boxed{[1,100]}", "1100", False),                   # an interval, not a grouped number
    ("\\boxed{1,001}", "1000", False),
])
def test_math_judge_reads_long_numbers_and_thousands_separators(response, answer, ok):
    got, stats = judge_pool(2).judge([response], [answer], timeout_s=30.0)
    assert got == [ok] and stats.timeouts == 0 and stats.errors == 0


@pytest.mark.parametrize("response, answer, ok", [
    (BIG, BIG, True), (f"{MINUS}{BIG}", f"-{BIG}", True), (f"-{BIG}", f"{MINUS}{BIG}", True), (BIG, f"-{BIG}", False),
    ("1,000", "1000", True), ("1000", "1,000", True), ("-12,345.5", "-12345.5", True), (f"{MINUS}1,000.", "-1000", True),
    ("1,000,000\nbecause", "1000000", True),
    ("1,00", "100", False), ("1,2345", "12345", False), ("1,000", "1", False), ("12,34,567", "1234567", False),
])
def test_exact_judge_reads_long_numbers_and_thousands_separators(response, answer, ok):
    assert exact_judge(response, answer) is ok


def test_a_missing_response_or_answer_is_an_error_not_a_wrong_answer():
    for judge in (exact_judge, choice_judge, math_judge):
        with pytest.raises(TypeError, match=r"^response must be a str, got NoneType"):
            judge(None, "8")
        with pytest.raises(TypeError, match=r"^answer must be a str, got NoneType"):
            judge("8", None)
    cfg = RewardConfig(judge="exact", scheme="binary")
    with pytest.raises(TypeError, match=r"^responses\[1\] must be a str"):
        score_responses(["8", None], ["8", "8"], cfg)
    with pytest.raises(TypeError, match=r"^answers\[0\] must be a str, got int 8"):
        score_responses(["8"], [8], RewardConfig(judge="math", scheme="binary"))
    with pytest.raises(TypeError, match=r"^responses\[0\]"):
        judge_pool(2).judge([None], ["1"])


@pytest.mark.parametrize("timeout_s", [float("inf"), -float("inf"), float("nan"), 0, -1.0, True, False, 1e300, "2"])
def test_judge_time_budget_must_be_a_finite_number_of_seconds(timeout_s):
    """inf (would overflow the worker's timer and the queue wait), a bool (True is not 1 s), and
    anything else outside (0, MAX_TIMEOUT_S] are refused before any worker is used."""
    with pytest.raises(ValueError, match=r"^timeout_s .*\(0, 86400\]"):
        judge_pool(2).judge(["\\boxed{1}"], ["1"], timeout_s=timeout_s)
    with pytest.raises(ValueError, match=r"^timeout_s"):
        math_judge("\\boxed{1}", "1", timeout_s=timeout_s)


def test_judge_max_chars_must_be_a_positive_int():
    for bad in (True, 0, 2.5, None):
        with pytest.raises(ValueError, match=r"^max_chars must be an int >= 1"):
            judge_pool(2).judge(["\\boxed{1}"], ["1"], max_chars=bad)
    ok, stats = judge_pool(2).judge(["\\boxed{1}"], ["1"], timeout_s=JP.MAX_TIMEOUT_S, max_chars=9)
    assert ok == [True] and stats.truncated == 0


# ----------------------------------------------------------------------------- the number judge
@pytest.mark.parametrize("response, answer, ok", [
    ("(52-88)+8", "-28", False),                          # the question's expression restated: its last number is 8
    ("The answer is (52-88)+8. This requires", "-28", False),
    ("48+64 is a classic example of a mathematical construct", "112", False),
    ("To calculate 31*9, we can break it down", "279", False),
    ("48+64 = 112", "112", True),
    ("-28", "-28", True), ("The answer is -28.", "-28", True), ("= −28", "-28", True),   # U+2212 minus
    ("100-28", "-28", False), ("100 - 28", "72", False),   # a subtraction, not a negative number
    ("3 - -5", "-5", True), ("(5)-3", "-3", False),
    ("1,782", "1782", True), ("1,78", "178", False), ("The answer is 1.5.", "1.5", True),
    ("\\boxed{279}", "279", True), ("\\boxed{-28} and 5 more", "-28", True), ("\\boxed{2+3}", "5", False),
    ("x2", "2", False), ("I don't know", "0", False), ("<think>it is 7</think>8", "8", True),
    ("9" * 5000, "9", False), ("\\boxed{" + "9" * 5000 + "}", "9", False),   # past the int-string limit: wrong
])
def test_number_judge_reads_the_final_number_not_an_expression(response, answer, ok):
    assert rewards.number_judge(response, answer) is ok


def test_the_math_judge_credits_a_restated_question_and_the_number_judge_does_not():
    """Why the number judge exists: on "What is (52-88)+8?" math-verify parses the restated
    expression and finds it equal to the answer."""
    assert math_judge("The answer is (52-88)+8.", "-28") is True
    assert rewards.number_judge("The answer is (52-88)+8.", "-28") is False


@settings(max_examples=200, deadline=None)
@given(a=st.integers(-10**6, 10**6), b=st.integers(0, 10**6), op=st.sampled_from("+-*"),
       lead=st.sampled_from(["", "The answer is ", "So ", "= "]), tail=st.sampled_from(["", ".", " ", "\n"]))
def test_number_judge_properties(a, b, op, lead, tail):
    assert rewards.number_judge(f"{lead}{a}{tail}", str(a))                      # the answer alone is right
    assert rewards.number_judge(f"{lead}{a:,}{tail}", str(a))                    # grouped by commas too
    value = a + b if op == "+" else a - b if op == "-" else a * b
    restated = f"What is ({a}){op}{b}? It is ({a}){op}{b}{tail}"
    assert rewards.number_judge(restated, str(value)) == (value == b)            # the last number read is b
    assert rewards.number_judge(f"({a}){op}{b} = {value}{tail}", str(value))     # worked out: right


def test_number_judge_needs_a_numeric_reference_and_format_scheme_reads_numerals():
    with pytest.raises(ValueError, match="answer must be a number"):
        rewards.number_judge("5", "\\frac{1}{2}")
    cfg = RewardConfig(judge="number", scheme="format", correct=1.0, wrong=0.0, format_reward=0.2)
    r, ok = score_responses(["12", "13.", "\\boxed{14}", "it is 15", "12 apples"], ["12"] * 5, cfg)
    assert r.tolist() == pytest.approx([1.0, 0.2, 0.2, 0.0, 1.0]) and ok.tolist() == [True, False, False, False, True]


def test_final_number_accuracy_is_the_number_judges_share_and_none_for_other_answers():
    from ercref.lm.evaluate import final_number_accuracy

    texts = ["48+64 is", "112", "It is 112.", "48+64"]          # k = 2 per answer
    assert final_number_accuracy(texts, ["112", "112"], 2) == 0.5
    assert final_number_accuracy(texts[:2], ["\\frac{1}{2}"], 2) is None
    with pytest.raises(ValueError, match="k=2 responses per answer"):
        final_number_accuracy(texts, ["112"], 2)
