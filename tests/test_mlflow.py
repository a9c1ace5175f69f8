"""MLflow tracking in generated projects, against a real store and a real server."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from mlflow import MlflowClient

from .conftest import free_port, newest_run, only_run, python, quikgen

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
]

DATE = "20240131"
ROWS = "4000"  # 3,200 training rows: 4 steps per epoch at --bs 1024


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = tmp_path_factory.mktemp("mlflow") / "tracked"
    result = quikgen("new", str(dest), "--defaults", "--data", "tracker=mlflow")
    assert result.exit_code == 0, result.output
    python(dest, "-m", "tracked.data", "--synthetic", "--rows", ROWS, "--users", "50",
           "--items", "40", "--data_date", DATE)
    return dest


def runs_of(uri, experiment="tracked"):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([found.experiment_id]) if found else [])


def assert_complete_run(client, run, steps_per_epoch=4, epochs=2, bs="1024"):
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == str(epochs) and run.data.params["bs"] == bs
    assert run.data.tags["mlflow.user"] == "tester"
    assert run.data.tags["kind"] == "recommender"
    assert len(run.data.tags["mlflow.source.git.commit"]) == 40
    train_loss = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(point.step for point in train_loss) == list(range(1, epochs * steps_per_epoch + 1))
    valid_loss = client.get_metric_history(run.info.run_id, "valid_loss")
    assert sorted(point.step for point in valid_loss) == [steps_per_epoch * (e + 1) for e in range(epochs)]
    artifacts = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert {f"state_dict_e{e}_{DATE}.pt" for e in range(epochs)} <= artifacts
    assert {"test_rmse", "test_ndcg_at_10", "test_recall_at_10"} <= run.data.metrics.keys()
    assert int(run.data.tags["best_epoch"]) in range(epochs)


def test_embedded_store_records_one_complete_run(project):
    python(project, "main.py", "--gpus", "0", "--epochs", "2", "--bs", "1024", "--use_mlflow",
           "--user", "tester")
    client, runs = runs_of(f"sqlite:///{project / 'mlflow.db'}")
    assert len(runs) == 1
    assert_complete_run(client, runs[0])
    assert (project / "mlruns").is_dir()
    assert subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True,
                          text=True).stdout == ""


def start_mlflow_server(folder):
    """A real `mlflow server` on 127.0.0.1, storing into ``folder``: (url, process)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        # Job execution serves MLflow's GenAI features; off, the server starts in seconds.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return url, server
        except OSError:
            assert server.poll() is None, "mlflow server exited"
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)


def stop_mlflow_server(server):
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)  # the group: uvicorn outlives its parent otherwise
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@pytest.fixture
def mlflow_server(tmp_path):
    url, server = start_mlflow_server(tmp_path)
    yield url
    stop_mlflow_server(server)


def test_a_real_server_gets_the_same_run(project, mlflow_server):
    python(project, "main.py", "--gpus", "0", "--epochs", "2", "--bs", "1024", "--use_mlflow",
           "--user", "tester", "--tracking_uri", mlflow_server)
    client, runs = runs_of(mlflow_server)
    assert len(runs) == 1
    assert_complete_run(client, runs[0])


