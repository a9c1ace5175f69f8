"""The versioned template source that copier copies from and updates from.

``copier update`` only works against a git repository with PEP 440 tags, and a
template inside site-packages is neither. So each quikgen installation
publishes the template it carries into one local git repository (the
*source*), as a commit tagged ``v{quikgen version}``. Generated projects record
that repository as ``_src_path``, so a plain ``copier update`` works offline,
and upgrading quikgen adds a newer tag for it to find.

A development checkout whose template differs from what its version already
published gets ``v{version}.post{N}`` tags, so edits are never hidden behind an
existing tag (tags are never moved).
"""

import fcntl
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import yaml
from packaging.version import InvalidVersion, Version

from . import __version__
from . import git as g
from .errors import QuikgenError

# Files that tools leave inside a checkout's template and that are not part of it.
NOT_TEMPLATE = shutil.ignore_patterns("__pycache__", "*.pyc", ".ruff_cache", ".pytest_cache")

CONFIG = "copier.yml"


def bundled_template() -> Path:
    """The root of the copier template this quikgen carries: the folder with its
    copier.yml, whose ``_subdirectory`` holds the files it renders. That is the
    repository's root in a checkout, and quikgen/template in a wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "template", here.parent):
        if (candidate / CONFIG).is_file():
            rendered_folder(candidate)
            return candidate
    raise QuikgenError(f"quikgen's template is missing next to {here}; reinstall quikgen")


def rendered_folder(root: Path) -> str:
    """The folder, relative to ``root``, of the files the template at ``root``
    renders: its copier.yml's ``_subdirectory``."""
    if not (root / CONFIG).is_file():
        raise QuikgenError(f"{root} holds no {CONFIG}; a template's root holds its {CONFIG}")
    config = yaml.safe_load((root / CONFIG).read_text()) or {}
    folder = str(config.get("_subdirectory", "")).strip("/")
    if not folder or not (root / folder).is_dir():
        raise QuikgenError(f"{root / CONFIG} names no _subdirectory folder that exists; the "
                           "files a template renders are in the folder it names")
    return folder


def copy_template(root: Path, dest: Path) -> None:
    """Copy the template at ``root`` into ``dest``: its copier.yml and the files it
    renders, in the same layout, and nothing else of ``root``."""
    folder = rendered_folder(root)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(root / CONFIG, dest / CONFIG)
    shutil.copytree(root / folder, dest / folder, ignore=NOT_TEMPLATE, dirs_exist_ok=True)


def source_dir() -> Path:
    """$QUIKGEN_HOME/template, else $XDG_DATA_HOME/quikgen/template (~/.local/share)."""
    home = os.environ.get("QUIKGEN_HOME")
    if not home:
        data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        home = Path(data_home) / "quikgen"
    return Path(home).expanduser().resolve() / "template"


@contextmanager
def _locked(path: Path):
    """One quikgen at a time writes the source."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _tags_for(repo: Path, version: str) -> list[str]:
    """v{version} and its .postN tags, oldest first."""
    pattern = re.compile(rf"^v{re.escape(version)}(\.post\d+)?$")
    tags = [tag for tag in g.as_quikgen(repo, "tag", "--list").splitlines() if pattern.match(tag)]
    return sorted(tags, key=lambda tag: Version(tag))


def publish(version: str = __version__, template: Path | None = None) -> tuple[Path, str]:
    """Make sure the source holds the template whose root is ``template`` (default:
    the bundled one) under a tag for ``version``; return the source's path and that tag.

    The source holds the template's copier.yml and the files its ``_subdirectory``
    names, in the same layout: copier.yml and templates/project/ from this
    quikgen; copier.yml and project/ from quikgen 0.1.0 and older."""
    g.require()
    try:
        Version(version)
    except InvalidVersion as error:
        raise QuikgenError(f"quikgen version {version!r} is not a PEP 440 version") from error
    template = template or bundled_template()
    rendered_folder(template)  # before the source's work tree is emptied
    repo = source_dir()
    with _locked(repo.parent / "template.lock"):
        if not (repo / ".git").is_dir():
            repo.mkdir(parents=True, exist_ok=True)
            g.as_quikgen(repo, "init", "--quiet", "--initial-branch=main")
        # Replace the work tree with the template, then ask git whether a tag
        # of this version already holds exactly that tree.
        for entry in repo.iterdir():
            if entry.name != ".git":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        copy_template(template, repo)
        g.as_quikgen(repo, "add", "--all")
        tree = g.as_quikgen(repo, "write-tree")
        existing = _tags_for(repo, version)
        for tag in reversed(existing):
            if g.as_quikgen(repo, "rev-parse", f"{tag}^{{tree}}") == tree:
                g.as_quikgen(repo, "reset", "--quiet", "--hard")
                g.as_quikgen(repo, "clean", "-fdxq")
                return repo, tag

        tag = f"v{version}" if not existing else f"v{version}.post{len(existing)}"
        # One commit per tag, even when the template did not change: copier names
        # a project's version after the commit it rendered (`git describe`).
        g.as_quikgen(repo, "commit", "--quiet", "--no-verify", "--allow-empty",
                     "-m", f"quikgen {tag} template")
        g.as_quikgen(repo, "tag", tag)
        return repo, tag


def looks_published(src: str) -> bool:
    """Whether a recorded ``_src_path`` names a source that quikgen published:
    ``.../quikgen/template``, the layout of every default location. Only the
    path is known: on a teammate's machine it does not exist."""
    path = Path(src).expanduser()
    return path.is_absolute() and path.parts[-2:] == ("quikgen", "template")
