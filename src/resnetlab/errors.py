"""The one exception type for user-facing mistakes (bad input, unknown name, missing data), and
the one warning type for choices that work but cost the user (an emulated precision).

The CLI prints both as a single clear line (an error then exits with status 2); anything else
is a bug and keeps its traceback. A message says what to change as its reader can change it:
the command's options while a `resnetlab` command runs (`option`), arguments and config keys otherwise.
"""
import contextvars
import numbers
import os
import sys
import unicodedata
import warnings
from contextlib import contextmanager
from pathlib import Path

# True while a `resnetlab` command runs (cli.main): messages then name its options (--resume, --out),
# which a Python caller cannot pass. A context variable, restored on exit: a test may run main([...])
# and then call the library in the same process, and each reads its own words. (A thread starts with
# the Python words: the library raises none of these messages in a thread of its own.)
_COMMAND_LINE = contextvars.ContextVar("resnetlab_command_line", default=False)
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep  # frames under it are the library's (`warn`)


class UserError(ValueError):
    """A problem the user can fix: the message says what and where."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where a command is, as Ctrl-C raises KeyboardInterrupt (cli.run_command turns it
    into one line and status 143); a training run handles both itself (engine/signals.py)."""


class ResnetlabWarning(UserWarning):
    """Works, but probably not what the user wants: the message says why and what to do instead."""


def in_command() -> bool:
    """Whether a resnetlab command runs (messages in its words)."""
    return _COMMAND_LINE.get()


def option(cli: str, python: str) -> str:
    """How a message names what to change: `cli` (--resume, --out NEW_RUN) while a resnetlab command
    runs, `python` (resume=True, another workdir, the override data.root=ROOT) otherwise."""
    return cli if _COMMAND_LINE.get() else python


@contextmanager
def command_line(words: bool = True):
    """Messages in the command's words (`option`) inside the block: cli.main runs each command in one.
    words=False: as outside one (a process a command spawns passes on whether it runs in one: `in_command`)."""
    token = _COMMAND_LINE.set(words)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def warn(message: str) -> None:
    """A ResnetlabWarning attributed to the first caller outside resnetlab, the user's line, however deep
    in the library it is raised (Python 3.12's skip_file_prefixes, by hand)."""
    frame, level = sys._getframe(1), 2  # level 2: warn's caller
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, ResnetlabWarning, stacklevel=level - 1 if frame is None else level)



def first_line(err: BaseException) -> str:
    """The first non-blank line of an exception's text: library errors (torch's above all) span many
    lines, and the CLI promises one."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def count(n: int, noun: str) -> str:
    """'1 epoch', '7 epochs', '2 processes': messages say how many in words that agree."""
    return f"{n} {noun}{('es' if noun.endswith(('s', 'x', 'sh')) else 's') * (n != 1)}"


def expect_type(value, types, what: str):
    """`value` if it is one of `types`; else a UserError "WHAT, got TYPE", so that a Python API caller's
    wrong argument is named at the call rather than failing later deep in torch."""
    if not isinstance(value, types):
        raise UserError(f"{what}, got {type(value).__name__}")
    return value


def expect_count(name: str, value) -> int:
    """`value` if it is an integer of at least 1 (topk=, batch_size=, num_classes=). A bool, float or
    string is refused too: torch would take True as 1 or fail on 2.5 or "3" far from the call."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise UserError(f"{name} must be an integer of at least 1, got {value!r}")
    return int(value)


def expect_path(value, what: str) -> Path:
    """`value`, a str or os.PathLike, as a Path with `~` expanded (a shell expands it on a command line,
    Python does not). Anything else, or a blank name ("" is the current folder to pathlib: an unset
    variable, most likely), is a UserError naming `what`."""
    expect_type(value, (str, os.PathLike), f"{what} must be a path (a str or pathlib.Path)")
    text = os.fspath(value)
    expect_type(text, str, f"{what} must be a path (a str or pathlib.Path)")  # a PathLike may give bytes
    if not text.strip():
        raise UserError(f"{what} is blank ({text!r}; an unset variable?)")
    return Path(text).expanduser()


def breaks_lines(name: str) -> bool:
    """True when `name` (a class name) would break a line of output or a terminal: a control character
    (newline, tab, ESC), a lone surrogate (a byte that is not UTF-8) or a Unicode line or paragraph
    separator. Not the rest of what str.isprintable refuses: a no-break space, the zero-width joiners of
    Persian words and emoji, characters newer than this Python's Unicode tables are names."""
    return any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") for ch in name)


def shown(name: str, keep: str = "") -> str:
    """`name` (a file name) as it can be printed on one line of a terminal: each character that is not
    printable (newline, tab, ESC and other control characters, an undecodable byte) written as a
    Python escape (\\n, \\x1b, \\xff), so a name cannot split a line or send the terminal a command.
    `keep`: characters left as they are (a message's own newlines)."""
    if name.isprintable():
        return name
    out = []
    for ch in name:
        if ch.isprintable() or ch in keep:
            out.append(ch)
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # a byte that is not UTF-8, as os.fsdecode carries it
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)
