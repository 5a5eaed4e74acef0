"""Judges (is a response correct?) and reward schemes (what number does it get?).

Judges, each ``judge(response, answer) -> bool``:
    exact    synthetic tasks: the response's first line, stripped of spaces and a trailing '.', equals
             the answer (the tiny model answers "8<eos>"; "The answer is 8" is wrong under this judge)
    choice   multiple choice: the first stand-alone letter A-D in the response equals the answer letter
             (a lower-case letter counts when it is the whole response, "b" / "(b)." / "b)", or is in
             parentheses, "(b)")
    math     math-verify (``math_verify.parse`` / ``verify``): the \\boxed{} answer, or the last
             expression, of the response is mathematically equal to the reference (fractions,
             decimals, LaTeX). Text after the last ``</think>`` is judged when there is one.
Every judge first normalises both texts (``normalize_text``): full-width ASCII forms (U+FF01-FF5E,
the ideographic space) become ASCII, the Unicode minus U+2212 becomes '-', and digit-group
separators between a digit and three digits (``1\\,000\\,000``, thin and no-break spaces) are
dropped.

The math judge is bounded (math-verify's own timeouts use ``signal.alarm``: main thread only, and
up to 5 s per parse and per comparison). ``math_judge`` and ``score_responses`` run it in worker
processes (``JudgePool``: started on first use, shared, reused across calls) that work from any
thread. Each response is cut to its last ``max_chars`` characters (after ``</think>``) and gets
``timeout_s`` seconds of wall clock: an in-worker timer interrupts the judge at ``timeout_s``, and
a worker that has not answered by ``1.25 * timeout_s + 0.1`` s is killed and replaced. A response
over budget (or whose worker died twice under it) scores as wrong, is counted (``JudgeStats``;
the ``judge/*`` entries of ``score_responses(..., stats=)``) and warned about; it never raises.
So a batch of n responses costs at most about ``n / workers * (1.25 * timeout_s + 0.1)`` s, plus
a worker's start-up (1-4 s on 2 busy cores) on first use and after each kill; ``judge_pool().start()``
starts the workers early, in the background. This module imports no torch at module level so that
a worker can load this file alone (``_worker_main``).

Schemes (reward of one response, before overlong shaping):
    binary   correct -> cfg.correct (1), else cfg.wrong (0)
    paper    the ERC paper: +1 correct, -1 wrong, -0.5 when require_think and there is no closing
             ``</think>`` tag (checked first: an unclosed thought is never judged)
    format   correct -> cfg.correct; wrong but well-formatted -> cfg.format_reward; else cfg.wrong.
             "Well-formatted": choice judge: the response is a single letter A-D; math: it has a
             \\boxed{}; exact: the first line is a (signed) integer.
DAPO overlong shaping (``ercref.overlong_reward``) is added when cfg.overlong_shaping is set.
"""
from __future__ import annotations

import atexit
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import warnings
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: a judge worker loads this file without it
    import torch

THINK_CLOSE = "</think>"
_LETTER = re.compile(r"(?<![A-Za-z])([ABCD])(?![A-Za-z])|\(([abcd])\)")
_LONE_LETTER = re.compile(r"\s*\(?([A-Da-d])\)?[.)]?\s*")
_INT = re.compile(r"^[+-]?\d+$")

# math judge budget defaults (RewardConfig.judge_timeout_s / judge_max_chars / judge_workers)
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_MAX_CHARS = 16384
DEFAULT_WORKERS = 0          # 0: one per CPU core, at most 8

# ----------------------------------------------------------------------------- normalisation
_FULLWIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}          # ！..～ -> !..~
_FULLWIDTH.update({0x3000: 0x20, 0x2212: ord("-")})                     # ideographic space, minus sign
# a digit-group separator: between a digit and exactly three digits (then no fourth digit)
_GROUP_SEP = re.compile(r"(?<=\d)(?:\\[,:;! ]|\\thinspace|[\u00a0\u2009\u202f])(?=\d{3}(?!\d))")


def normalize_text(text: str) -> str:
    """Full-width ASCII forms -> ASCII, U+2212 -> '-', digit-group separators (``\\,`` ``\\;``
    ``\\:`` ``\\!`` ``\\ `` ``\\thinspace`` and thin / no-break spaces before three digits)
    removed. Everything else is unchanged (superscripts, Greek, LaTeX commands keep their meaning)."""
    return _GROUP_SEP.sub("", text.translate(_FULLWIDTH))


