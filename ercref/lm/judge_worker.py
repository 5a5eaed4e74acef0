"""A math-judge worker process (started by ``ercref.lm.judge_pool``): it judges one response at a
time with ``rewards.math_verify_judge`` under an interval timer.

Started as ``python -c BOOT <this file> <rewards.py>``: both files are loaded by path, with no
package import, so a worker never imports torch. Protocol, one JSON array per line:

    stdin   [id, response, answer, budget_s]
    stdout  ["ready"] once warm, then [id, correct, status]      status: ok | timeout | error

In a worker Python's int-string limit is lifted (``sys.set_int_max_str_digits(0)``): answers
longer than 4,300 digits are judged, and the time budget bounds the conversion instead.
"""
import importlib.util
import json
import os
import sys

# loads this file by path and runs main(); argv: this file, rewards.py
BOOT = ("import importlib.util as u, sys; s = u.spec_from_file_location('_ercref_judge_worker', sys.argv[1]); "
        "m = u.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m); m.main(sys.argv[2])")


class _OverBudget(BaseException):
    """Raised by the worker's timer; a BaseException so math-verify's ``except Exception`` blocks
    (which swallow its own timeouts and go on to the next candidate) do not catch it."""


_ARMED = False


def _on_alarm(signum, frame):  # pragma: no cover - runs in the worker
    if _ARMED:
        raise _OverBudget()


def _judge(judge, response: str, answer: str, budget: float, timer: bool) -> tuple[bool, str]:  # pragma: no cover
    """One judgement under the worker's interval timer (it re-fires every 50 ms if something
    swallows the first interrupt; the parent's kill is the backstop). (correct, status)."""
    import signal

    global _ARMED
    result = (False, "timeout")
    try:
        try:
            _ARMED = True
            if timer:
                signal.setitimer(signal.ITIMER_REAL, budget, 0.05)
            result = (judge(response, answer), "ok")
        except _OverBudget:
            result = (False, "timeout")
        except Exception:
            result = (False, "error")
    except _OverBudget:  # the timer fired again inside a handler above
        result = (False, "timeout")
    while True:  # disarm; an interrupt that lands here is simply retried
        try:
            _ARMED = False
            if timer:
                signal.setitimer(signal.ITIMER_REAL, 0)
            return result
        except _OverBudget:
            continue


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main(rewards_path: str) -> None:  # pragma: no cover - runs in the worker (the tests exercise it through the pool)
    import logging
    import signal

    judge = _load("_ercref_judges", rewards_path).math_verify_judge
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # no per-expression log lines on stderr
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)
    timer = hasattr(signal, "setitimer")
    if timer:
        signal.signal(signal.SIGALRM, _on_alarm)
    out = os.fdopen(os.dup(1), "w", encoding="ascii")  # the protocol's own copy of stdout ...
    os.dup2(2, 1)                                       # ... and anything a library prints goes to stderr
    sys.stdout = sys.stderr
    _judge(judge, "\\boxed{\\frac{1}{2}}", "0.5", 60.0, timer)  # imports and warms sympy
    out.write('["ready"]\n')
    out.flush()
    for line in sys.stdin:
        i, response, answer, budget = json.loads(line)
        ok, status = _judge(judge, response, answer, float(budget), timer)
        out.write(json.dumps([i, ok, status]) + "\n")
        out.flush()
