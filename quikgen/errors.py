"""quikgen's one error type, and the one place that shows errors to the user."""

import re
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from copier.errors import CopierError


class QuikgenError(Exception):
    """A problem the user can fix; shown as one line, without a traceback."""


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def copier_message(error: Exception) -> str:
    """copier's error as one line, with the flag that fixes a rejected answer."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    match = re.match(r"Validation error for question '(\w+)': (.*)", text)
    if match:
        question, problem = match.groups()
        flag = "--kind KIND" if question == "kind" else f"--data {question}=VALUE"
        return f"{problem.strip()} (set it with {flag})"
    return text


def raised_in_copier(error: BaseException) -> bool:
    """Whether copier's own code raised ``error``: copier refuses an answer with a
    plain ValueError, where the same type from quikgen's code is a bug."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    module = frame.tb_frame.f_globals.get("__name__", "") if frame is not None else ""
    return module.partition(".")[0] == "copier"


@contextmanager
def reported() -> Iterator[None]:
    """Show a QuikgenError, or copier's refusal of an answer or a template, as
    ``error: <one line>`` on stderr, and exit 1. Anything else is a bug in quikgen
    and keeps its traceback."""
    try:
        yield
    except QuikgenError as error:
        message = one_line(str(error))
    except CopierError as error:
        message = copier_message(error)
    except ValueError as error:
        if not raised_in_copier(error):
            raise
        message = copier_message(error)
    else:
        return
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)
