"""The ``pyro-dgm`` command line.

Each subcommand lives in its own module listed in :data:`SUBCOMMANDS`; a module defines
``add_parser(subparsers)`` that registers its parser and sets ``func=run(args) -> int``.
Parsers are built from plain data (:mod:`pyro_dgm.defaults`): ``pyro-dgm --help`` imports
neither torch nor Pyro; each command imports what it needs inside ``run``.
Bad input is reported as one line on stderr with a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

__all__ = ["SUBCOMMANDS", "CLIError", "console_main", "main"]

#: Modules that add a subcommand. Add yours here.
SUBCOMMANDS = ("pyro_dgm.cli.compare", "pyro_dgm.cli.train", "pyro_dgm.cli.evaluate")


class CLIError(Exception):
    """A usage error: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise CLIError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyro-dgm", description="Deep generative models and inference "
                     "backends for Pyro.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in SUBCOMMANDS:
        importlib.import_module(module).add_parser(sub)
    return parser


def _command(argv: list[str]) -> str:
    """``pyro-dgm <command>`` for messages (``pyro-dgm`` before a command is known)."""
    names = {module.rsplit(".", 1)[-1] for module in SUBCOMMANDS}
    first = next((a for a in argv if not a.startswith("-")), None)
    return f"pyro-dgm {first}" if first in names else "pyro-dgm"


def _name_the_flag(message: str, parser: argparse.ArgumentParser, command: str | None) -> str:
    """``"seed must be >= 0"`` -> ``"--seed: seed must be >= 0"``, ``"out: ..."`` ->
    ``"--out: ..."``: a message that starts with the name of one of the command's options
    names the option's flag (library errors name the Python argument)."""
    sub = next((a.choices.get(command) for a in parser._actions
                if isinstance(a, argparse._SubParsersAction)), None)
    if sub is None:
        return message
    head = message.split(" ", 1)[0]
    flag = "--" + head.rstrip(":").replace("_", "-")
    if flag not in sub._option_string_actions:
        return message
    return f"{flag}:{message[len(head):]}" if head.endswith(":") else f"{flag}: {message}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pyro-dgm``; returns the exit code.

    Every error is one line, ``pyro-dgm <command>: <argument>: <what is wrong>``, with exit
    status 2 (130 after Ctrl-C).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except CLIError as e:
        print(str(e), file=sys.stderr)
        return 2
    except ValueError as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        command = _command(argv).removeprefix("pyro-dgm").strip() or None
        print(f"{_command(argv)}: {_name_the_flag(message, parser, command)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{_command(argv)}: interrupted", file=sys.stderr)
        return 130


def console_main() -> None:
    """The ``pyro-dgm`` executable: :func:`main`, then exit with its status.

    A Ctrl-C while the interpreter shuts down (after the command has ended, which with
    torch loaded takes a noticeable moment) changes nothing, so it is ignored rather than
    turned into a traceback and a signal exit status.
    """
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(code)