def test_a_server_that_stops_mid_run_costs_the_tracking_not_the_training(project, tmp_path):
    url, server = start_mlflow_server(tmp_path)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for prepared in ("train_tensor", "valid_tensor", "test_tensor", "id_maps"):
        shutil.copy(next((project / "data").glob(f"{prepared}_{DATE}.*")), data_dir)
    command = [sys.executable, "main.py", "--gpus", "0", "--epochs", "3", "--bs", "16",
               "--data_dir", str(data_dir), "--use_mlflow", "--tracking_uri", url]
    try:
        training = subprocess.Popen(command, cwd=project, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
        # Epoch 0 is tracked when its state dict reaches the server's artifact store.
        deadline = time.monotonic() + 120
        while not list((tmp_path / "server-artifacts").rglob(f"state_dict_e0_{DATE}.pt")):
            assert training.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        stop_mlflow_server(server)  # during epoch 1
        _, stderr = training.communicate(timeout=300)
    finally:
        stop_mlflow_server(server)

    assert training.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "warning: MLflow: " in stderr and "not sent yet" in stderr
    assert "warning: MLflow: could not mark run" in stderr
    for epoch in range(3):
        assert (only_run(data_dir) / f"state_dict_e{epoch}_{DATE}.pt").is_file()
    # What reached the store before it stopped is there.
    client, runs = runs_of(f"sqlite:///{tmp_path / 'server.db'}")
    assert [run.info.status for run in runs] == ["RUNNING"]
    assert [point.step for point in client.get_metric_history(runs[0].info.run_id,
                                                               "valid_loss")][:1] == [200]


def test_two_processes_make_exactly_one_run(project, tmp_path):
    uri = f"sqlite:///{tmp_path / 'two.db'}"
    python(project, "main.py", "--gpus", "0", "--procs", "2", "--epochs", "2", "--use_mlflow",
           "--user", "tester", "--tracking_uri", uri, "--bs", "512")
    client, runs = runs_of(uri)
    assert len(runs) == 1
    assert_complete_run(client, runs[0], bs="512")
    assert runs[0].data.params["procs"] == "2"


def test_two_nodes_make_exactly_one_run(project, tmp_path):
    # Two "machines" on the loopback: each runs main.py once, as --nodes asks.
    uri = f"sqlite:///{tmp_path / 'nodes.db'}"
    port = str(free_port())
    command = [sys.executable, "main.py", "--gpus", "0", "--nodes", "2", "--master_port", port,
               "--master_addr", "127.0.0.1",
               "--epochs", "2", "--bs", "512", "--use_mlflow", "--user", "tester",
               "--tracking_uri", uri]
    nodes = [subprocess.Popen([*command, "--nr", str(node)], cwd=project, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for node in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    client, runs = runs_of(uri)
    assert len(runs) == 1
    assert_complete_run(client, runs[0], bs="512")


def test_a_run_that_raises_ends_failed_and_the_error_reaches_the_user(project, tmp_path):
    uri = f"sqlite:///{tmp_path / 'failed.db'}"
    result = python(project, "main.py", "--gpus", "0", "--epochs", "2", "--use_mlflow",
                    "--tracking_uri", uri, "--lr", "1e30", check=False)
    assert result.returncode == 1
    assert "error: loss is " in result.stderr
    _, runs = runs_of(uri)
    assert [run.info.status for run in runs] == ["FAILED"]


def test_get_state_dict_restores_the_trained_tensors(project, tmp_path):
    uri = f"sqlite:///{tmp_path / 'restore.db'}"
    python(project, "main.py", "--gpus", "0", "--epochs", "2", "--use_mlflow",
           "--tracking_uri", uri, "--run_name", "to-serve")
    fetched = python(project, "-c", (
        "from tracked.cli import parse_args; "
        "from tracked.tracking import TrackingSettings, get_state_dict; "
        f"tracking = TrackingSettings.pick(vars(parse_args(['--tracking_uri', '{uri}']))); "
        f"print(get_state_dict(tracking, 1, '{tmp_path / 'served'}', "
        "\"attributes.run_name = 'to-serve'\"))"
    )).stdout.strip().splitlines()[-1]
    restored = torch.load(fetched, weights_only=True)
    trained = torch.load(newest_run(project / "data") / f"state_dict_e1_{DATE}.pt",
                         weights_only=True)
    assert restored.keys() == trained.keys()
    for key in trained:
        assert torch.equal(restored[key], trained[key]), key


def test_get_state_dict_without_a_match_is_a_clear_error(project, tmp_path):
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    result = python(project, "-c", (
        "from tracked.cli import parse_args; "
        "from tracked.tracking import TrackingSettings, get_state_dict; "
        f"tracking = TrackingSettings.pick(vars(parse_args(['--tracking_uri', '{uri}']))); "
        f"get_state_dict(tracking, 0, '{tmp_path}', \"attributes.run_name = 'nope'\")"
    ), check=False)
    assert "UsageError: no run matches" in result.stderr


def test_an_unreachable_server_fails_fast(project):
    started = time.monotonic()
    result = python(project, "main.py", "--gpus", "0", "--epochs", "1", "--use_mlflow",
                    "--tracking_uri", f"http://127.0.0.1:{free_port()}", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot reach the MLflow")
    assert time.monotonic() - started < 60


def test_without_mlflow_installed_the_error_names_the_extra(project, tmp_path):
    blocker = tmp_path / "no_mlflow"
    blocker.mkdir()
    (blocker / "mlflow.py").write_text("raise ImportError('mlflow is not installed here')\n")
    result = python(project, "main.py", "--gpus", "0", "--use_mlflow", check=False,
                    env={"PYTHONPATH": str(blocker)})
    assert result.returncode == 1
    assert "pip install 'mlflow>=3'" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_build_from_an_mlflow_run_takes_the_settings_logged_with_it(tmp_path):
    # The newest local run has other settings (--embedding_dim 32): the MLflow run's
    # weights are built with the record logged beside them, not with the local one.
    project = tmp_path / "served"
    assert quikgen("new", str(project), "--defaults", "--data", "tracker=mlflow",
                   "--data", "use_serve=true").exit_code == 0
    python(project, "-m", "served.data", "--synthetic", "--rows", ROWS, "--users", "50",
           "--items", "40", "--data_date", DATE)
    uri = f"sqlite:///{tmp_path / 'serve.db'}"
    python(project, "main.py", "--gpus", "0", "--epochs", "2", "--embedding_dim", "16",
           "--use_mlflow", "--tracking_uri", uri, "--run_name", "to-serve")
    (logged,) = (project / "data" / "runs").iterdir()
    python(project, "main.py", "--gpus", "0", "--epochs", "1", "--embedding_dim", "32")

    built = python(project, "-m", "served.serve", "build", "--tracking_uri", uri,
                   "--mlflow_filter", "attributes.run_name = 'to-serve'").stdout
    best = json.loads(next(logged.glob("run_info_*.json")).read_text())["best_epoch"]
    assert (f"served.mar: epoch {best} of the MLflow run \"attributes.run_name = 'to-serve'\" "
            f"on {DATE}") in built
    archived = torch.export.load(project / "serve" / "build" / "model.pt2").module().state_dict()
    trained = torch.load(logged / f"state_dict_e{best}_{DATE}.pt", weights_only=True)
    assert all(torch.equal(archived[name], weights) for name, weights in trained.items())
