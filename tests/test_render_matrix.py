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
    ("recommender-mlflow", {"kind": "recommender", "tracker": "mlflow"}, True),
    ("recommender-tensorboard", {"kind": "recommender", "tracker": "tensorboard"}, True),
    ("bert-wandb", {"kind": "bert", "tracker": "wandb"}, True),
    ("recommender-wandb-tune", {"kind": "recommender", "tracker": "wandb", "use_ray_tune": True}, False),
    ("bert-tensorboard-tune-serve", {"kind": "bert", "tracker": "tensorboard", "use_ray_tune": True,
                                     "use_serve": True}, False),
    ("bert", {"kind": "bert"}, True),
    ("bert-mlflow", {"kind": "bert", "tracker": "mlflow"}, False),
    ("recommender-tune", {"kind": "recommender", "use_ray_tune": True}, False),
    ("recommender-mlflow-tune", {"kind": "recommender", "tracker": "mlflow", "use_ray_tune": True}, False),
    ("bert-mlflow-tune", {"kind": "bert", "tracker": "mlflow", "use_ray_tune": True}, False),
    ("recommender-serve", {"kind": "recommender", "use_serve": True}, False),
    ("bert-serve", {"kind": "bert", "use_serve": True}, False),
    ("recommender-ray-serve", {"kind": "recommender", "use_serve": True, "serve_engine": "ray"}, False),
    ("bert-ray-serve-tune-wandb", {"kind": "bert", "use_serve": True, "serve_engine": "ray",
                                   "use_ray_tune": True, "tracker": "wandb"}, False),
    ("bert-everything", {"kind": "bert", "tracker": "mlflow", "use_ray_tune": True,
                         "use_serve": True}, True),
    ("recommender-everything", {"kind": "recommender", "tracker": "mlflow", "use_ray_tune": True,
                                "use_serve": True}, False),
    ("translation", {"kind": "translation"}, True),
    ("translation-wandb", {"kind": "translation", "tracker": "wandb"}, False),
    ("translation-everything", {"kind": "translation", "tracker": "mlflow", "use_ray_tune": True,
                                "use_serve": True}, True),
    ("translation-ray-serve-tensorboard", {"kind": "translation", "use_serve": True,
                                           "serve_engine": "ray", "tracker": "tensorboard"}, False),
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

# What each tracker leaves in a project; the trackers not chosen must leave none of it.
TRACKER_TRACES = {
    "mlflow": re.compile(r"mlflow", re.IGNORECASE),
    "tensorboard": re.compile(r"tensorboard|SummaryWriter", re.IGNORECASE),
    "wandb": re.compile(r"wandb|W&B", re.IGNORECASE),
}
# What each feature leaves in a project; a feature that is off must leave none of it.
FEATURE_TRACES = {
    # world.py documents that train() also runs under Ray Train; no import may remain.
    # Ray Serve imports ray too, but never its tune or train.
    "use_ray_tune": re.compile(r"^\s*(from ray import (tune|train)|from ray\.(tune|train)"
                               r"|import ray\.(tune|train))|tune\.yaml|use_ray_tune", re.MULTILINE),
    # hf.get_bert_info documents TorchServe's setup_config; no import, archiver or serve/ may remain.
    "use_serve": re.compile(r"^\s*(from|import) ts\b|torch-model-archiver|\bserve/", re.MULTILINE),
}

# What each serving engine leaves in a project; with use_serve on, the other must leave none.
# Code only: prose may compare the two.
ENGINE_TRACES = {
    "torchserve": re.compile(r"\btorchserve\b|torch-model-archiver|^\s*(from|import) ts\b",
                             re.MULTILINE),
    "ray": re.compile(r"\bray_serve\b|from ray import serve|ray\[serve\]"),
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
    traces = {feature: trace for feature, trace in FEATURE_TRACES.items() if not answers.get(feature)}
    traces.update({tracker: trace for tracker, trace in TRACKER_TRACES.items()
                   if answers.get("tracker", "none") != tracker})
    if answers.get("use_serve"):
        traces.update({engine: trace for engine, trace in ENGINE_TRACES.items()
                       if answers.get("serve_engine", "torchserve") != engine})
    # Code and configuration only: the README may say how to turn a feature on, and the
    # answers file records every answer.
    configuration = [path for path in files if path.name != ".copier-answers.yml" and (
        path.suffix in (".py", ".toml", ".yaml", ".yml", ".cfg") or path.name == ".gitignore")]
    for feature, trace in traces.items():
        for path in configuration:
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
