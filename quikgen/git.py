"""Every git command quikgen runs, through one function: a failure is a QuikgenError
with one line naming the command, where it ran and what git said."""

import os
import shutil
import subprocess
from pathlib import Path

from .errors import QuikgenError, one_line

MISSING = "git is not installed; install git (quikgen versions the template and the project with it)"

# The first commit of `quikgen new` takes this only when git has no identity configured.
NEUTRAL_IDENTITY = ["-c", "user.name=quikgen", "-c", "user.email=quikgen@localhost"]

# The template source (source.py) is written by quikgen alone, so its commits use a
# fixed identity and ignore the user's git configuration (hooks, signing).
AS_QUIKGEN = {
    "GIT_AUTHOR_NAME": "quikgen",
    "GIT_AUTHOR_EMAIL": "quikgen@localhost",
    "GIT_COMMITTER_NAME": "quikgen",
    "GIT_COMMITTER_EMAIL": "quikgen@localhost",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def _run(repo: Path | None, args: tuple[str, ...], env: dict[str, str] | None) -> subprocess.CompletedProcess:
    where = ["-C", str(repo)] if repo is not None else []
    try:
        return subprocess.run(["git", *where, *args], capture_output=True, text=True,
                              env={**os.environ, **(env or {})})
    except FileNotFoundError:
        raise QuikgenError(MISSING) from None


def git(repo: Path | None, *args: str, env: dict[str, str] | None = None, error: str | None = None) -> str:
    """Run ``git -C repo ARGS`` (no -C when ``repo`` is None) and return its output.

    ``env`` is added to the environment; ``error`` replaces the message of a failure."""
    result = _run(repo, args, env)
    if result.returncode != 0:
        said = one_line(result.stderr) or f"exit code {result.returncode}"
        where = f" in {repo}" if repo is not None else ""
        raise QuikgenError(error or f"git {' '.join(args)} failed{where}: {said}")
    return result.stdout


def as_quikgen(repo: Path, *args: str) -> str:
    """``git -C repo ARGS`` as quikgen itself (AS_QUIKGEN), its output stripped: for
    the template source, which no user writes."""
    return git(repo, *args, env=AS_QUIKGEN).strip()


def succeeds(repo: Path | None, *args: str, env: dict[str, str] | None = None) -> bool:
    """Whether git exits 0: for the questions git answers with its exit code."""
    return _run(repo, args, env).returncode == 0


def require() -> None:
    if shutil.which("git") is None:
        raise QuikgenError(MISSING)


def has_identity(repo: Path) -> bool:
    """Whether git knows who commits in ``repo`` (user.name and user.email)."""
    return all(_run(repo, ("config", key), None).stdout.strip() for key in ("user.name", "user.email"))


def init_and_commit(project: Path, message: str) -> None:
    """git init, and one commit of everything, by the user's identity or a neutral one."""
    git(project, "init", "--quiet", "--initial-branch=main")
    git(project, "add", "--all")
    identity = [] if has_identity(project) else NEUTRAL_IDENTITY
    git(project, *identity, "commit", "--quiet", "--no-verify", "-m", message)


def uncommitted_files(repo: Path) -> list[str]:
    return [line[3:] for line in git(repo, "status", "--porcelain").splitlines()]


def conflicted_files(repo: Path) -> list[str]:
    """Files left unmerged (copier marks the files it left conflict markers in)."""
    return git(repo, "diff", "--name-only", "--diff-filter=U").splitlines()


def remote_tags(src: str, error: str) -> list[str]:
    """The tags of a repository (a URL or a path); ``error`` when it cannot be reached."""
    lines = git(None, "ls-remote", "--tags", "--refs", src, error=error).splitlines()
    return [line.rsplit("refs/tags/", 1)[-1] for line in lines]


def has_tag(repo: Path, tag: str, env: dict[str, str] | None = None) -> bool:
    return succeeds(repo, "rev-parse", "--verify", "--quiet", f"refs/tags/{tag}", env=env)


def skip_worktree(repo: Path, path: str, skip: bool) -> None:
    """Hide (or show again) a file's changes from git status."""
    git(repo, "update-index", "--skip-worktree" if skip else "--no-skip-worktree", path)
