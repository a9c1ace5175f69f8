"""Shared fixtures: every test runs against a private template source and a git
with no user configuration, like a fresh CI machine."""

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from quikgen.cli import app
from quikgen.source import copy_template

REPO = Path(__file__).resolve().parent.parent
# The files the template renders, in the working tree.
PROJECT_FILES = REPO / "templates" / "project"


def staged_template() -> Path:
    """The working tree's template in a plain folder, laid out as in the repository
    (copier.yml, templates/project/), for copier to render as it is now: given the
    repository itself, copier would render its newest tag instead."""
    stage = Path(tempfile.mkdtemp(prefix="quikgen-template-"))
    atexit.register(shutil.rmtree, stage, ignore_errors=True)
    copy_template(REPO, stage)
    return stage


TEMPLATE = staged_template()


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory):
    """A private QUIKGEN_HOME, and git without the developer's identity or hooks."""
    home = tmp_path_factory.mktemp("home")
    saved = dict(os.environ)
    os.environ.update(
        QUIKGEN_HOME=str(home / "quikgen"),
        GIT_CONFIG_GLOBAL=str(home / "gitconfig"),
        GIT_CONFIG_NOSYSTEM="1",
    )
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
                 "GIT_COMMITTER_EMAIL", "EMAIL"):
        os.environ.pop(name, None)
    (home / "gitconfig").write_text("[init]\n\tdefaultBranch = main\n")
    yield home
    os.environ.clear()
    os.environ.update(saved)


def quikgen(*args: str, cwd: Path | None = None):
    """Run the quikgen CLI in-process; returns the click Result."""
    runner = CliRunner()
    if cwd is None:
        return runner.invoke(app, list(args))
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return runner.invoke(app, list(args))
    finally:
        os.chdir(old)


def run(*command, cwd: Path, check=True, timeout=600, env=None) -> subprocess.CompletedProcess:
    """Run a command as a user would, capturing its output."""
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, command))} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
        )
    return result


def git(project: Path, *args: str) -> str:
    return run("git", *args, cwd=project).stdout


# Commits a test makes itself name an author: git has no identity configured here.
IDENTITY = ["-c", "user.name=Template Dev", "-c", "user.email=dev@example.org"]


def commit_all(project: Path, message: str = "my edits") -> None:
    git(project, "add", "-A")
    git(project, *IDENTITY, "commit", "-qm", message)


def edit(path: Path, old: str, new: str) -> None:
    """Replace the first ``old`` in the file with ``new``, as a user's edit would."""
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def python(project: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return run(sys.executable, *args, cwd=project, **kwargs)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_until_checkpoint(project: Path, output_dir: Path, name: str, command: list[str],
                           **popen_kwargs):
    """Start a training command that writes into ``output_dir``; return it and the
    path of its run's checkpoint ``name`` once that has landed."""
    process = subprocess.Popen(command, cwd=project, **popen_kwargs)
    deadline = time.monotonic() + 120
    while not (landed := list(output_dir.glob(f"runs/*/{name}"))):
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.02)
    (checkpoint,) = landed
    return process, checkpoint


def only_run(output_dir: Path) -> Path:
    """The folder of the one run trained into ``output_dir`` (runs/NAME/)."""
    (folder,) = (output_dir / "runs").iterdir()
    return folder


def newest_run(output_dir: Path) -> Path:
    """The folder of the run started last in ``output_dir``, by its run record."""
    def started(folder):
        return json.loads(next(folder.glob("run_info_*.json")).read_text())["started"]
    return max((output_dir / "runs").iterdir(), key=started)


def assert_same_weights(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


def copy_prepared_data(project: Path, date: str, target: Path) -> Path:
    """The project's prepared splits and id maps of ``date``, copied to ``target``:
    a private data folder for a run that writes its own state dicts."""
    target.mkdir(parents=True)
    for path in (project / "data").glob(f"*_{date}.*"):
        if path.name.split("_")[0] in ("train", "valid", "test", "id"):
            shutil.copy(path, target)
    return target


@pytest.fixture(scope="session")
def recommender(tmp_path_factory) -> Path:
    """A recommender project made by `quikgen new --defaults`; tests must not change it."""
    dest = tmp_path_factory.mktemp("projects") / "my-recommender"
    result = quikgen("new", str(dest), "--defaults")
    assert result.exit_code == 0, result.output
    return dest
