"""This repository as a template source: a fork or clone renders with quikgen and with
plain copier (copier.yml at the root, _subdirectory: templates/project), a source
without quikgen's questions is one line, and a project made from the template
before this layout (v0.1.0: templates/copier.yml, templates/project/) updates
across it, with real git and real copier."""

import json
import shutil
import sys
import tarfile
from pathlib import Path

import copier
import pytest
import torch
import yaml

from quikgen import __version__
from quikgen.source import publish, source_dir

from .conftest import IDENTITY, REPO, commit_all, edit, git, python, quikgen, run

# The last release before copier.yml moved to the repository's root, and its commit in
# main's history: a clone does not always carry the tag (CI's does not), the commit it does.
PREVIOUS = "v0.1.0"
PREVIOUS_COMMIT = "7660999f43f9a8eaff8196fafd1c12bafdfcb2be"
# The last release whose projects answered use_mlflow, before the tracker question.
RELEASE_0_2_0 = "5016cacc457ba03b70b08ee1a47a03119cb2e6e8"
RELEASE_0_3_1 = "bea89a6e605b61a6471a2dd8881a483d1ea60be7"
# The last release before the translation kind.
RELEASE_0_6_0 = "254e3b8369fcadbfd500a4050ca6eec0365e3692"
USER_LINE = "# our team's note\n"


def answers(project: Path) -> dict:
    return yaml.safe_load((project / ".copier-answers.yml").read_text())


def commit_and_tag(repo: Path, tag: str) -> Path:
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, *IDENTITY, "commit", "-qm", tag)
    git(repo, "tag", tag)
    return repo


def previous_release(dest: Path, commit: str = PREVIOUS_COMMIT) -> Path:
    """The repository's files at an earlier release's ``commit``, unpacked into ``dest``."""
    if run("git", "cat-file", "-e", f"{commit}^{{commit}}", cwd=REPO, check=False).returncode:
        pytest.fail(f"the repository lacks the release commit {commit[:7]} (a shallow clone?); "
                    "run git fetch --unshallow")
    dest.mkdir(parents=True)
    archive = dest.with_suffix(".tar")
    git(REPO, "archive", "--format=tar", "-o", str(archive), commit)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data") if sys.version_info >= (3, 12) else tar.extractall(dest)
    archive.unlink()
    return dest


@pytest.fixture(scope="module")
def fork(tmp_path_factory) -> Path:
    """A git repository holding this working tree as it is now (committed or not,
    git-ignored files left out), tagged as this quikgen's release: what a fork
    or a clone of the repository is."""
    repo = tmp_path_factory.mktemp("forks") / "quikgen-fork"
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=REPO).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():  # a file deleted but not yet committed is listed too
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    return commit_and_tag(repo, f"v{__version__}")


def test_quikgen_new_renders_a_fork_of_this_repository(tmp_path, fork):
    project = tmp_path / "fork-project"
    result = quikgen("new", str(project), "--defaults", "--template", str(fork))
    assert result.exit_code == 0, result.output
    recorded = answers(project)
    assert recorded["_src_path"] == str(fork)
    assert recorded["_commit"] == f"v{__version__}"
    assert recorded["package_name"] == "fork_project"
    assert (project / "fork_project" / "train.py").is_file()
    assert not (project / "templates").exists() and not (project / "copier.yml").exists()
    assert git(project, "status", "--porcelain") == ""
    run("ruff", "check", "--no-cache", ".", cwd=project)


def test_plain_copier_copies_a_fork_of_this_repository(tmp_path, fork):
    project = tmp_path / "plain"
    run(sys.executable, "-m", "copier", "copy", "--defaults", "--data", "project_name=My-Shop.v2",
        fork, project, cwd=tmp_path)
    recorded = answers(project)
    assert recorded["package_name"] == "my_shop_v2" and recorded["_commit"] == f"v{__version__}"
    assert (project / "my_shop_v2" / "train.py").is_file()
    assert not (project / "templates").exists() and not (project / "copier.yml").exists()
    run("ruff", "check", "--no-cache", ".", cwd=project)


