"""quikgen installed from a wheel into a fresh virtual environment."""

import site
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, git, run

pytestmark = pytest.mark.slow


def outer_site_packages() -> list[str]:
    """The directories this interpreter installs packages into, and imports them from.

    In a virtual environment that is the venv's own site-packages (and the base ones only
    when it was made with --system-site-packages); in a conda env or a system Python, the
    interpreter's own. The user site, where this interpreter reads one, comes first as in
    its own sys.path.
    """
    dirs = [site.getusersitepackages()] if site.ENABLE_USER_SITE else []
    dirs += site.getsitepackages()
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def test_wheel_install_generates_a_project_that_plain_copier_updates(tmp_path):
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "-w", tmp_path / "dist", REPO, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("quikgen-*.whl")

    # The venv gets quikgen itself only from the wheel, and copier, typer and torch from the
    # environment running these tests. `--system-site-packages` would not do: made from a
    # venv's Python it exposes the *base* interpreter's site-packages, where none of them is.
    # So the venv is isolated and names the outer site-packages in a .pth file, written
    # after the wheel is installed (pip would otherwise see the outer quikgen as installed).
    # A directory listed in a .pth file is only appended to sys.path: the .pth files inside
    # it are not run, so the outer editable install of quikgen (hatchling's
    # _editable_impl_quikgen.pth, setuptools' __editable__ finders) stays out, and the
    # venv's own site-packages, with the wheel's quikgen, comes first.
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    bin_dir = venv / "bin"
    run(bin_dir / "python", "-m", "pip", "install", "--no-deps", "--quiet", wheel, cwd=tmp_path)
    venv_site = run(bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                    cwd=tmp_path).stdout.strip()
    Path(venv_site, "_outer_environment.pth").write_text("\n".join(outer_site_packages()) + "\n")
    located = run(bin_dir / "python", "-c", "import quikgen; print(quikgen.__file__)",
                  cwd=tmp_path).stdout
    assert located.startswith(str(venv))

    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    home = tmp_path / "quikgen-home"
    run(bin_dir / "quikgen", "new", "wheel-project", "--defaults", cwd=elsewhere,
        env={"QUIKGEN_HOME": str(home)})
    project = elsewhere / "wheel-project"
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["_src_path"] == str(home / "template")
    assert answers["_commit"].startswith("v")

    # `python -m copier` is the copier command of this venv (its script lives outside it).
    result = run(bin_dir / "python", "-m", "copier", "update", "--defaults", cwd=project)
    assert result.returncode == 0
    assert git(project, "status", "--porcelain") == ""
    run(bin_dir / "python", "main.py", "--help", cwd=project)
