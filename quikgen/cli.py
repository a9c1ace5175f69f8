"""The quikgen command line: a thin layer over copier's Python API."""

import re
import shutil
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated

import copier
import typer
import yaml
from copier.errors import CopierError
from packaging.version import InvalidVersion, Version

from . import __version__
from .source import SourceError, bundled_template, has_tag, looks_published, publish, source_dir

ANSWERS_FILE = ".copier-answers.yml"
# Used for the first commit only when git has no identity configured at all.
FALLBACK_IDENTITY = ["-c", "user.name=quikgen", "-c", "user.email=quikgen@localhost"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Generate a readable PyTorch training repository, and keep it current.",
)


class UserError(Exception):
    """A mistake the user can fix; shown as one line, without a traceback."""


def fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


# What copier reads as a yes or a no; anything else would be silently misread.
BOOLEANS = {"true": True, "yes": True, "on": True, "1": True,
            "false": False, "no": False, "off": False, "0": False}


def template_questions() -> dict[str, dict]:
    """The questions of quikgen's own template, by name."""
    spec = yaml.safe_load((bundled_template() / "copier.yml").read_text())
    return {name: question for name, question in spec.items() if not name.startswith("_")}


def kinds() -> dict[str, str]:
    """Project kinds and their descriptions, read from the template's questions."""
    choices = template_questions()["kind"]["choices"]
    return {value: label.split(": ", 1)[-1] for label, value in choices.items()}


def parse_data(pairs: list[str], questions: dict[str, dict] | None) -> dict:
    """--data KEY=VALUE pairs as answers, checked against ``questions`` when the
    template's questions are known: copier ignores an unknown key without a word."""
    data = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise UserError(f"--data {pair!r} is not KEY=VALUE; write it like --data use_mlflow=true")
        if questions is not None:
            if key not in questions:
                raise UserError(f"--data {key}: the template asks no such question; "
                                f"it asks {', '.join(questions)}")
            if questions[key].get("type") == "bool":
                if value.lower() not in BOOLEANS:
                    raise UserError(f"--data {pair}: answer {key}=true or {key}=false")
                value = BOOLEANS[value.lower()]
        data[key] = value
    return data


def package_slug(name: str) -> str:
    """my-Recommender.v2 -> my_recommender_v2: the default package name."""
    return re.sub(r"[^a-z0-9_]", "_", name.lower())