# ----------------------------------------------------------------------------- cheap judges
def _first_line(text: str) -> str:
    return normalize_text(text).strip().split("\n")[0].strip().rstrip(".").replace(" ", "")


def exact_judge(response: str, answer: str) -> bool:
    return _first_line(response) == normalize_text(str(answer)).strip().replace(" ", "")


def choice_letter(response: str) -> str | None:
    """The chosen letter (upper case) or None: the whole response when it is one letter A-D in
    either case ("b", "(B).", "c)"), else the first stand-alone capital A-D or parenthesised "(b)"."""
    text = normalize_text(response)
    m = _LONE_LETTER.fullmatch(text)
    if m:
        return m.group(1).upper()
    m = _LETTER.search(text)
    return (m.group(1) or m.group(2)).upper() if m else None


def choice_judge(response: str, answer: str) -> bool:
    return choice_letter(response) == normalize_text(str(answer)).strip().upper()


def _after_think(text: str) -> str:
    return text.rsplit(THINK_CLOSE, 1)[-1] if THINK_CLOSE in text else text


# ----------------------------------------------------------------------------- the math judge
def _gold(answer: str):
    from math_verify import parse

    gold = parse(answer if "$" in answer or "\\boxed" in answer else f"${answer}$", parsing_timeout=None)
    return gold or parse(answer, parsing_timeout=None)


_GOLD_CACHE: dict[str, object] = {}


def _math_verify_judge(response: str, answer: str) -> bool:
    """The judgement itself, unbounded and signal-free (works in any thread): normalise both texts,
    parse the reference (wrapped in $...$ when it is bare LaTeX) and the response after </think>,
    verify. Runs inside a judge worker; call ``math_judge`` for the bounded version."""
    from math_verify import parse, verify

    answer = normalize_text(str(answer))
    gold = _GOLD_CACHE.get(answer)
    if gold is None:
        gold = _gold(answer)
        if len(_GOLD_CACHE) > 4096:
            _GOLD_CACHE.clear()
        _GOLD_CACHE[answer] = gold
    pred = parse(normalize_text(_after_think(response)), parsing_timeout=None)
    if not gold or not pred:
        return False
    try:
        return bool(verify(gold, pred, timeout_seconds=None))
    except Exception:  # math-verify raises on exotic expressions; an unverifiable answer is wrong
        return False


def _clip(response: str, max_chars: int) -> tuple[str, bool]:
    """The part of a response the math judge reads: after the last </think>, at most its last
    ``max_chars`` characters (the final answer is at the end). (text, was it cut?)"""
    text = _after_think(response)
    return (text[-max_chars:], True) if len(text) > max_chars else (text, False)


@dataclass
class JudgeStats:
    """What a batch of math judgements cost: counts of responses and the wall time."""
    judged: int = 0
    timeouts: int = 0        # over the time budget: scored as wrong
    truncated: int = 0       # longer than max_chars after </think>: only the tail was judged
    errors: int = 0          # math-verify raised, or two workers died under it: scored as wrong
    restarts: int = 0        # workers killed (over budget) or lost, and replaced
    seconds: float = 0.0     # wall time of the batch

    def as_metrics(self) -> dict[str, float]:
        return {f"judge/{k}": float(v) for k, v in asdict(self).items()}


# --------------------------------------------------------------------- worker side (own process)
class _OverBudget(BaseException):
    """Raised by the worker's timer; a BaseException so math-verify's ``except Exception`` blocks
    (which swallow its own timeouts and go on to the next candidate) do not catch it."""


_ARMED = False


def _on_alarm(signum, frame):  # pragma: no cover - runs in the worker
    if _ARMED:
        raise _OverBudget()


def _judge_in_worker(response: str, answer: str, budget: float, timer: bool) -> tuple[bool, str]:  # pragma: no cover
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
            result = (_math_verify_judge(response, answer), "ok")
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


def _worker_main() -> None:  # pragma: no cover - runs in the worker (the tests exercise it through the pool)
    """A judge worker: reads [id, response, answer, budget_s] JSON lines on stdin, writes
    [id, correct, status] lines on stdout (status: ok | timeout | error); ["ready"] once warm."""
    import logging
    import signal

    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # no per-expression log lines on stderr
    timer = hasattr(signal, "setitimer")
    if timer:
        signal.signal(signal.SIGALRM, _on_alarm)
    out = os.fdopen(os.dup(1), "w", encoding="ascii")  # the protocol's own copy of stdout ...
    os.dup2(2, 1)                                       # ... and anything a library prints goes to stderr
    sys.stdout = sys.stderr
    _judge_in_worker("\\boxed{\\frac{1}{2}}", "0.5", 60.0, timer)  # imports and warms sympy
    out.write('["ready"]\n')
    out.flush()
    for line in sys.stdin:
        i, response, answer, budget = json.loads(line)
        ok, status = _judge_in_worker(response, answer, float(budget), timer)
        out.write(json.dumps([i, ok, status]) + "\n")
        out.flush()


