"""The `resnetlab` command: a thin dispatcher over one module per subcommand.

Each module defines HELP, `add_arguments(parser)` and `run(args) -> int`; the logic lives
in the library so it can be imported and tested without the command line.
"""
from __future__ import annotations

import argparse
import errno
import os
import re
import signal
import sys
import threading
import warnings
from contextlib import contextmanager

from resnetlab import __version__
from resnetlab.errors import ResnetlabWarning, Terminated, UserError, command_line, shown

from . import eval as eval_cmd
from . import bench, data, embed, experiment, export, models, predict, report, train, weights
from .console import OutputFailed, checked_stdout, forgiving_stderr
from .parser import Parser

COMMANDS = {
    "models": models,
    "weights": weights,
    "data": data,
    "train": train,
    "eval": eval_cmd,
    "predict": predict,
    "embed": embed,
    "export": export,
    "bench": bench,
    "experiment": experiment,
    "report": report,
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="resnetlab", description="Deep residual networks (He et al., 2016).")
    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.HELP))
    return parser


def main(argv: list[str] | None = None) -> int:
    with command_line():  # the library's messages name this command's options (errors.option)
        args = build_parser().parse_args(argv)
        code = run_command(args)
    return end_torchrun_process(code)


def end_torchrun_process(code: int) -> int:
    """Under torchrun, end the process here with `code` once stdout and stderr are flushed (every
    file of the run is already written and closed; the process group is destroyed). Letting the
    interpreter finalise instead can fail a successful run: gloo threads outlive
    destroy_process_group() and may still be releasing a tensor while Py_FinalizeEx runs
    ("terminate called without an active exception", and torchrun reports the job failed).
    Elsewhere (tests, library use) returns `code`."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:  # the variables torchrun sets
        return code
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def run_command(args) -> int:
    """Run the parsed subcommand; user errors, Ctrl-C and SIGTERM become one line and an exit status.
    stderr that cannot be written is dropped (the command goes on), stdout that cannot be is an error."""
    with forgiving_stderr(), checked_stdout():
        return _run_command(args)


def _run_command(args) -> int:
    try:
        with warnings.catch_warnings(), sigterm_raises():
            show = warnings.showwarning

            def one_line(message, category, *rest, **kw):  # ours read as the CLI's errors do; others as usual
                if issubclass(category, ResnetlabWarning):  # in the command's own options, as its errors are
                    text = shown(in_options_of(args.command, str(message)), keep=chr(10))
                    print(f"resnetlab {args.command}: warning: {text}", file=sys.stderr, flush=True)
                else:
                    show(message, category, *rest, **kw)

            warnings.showwarning = one_line
            from resnetlab.data.decode import quiet_pillow

            quiet_pillow()
            refuse_blank_paths(args)
            code = int(COMMANDS[args.command].run(args) or 0)
            sys.stdout.flush()  # a reader gone away shows here, not at the interpreter's exit
            return code
    except BrokenPipeError:
        # `resnetlab models | head -1`: the reader closed the pipe. Stop quietly with the status of a
        # command ended by SIGPIPE, and point stdout at /dev/null so the final flush stays quiet.
        stdout_to_devnull()
        return 141
    except OutputFailed as err:  # what is left in stdout's buffer would fail again at the interpreter's exit
        stdout_to_devnull()
        print(f"resnetlab {args.command}: error: could not write to stdout ({err}); its output is cut short",
              file=sys.stderr)
        return 2
    except UserError as err:
        print(f"resnetlab {args.command}: error: {shown(in_options_of(args.command, str(err)), keep=chr(10))}",
              file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno != errno.ENAMETOOLONG:  # the one OSError that is always the user's input, wherever it shows
            raise
        print(f"resnetlab {args.command}: error: {name_too_long(err.filename)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:  # RuntimeError: torch's allocators (torch.OutOfMemoryError on CUDA)
        if not isinstance(err, MemoryError) and not re.search(r"can't allocate memory|out of memory", str(err)):
            raise
        print(f"resnetlab {args.command}: error: {out_of_memory(err)}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"resnetlab {args.command}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"resnetlab {args.command}: interrupted", file=sys.stderr)
        return 130


def stdout_to_devnull() -> None:
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file (captured, in tests)
        pass


@contextmanager
def sigterm_raises():
    """SIGTERM raises Terminated in this process, so a command ends with its line and status 143 (the
    default action ended it without a word) and its `finally` clauses run; a forked worker that
    inherits the handler dies as SIGTERM would have it. An ignored SIGTERM (nohup) stays ignored."""
    owner = os.getpid()

    def handle(signum, frame):
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# The library's hints name config keys, which is right in a recipe and from Python; each command
# says them as its own options (train and experiment take any key with --set). A hint that already
# names a flag (--set data.dataset=folder) is left as it is.
OPTION_HINTS = {
    "data": [(r"^--data ", ""), (r"(?<!--)\bset data\.skip_bad=true", "pass --skip-bad"), (r"(?<!--)\bset data\.val_size=0\b", "pass --val-size 0"),
             (r"(?<!--)\bset data\.cache_dir=DIR", "pass --cache-dir DIR"),
             (r"(?<!--)\bset data\.val_size below", "pass a --val-size below"),
             (r"\bsuch as data\.val_size=", "such as --val-size ")],
    "eval": [(r"(?<!--)\bset data\.skip_bad=true", "pass --skip-bad")],
    "train": [(r"(?<!--)\bset (data\.\w+=)", r"pass --set \1"), (r"\bpass --download\b", "pass --set data.download=true"),
              (r"(?<!--)\bset data\.val_size below (\d+)", r"pass --set data.val_size=N with N below \1"),
              (r"\bsuch as data\.val_size=", "such as --set data.val_size=")],
}
OPTION_HINTS["experiment"] = OPTION_HINTS["train"]


def in_options_of(command: str, message: str) -> str:
    for hint, option in OPTION_HINTS.get(command, []):
        message = re.sub(hint, option, message)
    return message


def refuse_blank_paths(args) -> None:
    """`--out " "` made a folder named by a space (and `--out "$UNSET"` an empty name): refused."""
    for name in ("out", "data", "resume", "cache_dir"):
        value = getattr(args, name, None)
        if isinstance(value, str) and not value.strip():
            raise UserError(f"--{name.replace('_', '-')} {value!r} is blank (an unset variable?): give a folder name")


def out_of_memory(err: BaseException) -> str:
    """One line for an allocation that failed: torch's is a paragraph of C++, numpy's a traceback."""
    found = re.search(r"allocate (\d+) bytes", str(err)) or re.search(r"allocate ([\d.]+ [KMGT]i?B)", str(err))
    size = ""
    if found:
        size = f" (an allocation of {int(found[1]) / 2**30:.3g} GiB failed)" if found[1].isdigit() else \
            f" (an allocation of {found[1].replace('. ', ' ')} failed)"
    return (f"out of memory{size}; lower --batch-size or --image-size (or the number of images at once), or use a "
            "machine with more memory")


def name_too_long(path) -> str:
    """The line for a path the system refused as too long: any folder's name over 255 bytes, or a whole
    path over 4096, fails the first look at it (os.stat), deep inside whichever step looked first."""
    shown = os.fsdecode(path) if path is not None else "a path given"
    if len(shown) > 80:
        shown = f"{shown[:50]}...{shown[-20:]}, {len(shown)} characters"
    return f"name too long ({shown}): a file or folder name may have at most 255 bytes, a path 4096"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
