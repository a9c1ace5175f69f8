"""Hyperparameter search with real Ray Tune on the CPU, trials running train()."""

import time

import pytest
import yaml
from mlflow import MlflowClient

from .conftest import only_run, python, quikgen

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
]

DATE = "20240131"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = tmp_path_factory.mktemp("tune") / "tuned"
    result = quikgen("new", str(dest), "--defaults", "--data", "use_ray_tune=true",
                     "--data", "tracker=mlflow")
    assert result.exit_code == 0, result.output
    python(dest, "-m", "tuned.data", "--synthetic", "--rows", "6000", "--users", "100",
           "--items", "80", "--data_date", DATE)
    (dest / "tune.yaml").write_text(
        "lr: {loguniform: {lower: 1.0e-3, upper: 5.0e-2}}\n"
        "bs: {choice: {categories: [512, 1024]}}\n")
    return dest


def newest_search(project):
    return max((project / "ray_results").glob(f"tune_{DATE}_*"), key=lambda path: path.stat().st_mtime)


def trial_histories(project):
    """Each trial's valid_loss per epoch, read from Ray's own result files."""
    histories = {}
    for progress in newest_search(project).glob("trial_*/progress.csv"):
        lines = progress.read_text().splitlines()
        header = lines[0].split(",")
        column = header.index("valid_loss")
        histories[progress.parent.name] = [float(line.split(",")[column]) for line in lines[1:]]
    return histories


def test_three_trials_finish_and_the_best_config_is_the_lowest_valid_loss(project):
    python(project, "main.py", "--use_ray_tune", "--num_samples", "3", "--epochs", "2",
           "--gpus", "0")
    histories = trial_histories(project)
    assert len(histories) == 3 and all(histories.values())
    # Each trial is a run of its own in the search's folder.
    assert len(list(newest_search(project).glob(f"runs/*/state_dict_e0_{DATE}.pt"))) == 3
    best_loss = min(min(history) for history in histories.values())
    best_file = project / "data" / f"best_config_{DATE}.yaml"
    saved = yaml.safe_load(best_file.read_text())
    assert set(saved) == {"lr", "bs"}
    assert f"valid_loss {best_loss:.6g}" in best_file.read_text()
    # The search keeps its own copy: the next search replaces only data/'s.
    kept = newest_search(project) / f"best_config_{DATE}.yaml"
    assert kept.read_text() == best_file.read_text()

    # The saved configuration trains like any other flags.
    result = python(project, "main.py", "--config", str(best_file), "--epochs", "1",
                    "--gpus", "0", "--output_dir", str(project / "from-best"))
    assert f"x batch {saved['bs']} x" in result.stdout
    assert (only_run(project / "from-best") / f"state_dict_e0_{DATE}.pt").is_file()


def test_trials_of_two_ddp_processes_each(project):
    python(project, "main.py", "--use_ray_tune", "--num_samples", "2", "--epochs", "2",
           "--gpus", "0", "--workers_per_trial", "2", timeout=600)
    progress = list(newest_search(project).glob("trial_*/progress.csv"))
    assert len(progress) == 2
    for path in progress:
        lines = path.read_text().splitlines()
        column = lines[0].split(",").index("world_size")
        assert {line.split(",")[column] for line in lines[1:]} == {"2"}


def test_mlflow_gets_one_parent_and_a_child_per_trial(project, tmp_path):
    uri = f"sqlite:///{tmp_path / 'search.db'}"
    python(project, "main.py", "--use_ray_tune", "--num_samples", "3", "--epochs", "2",
           "--gpus", "0", "--use_mlflow", "--tracking_uri", uri, "--experiment", "search")
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("search").experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(parents) == 1 and len(children) == 3
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parents[0].info.run_id}
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert any(a.path.startswith("best_config") for a in client.list_artifacts(parents[0].info.run_id))


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("lr: {logunifrm: {lower: 1.0e-3, upper: 1.0e-1}}\n", "lr uses unknown sampler 'logunifrm'"),
        ("lr: {loguniform: {lower: 1.0e-1, upper: 1.0e-3}}\n", "lr.loguniform has lower 0.1 >= upper"),
        ("learning_rat: {uniform: {lower: 0, upper: 1}}\n", "'learning_rat' is not a training argument"),
        ("bs: {uniform: {lower: 8, upper: 64}}\n", "bs takes whole numbers"),
        ("bs: {choice: {categories: [8, big]}}\n", "tune.yaml: bs: must be a whole number"),
        ("precision: {choice: {categories: [bf16, bf17]}}\n",
         "tune.yaml: precision: invalid choice 'bf17' (choose from fp32, bf16, fp16, auto)"),
    ],
)
def test_malformed_search_space_fails_in_seconds_naming_the_key(project, tmp_path, space, message):
    bad = tmp_path / "tune.yaml"
    bad.write_text(space)
    started = time.monotonic()
    result = python(project, "main.py", "--use_ray_tune", "--tune_config", str(bad), check=False)
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("precision: bf17\n", "precision: invalid choice 'bf17' (choose from fp32, bf16, fp16, auto)"),
        ("bs: -4\n", "bs: must be a whole number >= 1, got -4"),
        ("learning_rat: 0.01\n", "unknown argument(s) learning_rat"),
    ],
)
def test_a_config_file_passes_the_command_line_checks(project, tmp_path, config, message):
    bad = tmp_path / "config.yaml"
    bad.write_text(config)
    result = python(project, "main.py", "--config", str(bad), "--epochs", "1", check=False)
    assert result.returncode == 2  # argparse's way: usage, then the error
    assert result.stderr.strip().splitlines()[-1].endswith(message)