# loads this file by path as its own module: no package import, so no torch in the worker
_BOOT = ("import importlib.util as u, sys; s = u.spec_from_file_location('_ercref_judge_worker', sys.argv[1]); "
         "m = u.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m); m._worker_main()")


# --------------------------------------------------------------------- parent side
class _Worker:
    def __init__(self, slot: int, gen: int, results: queue.Queue):
        self.slot, self.gen, self.ready, self.task = slot, gen, False, None
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT, os.path.abspath(__file__)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="ascii",
                                     bufsize=1)
        self.reader = threading.Thread(target=self._read, args=(results,), daemon=True,
                                       name=f"ercref-judge-reader-{slot}")
        self.reader.start()

    def _read(self, results: queue.Queue) -> None:
        try:
            for line in self.proc.stdout:
                try:
                    results.put((self.slot, self.gen, json.loads(line)))
                except ValueError:
                    continue
        except (ValueError, OSError):
            pass
        finally:
            try:
                self.proc.stdout.close()
            except (OSError, ValueError):
                pass
        results.put((self.slot, self.gen, None))  # end of output: the worker exited

    def send(self, i: int, response: str, answer: str, budget: float) -> bool:
        try:
            self.proc.stdin.write(json.dumps([i, response, answer, budget]) + "\n")
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()
        try:
            self.proc.stdin.close()  # stdout is closed by the reader thread when it sees the end
        except (OSError, ValueError):
            pass

    def close(self, wait_s: float = 2.0) -> None:
        try:
            self.proc.stdin.close()  # EOF: the worker's loop ends
            self.proc.wait(wait_s)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        self.kill()


