"""Judges: is a response correct? Each ``judge(response, answer) -> bool`` on two strings (anything
else, ``None`` included, is a TypeError naming the argument).

    exact    synthetic tasks: the response's first line, stripped of spaces and a trailing '.', equals
             the answer (the tiny model answers "8<eos>"; "The answer is 8" is wrong under this judge)
    choice   multiple choice: the first stand-alone letter A-D in the response equals the answer letter
             (a lower-case letter counts when it is the whole response, "b" / "(b)." / "b)", or is in
             parentheses, "(b)")
    math     math-verify (``math_verify.parse`` / ``verify``): the \\boxed{} answer, or the last
             expression, of the response is mathematically equal to the reference (fractions,
             decimals, LaTeX). Text after the last ``</think>`` is judged when there is one.
             ``math_verify_judge`` here is the judgement itself, unbounded; ``ercref.lm.judge_pool``
             runs it in worker processes under a time budget (``math_judge``). On a task whose question
             is an expression ("What is 48+64?") it credits restating the question, "48+64 is ...",
             since the expression equals the answer: use ``number`` there.
    number   numeric answers to computation questions: the response's final number, the content of its
             last \\boxed{} when there is one, else its last numeral (after ``</think>``), equals the
             numeric reference. A numeral is a run of digits (grouped by commas in threes or not,
             with a decimal part or not); its minus sign counts only where it cannot be a subtraction
             (not after a digit or closing bracket): "(52-88)+8" ends in the numeral 8, "is -28." in
             -28. Restating the question's expression is therefore wrong unless its last
             number is the answer.

Every judge first normalises both texts (``normalize_text``): full-width ASCII forms (U+FF01-FF5E,
the ideographic space) become ASCII, the Unicode minus U+2212 becomes '-', and digit-group
separators between a digit and three digits (``1\\,000\\,000``, thin and no-break spaces) are
dropped. Commas are left to each judge, since "1,100" may be a number or a pair: the exact judge
reads a whole line that is a numeral grouped by commas in threes (``1,000``, ``-12,345.5``; not
``1,23`` or ``1,2345``) as that number; math-verify decides from the expression around it.

``well_formatted`` says whether a wrong response still has the form the judge reads (the "format"
reward scheme, ``ercref.lm.scoring``).

This module imports neither torch nor the rest of the package: a judge worker loads this file
alone, by path (``ercref.lm.judge_worker``).
"""
from __future__ import annotations

import re
from fractions import Fraction

THINK_CLOSE = "</think>"
_LETTER = re.compile(r"(?<![A-Za-z])([ABCD])(?![A-Za-z])|\(([abcd])\)")
_LONE_LETTER = re.compile(r"\s*\(?([A-Da-d])\)?[.)]?\s*")
# two different letters joined as alternatives ("B and C", "B or C", "B, C", "(B)/(C)"): a hedge, not a choice
_HEDGE = re.compile(r"(?<![A-Za-z])\(?([A-D])\)?\s*(?:,|/|&|\band\b|\bor\b)\s*\(?([A-D])\)?(?![A-Za-z])")
_INT = re.compile(r"^[+-]?\d+$")

# ----------------------------------------------------------------------------- normalisation
_FULLWIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}          # ！..～ -> !..~
_FULLWIDTH.update({0x3000: 0x20, 0x2212: ord("-")})                     # ideographic space, minus sign
# a digit-group separator: between a digit and exactly three digits (then no fourth digit)
_GROUP_SEP = re.compile(r"(?<=\d)(?:\\[,:;! ]|\\thinspace|[\u00a0\u2009\u202f])(?=\d{3}(?!\d))")
# a whole numeral grouped by commas in threes (the exact judge reads it without the commas)
_COMMA_NUMERAL = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def normalize_text(text: str) -> str:
    """Full-width ASCII forms -> ASCII, U+2212 -> '-', digit-group separators (``\\,`` ``\\;``
    ``\\:`` ``\\!`` ``\\ `` ``\\thinspace`` and thin / no-break spaces before three digits)
    removed. Everything else is unchanged (commas, superscripts, Greek, LaTeX commands keep their
    meaning)."""
    return _GROUP_SEP.sub("", check_text("text", text).translate(_FULLWIDTH))


