"""Updating generated projects across template versions, with real git and real copier.

A temporary template repository holds the real template as v1.0.0, and v2.0.0 =
v1.0.0 plus changes to template-owned files (and to the user-owned model, which
an update must not bring).
"""

import shutil

import pytest
import yaml

from quikgen.source import publish

from .conftest import IDENTITY, TEMPLATE, commit_all, edit, git, python, quikgen, run

FILES = "templates/project"  # what the template renders, in the template repository
TRAIN = f"{FILES}/{{{{ package_name }}}}/train.py"
V2_LINE = "    # v2: a template improvement to the loop\n"


@pytest.fixture
def template_repo(tmp_path):
    repo = tmp_path / "template-src"
    shutil.copytree(TEMPLATE, repo, ignore=shutil.ignore_patterns("__pycache__"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, *IDENTITY, "commit", "-qm", "v1")
    git(repo, "tag", "v1.0.0")
    edit(repo / TRAIN, "    torch.manual_seed(args.seed)\n",
         "    torch.manual_seed(args.seed)\n" + V2_LINE)
    edit(repo / FILES / "README.md.jinja", "## Quick start", "## Quick start (v2)")
    edit(repo / FILES / "{{ package_name }}" / "args.py", '"""Command-line argument groups.',
         '"""Command-line argument groups (v2).')
    model = repo / FILES / "{{ package_name }}" / "{% if kind == 'recommender' %}model.py{% endif %}"
    model.write_text(model.read_text() + "\n# v2 rewrote the model\n")
    git(repo, *IDENTITY, "commit", "-qam", "v2")
    git(repo, "tag", "v2.0.0")
    return repo


@pytest.fixture
def project(tmp_path, template_repo):
    """A project made at v1.0.0 and committed."""
    dest = tmp_path / "demo"
    result = quikgen("new", str(dest), "--defaults", "--template", str(template_repo),
                     "--vcs-ref", "v1.0.0")
    assert result.exit_code == 0, result.output
    return dest


def template_version(project):
    return yaml.safe_load((project / ".copier-answers.yml").read_text())["_commit"]


def test_clean_update_brings_every_template_change(project):
    result = quikgen("update", str(project))
    assert result.exit_code == 0, result.output
    assert template_version(project) == "v2.0.0"
    assert V2_LINE in (project / "demo" / "train.py").read_text()
    assert "## Quick start (v2)" in (project / "README.md").read_text()
    for name in ("demo/train.py", "README.md", "demo/args.py"):
        assert name in result.output


def test_user_edits_in_main_loop_and_model_survive_the_update(project):
    edit(project / "main.py", "sys.exit(130)", "sys.exit(130)  # as a shell would")
    edit(project / "demo" / "task.py", '{"epochs": 8,', '{"epochs": 7,')
    edit(project / "demo" / "train.py", "    model = task.build_model().to(world.device)",
         "    model = task.build_model().to(world.device)  # my model wiring")
    model = project / "demo" / "model.py"
    edit(model, "class MatrixFactorization(nn.Module):",
         "class MatrixFactorization(nn.Module):  # my model")
    commit_all(project)

    result = quikgen("update", str(project))
    assert result.exit_code == 0, result.output
    assert "# as a shell would" in (project / "main.py").read_text()
    assert '{"epochs": 7,' in (project / "demo" / "task.py").read_text()
    train = (project / "demo" / "train.py").read_text()
    assert "# my model wiring" in train and V2_LINE in train
    assert "# my model" in model.read_text()
    assert "# v2 rewrote the model" not in model.read_text()
    assert git(project, "diff", "--name-only", "--diff-filter=U") == ""


def test_user_owned_files_are_never_touched(project):
    before = {name: (project / name).read_text()
              for name in ("demo/model.py", "demo/data.py", "tests/test_data.py")}
    assert quikgen("update", str(project)).exit_code == 0
    assert {name: (project / name).read_text() for name in before} == before


def test_conflicting_edit_is_reported_by_file_with_a_non_zero_exit(project):
    edit(project / "demo" / "train.py", "    torch.manual_seed(args.seed)\n",
         "    torch.manual_seed(args.seed)\n    torch.use_deterministic_algorithms(True)\n")
    commit_all(project)

    result = quikgen("update", str(project))
    assert result.exit_code == 1
    assert "conflict  demo/train.py" in result.output
    assert "1 file(s) have conflicts: demo/train.py" in result.output
    train = (project / "demo" / "train.py").read_text()
    assert "<<<<<<<" in train and "torch.use_deterministic_algorithms(True)" in train


def test_dirty_tree_is_refused_and_left_as_it_was(project):
    edit(project / "main.py", "sys.exit(130)", "sys.exit(9)")
    result = quikgen("update", str(project))
    assert result.exit_code == 1
    assert "uncommitted: main.py" in result.output
    assert template_version(project) == "v1.0.0"
    assert "sys.exit(9)" in (project / "main.py").read_text()


def test_check_says_whether_a_newer_template_exists(project):
    result = quikgen("update", str(project), "--check")
    assert result.exit_code == 2
    assert "template v2.0.0 is available" in result.output
    assert template_version(project) == "v1.0.0"
    assert quikgen("update", str(project)).exit_code == 0
    result = quikgen("update", str(project), "--check")
    assert result.exit_code == 0 and "up to date" in result.output


def test_plain_copier_update_gives_the_same_result(project, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(project, twin)
    assert quikgen("update", str(project)).exit_code == 0
    run("copier", "update", "--defaults", cwd=twin)
    for name in ("main.py", "demo/train.py", "demo/args.py", "README.md", "demo/model.py"):
        assert (twin / name).read_text() == (project / name).read_text(), name


def test_updated_project_still_passes_its_tests(project):
    edit(project / "demo" / "task.py", '{"epochs": 8,', '{"epochs": 7,')
    commit_all(project)
    assert quikgen("update", str(project)).exit_code == 0
    python(project, "-m", "pytest", "-q", "-p", "no:cacheprovider")
    run("ruff", "check", "--no-cache", ".", cwd=project)


def test_downgrade_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("QUIKGEN_HOME", str(tmp_path / "home"))
    publish("99.0.0")  # a newer quikgen published its template on this machine
    project = tmp_path / "from-the-future"
    assert quikgen("new", str(project), "--defaults", "--vcs-ref", "v99.0.0").exit_code == 0
    result = quikgen("update", str(project))
    assert result.exit_code == 1
    assert "uses template v99.0.0, newer than this quikgen's" in result.output
    assert template_version(project) == "v99.0.0"


def test_a_feature_toggles_on_and_off_in_an_edited_project(tmp_path):
    project = tmp_path / "toggle"
    assert quikgen("new", str(project), "--defaults").exit_code == 0
    edit(project / "main.py", "sys.exit(130)", "sys.exit(130)  # as a shell would")
    edit(project / "toggle" / "train.py", "    model = task.build_model().to(world.device)",
         "    model = task.build_model().to(world.device)  # my model wiring")
    commit_all(project)

    result = quikgen("update", str(project), "--data", "tracker=mlflow")
    assert result.exit_code == 0, result.output
    assert "MlflowClient" in (project / "toggle" / "tracking.py").read_text()
    assert "# as a shell would" in (project / "main.py").read_text()
    assert "--use_mlflow" in python(project, "main.py", "--help").stdout
    # The loop calls every tracker the same way: turning one on changes only tracking.py.
    assert "toggle/train.py" not in result.output
    assert "# my model wiring" in (project / "toggle" / "train.py").read_text()
    run("ruff", "check", "--no-cache", ".", cwd=project)
    commit_all(project, "turn MLflow on")

    # One tracker for another: the tracker's module changes, the loop's calls do not.
    result = quikgen("update", str(project), "--data", "tracker=wandb")
    assert result.exit_code == 0, result.output
    assert "wandb.init(" in (project / "toggle" / "tracking.py").read_text()
    assert "--use_wandb" in python(project, "main.py", "--help").stdout
    assert "# my model wiring" in (project / "toggle" / "train.py").read_text()
    commit_all(project, "W&B instead")

    result = quikgen("update", str(project), "--data", "tracker=none")
    assert result.exit_code == 0, result.output
    tracking = (project / "toggle" / "tracking.py").read_text()
    assert "No tracker" in tracking and "wandb" not in tracking.split('"""')[2]
    assert "--use_wandb" not in python(project, "main.py", "--help").stdout
    assert "# as a shell would" in (project / "main.py").read_text()
    assert "# my model wiring" in (project / "toggle" / "train.py").read_text()
    run("ruff", "check", "--no-cache", ".", cwd=project)
    python(project, "-m", "toggle.data", "--synthetic")
    python(project, "main.py", "--epochs", "1")


def test_the_serving_engine_switches_to_ray_and_back_with_edits_kept(tmp_path):
    project = tmp_path / "engine"
    assert quikgen("new", str(project), "--defaults", "--data", "use_serve=true").exit_code == 0
    edit(project / "engine" / "api.py", "    session = requests.Session()",
         "    session = requests.Session()  # our proxy settings go here")
    edit(project / "main.py", "sys.exit(130)", "sys.exit(130)  # as a shell would")
    commit_all(project)

    result = quikgen("update", str(project), "--data", "serve_engine=ray")
    assert result.exit_code == 0, result.output
    package = project / "engine"
    assert (package / "ray_serve.py").is_file() and not (package / "torchserve.py").exists()
    assert "@serve.deployment" in (package / "handler.py").read_text()
    assert "# our proxy settings go here" in (package / "api.py").read_text()
    assert "# as a shell would" in (project / "main.py").read_text()
    assert "--replicas" in python(project, "-m", "engine.serve", "start", "--help").stdout
    run("ruff", "check", "--no-cache", ".", cwd=project)
    commit_all(project, "serve with Ray")

    result = quikgen("update", str(project), "--data", "serve_engine=torchserve")
    assert result.exit_code == 0, result.output
    assert (package / "torchserve.py").is_file() and not (package / "ray_serve.py").exists()
    assert "BaseHandler" in (package / "handler.py").read_text()
    assert "# our proxy settings go here" in (package / "api.py").read_text()
    assert "--disable_token_auth" in python(project, "-m", "engine.serve", "start", "--help").stdout
    run("ruff", "check", "--no-cache", ".", cwd=project)
