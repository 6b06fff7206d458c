"""What every command-line tool shares: one-line errors, tables, JSON output.

Imported by every cgsh/cgctl run, so it imports only click: pydantic and the resource
codec are loaded where a refusal needs them (cli/lazy.py says why start-up matters).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from certgate.errors import BadParameter, CertgateError


def run(main: Callable[..., Any]) -> Callable[[], None]:
    """Wraps a click group so refusals print one line and exit with their code."""

    def entry() -> None:
        try:
            main(standalone_mode=False)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except CertgateError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)
        except OSError as exc:  # stdout on a full disk, a file that cannot be read
            # (click itself ends quietly when the reader of a pipe leaves.) Nothing more
            # to stdout: Python would fail again flushing it at exit.
            _silence_stdout()
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            sys.exit(1)
        except Exception as exc:
            bad = _refused_value(exc)
            if bad is None:
                raise
            click.echo(f"error: {bad.message}", err=True)
            sys.exit(bad.exit_code)

    return entry


def _refused_value(exc: Exception) -> BadParameter | None:
    """A flag's value a resource model refused, as our one-line error; else None."""
    if "pydantic" not in sys.modules:
        return None  # no model was built, so this is no ValidationError
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return None
    from certgate.api.codec import describe_validation_error

    return BadParameter(describe_validation_error(exc.title.lower(), "", exc))


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *([_cell(v) for v in row] for row in rows)]
    widths = [max(map(len, column)) for column in zip(*cells, strict=True)]  # rows as wide
    # One format string for every line: `cgsh ls` prints 10,000 of them.
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [line.format(*row).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if type(value) is str:  # most cells; a str subclass may print otherwise (str() below)
        text = value
    elif isinstance(value, list | tuple):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, dict):
        text = ",".join([f"{k}={v}" for k, v in value.items()])
    else:
        text = "" if value is None else str(value)
    # Cells carry what users typed (commands, reasons, names): an escape sequence
    # in one must not reach the reader's terminal, where it could rewrite the rows
    # above it, set the clipboard, or answer into the shell. isprintable() is the
    # fast test (10,000 rows of `cgsh ls`); tabs and newlines would break the columns.
    return text if text.isprintable() else _CONTROL.sub(_escaped, text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escaped(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def print_json(data: Any) -> None:
    """Indented for a person at a terminal; on one line when piped to a script: the same
    JSON (keys sorted, the same separators), but written by json's C encoder. Indenting
    makes json fall back to its pure-Python encoder, about 4x slower: 0.3 s of
    `cgsh ls --format=json` at 10,000 nodes."""
    indent = 2 if sys.stdout.isatty() else None
    click.echo(json.dumps(data, indent=indent, sort_keys=True))


FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format.",
)


class DurationText(click.ParamType[str]):
    """A duration flag (`--ttl=10m`): checked here, passed on as the text typed.

    A unit is required: `--ttl=10` could mean seconds or minutes, and a lock or a token
    that lasts 10 seconds instead of 10 minutes is a surprise found too late. Zero is
    refused: every duration flag is a lifetime or a wait, and none of them means "none".
    """

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        flag = param.opts[0] if param is not None and param.opts else "duration"
        if text.isdigit():
            # Our one-line error, not click's usage block: run() prints it.
            raise BadParameter(f'invalid {flag} "{text}": give a unit: {text}s, {text}m or {text}h')
        from certgate.api.duration import parse_duration  # pulls in pydantic: only here

        try:
            duration = parse_duration(text)
        except BadParameter as exc:
            raise BadParameter(f"{flag}: {exc.message}") from None
        if not duration:
            raise BadParameter(f'invalid {flag} "{text}": must be longer than 0s')
        return text


DURATION = DurationText()
