"""The command line's ArgumentParser: one-line errors with "did you mean" for a mistyped command,
choice or flag (Python 3.11's argparse makes no suggestions), and no abbreviated flags."""
from __future__ import annotations

import argparse
import difflib
import os
import sys


def did_you_mean(word: str, candidates) -> str:
    """'; did you mean X?' for the closest candidate, or '' when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


class Parser(argparse.ArgumentParser):
    """Subparsers are of this class too (add_subparsers defaults parser_class to type(self))."""

    def __init__(self, *args, **kwargs):
        # Abbreviations would make `--epoch 3` mean --epochs today and an error the day another
        # --epoch... flag is added; a typo gets a suggestion instead.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.given: list[str] = []  # the command line being parsed (set on every parser by parse_args)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}{dash_file_hint(self.given)} (see {self.prog} --help)\n")

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            what = ("command" if isinstance(action, argparse._SubParsersAction)
                    else f"value for {'/'.join(action.option_strings) or action.metavar or action.dest}")
            hint = did_you_mean(value, action.choices) or f"; choose from {', '.join(map(str, action.choices))}"
            raise argparse.ArgumentError(None, f"unknown {what} {value!r}{hint}")

    def parse_args(self, args=None, namespace=None):
        self.share_given(list(sys.argv[1:] if args is None else args))
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self.subparser(parsed)
            parser.error(parser.unrecognized(extras))
        return parsed

    def share_given(self, given: list[str]) -> None:
        self.given = given
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for parser in action.choices.values():
                    parser.share_given(given)

    def subparser(self, parsed) -> "Parser":
        """The deepest (sub)parser that `parsed` went through: unknown flags are reported by it."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(parsed, action.dest, None))
                if chosen is not None:
                    return chosen.subparser(parsed)
        return self

    def unrecognized(self, extras: list[str]) -> str:
        flag = next((arg.split("=", 1)[0] for arg in extras if arg.startswith("-")), None)
        if flag is None:
            return f"unrecognized argument{'s' if len(extras) > 1 else ''} {' '.join(extras)}"
        options = [option for action in self._actions for option in action.option_strings]
        return f"unrecognized argument {flag}{did_you_mean(flag, options)}"


def dash_file_hint(given: list[str]) -> str:
    """A file named like an option (-x.jpg) is read as one: say how to pass it, when one exists."""
    options = given[:given.index("--")] if "--" in given else given  # after --, a file is read as one already
    dashed = next((arg for arg in options if arg.startswith("-") and arg != "-" and os.path.isfile(str(arg))), None)
    return f"; {dashed} is a file: pass it as ./{dashed}, or after --" if dashed else ""
