"""quikgen installed from a wheel into a fresh virtual environment."""

import sys

import pytest
import yaml

from .conftest import REPO, git, run

pytestmark = pytest.mark.slow


def test_wheel_install_generates_a_project_that_plain_copier_updates(tmp_path):
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "-w", tmp_path / "dist", REPO, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("quikgen-*.whl")
    # The venv borrows copier, typer and torch from the base interpreter but
    # gets quikgen itself only from the wheel.
    run(sys.executable, "-m", "venv", "--system-site-packages", tmp_path / "venv", cwd=tmp_path)
    bin_dir = tmp_path / "venv" / "bin"
    run(bin_dir / "python", "-m", "pip", "install", "--no-deps", "--quiet", wheel, cwd=tmp_path)
    located = run(bin_dir / "python", "-c", "import quikgen; print(quikgen.__file__)",
                  cwd=tmp_path).stdout
    assert located.startswith(str(tmp_path / "venv"))

    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    home = tmp_path / "quikgen-home"
    run(bin_dir / "quikgen", "new", "wheel-project", "--defaults", cwd=elsewhere,
        env={"QUIKGEN_HOME": str(home)})
    project = elsewhere / "wheel-project"
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["_src_path"] == str(home / "template")
    assert answers["_commit"].startswith("v")

    # `python -m copier` is the copier command of this venv (its script lives in the base).
    result = run(bin_dir / "python", "-m", "copier", "update", "--defaults", cwd=project)
    assert result.returncode == 0
    assert git(project, "status", "--porcelain") == ""
    run(bin_dir / "python", "main.py", "--help", cwd=project)