def copier_message(error: Exception) -> str:
    """copier's error, with the flag that fixes a rejected answer."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    match = re.match(r"Validation error for question '(\w+)': (.*)", text)
    if match:
        question, problem = match.groups()
        flag = "--kind KIND" if question == "kind" else f"--data {question}=VALUE"
        return f"{problem.strip()} (set it with {flag})"
    return text


def git_has_identity(repo: Path) -> bool:
    def configured(key: str) -> bool:
        result = subprocess.run(["git", "-C", str(repo), "config", key], capture_output=True)
        return result.returncode == 0 and bool(result.stdout.strip())

    return configured("user.name") and configured("user.email")


def git_init_and_commit(project: Path, tag: str) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(project), *args], check=True, capture_output=True)

    git("init", "--quiet", "--initial-branch=main")
    git("add", "--all")
    identity = [] if git_has_identity(project) else FALLBACK_IDENTITY
    git(*identity, "commit", "--quiet", "--no-verify", "-m", f"Generate project with quikgen {tag}")


def check_destination(dest: Path) -> None:
    if dest.is_file() or (dest.exists() and not dest.is_dir()):
        raise UserError(f"{dest} is a file; choose a new folder name for the project")
    if dest.is_dir() and any(dest.iterdir()):
        raise UserError(f"{dest} is not empty; choose a new folder (quikgen never overwrites files)")


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
    kind: Annotated[str, typer.Option(help="Project kind; `quikgen kinds` lists them.")] = "recommender",
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
    try:
        check_destination(dest)
        answers = parse_data(data, template_questions() if template is None else None)
        known = kinds()
        if kind not in known:
            raise UserError(f"unknown kind {kind!r}; choose one of: {', '.join(known)}")
        answers.setdefault("kind", kind)
        if shutil.which("git") is None:  # --no-git too: the template is versioned with git
            raise UserError("git is not installed; install git (quikgen versions the template "
                            "and the project with it)")
        if template is None:
            src, ref = publish()
            ref = vcs_ref or ref
        else:
            # copier records a local path as given; an absolute one still works from the project.
            src = str(Path(template).resolve()) if Path(template).exists() else template
            ref = vcs_ref
        worker = copier.run_copy(
            str(src), dest, data=answers,
            user_defaults={"project_name": dest.name, "package_name": package_slug(dest.name)},
            vcs_ref=ref,
            # copier asks on a terminal; with no terminal there is nobody to ask.
            defaults=defaults or not sys.stdin.isatty(),
            quiet=True,
            unsafe=False,
        )
    except (UserError, SourceError) as error:
        raise fail(str(error)) from None
    except (CopierError, ValueError) as error:
        raise fail(copier_message(error)) from None

    rendered = worker.answers.combined
    if not no_git:
        git_init_and_commit(dest, str(ref or "HEAD"))
    package = rendered["package_name"]
    typer.echo(f"Created {dest} ({rendered['kind']} project) from quikgen template {ref}.")
    typer.echo("Next:")
    typer.echo(f"  cd {dest}")
    typer.echo(f"  python -m {package}.data --synthetic")
    typer.echo("  python main.py --epochs 3")
    typer.echo("Later, to take template improvements: quikgen update  (or: copier update --defaults)")


def git_lines(project: Path, *args: str) -> list[str]:
    result = subprocess.run(["git", "-C", str(project), *args], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def dirty_files(project: Path) -> list[str]:
    return [line[3:] for line in git_lines(project, "status", "--porcelain")]


def conflicted_files(project: Path) -> list[str]:
    """Files copier left with conflict markers (it marks them unmerged in git)."""
    return git_lines(project, "diff", "--name-only", "--diff-filter=U")


def newest_tag(src: str) -> str | None:
    """The newest stable PEP 440 tag of a template source (a git URL or path)."""
    result = subprocess.run(["git", "ls-remote", "--tags", "--refs", src], capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"cannot reach the template source {src} that {ANSWERS_FILE} records; make it "
                        "reachable from here (check the address and your access with `git ls-remote "
                        f"{src}`), or set _src_path in {ANSWERS_FILE} to a copy you can reach and commit")
    versions = []
    for line in result.stdout.splitlines():
        tag = line.rsplit("refs/tags/", 1)[-1]
        try:
            version = Version(tag)
        except InvalidVersion:
            continue
        if not version.is_prerelease:
            versions.append((version, tag))
    return max(versions)[1] if versions else None


def read_answers(project: Path) -> dict:
    answers_path = project / ANSWERS_FILE
    if not answers_path.is_file():
        raise UserError(f"{project} is not a quikgen project (no {ANSWERS_FILE}); "
                        "run this inside a folder made by `quikgen new`")
    recorded = yaml.safe_load(answers_path.read_text()) or {}
    if not recorded.get("_src_path") or not recorded.get("_commit"):
        raise UserError(f"{answers_path} records no template source and version; "
                        "it was not made from a versioned template, so it cannot be updated")
    return recorded


def require_tag(repo: Path, tag: str) -> None:
    """copier replays the project's edits on the template version it was made
    from, so that version must be in this machine's source too."""
    if has_tag(repo, tag):
        return
    version = Version(tag).base_version
    if Version(tag).public != version:  # a .postN tag: only that development checkout has it
        raise UserError(f"the project is at template {tag}, published by a development checkout of "
                        f"quikgen {version} and missing from this machine's source {repo}; "
                        "update it on the machine that made it")
    raise UserError(f"the project is at template {tag}, missing from this machine's source {repo}; "
                    f"publish it by running quikgen {version} in this project once (pipx run "
                    f"quikgen=={version} update --check), then update again")


