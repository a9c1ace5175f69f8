"""Runs that schedulers take back: SIGTERM, step checkpoints, and torchrun restarts
that resume by themselves (issue 19). Real processes with gloo on the CPU."""

import re
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from .conftest import (
    assert_same_weights,
    copy_prepared_data,
    only_run,
    python,
    quikgen,
    start_until_checkpoint,
)

pytestmark = pytest.mark.slow

DATE = "20240131"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = tmp_path_factory.mktemp("preempted") / "preempted"
    assert quikgen("new", str(dest), "--defaults").exit_code == 0
    python(dest, "-m", "preempted.data", "--synthetic", "--rows", "12800", "--users", "200",
           "--items", "100", "--data_date", DATE)
    return dest


@pytest.fixture
def data_dir(project, tmp_path):
    """A private copy of the prepared data: every run writes its own files."""
    return copy_prepared_data(project, DATE, tmp_path / "data")


def final_weights(data_dir, epochs):
    path = only_run(data_dir) / f"state_dict_e{epochs - 1}_{DATE}.pt"
    return torch.load(path, weights_only=True)


def uninterrupted(project, tmp_path, data_dir, command):
    """The final weights of ``command`` run to the end on a copy of ``data_dir``."""
    copy = tmp_path / "uninterrupted"
    shutil.copytree(data_dir, copy)
    subprocess.run([*command, "--data_dir", str(copy)], cwd=project, check=True,
                   capture_output=True, timeout=600)
    return copy


def started(project, data_dir, command):
    """``command`` started on ``data_dir``, a moment after its first checkpoint landed."""
    process, checkpoint = start_until_checkpoint(
        project, data_dir, f"checkpoint_{DATE}.pt", [*command, "--data_dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # into the next epoch's steps
    return process, checkpoint


def training_processes(launcher: psutil.Process) -> list[psutil.Process]:
    """The launcher's children that train (spawn also starts a resource tracker)."""
    return [child for child in launcher.children(recursive=True)
            if "resource_tracker" not in " ".join(child.cmdline())]


def test_sigterm_to_the_launcher_stops_every_rank_at_one_step_and_resume_finishes_the_run(
        project, data_dir, tmp_path):
    epochs = 4
    command = [sys.executable, "main.py", "--gpus", "0", "--procs", "2", "--epochs", str(epochs),
               "--bs", "8", "--save_every", "0"]
    expected = uninterrupted(project, tmp_path, data_dir, command)

    process, checkpoint = started(project, data_dir, command)
    ranks = training_processes(psutil.Process(process.pid))
    assert len(ranks) == 2
    # Epoch 0's checkpoint has just landed: a later epoch is under way.
    stopped_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 143, stderr
    assert time.monotonic() - stopped_at < 30
    assert not [rank for rank in ranks if rank.is_running() and rank.status() != "zombie"]
    saved = torch.load(checkpoint, weights_only=True)
    assert 0 < saved["step"] < saved["steps_per_epoch"], "not in the middle of an epoch"
    assert (f"stopped by SIGTERM in epoch {saved['epoch'] + 1}/{epochs} after step "
            f"{saved['step']}; the checkpoint is {checkpoint}: continue with --resume") in stderr
    assert "Traceback" not in stderr

    result = subprocess.run([*command, "--data_dir", str(data_dir), "--resume"], cwd=project,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (f"resuming in epoch {saved['epoch'] + 1}/{epochs} after step {saved['step']} "
            f"from {checkpoint}") in result.stdout
    assert_same_weights(final_weights(data_dir, epochs), final_weights(expected, epochs),
                        atol=1e-6)


def test_a_single_process_stops_on_ctrl_c_with_exit_130_and_resumes(project, data_dir, tmp_path):
    epochs = 4
    command = [sys.executable, "main.py", "--gpus", "0", "--epochs", str(epochs), "--bs", "8",
               "--save_every", "0"]
    expected = uninterrupted(project, tmp_path, data_dir, command)

    process, checkpoint = started(project, data_dir, command)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    saved = torch.load(checkpoint, weights_only=True)
    assert 0 < saved["step"] < saved["steps_per_epoch"], "not in the middle of an epoch"
    assert f"stopped by SIGINT in epoch {saved['epoch'] + 1}/{epochs}" in stderr
    assert "Traceback" not in stderr

    python(project, *command[1:], "--data_dir", str(data_dir), "--resume")
    assert_same_weights(final_weights(data_dir, epochs), final_weights(expected, epochs),
                        atol=1e-6)


def test_torchrun_restarts_a_killed_worker_and_resume_auto_finishes_the_run(
        project, data_dir, tmp_path):
    epochs = 2
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "--max-restarts", "1", "main.py", "--gpus", "0",
               "--epochs", str(epochs), "--bs", "8", "--resume", "auto", "--save_every", "20"]
    expected = uninterrupted(project, tmp_path, data_dir, command)

    process, checkpoint = started(project, data_dir, command)
    workers = training_processes(psutil.Process(process.pid))
    assert len(workers) == 2
    max(workers, key=lambda worker: worker.pid).kill()  # SIGKILL: no handler, no checkpoint
    stdout, stderr = process.communicate(timeout=600)

    assert process.returncode == 0, stderr
    # torchrun's second start, by itself, from the last --save_every checkpoint.
    assert re.search(r"resuming in epoch [12]/2 after step [1-9]\d*0 from", stdout), stdout
    assert_same_weights(final_weights(data_dir, epochs), final_weights(expected, epochs),
                        atol=1e-6)
