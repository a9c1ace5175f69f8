"""The generated loop under every launcher, in mixed precision, and resumed.

Real processes with gloo on the CPU; CUDA paths skip where no GPU is visible.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from .conftest import (
    assert_same_weights,
    copy_prepared_data,
    free_port,
    only_run,
    python,
    quikgen,
    start_until_checkpoint,
)

pytestmark = pytest.mark.slow

DATE = "20240131"
# 12,800 rows split 80/10/10: 10,240 training rows divide evenly by 2 x 64 and 128.
ROWS = "12800"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = tmp_path_factory.mktemp("ddp") / "ddp-demo"
    assert quikgen("new", str(dest), "--defaults").exit_code == 0
    python(dest, "-m", "ddp_demo.data", "--synthetic", "--rows", ROWS, "--users", "200",
           "--items", "100", "--data_date", DATE)
    return dest


@pytest.fixture
def data_dir(project, tmp_path):
    """A private copy of the prepared data: every run writes its own state dicts."""
    return copy_prepared_data(project, DATE, tmp_path / "data")


def train(project, data_dir, *args, launcher=(), **kwargs):
    command = [*launcher, "main.py", "--data_dir", str(data_dir), "--gpus", "0", *args]
    if launcher:
        return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=300,
                              **kwargs)
    return python(project, *command, **kwargs)


def weights(data_dir, epoch):
    return torch.load(only_run(data_dir) / f"state_dict_e{epoch}_{DATE}.pt", weights_only=True)


def metrics(data_dir):
    lines = (only_run(data_dir) / f"metrics_{DATE}.csv").read_text().splitlines()[1:]
    return [(int(line.split(",")[0]), float(line.split(",")[2])) for line in lines]


def test_two_procs_and_torchrun_match_one_proc_with_double_batch(project, tmp_path):
    runs = {}
    for name, args, launcher in [
        ("single", ["--bs", "128"], ()),
        ("procs", ["--bs", "64", "--procs", "2"], ()),
        ("torchrun", ["--bs", "64"],
         (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")),
    ]:
        data_dir = tmp_path / name
        shutil.copytree(project / "data", data_dir)
        result = train(project, data_dir, "--epochs", "2", *args, launcher=launcher)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = weights(data_dir, 1)
        assert "module." not in "".join(runs[name])
    assert_same_weights(runs["procs"], runs["single"])
    assert_same_weights(runs["torchrun"], runs["single"])


def test_accumulation_matches_a_batch_as_large(project, tmp_path):
    runs = {}
    for name, args in [("large", ["--bs", "128"]), ("accumulated", ["--bs", "64", "--accumulate", "2"])]:
        data_dir = tmp_path / name
        shutil.copytree(project / "data", data_dir)
        train(project, data_dir, "--epochs", "1", *args)
        runs[name] = weights(data_dir, 0)
    assert_same_weights(runs["accumulated"], runs["large"])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_the_cpu_learns(project, data_dir, precision):
    result = train(project, data_dir, "--epochs", "2", "--precision", precision, "--clip_grad", "1")
    assert f"torch.{'bfloat16' if precision == 'bf16' else 'float16'}" in result.stdout
    valid = [loss for _, loss in metrics(data_dir)]
    assert valid[1] < valid[0]


def killed_after_a_checkpoint(project, data_dir, tmp_path, args):
    """Train with ``args`` to the end in a copy of the data, and again in ``data_dir``
    killed with kill -9 as soon as its first checkpoint has landed; returns the copy's
    folder and that checkpoint as it was left."""
    uninterrupted = tmp_path / "uninterrupted"
    shutil.copytree(data_dir, uninterrupted)
    train(project, uninterrupted, *args)

    command = [sys.executable, "main.py", "--data_dir", str(data_dir), "--gpus", "0", *args]
    process, checkpoint = start_until_checkpoint(project, data_dir, f"checkpoint_{DATE}.pt",
                                                 command, stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return uninterrupted, torch.load(checkpoint, weights_only=True)


def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(project, data_dir, tmp_path):
    args = ["--epochs", "4", "--bs", "16", "--save_every", "0"]  # epoch checkpoints only
    uninterrupted, saved = killed_after_a_checkpoint(project, data_dir, tmp_path, args)
    assert saved["epoch"] == 0  # killed during epoch 2: epoch 1's checkpoint had just landed
    assert not (only_run(data_dir) / f"metrics_{DATE}.csv").exists()

    result = train(project, data_dir, *args, "--resume")
    assert "resuming after epoch 0" in result.stdout
    assert [epoch for epoch, _ in metrics(data_dir)] == [0, 1, 2, 3]
    assert_same_weights(weights(data_dir, 3), weights(uninterrupted, 3), atol=0)


def test_two_nodes_resume_from_node_0s_checkpoint_without_a_shared_disk(project, tmp_path):
    # Two nodes on loopback, each with its own output folder: only node 0's holds the
    # checkpoint. Each rank used to decide from its own disk: node 1 started afresh
    # while node 0 resumed, and the job hung. Rank 0 now decides and sends it.
    args = ["--epochs", "4", "--save_every", "0"]
    uninterrupted = copy_prepared_data(project, DATE, tmp_path / "uninterrupted")
    train(project, uninterrupted, *args, "--bs", "128")
    folders = [copy_prepared_data(project, DATE, tmp_path / f"node{nr}") for nr in (0, 1)]

    def node_commands(port, *extra):
        return [[sys.executable, "main.py", "--data_dir", str(folder), "--gpus", "0", *args,
                 "--bs", "64", "--nodes", "2", "--nr", str(nr), "--master_addr", "127.0.0.1",
                 "--master_port", str(port), *extra] for nr, folder in enumerate(folders)]

    first, second = node_commands(free_port())
    node1 = subprocess.Popen(second, cwd=project, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    node0, checkpoint = start_until_checkpoint(project, folders[0], f"checkpoint_{DATE}.pt",
                                               first, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL)
    for node in (node0, node1):
        os.kill(node.pid, signal.SIGKILL)
        node.wait()
    assert torch.load(checkpoint, weights_only=True)["epoch"] < 3
    assert not list(folders[1].glob("runs/*/checkpoint_*"))

    nodes = [subprocess.Popen(command, cwd=project, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for command in node_commands(free_port(), "--resume", "auto")]
    outputs = [node.communicate(timeout=240) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[1][1][-2000:]
    # Killed launchers leave their processes a SIGINT (spawn's parent-death signal): they
    # may have stopped mid-epoch, with a checkpoint there.
    assert re.search(r"^resuming (after|in) epoch", outputs[0][0], re.M), outputs[0][0][:400]
    assert_same_weights(weights(folders[0], 3), weights(uninterrupted, 3))


@pytest.mark.parametrize("save_every", ["25", "0.5s"], ids=["steps", "time"])
def test_kill_9_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(
        project, data_dir, tmp_path, save_every):
    # 1,280 steps an epoch: the first checkpoint, after 25 steps or half a second, lands mid-epoch.
    args = ["--epochs", "1", "--bs", "8", "--save_every", save_every]
    uninterrupted, saved = killed_after_a_checkpoint(project, data_dir, tmp_path, args)
    assert saved["epoch"] == 0 and 0 < saved["step"] < saved["steps_per_epoch"]

    result = train(project, data_dir, *args, "--resume")
    assert f"resuming in epoch 1/1 after step {saved['step']} from" in result.stdout
    assert_same_weights(weights(data_dir, 0), weights(uninterrupted, 0), atol=0)


def test_resume_with_another_batch_size_is_refused_before_training(project, data_dir):
    train(project, data_dir, "--epochs", "2", "--bs", "128")
    result = train(project, data_dir, "--epochs", "2", "--bs", "64", "--resume", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --resume: {only_run(data_dir) / f'checkpoint_{DATE}.pt'} took 80 steps per "
        "epoch, this run would take 160; resume with that run's --bs, --accumulate and number "
        "of processes")


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_resume_with_a_corrupt_checkpoint_is_a_one_line_error(project, data_dir, damage):
    train(project, data_dir, "--epochs", "2")
    checkpoint = only_run(data_dir) / f"checkpoint_{DATE}.pt"
    if damage == "truncated":  # a real checkpoint, cut off half way
        checkpoint.write_bytes(checkpoint.read_bytes()[:checkpoint.stat().st_size // 2])
    else:
        checkpoint.write_bytes(b"PK\x03\x04 not a checkpoint")
    result = train(project, data_dir, "--epochs", "2", "--resume", check=False)
    assert result.returncode == 1
    assert "is not a readable checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def failing_project(tmp_path):
    """A project whose loss raises on rank 1, like a user's bug."""
    dest = tmp_path / "failing"
    assert quikgen("new", str(dest), "--defaults").exit_code == 0
    task = dest / "failing" / "task.py"
    source = task.read_text()
    failing = source.replace(
        '        if model.training:\n',
        '        if os.environ.get("RANK") == "1" and model.training:\n'
        '            raise RuntimeError("rank 1 fails")\n'
        '        if model.training:\n', 1,
    ).replace("import math\n", "import math\nimport os\n")
    assert failing.count("rank 1 fails") == 1, "compute_loss no longer reads as this test expects"
    task.write_text(failing)
    python(dest, "-m", "failing.data", "--synthetic", "--rows", "4000")
    return dest


