"""The quikgen command line: its commands and options; the work is done in
create.py (new), update.py (update), questions.py and answers.py, and every
error is shown by errors.reported()."""

from pathlib import Path
from typing import Annotated

import typer

from . import __version__
from .create import create_project
from .errors import QuikgenError, reported
from .questions import bundled_questions, kinds
from .update import apply_update, plan_update

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Generate a readable PyTorch training repository, and keep it current.",
)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"quikgen {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                          help="Show quikgen's version and exit.")] = False,
) -> None:
    """Generate a readable PyTorch training repository, and keep it current."""


@app.command()
def new(
    dest: Annotated[Path, typer.Argument(help="Folder to create; its name is the project name.")],
    kind: Annotated[str | None, typer.Option(
        help="Project kind; `quikgen kinds` lists them. Asked on a terminal; else recommender.",
        show_default=False)] = None,
    defaults: Annotated[bool, typer.Option(
        "--defaults", help="Never ask: take every answer from --data or its default.")] = False,
    data: Annotated[list[str], typer.Option(
        "--data", "-d", help="Answer a question: KEY=VALUE (repeatable).")] = [],  # noqa: B006
    no_git: Annotated[bool, typer.Option(
        "--no-git", help="Skip `git init` and the first commit (copier update needs them).")] = False,
    template: Annotated[str | None, typer.Option(
        help="Render another template source (git URL or path) instead of quikgen's own.")] = None,
    vcs_ref: Annotated[str | None, typer.Option(
        help="Tag or commit of the template source to render.")] = None,
) -> None:
    """Create a new training project in DEST."""
    with reported():
        created = create_project(dest, kind=kind, defaults=defaults, data=data, no_git=no_git,
                                 template=template, vcs_ref=vcs_ref)
    typer.echo(f"Created {dest} ({created.kind} project) from quikgen template {created.version}.")
    typer.echo("Next:")
    typer.echo(f"  cd {dest}")
    typer.echo(f"  python -m {created.package}.data --synthetic")
    typer.echo("  python main.py --epochs 3")
    typer.echo("Later, to take template improvements: quikgen update  (or: copier update --defaults)")


@app.command()
def update(
    dest: Annotated[Path, typer.Argument(help="The generated project to update.")] = Path("."),
    data: Annotated[list[str], typer.Option(
        "--data", "-d", help="Change an answer: KEY=VALUE (repeatable), e.g. tracker=mlflow.")] = [],  # noqa: B006
    check: Annotated[bool, typer.Option(
        "--check", help="Only say whether a newer template exists: exit 2 if so, 0 if not.")] = False,
) -> None:
    """Bring a generated project up to date with the newest template, keeping your edits."""
    with reported():
        plan = plan_update(dest, data)
        if plan.moved_to is not None:
            typer.echo(f"{dest}: the template source {plan.src} is not on this machine; "
                       f"using this machine's {plan.moved_to} instead")
        if check:
            if plan.newer:
                typer.echo(f"{dest}: template {plan.target} is available (the project is at "
                           f"{plan.current}); run `quikgen update`")
                raise typer.Exit(2)
            typer.echo(f"{dest}: up to date with template {plan.current}")
            return
        updated = apply_update(plan)
        typer.echo(f"Updated {dest} from template {plan.current} to {updated.version}: "
                   f"{len(updated.changed)} file(s) changed.")
        for path in updated.changed:
            typer.echo(f"  {'conflict' if path in updated.conflicts else 'changed '}  {path}")
        if updated.conflicts:
            raise QuikgenError(f"{len(updated.conflicts)} file(s) have conflicts: "
                               f"{', '.join(updated.conflicts)}; resolve the <<<<<<< markers, then commit")
        typer.echo("Review with `git diff`, run the tests, then commit.")


@app.command("kinds")
def list_kinds() -> None:
    """List the project kinds."""
    with reported():
        known = kinds(bundled_questions())
    for name, description in known.items():
        typer.echo(f"{name:<12} {description}")


def main() -> None:
    app()
