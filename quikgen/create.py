"""quikgen new: render a project into a new folder, then version it with git."""

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import copier

from . import git
from .answers import parse_data
from .errors import QuikgenError
from .questions import bundled_questions, kinds, source_questions
from .source import publish


@dataclass
class Created:
    kind: str
    package: str
    version: str  # of the template it was rendered from


def check_destination(dest: Path) -> None:
    if dest.is_file() or (dest.exists() and not dest.is_dir()):
        raise QuikgenError(f"{dest} is a file; choose a new folder name for the project")
    if dest.is_dir() and any(dest.iterdir()):
        raise QuikgenError(f"{dest} is not empty; choose a new folder (quikgen never overwrites files)")


def check_kind(kind: str | None, questions: dict[str, dict]) -> None:
    known = kinds(questions)
    if kind is not None and known and kind not in known:
        raise QuikgenError(f"unknown kind {kind!r}; choose one of: {', '.join(known)}")


def create_project(dest: Path, *, kind: str | None = None, defaults: bool = False,
                   data: Sequence[str] = (), no_git: bool = False, template: str | None = None,
                   vcs_ref: str | None = None) -> Created:
    """Render the template (quikgen's own, or ``template`` at ``vcs_ref``) into the
    new folder ``dest``, then commit it. Every check comes before anything is written.

    Without ``kind`` (or ``--data kind=...``), copier asks it on a terminal, listing
    each kind with its line, and takes the template's default elsewhere."""
    check_destination(dest)
    if template is None:
        questions = bundled_questions()
        answers = parse_data(data, questions)
        check_kind(kind, questions)
        git.require()  # --no-git too: the template is versioned with git
        src, ref = publish()
        ref = vcs_ref or ref
    else:
        git.require()
        # copier records a local path as given; an absolute one still works from the project.
        src = str(Path(template).resolve()) if Path(template).exists() else template
        questions = source_questions(src, vcs_ref)
        answers = parse_data(data, questions)
        check_kind(kind, questions)
        ref = vcs_ref
    if kind is not None:
        answers.setdefault("kind", kind)
    worker = copier.run_copy(
        str(src), dest, data=answers,
        # The package name's default is the template's own rule, from the project name.
        user_defaults={"project_name": dest.name},
        vcs_ref=ref,
        # copier asks on a terminal; with no terminal there is nobody to ask.
        defaults=defaults or not sys.stdin.isatty(),
        quiet=True,
        unsafe=False,
    )
    rendered = worker.answers.combined
    version = str(ref or worker.template.commit or "HEAD")
    if not no_git:
        try:
            git.init_and_commit(dest, f"Generate project with quikgen {version}")
        except QuikgenError as error:
            raise QuikgenError(f"the project is rendered in {dest}, but not committed: {error}") from None
    return Created(kind=rendered["kind"], package=rendered["package_name"], version=version)
