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


@contextmanager
def reported() -> Iterator[None]:
    """Show a QuikgenError, or copier's refusal of an answer or a template, as
    ``error: <one line>`` on stderr, and exit 1."""
    try:
        yield
    except QuikgenError as error:
        message = one_line(str(error))
    except (CopierError, ValueError) as error:
        message = copier_message(error)
    else:
        return
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)
