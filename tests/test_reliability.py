"""Bad input gets one line naming the problem and the fix, a non-zero exit, no
traceback, and nothing of the user's changed. Table-driven, one case per row."""

import os
import shutil

import pytest

from .conftest import python, quikgen

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = tmp_path_factory.mktemp("reliable") / "sturdy"
    assert quikgen("new", str(dest), "--defaults", "--data", "use_serve=true").exit_code == 0
    python(dest, "-m", "sturdy.data", "--synthetic", "--rows", "3000", "--data_date", "20240131")
    return dest


def assert_one_line_error(result, message, exit_code=None):
    assert result.returncode != 0 if exit_code is None else result.returncode == exit_code
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


BAD_FLAGS = [
    (["--epochs", "0"], "--epochs: must be a whole number >= 1"),
    (["--bs", "-5"], "--bs: must be a whole number >= 1"),
    (["--lr", "nan"], "must be a number > 0"),
    (["--lr", "fast"], "--lr: must be a number > 0, got fast"),
    (["--weight_decay", "-1"], "must be a number >= 0"),
    (["--betas", "0.9,1.5"], "must be two numbers in [0, 1)"),
    (["--eps", "0"], "must be a number > 0"),
    (["--clip_grad", "-1"], "must be a number > 0"),
    (["--accumulate", "0"], "must be a whole number >= 1"),
    (["--procs", "0"], "must be a whole number >= 1"),
    (["--nodes", "0"], "must be a whole number >= 1"),
    (["--gpus", "-1"], "must be a whole number >= 0"),
    (["--embedding_dim", "0"], "must be a whole number >= 1"),
    (["--data_date", "2024-01-31"], "must be a date as YYYYMMDD"),
    (["--precision", "fp8"], "invalid choice: 'fp8'"),
    (["--master_port", "70000"], "must be a port from 1 to 65535"),
    (["--save_every", "-5"], "--save_every: must be a number of steps such as 500, or a time"),
    (["--save_every", "10 min"], "--save_every: must be a number of steps such as 500, or a time"),
    (["--save_every", "nanm"], "--save_every: must be a number of steps such as 500, or a time"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_invalid_numbers_are_refused_by_the_parser(project, flags, message):
    assert_one_line_error(python(project, "main.py", *flags, check=False), message, exit_code=2)


BAD_DATA_FLAGS = [
    (["--rows", "0"], "--rows: must be a whole number >= 1, got 0"),
    (["--users", "-3"], "--users: must be a whole number >= 1"),
    (["--items", "many"], "--items: must be a whole number >= 1, got many"),
    (["--valid_frac", "1.5"], "--valid_frac: must be a fraction between 0 and 1"),
    (["--test_frac", "none"], "--test_frac: must be a fraction between 0 and 1"),
    (["--seed", "x"], "--seed: invalid int value: 'x'"),
    (["--data_date", "31-01-2024"], "--data_date: must be a date as YYYYMMDD"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_DATA_FLAGS,
                         ids=[" ".join(f) for f, _ in BAD_DATA_FLAGS])
def test_invalid_numbers_are_refused_by_the_data_command(project, tmp_path, flags, message):
    result = python(project, "-m", "sturdy.data", "--synthetic", "--data_dir", str(tmp_path),
                    *flags, check=False)
    assert_one_line_error(result, message, exit_code=2)
    assert not list(tmp_path.iterdir())


def test_fractions_that_leave_no_training_rows_are_refused(project, tmp_path):
    result = python(project, "-m", "sturdy.data", "--synthetic", "--data_dir", str(tmp_path),
                    "--valid_frac", "0.6", "--test_frac", "0.5", check=False)
    assert_one_line_error(result, "too few to split into train, valid and test", exit_code=1)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("flags", "message"), [
    (["--retries", "-1"], "--retries: must be a whole number >= 0, got -1"),
    (["--workers", "0"], "--workers: must be a whole number >= 1, got 0"),
    (["--batch_size", "ten"], "--batch_size: must be a whole number >= 1, got ten"),
])
def test_invalid_numbers_are_refused_by_the_inference_client(project, tmp_path, flags, message):
    (tmp_path / "pairs.csv").write_text("user,item\n1,2\n")
    result = python(project, "-m", "sturdy.api", str(tmp_path / "pairs.csv"), "--out",
                    str(tmp_path / "out.csv"), *flags, check=False)
    assert_one_line_error(result, message, exit_code=2)
    assert not (tmp_path / "out.csv").exists()


def test_stopping_a_server_that_is_not_running_says_so(project):
    result = python(project, "-m", "sturdy.serve", "stop")
    assert result.stdout.strip() == (
        f"TorchServe is not running (none was started from {project / 'serve'})")


def test_serving_on_a_port_out_of_range_is_refused(project):
    result = python(project, "-m", "sturdy.serve", "start", "--port", "65533", check=False)
    assert_one_line_error(result, "--port: must be a port from 1 to 65531", exit_code=2)


def test_no_prepared_data_names_the_command_that_makes_it(project, tmp_path):
    result = python(project, "main.py", "--data_dir", str(tmp_path), check=False)
    assert_one_line_error(result, "run `python -m sturdy.data --synthetic` first", exit_code=1)


def test_resume_without_a_checkpoint(project, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(project / "data", data)
    result = python(project, "main.py", "--data_dir", str(data), "--resume", check=False)
    assert_one_line_error(result, "--resume: no run in ", exit_code=1)


def test_a_resume_that_changes_the_model_is_one_line_and_one_that_changes_the_lr_a_notice(
        project, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(project / "data", data)
    train = ["main.py", "--data_dir", str(data), "--gpus", "0", "--epochs", "2"]
    python(project, *train, "--embedding_dim", "16", "--lr", "0.01")
    (run,) = (data / "runs").iterdir()
    result = python(project, *train, "--embedding_dim", "32", "--resume", check=False)
    assert_one_line_error(result, f"error: --resume: {run} was trained with --embedding_dim 16 "
                          "(now 32); resume with its values, or train without --resume to start "
                          "a new run", exit_code=1)
    assert len(result.stderr.strip().splitlines()) == 1
    resumed = python(project, *train, "--embedding_dim", "16", "--lr", "0.05", "--resume")
    assert ("--resume: --lr 0.05 ignored: the run goes on with its own optimizer state and "
            "schedule (--lr 0.01); train without --resume to start a run with them"
            ) in resumed.stdout.splitlines()


@pytest.mark.parametrize("where", ["proc", "under-a-file"])
def test_an_output_folder_that_cannot_be_written(project, tmp_path, where):
    # Root may write anywhere but in /proc, and nobody can make a folder inside a file.
    (tmp_path / "a-file").write_text("")
    output_dir = "/proc/forbidden" if where == "proc" else str(tmp_path / "a-file" / "out")
    result = python(project, "main.py", "--gpus", "0", "--output_dir", output_dir, check=False)
    assert_one_line_error(result, f"--output_dir {output_dir}: cannot write there", exit_code=1)


def test_a_new_run_never_takes_the_name_of_an_earlier_one(project, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(project / "data", data)
    python(project, "main.py", "--data_dir", str(data), "--epochs", "1", "--run", "baseline")
    result = python(project, "main.py", "--data_dir", str(data), "--epochs", "1",
                    "--run", "baseline", check=False)
    assert_one_line_error(result, "--run baseline: ", exit_code=1)
    assert "holds a run already; continue it with --resume, or name another run" in result.stderr


def test_resume_under_fp16_from_a_run_without_it(project, tmp_path):
    # The fp32 run saved a disabled GradScaler's state, which is empty; an enabled
    # scaler refuses to load that, so the resume ended in a RuntimeError traceback.
    data = tmp_path / "data"
    shutil.copytree(project / "data", data)
    python(project, "main.py", "--data_dir", str(data), "--epochs", "2", "--gpus", "0")
    result = python(project, "main.py", "--data_dir", str(data), "--epochs", "2", "--gpus", "0",
                    "--resume", "--precision", "fp16")
    assert "resuming after epoch 1" in result.stdout and "test RMSE" in result.stdout


def test_slow_steps_are_read_often_enough_to_notice_a_stop_in_time(project):
    # A stop signal is read with the losses: at 3 s a step, every 10th step (--log_every)
    # would be 30 s apart, all of a scheduler's grace period.
    code = ("from sturdy.train import STOP_NOTICE_S, reads_apart\n"
            "assert STOP_NOTICE_S == 10\n"
            "assert reads_apart(10, 0.002) == 10\n"
            "assert reads_apart(10, 3.0) == 3\n"
            "assert reads_apart(10, 60.0) == 1\n"
            "assert reads_apart(1, 0.002) == 1\n")
    python(project, "-c", code)


def test_fp16_steps_never_read_the_scale_and_a_skipped_step_moves_the_schedule(project):
    # Reading the scaler's scale (a host read) each step would make the CPU wait for
    # the GPU every step. Inputs of 1e5 overflow fp16 in the first step, which is skipped.
    code = """
import torch
from sturdy.train import Learner, build_optimizers, linear_schedule
from sturdy.world import World

def no_host_read(self):
    raise AssertionError("the loop read the scale")
torch.amp.GradScaler.get_scale = no_host_read

class Task:  # the two calls Learner.step makes of a task
    def compute_loss(self, model, batch):
        return ((model(batch["x"]) - 1.0) ** 2).mean()
    def num_rows(self, batch):
        return len(batch["x"])

torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
optimizers = build_optimizers(model, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
scheduler = linear_schedule(optimizers[0], 0, 10)
scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
autocast = lambda: torch.autocast("cpu", dtype=torch.float16)
learner = Learner(model, optimizers, [scheduler], scaler, autocast)
world = World(0, 0, 1, torch.device("cpu"))
batch = {"x": torch.randn(8, 4)}
before = model.weight.detach().clone()
totals = [torch.zeros(()), torch.zeros(())]
learner.step([{"x": torch.full((8, 4), 1e5)}], Task(), world, 0.0, totals)
assert torch.equal(model.weight, before), "the overflowed step was taken"
assert scheduler.last_epoch == 1, "the schedule did not move"
for _ in range(3):
    learner.step([batch], Task(), world, 0.0, totals)
assert not torch.equal(model.weight, before) and scheduler.last_epoch == 4
"""
    python(project, "-c", code)


def test_compile_with_sparse_tables_is_one_line(project):
    result = python(project, "main.py", "--gpus", "0", "--compile", check=False)
    assert_one_line_error(result, "--compile: torch.compile cannot compile sparse embedding",
                          exit_code=1)


def test_more_nodes_without_a_master_port(project):
    result = python(project, "main.py", "--gpus", "0", "--nodes", "2", check=False)
    assert_one_line_error(result, "--nodes > 1 needs --master_port", exit_code=1)


def test_serving_without_java_says_how_to_install_it(project, tmp_path):
    (project / "serve" / "model_store").mkdir(parents=True, exist_ok=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("torchserve",):  # everything the command needs, except java
        os.symlink(shutil.which(tool), bin_dir / tool)
    result = python(project, "-m", "sturdy.serve", "start", check=False,
                    env={"PATH": str(bin_dir)})
    assert_one_line_error(result, "TorchServe needs Java 17", exit_code=1)


def test_a_build_with_a_missing_file_names_it(project, tmp_path):
    code = ("from pathlib import Path; from sturdy.serve import check_model_files; "
            f"build = Path('{tmp_path}') / 'build'; build.mkdir(); "
            "(build / 'handler.py').write_text('');"
            "check_model_files(build)")
    result = python(project, "-c", code, check=False)
    assert "cannot serve: model.pt2, id_maps.json missing" in result.stderr


@pytest.mark.parametrize("command", [["new", "proj", "--defaults"],
                                     ["new", "proj", "--defaults", "--no-git"],
                                     ["update", "sturdy"]])
def test_quikgen_without_git_says_to_install_it(project, tmp_path, monkeypatch, command):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no git on it
    answers = (project / ".copier-answers.yml").read_text()
    result = quikgen(*command, cwd=project.parent if command[0] == "update" else tmp_path)
    assert result.exit_code == 1
    assert "error: git is not installed; install git (quikgen versions the template" \
        in result.output
    assert not (tmp_path / "proj").exists()
    assert (project / ".copier-answers.yml").read_text() == answers


def test_serving_on_ports_in_use_names_them(project, tmp_path):
    import socket

    store = project / "serve" / "model_store"
    store.mkdir(parents=True, exist_ok=True)
    (store / "sturdy.mar").touch()  # the port check comes before TorchServe reads it
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = python(project, "-m", "sturdy.serve", "start", "--port", str(port), check=False)
    assert_one_line_error(result, f"port(s) in use: inference {port}", exit_code=1)
    assert "pick another --port" in result.stderr