def check_text(name: str, value) -> str:
    """``value`` when it is a str; TypeError naming ``name`` otherwise (a None response or answer is
    a bug upstream, not a wrong answer)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__} {value!r:.60}")
    return value


# ----------------------------------------------------------------------------- cheap judges
def _ungroup(text: str) -> str:
    """A numeral grouped by commas in threes without its commas; any other text unchanged."""
    return text.replace(",", "") if _COMMA_NUMERAL.fullmatch(text) else text


def _first_line(text: str) -> str:
    return _ungroup(normalize_text(text).strip().split("\n")[0].strip().rstrip(".").replace(" ", ""))


def exact_judge(response: str, answer: str) -> bool:
    check_text("response", response), check_text("answer", answer)
    return _first_line(response) == _ungroup(normalize_text(answer).strip().replace(" ", ""))


def choice_letter(response: str) -> str | None:
    """The chosen letter (upper case) or None: the whole response when it is one letter A-D in
    either case ("b", "(B).", "c)"); None when it offers two different letters as alternatives ("B and
    C", "B or C", "B, C", "B/C": a hedge would otherwise earn the reward whenever its first letter is
    right); else the first stand-alone capital A-D or parenthesised "(b)"."""
    text = normalize_text(check_text("response", response))
    m = _LONE_LETTER.fullmatch(text)
    if m:
        return m.group(1).upper()
    if any(h.group(1) != h.group(2) for h in _HEDGE.finditer(text)):
        return None
    m = _LETTER.search(text)
    return (m.group(1) or m.group(2)).upper() if m else None


def choice_judge(response: str, answer: str) -> bool:
    return choice_letter(response) == normalize_text(check_text("answer", answer)).strip().upper()


def after_think(text: str) -> str:
    """The text after the last ``</think>`` (all of it when there is none)."""
    return text.rsplit(THINK_CLOSE, 1)[-1] if THINK_CLOSE in text else text


def well_formatted(response: str, judge: str) -> bool:
    """Has a response the form ``judge`` reads? choice: a single letter A-D; math: a \\boxed{}
    (after </think>); number: the response (after </think>) is one numeral, or has a \\boxed{} one;
    exact: the first line is a (signed) integer."""
    check_text("response", response)
    if judge == "choice":
        return _LONE_LETTER.fullmatch(normalize_text(response)) is not None
    if judge == "math":
        return "\\boxed{" in after_think(response)
    if judge == "number":
        text = normalize_text(after_think(response)).strip().rstrip(".").strip()
        boxed = _last_boxed(text)
        return numeral_value(boxed if boxed is not None else text) is not None
    return _INT.match(_first_line(response)) is not None


# ----------------------------------------------------------------------------- the number judge
_NUMERAL = re.compile(r"\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?")
_BOXED = "\\boxed{"


def _last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (braces balanced), or None."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, i = 1, start + len(_BOXED)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def final_number(response: str) -> Fraction | None:
    """The final number of a response (module doc, ``number``): its last \\boxed{} content read as one
    numeral, else its last numeral; None when there is none."""
    text = normalize_text(after_think(check_text("response", response)))
    boxed = _last_boxed(text)
    if boxed is not None:
        return numeral_value(boxed.strip())
    last = None
    for m in _NUMERAL.finditer(text):
        if m.start() and (text[m.start() - 1].isalnum() or text[m.start() - 1] in "._"):
            continue                                  # part of a word or of a longer number ("x2", "1.5.3")
        last = m
    if last is None:
        return None
    value = _fraction(last.group())
    if value is None:
        return None
    before = text[:last.start()]
    operand = before[:-1].rstrip()[-1:]               # what a subtraction would subtract from
    if before.endswith("-") and not (operand.isdigit() or (operand and operand in ")]}")):
        value = -value                                 # a minus sign, not a subtraction
    return value


def _fraction(numeral: str) -> Fraction | None:
    """A numeral's value; None past Python's int-string limit (a response of thousands of digits is
    wrong, not a crash of the judge)."""
    try:
        return Fraction(numeral.replace(",", ""))
    except ValueError:
        return None


def numeral_value(text: str) -> Fraction | None:
    """``text`` (spaces, $ and a trailing '.' ignored) as one signed numeral, else None."""
    t = text.replace("$", "").strip().rstrip(".").replace(" ", "")
    sign = -1 if t[:1] == "-" else 1
    t = t[1:] if t[:1] in "+-" else t
    value = _fraction(t) if _NUMERAL.fullmatch(t) else None
    return None if value is None else sign * value


def number_judge(response: str, answer: str) -> bool:
    """The response's final number equals the numeric reference (module doc); ValueError when the
    reference is not one numeral (the judge does not fit the task)."""
    gold = numeral_value(normalize_text(check_text("answer", answer)))
    if gold is None:
        raise ValueError(f"answer must be a number for the number judge, got {answer!r:.60}")
    pred = final_number(response)
    return pred is not None and pred == gold


# ----------------------------------------------------------------------------- the math judgement
def _gold(answer: str):
    from math_verify import parse

    gold = parse(answer if "$" in answer or "\\boxed" in answer else f"${answer}$", parsing_timeout=None)
    return gold or parse(answer, parsing_timeout=None)


_GOLD_CACHE: dict[str, object] = {}


def math_verify_judge(response: str, answer: str) -> bool:
    """The math judgement itself, unbounded and signal-free (works in any thread): normalise both
    texts, parse the reference (wrapped in $...$ when it is bare LaTeX) and the response after
    </think>, verify. An answer that math-verify cannot parse or compare is wrong. Integers longer
    than Python's int-string limit (``sys.get_int_max_str_digits()``, 4,300 digits by default) are
    judged only where that limit is lifted: the judge workers lift it (their time budget bounds
    the conversion instead). For the bounded version call ``ercref.lm.judge_pool.math_judge``."""
    from math_verify import parse, verify

    answer = normalize_text(check_text("answer", answer))
    gold = _GOLD_CACHE.get(answer)
    if gold is None:
        gold = _gold(answer)
        if len(_GOLD_CACHE) > 4096:
            _GOLD_CACHE.clear()
        _GOLD_CACHE[answer] = gold
    pred = parse(normalize_text(after_think(check_text("response", response))), parsing_timeout=None)
    if not gold or not pred:
        return False
    try:
        return bool(verify(gold, pred, timeout_seconds=None))
    except Exception:  # math-verify raises on exotic expressions; an unverifiable answer is wrong
        return False


def judged_text(response: str, max_chars: int) -> tuple[str, bool]:
    """The part of a response the math judge reads: after the last </think>, at most its last
    ``max_chars`` characters (the final answer is at the end). (text, was it cut?)"""
    text = after_think(response)
    return (text[-max_chars:], True) if len(text) > max_chars else (text, False)