def other_questions(repo: Path) -> Path:
    """A copier template of someone else's: its own questions, none of quikgen's."""
    (repo / "files").mkdir(parents=True)
    (repo / "copier.yml").write_text("_subdirectory: files\nname:\n  type: str\n  default: thing\n")
    (repo / "files" / "README.md.jinja").write_text("# {{ name }}\n")
    return commit_and_tag(repo, "v1.0.0")


def no_config(repo: Path) -> Path:
    """A repository with no copier.yml at its root."""
    repo.mkdir(parents=True)
    (repo / "README.md").write_text("not a template\n")
    return commit_and_tag(repo, "v1.0.0")


def previous_layout(repo: Path) -> Path:
    """A clone of this repository whose newest tag is PREVIOUS: its copier.yml was
    in templates/, not at the root."""
    return commit_and_tag(previous_release(repo), PREVIOUS)


@pytest.mark.parametrize("make", [other_questions, no_config, previous_layout])
def test_a_source_without_quikgens_questions_is_one_line_and_writes_nothing(tmp_path, make):
    src = make(tmp_path / "src")
    dest = tmp_path / "proj"
    result = quikgen("new", str(dest), "--defaults", "--template", str(src))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: the template {src} at ")
    assert "does not ask project_name, package_name, kind, which quikgen needs" in lines[0]
    assert "Traceback" not in result.output
    assert not dest.exists()


def test_an_unreachable_source_is_one_line_and_writes_nothing(tmp_path):
    dest = tmp_path / "proj"
    result = quikgen("new", str(dest), "--defaults", "--template", "https://127.0.0.1:1/nobody/template.git")
    assert result.exit_code == 1
    assert result.output.startswith("error: cannot read the template source https://127.0.0.1:1/")
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not dest.exists()


def test_a_project_from_the_previous_release_updates_across_the_layout_change(tmp_path, monkeypatch):
    """A project made with quikgen 0.1.0 records a source whose v0.1.0 holds
    copier.yml and project/ at its top; this quikgen publishes copier.yml and
    templates/project/ into the same source, and copier reads each tag's own."""
    monkeypatch.setenv("QUIKGEN_HOME", str(tmp_path / "home"))
    old = previous_release(tmp_path / "quikgen-0.1.0")
    assert (old / "templates" / "copier.yml").is_file() and not (old / "copier.yml").exists()
    assert publish("0.1.0", old / "templates") == (source_dir(), PREVIOUS)
    assert (source_dir() / "project").is_dir()

    project = tmp_path / "old-project"
    result = quikgen("new", str(project), "--defaults", "--vcs-ref", PREVIOUS)
    assert result.exit_code == 0, result.output
    assert answers(project)["_commit"] == PREVIOUS
    # An edit to a template-owned file that the new template rewrites: at the end of main.py,
    # a part the two versions share (an edit inside a part the new template rewrote would be
    # a conflict, rightly).
    with open(project / "main.py", "a") as main:
        main.write(USER_LINE)
    commit_all(project)
    twin = tmp_path / "twin"
    shutil.copytree(project, twin)

    result = quikgen("update", str(project))
    assert result.exit_code == 0, result.output
    assert answers(project)["_commit"] == f"v{__version__}" == "v0.7.1"
    assert (project / "main.py").read_text().endswith(USER_LINE)
    assert git(project, "diff", "--name-only", "--diff-filter=U") == ""
    marked = run("git", "grep", "--untracked", "-l", "-e", "^<<<<<<< ", "-e", "^>>>>>>> ",
                 cwd=project, check=False)
    assert marked.stdout == "", f"conflict markers in {marked.stdout}"
    assert (source_dir() / "templates" / "project").is_dir()
    run("ruff", "check", "--no-cache", ".", cwd=project)
    # Its own model.py and data.py (user-owned: never updated) still serve the new loop.
    python(project, "-m", "old_project.data", "--synthetic", "--rows", "2000")
    trained = python(project, "main.py", "--epochs", "1", "--gpus", "0").stdout
    assert "test RMSE" in trained

    # Plain copier takes the same step.
    run(sys.executable, "-m", "copier", "update", "--defaults", cwd=twin)
    assert answers(twin)["_commit"] == f"v{__version__}"
    assert (twin / "main.py").read_text() == (project / "main.py").read_text()


