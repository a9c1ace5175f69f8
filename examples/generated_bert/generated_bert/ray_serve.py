"""Ray Serve: the server started from serve/, and its process.

`python -m generated_bert.serve start` runs this module as a process of its own
(its pid in serve/ray_serve.pid, its output in serve/ray_serve.log): it starts a
private Ray cluster, deploys handler.py's model on 127.0.0.1 with the files
`build` wrote to serve/build/, and serves until `stop` sends it SIGTERM, when it
shuts Serve and its cluster down. It never joins a cluster started with
`ray start`, and a search's `ray.init()` never joins it. Requests are batched
(--max_batch_size, --batch_wait_timeout_s) across --replicas copies of the model.
"""

import argparse
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import requests

from .args import PROJECT_DIR, FlagValues, UsageError, checked, non_negative_float, positive_int

NAME = "Ray Serve"
MODEL_NAME = "generated_bert"
ROUTE = f"/predictions/{MODEL_NAME}"
# What a server that is starting or restarting answers, retried with backoff: 404
# too, as a restarting Ray Serve listens a moment before its route exists.
RETRIED_STATUS = (404, 500, 503, 507)

port_number = checked(int, lambda port: 1 <= port <= 65535, "a port from 1 to 65535")


def add_build_flags(build: argparse.ArgumentParser) -> None:
    """None: the server reads the build folder as it is."""


def add_start_flags(start: argparse.ArgumentParser) -> None:
    start.add_argument(
        "--port", type=port_number, default=8080, help="HTTP port (default: %(default)s)"
    )
    start.add_argument(
        "--replicas",
        type=positive_int,
        default=1,
        help="copies of the model serving at once, each in its own process (default: %(default)s)",
    )
    start.add_argument(
        "--gpus_per_replica",
        type=non_negative_float,
        default=0.0,
        help="GPUs each replica takes (0.5: two replicas share one); Ray hides the GPUs "
        "from a replica that asks for none (default: %(default)s)",
    )
    start.add_argument(
        "--max_batch_size",
        type=positive_int,
        default=8,
        help="requests one replica answers in one batch (default: %(default)s)",
    )
    start.add_argument(
        "--batch_wait_timeout_s",
        type=non_negative_float,
        default=0.05,
        help="seconds a replica waits to fill a batch (default: %(default)s)",
    )


@dataclass(frozen=True)
class PackageSettings(FlagValues):
    """None: see add_build_flags."""


@dataclass(frozen=True)
class ServerSettings(FlagValues):
    port: int
    replicas: int
    gpus_per_replica: float
    max_batch_size: int
    batch_wait_timeout_s: float


def package(build_dir: Path, serve_dir: Path, settings: PackageSettings) -> Path:
    """Nothing to pack: the server deploys the build folder."""
    return build_dir


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def running(pid: int) -> bool:
    """Whether process ``pid`` is alive: an exited one stays a zombie until reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


def server_pid(serve_dir: Path) -> int | None:
    """The pid of the server started from ``serve_dir``, if it still runs (a pid
    file left by a server that died names a process that is gone, or another one)."""
    try:
        pid = int((serve_dir / "ray_serve.pid").read_text())
    except (OSError, ValueError):
        return None
    command = Path(f"/proc/{pid}/cmdline")  # Linux names each process's command
    if command.exists() and __name__ not in command.read_bytes().decode(errors="replace"):
        return None
    return pid if running(pid) else None


def routed(port: int) -> bool:
    """Whether Ray Serve on ``port`` routes the model's requests yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/routes", timeout=5) as response:
            return ROUTE in json.load(response)
    except (OSError, ValueError):
        return False


