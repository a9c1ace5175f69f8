"""quikgen update: bring a generated project to a newer template, keeping its edits."""

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import copier
import yaml
from packaging.version import InvalidVersion, Version

from . import git
from .answers import ANSWERS_FILE, parse_data, read_answers
from .errors import QuikgenError
from .questions import bundled_questions
from .source import looks_published, publish, source_dir


@dataclass
class Plan:
    project: Path
    src: str  # the template source the project records
    current: str  # the template version the project is at
    target: str | None  # the version to update to; None: the source has no version tag
    answers: dict  # answers to change
    moved_to: Path | None  # this machine's source, standing in for one that is not here

    @property
    def newer(self) -> bool:
        return bool(self.target) and Version(self.target) > Version(self.current)


@dataclass
class Updated:
    version: str
    changed: list[str]
    conflicts: list[str]


def newest_tag(src: str) -> str | None:
    """The newest stable PEP 440 tag of a template source (a git URL or path)."""
    tags = git.remote_tags(src, error=(
        f"cannot reach the template source {src} that {ANSWERS_FILE} records; make it "
        f"reachable from here (check the address and your access with `git ls-remote {src}`), "
        f"or set _src_path in {ANSWERS_FILE} to a copy you can reach and commit"))
    versions = []
    for tag in tags:
        try:
            version = Version(tag)
        except InvalidVersion:
            continue
        if not version.is_prerelease:
            versions.append((version, tag))
    return max(versions)[1] if versions else None


def plan_update(project: Path, data: list[str]) -> Plan:
    """Where the project is, and which template version it would update to.

    Projects made by quikgen update to this quikgen's own template version;
    projects from another source update to that source's newest tag. A project
    made on another machine (a teammate's clone) records that machine's
    source, which does not exist here: this machine's takes its place."""
    recorded = read_answers(project)
    src, current = str(recorded["_src_path"]), str(recorded["_commit"])
    moved = looks_published(src) and not Path(src).expanduser().exists()
    own_source = moved or Path(src).expanduser().resolve() == source_dir()
    answers = parse_data(data, bundled_questions() if own_source else None)
    if own_source:
        repo, target = publish()
    else:
        target = newest_tag(src)
    return Plan(project=project, src=src, current=current, target=target, answers=answers,
                moved_to=repo if moved else None)


def require_tag(repo: Path, tag: str) -> None:
    """copier replays the project's edits on the template version it was made
    from, so that version must be in this machine's source too."""
    if git.has_tag(repo, tag, env=git.AS_QUIKGEN):
        return
    version = Version(tag).base_version
    if Version(tag).public != version:  # a .postN tag: only that development checkout has it
        raise QuikgenError(f"the project is at template {tag}, published by a development checkout of "
                           f"quikgen {version} and missing from this machine's source {repo}; "
                           "update it on the machine that made it")
    raise QuikgenError(f"the project is at template {tag}, missing from this machine's source {repo}; "
                       f"publish it by running quikgen {version} in this project once (pipx run "
                       f"quikgen=={version} update --check), then update again")


@contextmanager
def recorded_source(project: Path, src: str) -> Iterator[None]:
    """Record ``src`` as the project's template source while copier updates it.

    copier takes the old template from _src_path and refuses a dirty tree, so the
    rewritten answers file is hidden from git (skip-worktree) until copier has
    written it again, with the new source, among the update's changes."""
    answers_path = project / ANSWERS_FILE
    original = answers_path.read_text()
    recorded = yaml.safe_load(original)
    answers_path.write_text(yaml.safe_dump({**recorded, "_src_path": src}, sort_keys=False))
    try:
        git.skip_worktree(project, ANSWERS_FILE, True)
        yield
    except Exception:
        answers_path.write_text(original)
        raise
    finally:
        git.skip_worktree(project, ANSWERS_FILE, False)


def apply_update(plan: Plan) -> Updated:
    """Run copier's update to ``plan.target``, merging the template's changes with
    the project's edits; conflicts are left inline, marked, and listed."""
    project = plan.project
    if plan.target and Version(plan.target) < Version(plan.current):
        raise QuikgenError(
            f"{project} uses template {plan.current}, newer than this quikgen's {plan.target}; "
            "upgrade quikgen (pip install -U quikgen) to update it"
        )
    if plan.moved_to is not None:
        require_tag(plan.moved_to, plan.current)
    if not (project / ".git").exists():
        raise QuikgenError(f"{project} is not a git repository; `git init` and commit it first")
    dirty = git.uncommitted_files(project)
    if dirty:
        raise QuikgenError(f"commit or stash your changes first; uncommitted: {', '.join(dirty)}")
    moved = plan.moved_to is not None
    with recorded_source(project, str(plan.moved_to)) if moved else nullcontext():
        copier.run_update(str(project), data=plan.answers, vcs_ref=plan.target, defaults=True,
                          overwrite=True, conflict="inline", quiet=True, unsafe=False)
    return Updated(version=str(read_answers(project)["_commit"]),
                   changed=git.uncommitted_files(project), conflicts=git.conflicted_files(project))
