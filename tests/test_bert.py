"""The bert kind end to end, offline: a tiny BERT built from the training texts."""

import re

import pytest

from .conftest import python, quikgen

pytestmark = pytest.mark.slow

OFFLINE = {"HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = tmp_path_factory.mktemp("bert") / "reviews"
    result = quikgen("new", str(dest), "--defaults", "--kind", "bert")
    assert result.exit_code == 0, result.output
    python(dest, "-m", "reviews.data", "--synthetic", "--rows", "1500", env=OFFLINE)
    python(dest, "-m", "reviews.hf", "--tiny-model", "models/tiny-bert", env=OFFLINE)
    return dest


def train(project, *args):
    return python(project, "main.py", "--gpus", "0", "--bert_type", "models/tiny-bert",
                  "--lr", "1e-3", *args, env=OFFLINE)


def test_tiny_bert_reaches_ninety_percent_test_accuracy_in_three_epochs(project):
    result = train(project, "--epochs", "3")
    accuracy = float(re.search(r"^\s*accuracy\s+([0-9.]+)", result.stdout, re.MULTILINE).group(1))
    assert accuracy >= 0.9
    (report,) = (project / "data").glob("classification_report_*.txt")
    assert "weighted avg" in report.read_text()
    (confusion,) = (project / "data").glob("confusion_*.png")
    assert confusion.read_bytes().startswith(b"\x89PNG")


def test_two_processes_finish(project):
    result = train(project, "--epochs", "1", "--procs", "2")
    assert "2 process(es)" in result.stdout and "weighted avg" in result.stdout


def test_bf16_finishes(project):
    result = train(project, "--epochs", "1", "--precision", "bf16")
    assert "torch.bfloat16" in result.stdout and "weighted avg" in result.stdout


def test_csv_with_any_label_strings_trains(project, tmp_path):
    csv = tmp_path / "reviews.csv"
    rows = [f'"great, really great {i}",Thumbs Up' for i in range(60)]
    rows += [f'"awful, ""truly"" awful {i}",thumbs down' for i in range(60)]
    csv.write_text("text,label\n" + "\n".join(rows) + "\n")
    data_dir = tmp_path / "data"
    python(project, "-m", "reviews.data", "--csv", str(csv), "--data_dir", str(data_dir))
    result = train(project, "--epochs", "2", "--data_dir", str(data_dir))
    assert "Thumbs Up" in result.stdout and "thumbs down" in result.stdout
