"""Reward functions by name, and the bounded worker pool that runs them safely.

A reward function is ``fn(completion: str, answer: str) -> float``. Built-ins are registered
by name (``arithmetic``, ``exact``, ``math``); anything else is given as ``module:function``.

Every call runs in a ``RewardPool`` worker *process* (spawned, never forked from an engine
process) with a per-sample timeout and an address-space limit. A sample whose function
raises, runs past the timeout, or returns a non-number or a non-finite value gets status
``error`` or ``timeout`` and a NaN reward; it never stops the rollout actor. A worker that
hangs in C code (where the in-process alarm cannot reach) is killed and replaced.
"""

from __future__ import annotations

import importlib
import math
import multiprocessing as mp
import signal
import time
from multiprocessing.connection import Connection, wait
from typing import Callable, Dict, List, Optional, Sequence, Tuple

RewardFn = Callable[[str, str], float]
REWARDS: Dict[str, RewardFn] = {}


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    def decorator(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn

    return decorator


@register("exact")
def exact(completion: str, answer: str) -> float:
    """1.0 when the stripped completion equals the stripped answer."""
    return 1.0 if completion.strip() == answer.strip() else 0.0


@register("arithmetic")
def arithmetic(completion: str, answer: str) -> float:
    """The embedded task's verifier: the completion is exactly the sum."""
    from actors.tasks.arithmetic import verify

    return verify(completion, answer)


@register("math")
def math_answer(completion: str, answer: str) -> float:
    """math-verify equivalence of the completion's final (boxed, else last) answer."""
    from math_verify import parse, verify

    # The pool enforces the timeout; math-verify's own alarm would fight ours.
    gold = parse(answer if "$" in answer or "\\boxed" in answer else f"${answer}$",
                 parsing_timeout=None)
    pred = parse(completion, parsing_timeout=None)
    return 1.0 if gold and pred and verify(gold, pred, timeout_seconds=None) else 0.0


def resolve(name: str) -> RewardFn:
    """A registered reward by name, or a user function given as 'module:function'."""
    if name in REWARDS:
        return REWARDS[name]
    module, sep, attr = name.partition(":")
    if not sep:
        raise ValueError(f"unknown reward {name!r}: use one of {sorted(REWARDS)} or "
                         "'module:function' (rollout.reward)")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"rollout.reward {name!r}: cannot load it ({err})") from None
    if not callable(fn):
        raise ValueError(f"rollout.reward {name!r} is not callable")
    return fn


class _SampleTimeout(Exception):
    pass


def _on_alarm(signum, frame):  # pragma: no cover - runs in the worker process
    raise _SampleTimeout()


def _worker_main(conn: Connection, name: str, timeout_s: float, memory_mb: int) -> None:
    """Worker process: score (index, completion, answer) items, one reply per item."""
    import resource

    if memory_mb > 0:
        limit = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    fn = resolve(name)
    signal.signal(signal.SIGALRM, _on_alarm)
    while True:
        try:
            items = conn.recv()
        except EOFError:
            return
        for index, completion, answer in items:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
            try:
                value = fn(completion, answer)
                status, message = "ok", ""
            except _SampleTimeout:
                value, status, message = math.nan, "timeout", f"took over {timeout_s}s"
            except MemoryError:
                value, status, message = math.nan, "error", "MemoryError (over the memory limit)"
            except Exception as err:  # a user reward may raise anything
                value, status, message = math.nan, "error", f"{type(err).__name__}: {err}"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            if status == "ok":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    value, status, message = math.nan, "error", (
                        f"returned {type(value).__name__}, not a number")
                elif not math.isfinite(value):
                    value, status, message = math.nan, "error", f"returned {value}"
            conn.send((index, float(value), status, message))


class _Worker:
    def __init__(self, ctx, name: str, timeout_s: float, memory_mb: int) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, name, timeout_s, memory_mb),
                                   daemon=True)
        self.process.start()
        child.close()
        self.pending: List[Tuple[int, str, str]] = []
        self.last_progress = time.monotonic()

    def send(self, items: List[Tuple[int, str, str]]) -> None:
        self.pending.extend(items)
        self.last_progress = time.monotonic()
        self.conn.send(items)

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class RewardPool:
    """A fixed number of reward worker processes with per-sample timeouts."""

    def __init__(self, reward: str, workers: int = 2, timeout_s: float = 5.0,
                 memory_mb: int = 2048, on_flag: Optional[Callable[[str, str], None]] = None
                 ) -> None:
        resolve(reward)  # fail now, in the caller, on an unknown or unimportable reward
        self.reward, self.timeout_s, self.memory_mb = reward, timeout_s, memory_mb
        self._ctx = mp.get_context("spawn")
        self._workers = [self._spawn() for _ in range(workers)]
        self._on_flag = on_flag
        self.restarts = 0

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self.reward, self.timeout_s, self.memory_mb)

    def score(self, completions: Sequence[str], answers: Sequence[str]
              ) -> Tuple[List[float], List[str]]:
        """Rewards and statuses ('ok' / 'error' / 'timeout') for each completion."""
        count = len(completions)
        values: List[float] = [math.nan] * count
        statuses: List[Optional[str]] = [None] * count
        items = list(zip(range(count), completions, answers))
        per = max(1, math.ceil(count / len(self._workers)))
        for w, start in zip(self._workers, range(0, count, per)):
            w.send(items[start:start + per])
        # The in-process alarm ends a slow Python call; this deadline catches the rest.
        grace = self.timeout_s + 2.0
        while any(w.pending for w in self._workers):
            busy = [w for w in self._workers if w.pending]
            ready = wait([w.conn for w in busy], timeout=0.2)
            for w in busy:
                if w.conn in ready:
                    try:
                        index, value, status, message = w.conn.recv()
                    except EOFError:  # the worker died (e.g. killed by the OS)
                        self._replace(w, statuses, "error", "reward worker died")
                        continue
                    w.pending = [it for it in w.pending if it[0] != index]
                    w.last_progress = time.monotonic()
                    values[index], statuses[index] = value, status
                    if status != "ok" and self._on_flag:
                        self._on_flag(status, message)
                elif time.monotonic() - w.last_progress > grace:
                    self._replace(w, statuses, "timeout", "reward worker hung")
        return values, [s or "error" for s in statuses]

    def _replace(self, worker: _Worker, statuses: List[Optional[str]], status: str,
                 message: str) -> None:
        """Kill a stuck worker, flag the sample it was on, resend the rest to a new one."""
        stuck, rest = worker.pending[0], worker.pending[1:]
        statuses[stuck[0]] = status
        if self._on_flag:
            self._on_flag(status, message)
        worker.kill()
        self.restarts += 1
        fresh = self._spawn()
        self._workers[self._workers.index(worker)] = fresh
        if rest:
            fresh.send(rest)

    def close(self) -> None:
        for w in self._workers:
            w.kill()
        self._workers = []

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