@pytest.mark.parametrize("launcher", ["procs", "torchrun"])
def test_a_rank_that_raises_ends_the_job_quickly(failing_project, launcher):
    if launcher == "procs":
        command = [sys.executable, "main.py", "--gpus", "0", "--procs", "2"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", "2", "main.py", "--gpus", "0"]
    started = time.monotonic()
    result = subprocess.run(command, cwd=failing_project, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert "rank 1 fails" in result.stderr
    assert time.monotonic() - started < 60


def test_a_diverging_loss_names_the_epoch_and_step(project, data_dir):
    result = train(project, data_dir, "--epochs", "1", "--lr", "1e30", check=False)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: loss is ") and "at epoch 1, step " in last_line


def test_gpus_beyond_the_visible_ones_is_a_clear_error(project, data_dir):
    visible = torch.cuda.device_count()
    result = python(project, "main.py", "--data_dir", str(data_dir), "--gpus", str(visible + 1),
                    check=False)
    if visible == 0:  # no GPU: the promised fallback to the CPU, with a warning
        assert result.returncode == 0
        assert "no GPU is visible; training on the CPU" in result.stderr
    else:
        assert result.returncode == 1
        assert f"only {visible} GPU(s) are visible" in result.stderr


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_one_gpu_trains_in_each_precision(project, data_dir, precision):
    result = python(project, "main.py", "--data_dir", str(data_dir), "--gpus", "1",
                    "--epochs", "2", "--precision", precision)
    assert "on cuda:0" in result.stdout
    valid = [loss for _, loss in metrics(data_dir)]
    assert valid[1] < valid[0]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpus_with_nccl_match_one_gpu_with_double_batch(project, tmp_path):
    runs = {}
    for name, args in [("one", ["--gpus", "1", "--bs", "128"]), ("two", ["--gpus", "2", "--bs", "64"])]:
        data_dir = tmp_path / name
        shutil.copytree(project / "data", data_dir)
        python(project, "main.py", "--data_dir", str(data_dir), "--epochs", "2", *args)
        runs[name] = weights(data_dir, 1)
    assert_same_weights(runs["two"], runs["one"], atol=1e-4)


@pytest.mark.parametrize("procs", ["1", "2"])
def test_ctrl_c_keeps_the_checkpoint_and_exits_130(project, data_dir, procs):
    command = [sys.executable, "main.py", "--data_dir", str(data_dir), "--gpus", "0",
               "--epochs", "50", "--bs", "16", "--procs", procs]
    # A new session, signalled as a whole: what Ctrl-C in a terminal does.
    process, checkpoint = start_until_checkpoint(
        project, data_dir, f"checkpoint_{DATE}.pt", command, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "stopped by SIGINT" in stderr  # in an epoch or after one, as the signal fell
    assert f"the checkpoint is {checkpoint}: continue with --resume" in stderr
    assert torch.load(checkpoint, weights_only=True)["epoch"] >= 0


def test_kill_9_while_a_checkpoint_is_written_leaves_the_previous_one(project, data_dir):
    # A large embedding makes each checkpoint ~70 MB, so its write takes a while.
    args = ["--epochs", "4", "--embedding_dim", "20000"]
    command = [sys.executable, "main.py", "--data_dir", str(data_dir), "--gpus", "0", *args]
    process, checkpoint = start_until_checkpoint(project, data_dir, f"checkpoint_{DATE}.pt",
                                                 command, stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL)
    # Kill as soon as epoch 1's checkpoint starts to be written.
    writing, deadline = [], time.monotonic() + 120
    while not writing and process.poll() is None and time.monotonic() < deadline:
        writing = list(checkpoint.parent.glob(f".{checkpoint.name}.*.tmp"))
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert writing and writing[0].exists(), "the kill came after the write finished"
    assert writing[0].stat().st_size < checkpoint.stat().st_size  # cut off mid-write

    assert torch.load(checkpoint, weights_only=True)["epoch"] == 0
    result = train(project, data_dir, *args, "--resume")
    assert "resuming after epoch 0" in result.stdout
    assert [epoch for epoch, _ in metrics(data_dir)] == [0, 1, 2, 3]
    assert not list(checkpoint.parent.glob(".*.tmp"))  # the next write removed the cut-off file


@pytest.mark.parametrize("launcher", ["procs", "torchrun"])
def test_a_rank_killed_by_a_signal_ends_the_job_quickly(project, data_dir, launcher):
    import psutil

    args = ["main.py", "--data_dir", str(data_dir), "--gpus", "0", "--epochs", "50", "--bs", "16"]
    if launcher == "procs":
        command = [sys.executable, *args, "--procs", "2"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", "2", *args]
    process, checkpoint = start_until_checkpoint(project, data_dir, f"checkpoint_{DATE}.pt",
                                                 command, stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.PIPE, text=True)
    # The ranks are the launcher's children that run Python (spawn also starts a
    # resource tracker, which is not a rank); rank 1 starts after rank 0.
    ranks = [child for child in psutil.Process(process.pid).children()
             if "resource_tracker" not in " ".join(child.cmdline())]
    assert len(ranks) == 2
    killed_at = time.monotonic()
    max(ranks, key=lambda child: child.pid).kill()  # SIGKILL: no Python handler runs

    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert time.monotonic() - killed_at < 60
    assert not [rank for rank in ranks if rank.is_running() and rank.status() != "zombie"]
    if launcher == "procs":
        # After it, Python's resource tracker may warn of the dead rank's semaphores.
        assert ("error: training process 1 was killed by SIGKILL; the others were stopped"
                in stderr.splitlines())
        assert "Traceback" not in stderr
    assert torch.load(checkpoint, weights_only=True)["epoch"] >= 0  # nothing written is lost
