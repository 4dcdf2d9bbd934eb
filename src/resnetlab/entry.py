"""The `resnetlab` command's entry point (and `python -m resnetlab`'s).

Loading the command line imports PyTorch, which takes seconds. A Ctrl-C in that time raised
KeyboardInterrupt wherever the import happened to be: a traceback, or, inside PyTorch's C++
start-up, an abort ("terminate called after throwing ... KeyboardInterrupt"). Here SIGINT only
records itself until the import is done; then the command ends with one line and status 130,
as an interrupted command does (cli.run_command).
"""
from __future__ import annotations

import os
import signal
import sys


def load_cli():
    """The command line's main function (imports PyTorch and every subcommand)."""
    from resnetlab.cli import main

    return main


def reopen_closed_streams() -> None:
    """Point a closed stdin, stdout or stderr (`resnetlab train >&-`) at /dev/null before anything
    else opens a file. Python leaves sys.stdout None there: every print failed (a traceback at the
    end), the CPU kernels' build failed on its flush (so a resumed run took other kernels and other
    numbers), and the next file opened would have taken descriptor 1, to be written by any C code
    that prints."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        setattr(sys, name, open(fd, mode, closefd=False))


def main(argv: list[str] | None = None) -> int:
    code = run_cli(argv)
    if argv is None:  # the process's own command line: it ends now. A late Ctrl-C (the second of two) raised
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # in PyTorch's clean-up at exit: a traceback after the line
    return code


def run_cli(argv: list[str] | None = None) -> int:
    reopen_closed_streams()
    for stream in (sys.stdout, sys.stderr):  # an ASCII or Latin-1 terminal: a class named cafe with an accent,
        try:  # or 猫, is written as \xe9 / \u732b instead of ending the command in UnicodeEncodeError
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):  # not a text file (replaced), or closed
            pass
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        cli_main = load_cli()
    except (ImportError, OSError, MemoryError) as err:  # e.g. `ulimit -v` below what PyTorch's libraries map
        from resnetlab.errors import first_line

        said = first_line(err)[:300]
        said = said if said == type(err).__name__ else f"{type(err).__name__}: {said}"
        print(f"resnetlab: error: PyTorch could not be loaded ({said}); "
              "a memory limit (ulimit -v) too low for its libraries, or a broken install", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        if received:
            raise KeyboardInterrupt
        return cli_main(argv)
    except KeyboardInterrupt:  # here or while the arguments were parsed, before a command runs
        print("resnetlab: interrupted", file=sys.stderr)
        return 130
