"""User reward functions that misbehave, for the reward-pool tests (loaded as module:function)."""

import time


def raises(completion, answer):
    raise RuntimeError(f"cannot score {completion!r}")


def hangs(completion, answer):
    if completion == "hang":
        time.sleep(60)
    return 1.0


def hangs_in_c(completion, answer):
    if completion == "hang":
        import signal
        # As C code that never returns to the interpreter: the alarm cannot reach it.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(60)
    return 0.5


def nan(completion, answer):
    return float("nan") if completion == "nan" else float("inf") if completion == "inf" else 1.0


def not_a_number(completion, answer):
    return "yes"


def greedy(completion, answer):
    if completion == "big":
        _ = bytearray(8 * 2**30)
    return 1.0


def starts_with_digit(completion, answer):
    """A reward a random-init model earns about half the time: groups carry signal."""
    return 1.0 if completion[:1].isdigit() else 0.0
