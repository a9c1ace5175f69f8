"""A plain run as a Ray Train job on a real Ray cluster (`ray start --head` on 127.0.0.1):
the same train(), checkpoint files and --resume as any run, and the same weights as
`--procs 2`."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from .conftest import (
    assert_same_weights,
    copy_prepared_data,
    free_port,
    only_run,
    python,
    quikgen,
    run,
    start_until_checkpoint,
)

pytestmark = pytest.mark.slow

DATE = "20240131"
RAY = Path(sys.executable).with_name("ray")  # the ray command of this environment


def ray_processes() -> list[str]:
    names = []
    for process in psutil.process_iter(["name", "cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if process.info["name"] in ("raylet", "gcs_server") or "ray::" in command:
            names.append(f"{process.pid} {command[:80]}")
    return names


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Ray cluster of this machine, as `ray start` makes one; stopped, with nothing left."""
    port = free_port()
    run(RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", port, "--num-cpus", "2",
        "--disable-usage-stats", cwd=tmp_path_factory.mktemp("ray"))
    try:
        yield f"127.0.0.1:{port}"
    finally:
        run(RAY, "stop", "--force", cwd=Path.cwd(), check=False)
        deadline = time.monotonic() + 30
        while ray_processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert ray_processes() == []


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = tmp_path_factory.mktemp("ray-train") / "on-ray"
    result = quikgen("new", str(dest), "--defaults", "--data", "use_ray_tune=true")
    assert result.exit_code == 0, result.output
    python(dest, "-m", "on_ray.data", "--synthetic", "--rows", "6400", "--users", "100",
           "--items", "50", "--data_date", DATE)
    return dest


def weights(data_dir, epoch):
    return torch.load(only_run(data_dir) / f"state_dict_e{epoch}_{DATE}.pt", weights_only=True)


ARGS = ["--gpus", "0", "--epochs", "3", "--bs", "64", "--save_every", "0"]


def test_a_ray_train_job_ends_with_the_weights_of_two_local_processes(project, cluster, tmp_path):
    on_ray = copy_prepared_data(project, DATE, tmp_path / "on-ray")
    python(project, "main.py", "--data_dir", str(on_ray), *ARGS, "--ray_address", cluster,
           "--ray_workers", "2")
    local = copy_prepared_data(project, DATE, tmp_path / "local")
    python(project, "main.py", "--data_dir", str(local), *ARGS, "--procs", "2")
    for epoch in range(3):
        assert_same_weights(weights(on_ray, epoch), weights(local, epoch), atol=1e-6)
    assert (only_run(on_ray) / f"metrics_{DATE}.csv").read_text().splitlines()[1:] != []


def test_a_killed_ray_job_resumes_from_its_last_epoch(project, cluster, tmp_path):
    uninterrupted = copy_prepared_data(project, DATE, tmp_path / "uninterrupted")
    python(project, "main.py", "--data_dir", str(uninterrupted), *ARGS, "--procs", "2")

    data_dir = copy_prepared_data(project, DATE, tmp_path / "killed")
    command = [sys.executable, "main.py", "--data_dir", str(data_dir), *ARGS,
               "--ray_address", cluster, "--ray_workers", "2"]
    process, checkpoint = start_until_checkpoint(project, data_dir, f"checkpoint_{DATE}.pt",
                                                 command, stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL)
    os.kill(process.pid, signal.SIGKILL)  # the driver: Ray ends the job's workers with it
    process.wait()
    deadline = time.monotonic() + 60
    while any("RayTrainWorker" in name for name in ray_processes()):
        assert time.monotonic() < deadline, "the killed job's workers still run"
        time.sleep(0.5)
    saved = torch.load(checkpoint, weights_only=True)["epoch"]
    assert saved < 2 and not (only_run(data_dir) / f"metrics_{DATE}.csv").exists()

    result = python(project, "main.py", "--data_dir", str(data_dir), *ARGS, "--ray_address",
                    cluster, "--ray_workers", "2", "--resume")
    assert f"resuming after epoch {saved}" in result.stdout
    assert_same_weights(weights(data_dir, 2), weights(uninterrupted, 2), atol=1e-6)


def test_a_ray_job_that_loses_a_worker_restarts_and_ends_with_the_uninterrupted_weights(
        project, cluster, tmp_path):
    # FailureConfig restarts the worker group; the restarted group sees the checkpoint
    # its epochs reported to Ray and resumes the run's own, as --resume auto does.
    args = [*ARGS[:ARGS.index("--epochs")], "--epochs", "8", *ARGS[ARGS.index("--epochs") + 2:]]
    uninterrupted = copy_prepared_data(project, DATE, tmp_path / "uninterrupted")
    python(project, "main.py", "--data_dir", str(uninterrupted), *args, "--procs", "2")

    data_dir = copy_prepared_data(project, DATE, tmp_path / "lost-worker")
    known = set((project / "ray_results").glob("train-*"))
    process = subprocess.Popen([sys.executable, "main.py", "--data_dir", str(data_dir), *args,
                                "--ray_address", cluster, "--ray_workers", "2"],
                               cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    # Ray's controller takes in the workers' reports every 2 s; once it holds one
    # (its snapshot names the checkpoint), kill a worker.
    deadline = time.monotonic() + 120
    while not [job for job in set((project / "ray_results").glob("train-*")) - known
               if (job / "checkpoint_manager_snapshot.json").is_file()]:
        assert process.poll() is None and time.monotonic() < deadline, "no epoch was reported"
        time.sleep(0.05)
    workers = [worker for worker in psutil.process_iter(["cmdline"])
               if "RayTrainWorker" in " ".join(worker.info["cmdline"] or [])]
    assert len(workers) == 2
    workers[-1].kill()
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    assert "resuming after epoch" in output, output[-3000:]
    assert_same_weights(weights(data_dir, 7), weights(uninterrupted, 7), atol=1e-6)