@contextmanager
def recorded_source(project: Path, src: str):
    """Record ``src`` as the project's template source while copier updates it.

    copier takes the old template from _src_path and refuses a dirty tree, so the
    rewritten answers file is hidden from git (skip-worktree) until copier has
    written it again, with the new source, among the update's changes."""
    answers_path = project / ANSWERS_FILE
    original = answers_path.read_text()
    recorded = yaml.safe_load(original)
    answers_path.write_text(yaml.safe_dump({**recorded, "_src_path": src}, sort_keys=False))
    git_lines(project, "update-index", "--skip-worktree", ANSWERS_FILE)
    try:
        yield
    except Exception:
        answers_path.write_text(original)
        raise
    finally:
        git_lines(project, "update-index", "--no-skip-worktree", ANSWERS_FILE)


@app.command()
def update(
    dest: Annotated[Path, typer.Argument(help="The generated project to update.")] = Path("."),
    data: Annotated[list[str], typer.Option(
        "--data", "-d", help="Change an answer: KEY=VALUE (repeatable), e.g. use_mlflow=true.")] = [],  # noqa: B006
    check: Annotated[bool, typer.Option(
        "--check", help="Only say whether a newer template exists: exit 2 if so, 0 if not.")] = False,
) -> None:
    """Bring a generated project up to date with the newest template, keeping your edits."""
    try:
        recorded = read_answers(dest)
        src, current = str(recorded["_src_path"]), str(recorded["_commit"])
        # Projects made by quikgen update to this quikgen's own template version;
        # projects from another source update to that source's newest tag. A
        # project made on another machine (a teammate's clone) records that
        # machine's source, which does not exist here: this machine's takes its place.
        moved = looks_published(src) and not Path(src).expanduser().exists()
        own_source = moved or Path(src).expanduser().resolve() == source_dir()
        answers = parse_data(data, template_questions() if own_source else None)
        if own_source:
            repo, target = publish()
        else:
            target = newest_tag(src)
        if moved:
            typer.echo(f"{dest}: the template source {src} is not on this machine; "
                       f"using this machine's {repo} instead")
        if check:
            if target and Version(target) > Version(current):
                typer.echo(f"{dest}: template {target} is available (the project is at {current}); "
                           "run `quikgen update`")
                raise typer.Exit(2)
            typer.echo(f"{dest}: up to date with template {current}")
            return
        if target and Version(target) < Version(current):
            raise UserError(
                f"{dest} uses template {current}, newer than this quikgen's {target}; "
                "upgrade quikgen (pip install -U quikgen) to update it"
            )
        if moved:
            require_tag(repo, current)
        if not (dest / ".git").exists():
            raise UserError(f"{dest} is not a git repository; `git init` and commit it first")
        dirty = dirty_files(dest)
        if dirty:
            raise UserError(f"commit or stash your changes first; uncommitted: {', '.join(dirty)}")
        with recorded_source(dest, str(repo)) if moved else nullcontext():
            copier.run_update(str(dest), data=answers, vcs_ref=target, defaults=True,
                              overwrite=True, conflict="inline", quiet=True, unsafe=False)
    except (UserError, SourceError) as error:
        raise fail(str(error)) from None
    except (CopierError, ValueError) as error:
        raise fail(copier_message(error)) from None

    changed, conflicts = dirty_files(dest), conflicted_files(dest)
    now = read_answers(dest)["_commit"]
    typer.echo(f"Updated {dest} from template {current} to {now}: {len(changed)} file(s) changed.")
    for path in changed:
        typer.echo(f"  {'conflict' if path in conflicts else 'changed '}  {path}")
    if conflicts:
        typer.echo(f"error: {len(conflicts)} file(s) have conflicts: {', '.join(conflicts)}; "
                   "resolve the <<<<<<< markers, then commit", err=True)
        raise typer.Exit(1)
    typer.echo("Review with `git diff`, run the tests, then commit.")


@app.command("kinds")
def list_kinds() -> None:
    """List the project kinds."""
    for name, description in kinds().items():
        typer.echo(f"{name:<12} {description}")


def main() -> None:
    app()

