"""A generated project lives in a shared repository: a teammate's clone records
the template source of the machine that generated it, which does not exist on
the teammate's machine.

Alice generates the project from quikgen 0.0.9's template (an older copy of the
real one); Bob, with his own QUIKGEN_HOME, clones it and updates to this
quikgen's template.
"""

import shutil

import pytest
import yaml

from quikgen import __version__
from quikgen.source import publish

from .conftest import IDENTITY, TEMPLATE, commit_all, edit, git, quikgen, run

OLD_LINE = "    # 0.0.9: the old loop\n"
USER_LINE = "# the team's own note\n"


def answers(project):
    return yaml.safe_load((project / ".copier-answers.yml").read_text())


@pytest.fixture
def old_template(tmp_path):
    """quikgen 0.0.9's template: today's, with a different loop and README."""
    template = tmp_path / "quikgen-0.0.9-template"
    shutil.copytree(TEMPLATE, template, ignore=shutil.ignore_patterns("__pycache__"))
    edit(template / "templates" / "project" / "{{ package_name }}" / "train.py",
         "    torch.manual_seed(args.seed)\n", "    torch.manual_seed(args.seed)\n" + OLD_LINE)
    edit(template / "templates" / "project" / "README.md.jinja", "## Quick start", "## Quick start (0.0.9)")
    return template


@pytest.fixture
def clone(tmp_path, monkeypatch, old_template):
    """Bob's clone of a project Alice made with quikgen 0.0.9 and edited; Alice's
    template source is not on Bob's machine."""
    alice = tmp_path / "alice"
    monkeypatch.setenv("QUIKGEN_HOME", str(alice / "quikgen"))
    publish("0.0.9", old_template)
    project = alice / "team-model"
    result = quikgen("new", str(project), "--defaults", "--vcs-ref", "v0.0.9")
    assert result.exit_code == 0, result.output
    with open(project / "main.py", "a") as main:
        main.write(USER_LINE)
    commit_all(project)

    clone = tmp_path / "bob" / "team-model"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    shutil.rmtree(alice)
    monkeypatch.setenv("QUIKGEN_HOME", str(tmp_path / "bob" / "quikgen"))
    return clone


def test_a_teammates_clone_updates_from_their_own_source(clone, old_template, tmp_path):
    bob_source = (tmp_path / "bob" / "quikgen" / "template").resolve()
    publish("0.0.9", old_template)  # Bob once ran quikgen 0.0.9 too
    result = quikgen("update", str(clone), "--check")
    assert result.exit_code == 2, result.output
    assert f"using this machine's {bob_source} instead" in result.output
    assert f"template v{__version__} is available" in result.output

    result = quikgen("update", str(clone))
    assert result.exit_code == 0, result.output
    assert f"using this machine's {bob_source} instead" in result.output
    recorded = answers(clone)
    assert recorded["_src_path"] == str(bob_source)
    assert recorded["_commit"] == f"v{__version__}"
    assert (clone / "main.py").read_text().endswith(USER_LINE)
    assert OLD_LINE not in (clone / "team_model" / "train.py").read_text()
    assert "## Quick start (0.0.9)" not in (clone / "README.md").read_text()
    changed = git(clone, "status", "--porcelain").splitlines()
    assert " M .copier-answers.yml" in changed and " M README.md" in changed

    commit_all(clone, "Update from quikgen template")
    run("copier", "update", "--defaults", cwd=clone)
    assert answers(clone)["_src_path"] == str(bob_source)
    assert git(clone, "status", "--porcelain") == ""


def test_a_version_missing_from_this_machines_source_is_named(clone):
    result = quikgen("update", str(clone))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert "is not on this machine" in lines[0]
    assert len(lines) == 2 and "template v0.0.9, missing from this machine's source" in lines[1]
    assert "quikgen 0.0.9" in lines[1]
    assert answers(clone)["_commit"] == "v0.0.9"
    assert git(clone, "status", "--porcelain") == ""


@pytest.mark.parametrize("where", ["fork", "url"])
def test_an_unreachable_template_of_your_own_is_one_line(tmp_path, where):
    fork = tmp_path / "forks" / "our-template"
    shutil.copytree(TEMPLATE, fork, ignore=shutil.ignore_patterns("__pycache__"))
    git(fork, "init", "-q", "-b", "main")
    git(fork, "add", "-A")
    git(fork, *IDENTITY, "commit", "-qm", "our template")
    git(fork, "tag", "v1.0.0")
    project = tmp_path / "ours"
    assert quikgen("new", str(project), "--defaults", "--template", str(fork)).exit_code == 0
    src = str(fork)
    if where == "url":
        src = "https://127.0.0.1:1/team/our-template.git"
        edit(project / ".copier-answers.yml", f"_src_path: {fork}", f"_src_path: {src}")
        commit_all(project, "the template moved to a server")
    shutil.rmtree(fork)

    for args in (["update", str(project)], ["update", str(project), "--check"]):
        result = quikgen(*args)
        assert result.exit_code == 1
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert result.output.startswith(f"error: cannot reach the template source {src}")
        assert "fatal" not in result.output and "Traceback" not in result.output
    assert answers(project)["_src_path"] == src
