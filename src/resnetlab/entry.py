"""The `resnetlab` command's entry point (and `python -m resnetlab`'s).

Loading the command line imports PyTorch, which takes seconds. A Ctrl-C in that time raised
KeyboardInterrupt wherever the import happened to be: a traceback, or, inside PyTorch's C++
start-up, an abort ("terminate called after throwing ... KeyboardInterrupt"). Here SIGINT only
records itself until the import is done; then the command ends with one line and status 130,
as an interrupted command does (cli.run_command).
"""
from __future__ import annotations

import signal
import sys


def load_cli():
    """The command line's main function (imports PyTorch and every subcommand)."""
    from resnetlab.cli import main

    return main


def main(argv: list[str] | None = None) -> int:
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        cli_main = load_cli()
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        if received:
            raise KeyboardInterrupt
        return cli_main(argv)
    except KeyboardInterrupt:  # here or while the arguments were parsed, before a command runs
        print("resnetlab: interrupted", file=sys.stderr)
        return 130