def test_a_0_2_0_project_with_mlflow_keeps_its_edits_and_switches_tracker(tmp_path, monkeypatch):
    """quikgen 0.2.0 asked use_mlflow; 0.3.0 asks tracker. A project that answered
    use_mlflow: true updates to tracker: mlflow, or to the tracker --data names."""
    monkeypatch.setenv("QUIKGEN_HOME", str(tmp_path / "home"))
    old = previous_release(tmp_path / "quikgen-0.2.0", RELEASE_0_2_0)
    src, tag = publish("0.2.0", old)
    project = tmp_path / "tracked"
    copier.run_copy(str(src), project, data={"project_name": "tracked", "use_mlflow": True},
                    vcs_ref=tag, defaults=True, quiet=True)
    assert answers(project)["use_mlflow"] is True and "tracker" not in answers(project)
    git(project, "init", "-q", "-b", "main")
    commit_all(project, "generated with quikgen 0.2.0")
    with open(project / "main.py", "a") as main:
        main.write(USER_LINE)
    edit(project / "tracked" / "train.py", "    model = task.build_model().to(world.device)",
         "    model = task.build_model().to(world.device)  # my model wiring")
    commit_all(project)
    twin = tmp_path / "twin"
    shutil.copytree(project, twin)

    # No answer given: the recorded use_mlflow picks the tracker.
    result = quikgen("update", str(twin))
    assert result.exit_code == 0, result.output
    assert answers(twin)["tracker"] == "mlflow" and "use_mlflow" not in answers(twin)
    assert "def open_run" in (twin / "tracked" / "tracking.py").read_text()
    assert "MlflowClient" in (twin / "tracked" / "tracking.py").read_text()

    result = quikgen("update", str(project), "--data", "tracker=tensorboard")
    assert result.exit_code == 0, result.output
    recorded = answers(project)
    assert recorded["tracker"] == "tensorboard" and "use_mlflow" not in recorded
    assert recorded["_commit"] == f"v{__version__}"
    assert "SummaryWriter" in (project / "tracked" / "tracking.py").read_text()
    for path in ("main.py", "tracked/train.py", "tracked/cli.py", "tracked/tracking.py",
                 "pyproject.toml", ".gitignore"):
        assert "mlflow" not in (project / path).read_text().lower(), path
    assert (project / "main.py").read_text().endswith(USER_LINE)
    assert "# my model wiring" in (project / "tracked" / "train.py").read_text()
    assert git(project, "diff", "--name-only", "--diff-filter=U") == ""
    run("ruff", "check", "--no-cache", ".", cwd=project)
    python(project, "-m", "tracked.data", "--synthetic", "--rows", "2000")
    python(project, "main.py", "--epochs", "1", "--gpus", "0", "--use_tensorboard",
           "--run_name", "switched")
    assert list((project / "runs" / "switched").glob("events.out.tfevents.*"))


