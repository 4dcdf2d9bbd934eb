"""Run `resnetlab` with a signal sent to itself at a named point: deterministic fault injection.

    python tests/killpoints.py POINT N [--signal KILL] [--rank R] [--first-attempt] [--slow-exit-rank R] -- train ...
    (under torchrun write --send INT: torchrun reads --signal as its own --signals-to-handle)
    python tests/killpoints.py --each POINT:N,POINT:N... -- train ... --out ROOT/{point} ...

POINT (N counts the occurrences in this process, from 1):
    step     just before the Nth optimizer step
    record   just after the Nth metrics.jsonl line is written (before that evaluation's checkpoints)
    write    inside the Nth checkpoint write: half the bytes are in the temporary file
    written  just after the Nth checkpoint file is in place (e.g. between last.pt and best.pt)
    test     as the final test starts (N ignored)
    nonfinite the Nth check of the weights before a checkpoint finds them NaN/inf (no signal: as one
             process's own BatchNorm statistics can become)

--rank R: only in the torchrun process of that rank; --first-attempt: only while torchrun's
TORCHELASTIC_RESTART_COUNT is 0, so a restarted job runs clean. --each runs one forked copy
per point at once ({point} in the arguments becomes e.g. "write3"; torch is imported once,
before any thread exists) and prints {"write3": exit status, ...}. The points are reached by
wrapping the engine's functions, so nothing about them lives in the library. Not a test module
(no test_ prefix): the fault tests start it as a subprocess, directly or under torchrun.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
import time


def _fire(sig: int) -> None:
    sys.stdout.flush(), sys.stderr.flush()
    os.kill(os.getpid(), sig)


def _after_calls(owner, name: str, n: int, sig: int, before: bool) -> None:
    """Wrap owner.name so the signal is sent before (or after) its nth call."""
    real, calls = getattr(owner, name), [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if before and calls[0] == n:
            _fire(sig)
        result = real(*args, **kwargs)
        if not before and calls[0] == n:
            _fire(sig)
        return result

    setattr(owner, name, wrapped)


def _inside_write(n: int, sig: int) -> None:
    """The nth torch.save writes half of its bytes to the checkpoint's temporary file, then the signal."""
    import torch

    real, calls = torch.save, [0]

    def partial_save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] != n:
            return real(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        _fire(sig)

    torch.save = partial_save


def _slow_shutdown(seconds: float) -> None:
    """The process leaves torchrun's process group `seconds` later, as a loaded machine's teardown can."""
    from resnetlab.engine import train

    real = train.shutdown_distributed

    def slow(*args, **kwargs):
        real(*args, **kwargs)
        time.sleep(seconds)

    train.shutdown_distributed = slow


def install(point: str, n: int, sig: int) -> None:
    from resnetlab.engine import logger, train

    if point == "step":
        _after_calls(train, "train_step", n, sig, before=True)
    elif point == "record":
        _after_calls(logger.RunLogger, "record", n, sig, before=False)
    elif point == "write":
        _inside_write(n, sig)
    elif point == "written":
        _after_calls(train, "save_checkpoint", n, sig, before=False)
    elif point == "test":
        _after_calls(train, "final_test", 1, sig, before=True)
    elif point == "nonfinite":
        real, calls = train.is_finite_model, [0]

        def not_finite_once(model):
            calls[0] += 1
            return False if calls[0] == n else real(model)

        train.is_finite_model = not_finite_once
    else:
        raise SystemExit(f"killpoints: unknown point {point!r}")


def run_each(specs: list[str], sig: int, argv: list[str]) -> dict:
    """Fork one child per POINT:N, each killed at its point; their exit statuses by name."""
    import torch  # noqa: F401  (imported once here, shared by every child)

    from resnetlab.cli import main as resnetlab_main

    children = {}
    for spec in specs:
        point, n = spec.split(":")
        name = f"{point}{n}"
        pid = os.fork()
        if pid == 0:  # the child: never returns into the parent's code
            code = 1
            try:
                install(point, int(n), sig)
                code = resnetlab_main([arg.replace("{point}", name) for arg in argv])
            finally:
                os._exit(code)
        children[name] = pid
    return {name: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for name, pid in children.items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="killpoints")
    parser.add_argument("point", nargs="?")
    parser.add_argument("n", type=int, nargs="?")
    parser.add_argument("--each", help="POINT:N,POINT:N,...: one forked run per point")
    # --send: under torchrun, whose own parser takes --signal for its --signals-to-handle
    parser.add_argument("--signal", "--send", dest="signal", default="KILL", help="KILL, TERM or INT")
    parser.add_argument("--rank", type=int, help="only in this torchrun rank")
    parser.add_argument("--first-attempt", action="store_true", help="only before torchrun's first restart")
    parser.add_argument("--slow-exit-rank", type=int, help="this torchrun rank takes 3 s more to leave the process "
                        "group and end, as a loaded machine's teardown can")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    if args.each:
        print(json.dumps(run_each(args.each.split(","), getattr(signal, f"SIG{args.signal}"), argv[split + 1:])))
        return 0
    armed = (args.rank is None or int(os.environ.get("RANK", "0")) == args.rank) and \
        (not args.first_attempt or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0")
    if armed:
        install(args.point, args.n, getattr(signal, f"SIG{args.signal}"))
    from resnetlab.cli import main as resnetlab_main

    if args.slow_exit_rank is not None and int(os.environ.get("RANK", "0")) == args.slow_exit_rank:
        _slow_shutdown(3.0)
    return resnetlab_main(argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