def start(serve_dir: Path, settings: ServerSettings, timeout: float = 300) -> str:
    """Start the server process and wait until its model answers; return its URL."""
    port = settings.port
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("starlette") is None:
        raise UsageError("Ray Serve is not installed: pip install 'ray[serve]'")
    if not (serve_dir / "build").is_dir():
        raise UsageError(
            f"no model files in {serve_dir / 'build'}; "
            f"run `python -m {__package__}.serve build` first"
        )
    if (pid := server_pid(serve_dir)) is not None:
        raise UsageError(f"Ray Serve already runs from {serve_dir} (pid {pid}); stop it first")
    if port_in_use(port):
        raise UsageError(f"port {port} is in use; stop what uses it or pick another --port")
    if settings.gpus_per_replica:
        import torch  # imported only here: a CPU server starts faster without it

        if not torch.cuda.is_available():  # the server's Ray cluster is this machine's
            raise UsageError(
                "--gpus_per_replica: no GPU is visible here; drop it to serve on the CPU"
            )
    ready = serve_dir / "ray_serve.ready"
    ready.unlink(missing_ok=True)
    log = serve_dir / "ray_serve.log"
    command = [sys.executable, "-m", __name__, str(serve_dir), str(port)]
    command += [str(settings.replicas), str(settings.gpus_per_replica)]
    command += [str(settings.max_batch_size), str(settings.batch_wait_timeout_s)]
    env = {
        **os.environ,
        # Ray's replicas import handler.py from this project.
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(PROJECT_DIR), os.environ.get("PYTHONPATH")])
        ),
        # A SIGTERM while Ray starts ends the server now, not after Ray's 30 s drain.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    with open(log, "w") as out:
        # A session of its own: the server outlives this command, and Ctrl-C here.
        server = subprocess.Popen(
            command,
            cwd=PROJECT_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (serve_dir / "ray_serve.pid").write_text(str(server.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise UsageError(f"Ray Serve did not start; see {log}")
        # The ready file: every replica is up. The route: the proxy sends them requests.
        if ready.exists() and routed(port):
            return f"http://127.0.0.1:{port}{ROUTE}"
        time.sleep(0.5)
    stop(serve_dir)
    raise UsageError(f"the model was not ready after {timeout:.0f}s; see {log}")


def stop(serve_dir: Path, timeout: float = 60) -> bool:
    """Stop the server started from ``serve_dir``; False if none is running."""
    pid = server_pid(serve_dir)
    (serve_dir / "ray_serve.pid").unlink(missing_ok=True)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if running(pid):
        # Ray's processes run in process groups of their own, all in the server's session.
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[-1].split()[3]) == pid:
                    os.kill(int(stat.parent.name), signal.SIGKILL)
            except (OSError, ValueError):
                continue
    return True


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    """None: Ray Serve asks no token."""


@dataclass(frozen=True)
class ClientSettings(FlagValues):
    """None: see add_client_flags."""


def post_batch(
    session: requests.Session, url: str, batch: list, timeout: float, retries: int
) -> requests.Response:
    """POST one batch; the session's retries cover a server that restarts."""
    return session.post(url, json=batch, timeout=timeout)


def serve_model(
    serve_dir: Path,
    port: int,
    replicas: int,
    gpus_per_replica: float,
    max_batch_size: int,
    batch_wait_timeout_s: float,
) -> None:
    """The server process: deploy the model, then serve until SIGTERM."""
    import ray
    from ray import serve

    from .handler import Model

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    stopping = threading.Event()
    # After ray.init, which installs a SIGTERM handler of its own.
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        cpus = ray.cluster_resources().get("CPU", 1)
        model = Model.options(
            num_replicas=replicas,
            # Replicas share the machine's CPUs, so that any number of them can start.
            ray_actor_options={"num_cpus": min(1.0, cpus / replicas), "num_gpus": gpus_per_replica},
            # Enough requests in flight to fill a batch.
            max_ongoing_requests=2 * max_batch_size,
            graceful_shutdown_wait_loop_s=0.2,
        ).bind(str(serve_dir / "build"), max_batch_size, batch_wait_timeout_s)
        serve.run(model, name=MODEL_NAME, route_prefix=ROUTE)  # returns once every replica runs
        (serve_dir / "ray_serve.ready").write_text(f"{os.getpid()}\n")
        stopping.wait()
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}.ray_serve",
        description=f"The Ray Serve process; start it with python -m {__package__}.serve start.",
    )
    parser.add_argument("serve_dir", type=Path)
    parser.add_argument("port", type=port_number)
    parser.add_argument("replicas", type=positive_int)
    parser.add_argument("gpus_per_replica", type=non_negative_float)
    parser.add_argument("max_batch_size", type=positive_int)
    parser.add_argument("batch_wait_timeout_s", type=non_negative_float)
    args = parser.parse_args(argv)
    serve_model(
        args.serve_dir,
        args.port,
        args.replicas,
        args.gpus_per_replica,
        args.max_batch_size,
        args.batch_wait_timeout_s,
    )


if __name__ == "__main__":
    main()
