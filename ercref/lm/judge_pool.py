"""The math judge, bounded: worker processes that run math-verify with a hard per-response
wall-clock budget, from any thread.

math-verify's own timeouts use ``signal.alarm`` (main thread only, and up to 5 s per parse and per
comparison). ``math_judge`` and ``ercref.lm.scoring.score_responses`` run it in worker processes
(``JudgePool``: started on first use, shared, reused across calls; ``ercref.lm.judge_worker`` is
the worker's side). Each response is cut to its last ``max_chars`` characters (after ``</think>``)
and gets ``timeout_s`` seconds of wall clock: an in-worker timer interrupts the judge at
``timeout_s``, and a worker that has not answered by ``1.25 * timeout_s + 0.1`` s is killed and
replaced. A response over budget (or whose worker died twice under it) scores as wrong, is counted
(``JudgeStats``) and never raises. So a batch of n responses costs at most about
``n / workers * (1.25 * timeout_s + 0.1)`` s, plus a worker's start-up (1-4 s on 2 busy cores) on
first use and after each kill; ``judge_pool().start()`` starts the workers early, in the
background.

Arguments are checked before any work: responses and answers are str (a None is a TypeError
naming its index), ``timeout_s`` a finite number of seconds in (0, MAX_TIMEOUT_S] (not a bool),
``max_chars`` an int >= 1.
"""
from __future__ import annotations

import atexit
import json
import math
import numbers
import os
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

from . import judge_worker
from .rewards import check_text, judged_text

# math judge budget defaults (RewardConfig.judge_timeout_s / judge_max_chars / judge_workers)
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_MAX_CHARS = 16384
DEFAULT_WORKERS = 0          # 0: one per CPU core, at most 8
MAX_TIMEOUT_S = 86_400.0     # a day per response: a longer budget bounds nothing
_REWARDS_FILE = str(Path(__file__).with_name("rewards.py"))   # the judgement a worker runs


def check_budget(timeout_s, max_chars) -> tuple[float, int]:
    """(timeout_s, max_chars) as (float, int); ValueError naming the argument and its valid range."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, numbers.Real) or not math.isfinite(timeout_s) \
            or not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise ValueError(f"timeout_s must be a finite number of seconds in (0, {MAX_TIMEOUT_S:g}], got {timeout_s!r}")
    if isinstance(max_chars, bool) or not isinstance(max_chars, numbers.Integral) or max_chars < 1:
        raise ValueError(f"max_chars must be an int >= 1, got {max_chars!r}")
    return float(timeout_s), int(max_chars)


def check_texts(responses, answers) -> None:
    """Two equally long sequences of str; ValueError for unequal lengths, TypeError naming the first
    entry that is not a str (``responses[3]``)."""
    if len(responses) != len(answers):
        raise ValueError(f"responses ({len(responses)}) and answers ({len(answers)}) must have the same length")
    for name, texts in (("responses", responses), ("answers", answers)):
        for i, t in enumerate(texts):
            check_text(f"{name}[{i}]", t)


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



class _Worker:
    def __init__(self, slot: int, gen: int, results: queue.Queue):
        self.slot, self.gen, self.ready, self.task = slot, gen, False, None
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-c", judge_worker.BOOT, judge_worker.__file__, _REWARDS_FILE],
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
        """(correct per response, JudgeStats). Never raises for what a response says: over budget,
        an error in math-verify, or a worker that dies all score as wrong and are counted. Bad
        arguments are refused first (module docstring); RuntimeError when no worker can start at
        all (e.g. math-verify is not installed)."""
        check_texts(responses, answers)
        timeout_s, max_chars = check_budget(timeout_s, max_chars)
        if os.getpid() != self._pid:  # forked: the workers belong to the parent process
            raise RuntimeError("a JudgePool cannot be used in a forked child; use judge_pool() there")
        stats = JudgeStats(judged=len(responses))
        t0 = time.monotonic()
        texts = []
        for r in responses:
            text, cut = judged_text(r, max_chars)
            texts.append(text)
            stats.truncated += cut
        ok = [False] * len(texts)
        if texts:
            with self._lock:
                try:
                    self._run(texts, list(answers), timeout_s, ok, stats)
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
    ok, _ = judge_pool().judge([check_text("response", response)], [check_text("answer", answer)], timeout_s,
                               max_chars)
    return ok[0]
