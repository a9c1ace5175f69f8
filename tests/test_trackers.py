"""TensorBoard and W&B tracking in generated projects, read back with each tracker's own
reader: TensorBoard's EventAccumulator, and `wandb leet inspect` on W&B's offline run files.
Two processes train; there is one run. (MLflow's are in test_mlflow.py.)"""

import json
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .conftest import python, quikgen, run

pytestmark = pytest.mark.slow

DATE = "20240131"
ROWS = "4000"  # 3,200 training rows: 2 steps per epoch per process at --bs 1024 on 2 processes
STEPS_PER_EPOCH = 2
EPOCHS = 2


def tracked_project(root, tracker: str):
    dest = root / f"with-{tracker}"
    result = quikgen("new", str(dest), "--defaults", "--data", f"tracker={tracker}")
    assert result.exit_code == 0, result.output
    python(dest, "-m", "with_" + tracker + ".data", "--synthetic", "--rows", ROWS, "--users", "50",
           "--items", "40", "--data_date", DATE)
    return dest


def train_on_two_processes(project, *flags, env=None):
    python(project, "main.py", "--gpus", "0", "--procs", "2", "--epochs", str(EPOCHS),
           "--bs", "1024", "--log_every", "1", "--run_name", "pair", *flags, env=env)


def test_tensorboard_two_processes_write_one_complete_run(tmp_path):
    project = tracked_project(tmp_path, "tensorboard")
    train_on_two_processes(project, "--use_tensorboard")
    (run_dir,) = (project / "runs").iterdir()
    assert run_dir.name == "pair"
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()

    def text(tag):
        return [event.tensor_proto.string_val[0].decode() for event in events.Tensors(f"{tag}/text_summary")]

    params = json.loads(text("params")[0].strip("`").removeprefix("json"))
    assert params["procs"] == "2" and params["epochs"] == str(EPOCHS) and params["bs"] == "1024"
    assert text("kind") == ["recommender"] and len(text("git_commit")[0]) == 40
    assert text("status") == ["FINISHED"] and int(text("best_epoch")[0]) in range(EPOCHS)
    # Rank 0 alone logs each step once: no step twice, none missing.
    steps = [event.step for event in events.Scalars("train_loss")]
    assert steps == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    assert [event.step for event in events.Scalars("valid_loss")] == [
        STEPS_PER_EPOCH * (epoch + 1) for epoch in range(EPOCHS)]
    assert {"test_rmse", "test_ndcg_at_10", "test_recall_at_10"} <= set(events.Tags()["scalars"])
    artifacts = {path.name for path in (run_dir / "artifacts").iterdir()}
    assert {f"state_dict_e{epoch}_{DATE}.pt" for epoch in range(EPOCHS)} <= artifacts
    # `tensorboard --inspect` (what `tensorboard --logdir` loads) reads the same run.
    inspected = run(sys.executable, "-m", "tensorboard.main", "--inspect", "--logdir",
                    project / "runs", cwd=project).stdout
    assert "train_loss" in inspected and "valid_loss" in inspected


def inspect_wandb_run(project, run_dir, *flags) -> str:
    return run(sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, run_dir,
               cwd=project).stdout


def test_wandb_two_processes_write_one_complete_offline_run(tmp_path):
    project = tracked_project(tmp_path, "wandb")
    offline = {"WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false",
               **{name: str(tmp_path / name.lower())
                  for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")}}
    train_on_two_processes(project, "--use_wandb", env=offline)
    (run_dir,) = (project / "wandb").glob("offline-run-*")
    summary = json.loads(inspect_wandb_run(project, run_dir, "--summary"))
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    assert summary["name"] == "pair" and summary["project"] == "with-wandb"
    config = summary["config"]
    assert config["procs"] == 2 and config["epochs"] == EPOCHS and config["bs"] == 1024
    assert int(summary["summary"]["best_epoch"]) in range(EPOCHS)
    records = [json.loads(line) for line in inspect_wandb_run(project, run_dir).splitlines()]
    rows = [record["history"]["item"] for record in records if record["type"] == "history"]
    assert [row["_step"] for row in rows if "train_loss" in row] == list(
        range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    assert [row["_step"] for row in rows if "valid_loss" in row] == [
        STEPS_PER_EPOCH * (epoch + 1) for epoch in range(EPOCHS)]
    assert {"test_rmse", "test_ndcg_at_10", "test_recall_at_10"} <= rows[-1].keys()
    artifacts = {record["artifact"]["name"]: record["artifact"]["type"]
                 for record in records if record["type"] == "artifact"}
    assert {f"state_dict_e{epoch}_{DATE}": "model" for epoch in range(EPOCHS)}.items() <= artifacts.items()


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb"])
def test_every_trial_of_a_search_is_a_finished_run(tmp_path, tracker):
    """Ray Tune stops each trial's process when it is done with it (ASHA, or the last
    epoch): the trial's run is complete all the same."""
    dest = tmp_path / "searched"
    result = quikgen("new", str(dest), "--defaults", "--data", f"tracker={tracker}",
                     "--data", "use_ray_tune=true")
    assert result.exit_code == 0, result.output
    python(dest, "-m", "searched.data", "--synthetic", "--rows", "3000", "--users", "40",
           "--items", "30", "--data_date", DATE)
    offline = {"WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false",
               **{name: str(tmp_path / name.lower())
                  for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")}}
    python(dest, "main.py", "--use_ray_tune", "--num_samples", "4", "--epochs", "3", "--gpus", "0",
           f"--use_{tracker}", "--run_name", "search", env=offline, timeout=900)
    if tracker == "tensorboard":
        search = dest / "runs" / "search"
        # The search's own run keeps the best configuration, as MLflow's parent run does.
        assert (search / "artifacts" / f"best_config_{DATE}.yaml").is_file()
        trials = [path for path in search.iterdir() if path.is_dir() and path.name != "artifacts"]
        assert len(trials) == 4
        for trial in trials:
            events = EventAccumulator(str(trial), size_guidance={"scalars": 0, "tensors": 0})
            events.Reload()
            status = [event.tensor_proto.string_val[0].decode()
                      for event in events.Tensors("status/text_summary")]
            assert status == ["FINISHED"] and events.Scalars("valid_loss"), trial
    else:
        trials = list((dest / "wandb").glob("offline-run-*"))
        assert len(trials) == 4
        for trial in trials:
            summary = json.loads(inspect_wandb_run(dest, trial, "--summary"))
            assert summary["state"] == "finished" and "valid_loss" in summary["summary"], trial
            assert summary["config"]["use_ray_tune"] is True