class JudgePool:
    """Worker processes running the math judge with a hard per-response wall-clock budget (see the
    module docstring). Thread-safe (one batch at a time); workers start on first use and stay
    warm until ``close()`` (or interpreter exit)."""

    START_TIMEOUT_S = 120.0   # a worker that is not ready by then: the environment is broken

    def __init__(self, workers: int = DEFAULT_WORKERS):
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise ValueError(f"workers must be an int >= 0 (0: one per CPU core, at most 8), got {workers!r}")
        self.workers = workers or max(1, min(os.cpu_count() or 1, 8))
        self._lock = threading.Lock()
        self._results: queue.Queue = queue.Queue()
        self._slots: list[_Worker | None] = [None] * self.workers
        self._gen = 0
        self._pid = os.getpid()

    def _spawn(self, slot: int) -> _Worker:
        self._gen += 1
        w = _Worker(slot, self._gen, self._results)
        self._slots[slot] = w
        return w

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers (for monitoring)."""
        return [w.proc.pid for w in self._slots if w is not None and w.proc.poll() is None]

    def start(self, wait: bool = False) -> JudgePool:
        """Start every worker now (each takes 1-4 s to import math-verify), in the background, or
        until all are ready when ``wait``. Call it early (e.g. when the trainer is built) to keep
        that start-up off the first batch."""
        with self._lock:
            for slot, w in enumerate(self._slots):
                if w is None or w.proc.poll() is not None:
                    self._spawn(slot)
            if wait:
                self._run([], [], DEFAULT_TIMEOUT_S, [], JudgeStats(), wait_ready=True)
        return self

    def close(self) -> None:
        with self._lock:
            for slot, w in enumerate(self._slots):
                if w is not None:
                    w.close()
                self._slots[slot] = None

    def judge(self, responses: list[str], answers: list[str], timeout_s: float = DEFAULT_TIMEOUT_S,
              max_chars: int = DEFAULT_MAX_CHARS) -> tuple[list[bool], JudgeStats]:
        """(correct per response, JudgeStats). Never raises for a response: over budget, an error
        in math-verify, or a worker that dies all score as wrong and are counted. RuntimeError only
        when no worker can start at all (e.g. math-verify is not installed)."""
        if len(responses) != len(answers):
            raise ValueError(f"responses ({len(responses)}) and answers ({len(answers)}) must have the same length")
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a number > 0, got {timeout_s!r}")
        if not (isinstance(max_chars, int) and max_chars >= 1):
            raise ValueError(f"max_chars must be an int >= 1, got {max_chars!r}")
        if os.getpid() != self._pid:  # forked: the workers belong to the parent process
            raise RuntimeError("a JudgePool cannot be used in a forked child; use judge_pool() there")
        stats = JudgeStats(judged=len(responses))
        t0 = time.monotonic()
        texts = []
        for r in responses:
            text, cut = _clip(str(r), max_chars)
            texts.append(text)
            stats.truncated += cut
        ok = [False] * len(texts)
        if texts:
            with self._lock:
                try:
                    self._run(texts, [str(a) for a in answers], float(timeout_s), ok, stats)
                except BaseException:  # interrupted or no worker: busy workers would answer into the next batch
                    for slot, w in enumerate(self._slots):
                        if w is not None and w.task is not None:
                            w.kill()
                            self._slots[slot] = None
                    raise
        stats.seconds = time.monotonic() - t0
        return ok, stats

    def _run(self, texts: list[str], answers: list[str], budget: float, ok: list[bool], stats: JudgeStats,
             wait_ready: bool = False) -> None:
        hard = 1.25 * budget + 0.1
        todo = deque(range(len(texts)))
        left = len(texts)
        tries = [0] * len(texts)
        for slot in range(self.workers if wait_ready else min(self.workers, len(texts))):
            w = self._slots[slot]
            if w is None or w.proc.poll() is not None:
                self._spawn(slot)
        start_failures = 0

        def lost(w: _Worker, kill: bool) -> None:
            nonlocal left, start_failures
            if kill:
                w.kill()
            if w.task is not None:
                i = w.task[0]
                if kill:
                    stats.timeouts += 1
                    left -= 1
                elif tries[i] < 2:  # died under it, maybe for another reason (killed from outside): once more
                    todo.appendleft(i)
                else:
                    stats.errors += 1
                    left -= 1
            elif not w.ready:
                start_failures += 1
                if start_failures >= 3:
                    raise RuntimeError("the math judge's worker process exited during start-up three times "
                                       "(its error is above); is math-verify installed? pip install math-verify")
            stats.restarts += 1
            self._spawn(w.slot)

        while left or (wait_ready and not all(w is None or w.ready for w in self._slots)):
            now = time.monotonic()
            for w in self._slots:
                if w is not None and w.ready and w.task is None and todo:
                    i = todo.popleft()
                    if w.send(i, texts[i], answers[i], budget):
                        w.task = (i, time.monotonic() + hard)
                        tries[i] += 1
                    else:  # it exited while idle: not this response's fault; replace it and retry
                        todo.appendleft(i)
                        w.kill()
                        stats.restarts += 1
                        self._spawn(w.slot)
            waits = [w.task[1] - now for w in self._slots if w is not None and w.task is not None]
            waits += [w.started + self.START_TIMEOUT_S - now for w in self._slots if w is not None and not w.ready]
            msgs = []
            try:
                msgs.append(self._results.get(timeout=max(0.0, min(waits, default=1.0))))
                while True:  # everything that has arrived, before any deadline is judged
                    msgs.append(self._results.get_nowait())
            except queue.Empty:
                pass
            for slot, gen, msg in msgs:
                w = self._slots[slot]
                if w is None or w.gen != gen:
                    continue  # from a worker already replaced
                if msg is None:  # exited
                    w.proc.wait()
                    lost(w, kill=False)
                elif msg == ["ready"]:
                    w.ready = True
                else:
                    i, good, status = msg
                    if w.task is not None and w.task[0] == i:
                        ok[i] = bool(good)
                        stats.timeouts += status == "timeout"
                        stats.errors += status == "error"
                        w.task = None
                        left -= 1
            now = time.monotonic()
            for w in list(self._slots):
                if w is None:
                    continue
                if w.task is not None and now >= w.task[1]:
                    lost(w, kill=True)  # did not answer within the hard budget
                elif not w.ready and now >= w.started + self.START_TIMEOUT_S:
                    w.kill()
                    raise RuntimeError(f"the math judge's worker did not start within {self.START_TIMEOUT_S:.0f} s")


_POOLS: dict[tuple[int, int], JudgePool] = {}
_POOLS_LOCK = threading.Lock()


def judge_pool(workers: int = DEFAULT_WORKERS) -> JudgePool:
    """The process-wide JudgePool with this many workers (0: one per CPU core, at most 8), created
    on first use; its workers start on its first batch and are closed at interpreter exit."""
    with _POOLS_LOCK:
        pool = JudgePool(workers)  # validates; starts nothing
        key = (os.getpid(), pool.workers)  # 0 and the core count name the same pool
        return _POOLS.setdefault(key, pool)


@atexit.register
def _close_pools() -> None:
    for key, pool in list(_POOLS.items()):
        if key[0] == os.getpid():
            pool.close()


def math_judge(response: str, answer: str, timeout_s: float = DEFAULT_TIMEOUT_S,
               max_chars: int = DEFAULT_MAX_CHARS) -> bool:
    """math-verify on one response, bounded (``timeout_s``, ``max_chars``) and safe from any thread:
    it runs in the shared ``judge_pool()``. Over budget is wrong. For many responses call
    ``judge_pool().judge`` (or ``score_responses``) once: the workers then judge in parallel."""
    ok, _ = judge_pool().judge([response], [answer], timeout_s, max_chars)
    return ok[0]


JUDGES = {"exact": exact_judge, "choice": choice_judge, "math": math_judge}


def well_formatted(response: str, judge: str) -> bool:
    if judge == "choice":
        return _LONE_LETTER.fullmatch(normalize_text(response)) is not None
    if judge == "math":
        return "\\boxed{" in _after_think(response)
    return _INT.match(_first_line(response)) is not None


def score_responses(responses: list[str], answers: list[str], cfg, lengths: torch.Tensor | None = None,
                    max_new_tokens: int | None = None, stats: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards (N,) float32, correct (N,) bool) for N responses under a RewardConfig.

    ``lengths`` (N,) response lengths in tokens, needed for overlong shaping. The math judge runs in
    the shared ``judge_pool(cfg.judge_workers)`` with ``cfg.judge_timeout_s`` per response and
    ``cfg.judge_max_chars``; responses over budget score as wrong, are warned about, and are
    counted in ``stats`` (when a dict is given it receives ``JudgeStats.as_metrics()``:
    judge/timeouts, judge/truncated, judge/errors, judge/restarts, judge/seconds, judge/judged)."""
    import torch

    if len(responses) != len(answers):
        raise ValueError(f"responses ({len(responses)}) and answers ({len(answers)}) must have the same length")
    if cfg.judge not in JUDGES:
        raise ValueError(f"judge must be one of {sorted(JUDGES)}, got {cfg.judge!r}")
    if cfg.scheme not in ("binary", "paper", "format"):
        raise ValueError(f"scheme must be 'binary', 'paper' or 'format', got {cfg.scheme!r}")
    unclosed = [cfg.scheme == "paper" and cfg.require_think and THINK_CLOSE not in r for r in responses]
    todo = [i for i, skip in enumerate(unclosed) if not skip]
    correct = [False] * len(responses)
    if cfg.judge == "math":
        timeout_s = getattr(cfg, "judge_timeout_s", DEFAULT_TIMEOUT_S)
        pool = judge_pool(getattr(cfg, "judge_workers", DEFAULT_WORKERS))
        oks, js = pool.judge([responses[i] for i in todo], [answers[i] for i in todo], timeout_s,
                             getattr(cfg, "judge_max_chars", DEFAULT_MAX_CHARS))
        if js.timeouts or js.errors:
            warnings.warn(f"math judge: {js.timeouts} of {js.judged} responses went over the {timeout_s:g} s budget "
                          f"and {js.errors} failed; they score as wrong (raise reward.judge_timeout_s to give "
                          "them more time)", RuntimeWarning, stacklevel=2)
        if stats is not None:
            stats.update(js.as_metrics())
    else:
        judge = JUDGES[cfg.judge]
        oks = [judge(responses[i], answers[i]) for i in todo]
    for i, ok in zip(todo, oks):
        correct[i] = ok
    rewards = []
    for resp, skip, ok in zip(responses, unclosed, correct):
        if skip:
            r = cfg.no_think_close
        elif ok:
            r = cfg.correct
        elif cfg.scheme == "format" and well_formatted(resp, cfg.judge):
            r = cfg.format_reward
        else:
            r = cfg.wrong
        rewards.append(float(r))
    rew = torch.tensor(rewards, dtype=torch.float32)
    if cfg.overlong_shaping:
        from ercref import overlong_reward

        if lengths is None:
            raise ValueError("lengths is required when overlong_shaping is on")
        max_len = cfg.overlong_max_length or max_new_tokens
        if not max_len:
            raise ValueError("overlong_max_length (or max_new_tokens) is required when overlong_shaping is on")
        rew = rew + overlong_reward(lengths, max_len, cfg.overlong_buffer)
    return rew, torch.tensor(correct, dtype=torch.bool)
