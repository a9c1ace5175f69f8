import os
import re
from pathlib import Path

import pytest
import torch

import main as entry_point
from generated_bert.checkpoints import load_state_dict
from generated_bert.cli import parse_args
from generated_bert.data import load_label_names, load_texts
from generated_bert.data import main as prepare_data
from generated_bert.hf import build_tiny_model
from generated_bert.runs import latest_run
from generated_bert.tracking import TrackingSettings, get_state_dict

# MLflow is an extra (pip install -e '.[mlflow]'); without it these tests skip.
MlflowClient = pytest.importorskip("mlflow").MlflowClient
DATE = "20240131"


@pytest.fixture
def args(tmp_path):
    data_dir = tmp_path / "data"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    prepare_data(["--synthetic", "--rows", "300", "--data_dir", str(data_dir), "--data_date", DATE])
    texts, _ = load_texts(data_dir, "train", DATE)
    build_tiny_model(texts, load_label_names(data_dir, DATE), tmp_path / "tiny")
    model_args = ["--bert_type", str(tmp_path / "tiny"), "--lr", "1e-3"]
    return [
        "--data_dir",
        str(data_dir),
        "--gpus",
        "0",
        "--epochs",
        "2",
        *model_args,
        "--use_mlflow",
        "--tracking_uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--experiment",
        "tests",
        "--run_name",
        "tracked",
    ]


def metrics_the_readme_names() -> set[str]:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Tracking runs with MLflow")[1].split("\n## ")[0]
    return set(re.findall(r"`((?:train|valid|test)_\w+)`", section))


def test_a_tracked_run_ends_finished_with_losses_and_state_dicts(args):
    entry_point.main(args)
    parsed = parse_args(args)
    client = MlflowClient(parsed.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.params["epochs"] == "2"
    assert len(client.get_metric_history(run.info.run_id, "valid_loss")) == 2
    artifacts = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert {
        f"state_dict_e0_{DATE}.pt",
        f"state_dict_e1_{DATE}.pt",
        f"loss_curve_{DATE}.png",
    } <= artifacts
    # The README names only metrics that the run logs.
    named = metrics_the_readme_names()
    assert named and named <= set(run.data.metrics), named - set(run.data.metrics)


def test_get_state_dict_brings_back_the_trained_weights(args, tmp_path):
    entry_point.main(args)
    parsed = parse_args(args)
    path = get_state_dict(
        TrackingSettings.pick(vars(parsed)),
        1,
        tmp_path / "served",
        "attributes.run_name = 'tracked'",
    )
    restored = torch.load(path, weights_only=True)
    trained = load_state_dict(latest_run(parsed.data_dir, DATE), 1, DATE)
    assert restored.keys() == trained.keys()
    assert all(torch.equal(restored[key], trained[key]) for key in trained)
    # The run's record comes beside the weights: what serving rebuilds the model from.
    assert (path.parent / f"run_info_{DATE}.json").is_file()