def test_a_0_3_1_project_keeps_its_edits_across_the_step_and_serving_split(tmp_path, monkeypatch):
    """0.5.0 rewrote train.py as named steps, added tracking.py for no tracker and split
    serving into serving.py and the engine's module; 0.6.0 gave each run a folder. A
    0.3.1 project with a model of its own, edits to template-owned files and a run
    trained before the update updates cleanly, serves that run, trains and serves."""
    monkeypatch.setenv("QUIKGEN_HOME", str(tmp_path / "home"))
    old = previous_release(tmp_path / "quikgen-0.3.1", RELEASE_0_3_1)
    src, tag = publish("0.3.1", old)
    project = tmp_path / "served"
    copier.run_copy(str(src), project, data={"project_name": "served", "use_serve": True},
                    vcs_ref=tag, defaults=True, quiet=True)
    assert answers(project)["tracker"] == "none"
    assert not (project / "served" / "tracking.py").exists()
    git(project, "init", "-q", "-b", "main")
    commit_all(project, "generated with quikgen 0.3.1")
    with open(project / "main.py", "a") as main:
        main.write(USER_LINE)
    edit(project / "served" / "model.py", "class MatrixFactorization(nn.Module):",
         "class MatrixFactorization(nn.Module):  # ours now")
    edit(project / "served" / "serve.py", '"best, orig or an epoch number >= 0",',
         '"best, orig or an epoch number >= 0",  # read before every deploy')
    commit_all(project)
    python(project, "-m", "served.data", "--synthetic", "--rows", "2000")
    python(project, "main.py", "--epochs", "2", "--gpus", "0")  # 0.3.1's files, in data/
    (old_run,) = (project / "data").glob("run_info_*.json")
    old_best = json.loads(old_run.read_text())["best_epoch"]

    result = quikgen("update", str(project))
    assert result.exit_code == 0, result.output
    assert answers(project)["_commit"] == f"v{__version__}"
    # The run trained before the update is still the one served.
    built = python(project, "-m", "served.serve", "build").stdout
    assert f"served.mar: epoch {old_best} of run data on " in built
    archived = torch.export.load(project / "serve" / "build" / "model.pt2").module().state_dict()
    (trained,) = (project / "data").glob(f"state_dict_e{old_best}_*.pt")
    trained = torch.load(trained, weights_only=True)
    assert all(torch.equal(archived[name], weights) for name, weights in trained.items())
    assert (project / "main.py").read_text().endswith(USER_LINE)
    assert "# ours now" in (project / "served" / "model.py").read_text()
    assert "# read before every deploy" in (project / "served" / "serve.py").read_text()
    assert (project / "served" / "serving.py").is_file()
    assert "def open_run" in (project / "served" / "tracking.py").read_text()
    assert git(project, "diff", "--name-only", "--diff-filter=U") == ""
    run("ruff", "check", "--no-cache", ".", cwd=project)
    assert "test RMSE" in python(project, "main.py", "--epochs", "1", "--gpus", "0").stdout
    (new_run,) = (project / "data" / "runs").iterdir()
    built = python(project, "-m", "served.serve", "build").stdout
    assert f"served.mar: epoch 0 of run {new_run.name} on " in built
    assert (project / "serve" / "build" / "model.pt2").is_file()


@pytest.mark.parametrize("kind", ["recommender", "bert"])
def test_a_0_6_0_project_updates_across_the_translation_kind_with_no_change(tmp_path, monkeypatch,
                                                                           kind):
    """A kind is added by adding files: a project of another kind, with every feature,
    takes the update that brings the translation kind as its version number only."""
    monkeypatch.setenv("QUIKGEN_HOME", str(tmp_path / "home"))
    src, tag = publish("0.6.0", previous_release(tmp_path / "quikgen-0.6.0", RELEASE_0_6_0))
    project = tmp_path / "everything"
    copier.run_copy(str(src), project, vcs_ref=tag, defaults=True, quiet=True, data={
        "project_name": "everything", "kind": kind, "tracker": "mlflow", "use_ray_tune": True,
        "use_serve": True, "serve_engine": "ray"})
    git(project, "init", "-q", "-b", "main")
    commit_all(project, "generated with quikgen 0.6.0")

    result = quikgen("update", str(project))
    assert result.exit_code == 0, result.output
    assert answers(project)["_commit"] == f"v{__version__}"
    changed = git(project, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert changed == [" M .copier-answers.yml"]
    assert git(project, "diff", "--numstat").split()[:2] == ["1", "1"]  # the _commit line
