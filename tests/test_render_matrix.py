"""Every valid combination of answers renders clean code; every invalid one is refused.

The matrix grows as kinds and features land: add a row to VALID or INVALID.
"""

import compileall
import re

import copier
import pytest

from .conftest import TEMPLATE, python, run

# Jinja syntax inside a free-text answer must come out verbatim, never evaluated.
USER_JINJA = "{{ 7 * 7 }}{% raw %}"
BASE = {"project_name": "demo-project", "package_name": "demo_project"}

VALID = [
    # (id, answers, run the project's own tests)
    ("recommender", {"kind": "recommender"}, True),
    ("recommender-mlflow", {"kind": "recommender", "use_mlflow": True}, True),
    ("bert", {"kind": "bert"}, True),
    ("bert-mlflow", {"kind": "bert", "use_mlflow": True}, False),
    ("recommender-tune", {"kind": "recommender", "use_ray_tune": True}, False),
    ("recommender-mlflow-tune", {"kind": "recommender", "use_mlflow": True, "use_ray_tune": True}, False),
    ("bert-mlflow-tune", {"kind": "bert", "use_mlflow": True, "use_ray_tune": True}, False),
    ("recommender-serve", {"kind": "recommender", "use_serve": True}, False),
    ("bert-serve", {"kind": "bert", "use_serve": True}, False),
    ("bert-everything", {"kind": "bert", "use_mlflow": True, "use_ray_tune": True,
                         "use_serve": True}, True),
    ("recommender-everything", {"kind": "recommender", "use_mlflow": True, "use_ray_tune": True,
                                "use_serve": True}, False),
    ("recommender-free-text", {
        "kind": "recommender", "author": 'Ann "The Quoter" O\'Neil\\',
        "description": f"Ratings {USER_JINJA} & <stuff> ''' \"\"\" and\na newline"}, False),
]

INVALID = [
    ({"package_name": "import"}, "is a Python keyword"),
    ({"package_name": "Demo"}, "lowercase Python identifier"),
    ({"package_name": "pandas"}, "would shadow"),
    ({"project_name": "9lives"}, "must start with a letter"),
]

# What each feature leaves in a project; a feature that is off must leave none of it.
FEATURE_TRACES = {
    "use_mlflow": re.compile(r"mlflow", re.IGNORECASE),
    # world.py documents that train() also runs under Ray Train; no import may remain.
    "use_ray_tune": re.compile(r"^\s*(import ray|from ray)|tune\.yaml|use_ray_tune", re.MULTILINE),
    # hf.get_bert_info documents TorchServe's setup_config; no import, archiver or serve/ may remain.
    "use_serve": re.compile(r"^\s*(from|import) ts\b|torch-model-archiver|\bserve/", re.MULTILINE),
}

JINJA_LEFTOVER = re.compile(r"\{\{|\{%|\{#|%\}|#\}")
# GitHub Actions' own expressions, which the CI workflow must keep: ${{ github.ref }}.
ACTIONS_EXPRESSION = re.compile(r"\$\{\{ [\w.]+ \}\}")


def render(tmp_path, answers):
    dest = tmp_path / "demo-project"
    copier.run_copy(str(TEMPLATE), dest, data={**BASE, **answers}, defaults=True, quiet=True)
    return dest


@pytest.mark.parametrize(("answers", "runs_tests"), [row[1:] for row in VALID],
                         ids=[row[0] for row in VALID])
def test_valid_answers_render_lint_clean_compiling_code(tmp_path, answers, runs_tests):
    project = render(tmp_path, answers)
    files = [path for path in project.rglob("*") if path.is_file()]
    for path in files:
        assert not path.name.endswith(".jinja"), path
        text = path.read_text()
        leftover = JINJA_LEFTOVER.search(ACTIONS_EXPRESSION.sub("", text.replace(USER_JINJA, "")))
        assert leftover is None, f"{path}: leftover template syntax {leftover.group()!r}"
    for feature, trace in FEATURE_TRACES.items():
        if not answers.get(feature):
            # Code and configuration only: the README may say how to turn the feature on.
            for path in files:
                if path.suffix in (".py", ".toml", ".yaml", ".cfg") or path.name == ".gitignore":
                    assert not trace.search(path.read_text()), f"{feature} is off but {path} mentions it"
    if "description" in answers:  # free text comes out verbatim, never evaluated
        assert answers["description"] in (project / "README.md").read_text()
    assert compileall.compile_dir(project, quiet=1)
    run("ruff", "check", "--no-cache", ".", cwd=project)
    run("ruff", "format", "--check", "--no-cache", ".", cwd=project)
    python(project, "main.py", "--help")
    if runs_tests:
        python(project, "-m", "pytest", "-q", "-p", "no:cacheprovider", env={"HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize(("answers", "message"), INVALID, ids=[str(row[0]) for row in INVALID])
def test_invalid_answers_are_refused(tmp_path, answers, message):
    with pytest.raises(ValueError, match=message):
        render(tmp_path, answers)
    assert not (tmp_path / "demo-project").exists()
