"""MLflow tracking: one run per training job, logged by rank 0.

main.py and train() call every tracker the same way: ``open_run`` in the launching
process yields the job's run (a ``TrackedRun``), and ``run_logger(tracking, run)``
in each training process gives what logs into it: rank 0's logs metrics, tags and
artifacts, then ``close()``; the other ranks' log nothing.

    python main.py --use_mlflow                       # the embedded store: mlflow.db, mlruns/
    python main.py --use_mlflow --tracking_uri http://127.0.0.1:5000
    mlflow ui --backend-store-uri sqlite:///mlflow.db # look at the runs

The launching process creates the run and ends it FINISHED, or FAILED if
training raised; rank 0 logs into it: the parameters in one batch, ``train_loss``
per optimizer step and ``valid_loss`` per epoch on the same step axis, each
epoch's state dict as an artifact, the test metrics, and a ``best_epoch`` tag
naming the epoch whose weights they were measured with. MLflow is imported only when a run is asked
for, so training without ``--use_mlflow`` does not pay for it.

A store that cannot be reached at the start fails the job in seconds (a typo in
--tracking_uri should not cost a training run). One that stops answering later
costs the tracking, not the training: a warning, and the metrics are sent again
after the next epoch.
"""

import argparse
import getpass
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .args import PROJECT_DIR, FlagValues, UsageError, apply_defaults
from .files import load_data_info
from .metrics import NotTracked

# What open_run yields and RunLogger logs into: an MLflow run's id.
TrackedRun = str
PROJECT_KIND = "bert"
DEFAULT_TRACKING_URI = f"sqlite:///{PROJECT_DIR / 'mlflow.db'}"
MLFLOW_DEFAULTS = {
    # A tracking server that does not answer fails the job in seconds, not after
    # MLflow's default of four minutes of retries.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # No "View run at ..." lines and download bars in the training output.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


@dataclass(frozen=True)
class TrackingSettings(FlagValues):
    """The mlflow flags: whether and where runs are tracked, and under which names."""

    use_mlflow: bool
    experiment: str
    user: str
    run_name: str | None
    tracking_uri: str
    endpoint_url: str | None


def add_tracking_args(parser: argparse.ArgumentParser, defaults: dict | None = None):
    """Where and under which names runs are tracked."""
    group = parser.add_argument_group("mlflow")
    group.add_argument(
        "--use_mlflow", action="store_true", help="track this training job as an MLflow run"
    )
    group.add_argument(
        "-exp",
        "--experiment",
        default="generated-bert",
        help="experiment to log into, created if missing (default: %(default)s)",
    )
    group.add_argument(
        "-u",
        "--user",
        default=getpass.getuser(),
        help="user recorded on the run (default: the login name)",
    )
    group.add_argument(
        "--run_name", default=None, help="name of the run (default: MLflow picks one)"
    )
    group.add_argument(
        "--tracking_uri",
        default=DEFAULT_TRACKING_URI,
        help="tracking store or server, e.g. http://127.0.0.1:5000 "
        "(default: the project's mlflow.db)",
    )
    group.add_argument(
        "--endpoint_url",
        default=None,
        help="S3 endpoint for artifacts, for MinIO and other S3-compatible stores",
    )
    return apply_defaults(parser, defaults)


def import_mlflow():
    """MLflow's client class, imported only when a run is asked for."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UsageError(
            "--use_mlflow needs MLflow: pip install 'mlflow>=3' (or pip install -e '.[mlflow]')"
        ) from None
    for name, value in MLFLOW_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from mlflow import MlflowClient

    return MlflowClient


def mlflow_errors() -> tuple[type[Exception], ...]:
    """What a store that does not answer raises: MLflow's errors, and OSError for a
    refused or broken connection."""
    from mlflow.exceptions import MlflowException

    return MlflowException, OSError


@contextmanager
def s3_endpoint(endpoint_url: str | None):
    """MLflow reads the S3 endpoint from the environment; set it only while we
    talk to the artifact store, and put back what was there."""
    if endpoint_url is None:
        yield
        return
    saved = os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    os.environ["MLFLOW_S3_ENDPOINT_URL"] = endpoint_url
    try:
        yield
    finally:
        if saved is None:
            del os.environ["MLFLOW_S3_ENDPOINT_URL"]
        else:
            os.environ["MLFLOW_S3_ENDPOINT_URL"] = saved


def artifact_location(tracking_uri: str) -> str | None:
    """An SQLite store keeps artifacts in mlruns/ beside it, by absolute path, so
    runs started from any folder (Ray trials change it) find them; a server
    decides for itself."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
    return None


def connect(tracking_uri: str, experiment_name: str):
    """A client for --tracking_uri, and the id of --experiment (created if missing)."""
    client = import_mlflow()(tracking_uri=tracking_uri)
    try:
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            return client, client.create_experiment(
                experiment_name, artifact_location=artifact_location(tracking_uri)
            )
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return client, experiment.experiment_id
    except mlflow_errors() as error:
        raise UsageError(
            f"cannot reach the MLflow tracking store {tracking_uri} "
            f"({describe(error)}); start the server or fix --tracking_uri"
        ) from None


def describe(error: Exception) -> str:
    """The error's type and the first line of its message: MLflow's run to pages."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"


def warn(what: str, error: Exception) -> None:
    print(f"warning: MLflow: {what} ({describe(error)})", file=sys.stderr)


def end_run(client, run_id: str, status: str) -> None:
    try:
        client.set_terminated(run_id, status)
    except mlflow_errors() as error:  # the job's own outcome matters more
        warn(f"could not mark run {run_id} {status}; it shows as RUNNING", error)


def git_commit() -> str | None:
    result = subprocess.run(
        ["git", "-C", str(PROJECT_DIR), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return result.stdout.strip() if result.returncode == 0 else None


def run_params(flags: dict) -> dict[str, str]:
    """Every flag of the job, and where its data came from (the prepared data
    set's source, rows and rows skipped), as MLflow parameters."""
    params = {key: value for key, value in flags.items() if key != "local_rank"}
    data_info = load_data_info(flags["data_dir"], flags["data_date"]) or {}
    params.update({f"data_{key}": value for key, value in data_info.items()})
    return {key: str(value) for key, value in sorted(params.items()) if value is not None}


def close_child_runs(tracking: TrackingSettings, parent_run_id: str, failed: set[str]) -> None:
    """End the runs of a search's trials that are still open: Ray Tune stops a
    trial's process when the scheduler is done with it, before its run can end.
    Trials in ``failed`` (Ray trial ids) end FAILED, the others FINISHED."""
    client, experiment_id = connect(tracking.tracking_uri, tracking.experiment)
    still_open = client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' "
        "and attributes.status = 'RUNNING'",
    )
    for run in still_open:
        status = "FAILED" if run.data.tags.get("ray_trial_id") in failed else "FINISHED"
        client.set_terminated(run.info.run_id, status)


@contextmanager
def open_run(
    tracking: TrackingSettings,
    flags: dict,
    node_rank: int = 0,
    parent: TrackedRun | None = None,
    tags: dict | None = None,
    name: str | None = None,
):
    """Create the job's run, named ``name`` (default: --run_name, else MLflow picks),
    a child of ``parent`` for a search's trial, with ``flags`` as its parameters;
    yield its id (None without --use_mlflow, on a node other than node 0, or on a
    torchrun rank other than 0); end it FINISHED, KILLED or FAILED."""
    # Each node of a --nodes job runs main.py once; under torchrun each rank does.
    if not tracking.use_mlflow or node_rank != 0 or os.environ.get("RANK", "0") != "0":
        yield None
        return
    client, experiment_id = connect(tracking.tracking_uri, tracking.experiment)
    from mlflow.entities import Param, RunStatus

    tags = {"mlflow.user": tracking.user, "kind": PROJECT_KIND, **(tags or {})}
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
    if parent:
        tags["mlflow.parentRunId"] = parent
    run_id = client.create_run(
        experiment_id, run_name=name or tracking.run_name, tags=tags
    ).info.run_id
    params = [Param(key, value) for key, value in run_params(flags).items()]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=params[start : start + 100])
    try:
        yield run_id
    except KeyboardInterrupt:
        end_run(client, run_id, RunStatus.to_string(RunStatus.KILLED))
        raise
    except SystemExit as stop:  # Ray Tune ends a trial it is done with by sys.exit(0)
        status = RunStatus.FINISHED if stop.code in (0, None) else RunStatus.FAILED
        end_run(client, run_id, RunStatus.to_string(status))
        raise
    except BaseException:
        end_run(client, run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    end_run(client, run_id, RunStatus.to_string(RunStatus.FINISHED))


class RunLogger:
    """Logs metrics and artifacts into an existing run. Metrics are buffered and
    sent in batches: one call per epoch instead of one per step."""

    def __init__(self, tracking: TrackingSettings, run: TrackedRun):
        self.client = import_mlflow()(tracking_uri=tracking.tracking_uri)
        self.run_id = run
        self.endpoint_url = tracking.endpoint_url
        self.pending = []

    def log_metric(self, key: str, value: float, step: int) -> None:
        from mlflow.entities import Metric

        self.pending.append(Metric(key, value, int(time.time() * 1000), step))

    def flush(self) -> None:
        """Send the pending metrics; those the store does not take wait for the next flush."""
        while self.pending:
            batch = self.pending[:1000]  # MLflow takes at most 1000 metrics per batch
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except mlflow_errors() as error:
                warn(
                    f"{len(self.pending)} metric values not sent yet; they are sent again "
                    "after the next epoch",
                    error,
                )
                return
            del self.pending[: len(batch)]

    def set_tag(self, key: str, value) -> None:
        try:
            self.client.set_tag(self.run_id, key, str(value))
        except mlflow_errors() as error:
            warn(f"tag {key}={value} not set", error)

    def log_artifact(self, path: Path) -> None:
        try:
            with s3_endpoint(self.endpoint_url):
                self.client.log_artifact(self.run_id, str(path))
        except mlflow_errors() as error:
            warn(f"{path.name} not uploaded; it is kept in {path.parent}", error)

    def close(self) -> None:
        """Send what is pending; open_run ends the run in the launching process."""
        self.flush()


def run_logger(tracking: TrackingSettings, run: TrackedRun | None) -> RunLogger | NotTracked:
    """The logger of ``run``, or one that logs nothing where there is no run: on
    ranks other than 0, and in jobs without --use_mlflow."""
    return RunLogger(tracking, run) if run is not None else NotTracked()


def finish_search(
    tracking: TrackingSettings, parent_run: TrackedRun, failed: set[str], best_config: Path
) -> None:
    """End the search's trial runs that are still open (those in ``failed``, Ray trial
    ids, FAILED) and log the best configuration into the search's run."""
    close_child_runs(tracking, parent_run, failed)
    RunLogger(tracking, parent_run).log_artifact(best_config)


STATE_DICT_NAME = re.compile(r"^state_dict_e(?P<epoch>\w+)_(?P<date>\d{8})\.pt$")


def get_state_dict(
    tracking: TrackingSettings,
    epoch: int | str,
    dst: Path,
    filter_string: str | None = None,
    run_id: str | None = None,
) -> Path:
    """Download epoch ``epoch``'s state dict of one run into ``dst`` and return
    its path; its name carries the data set's date. The run's record
    (run_info_{date}.json, what the model was trained with) comes beside it.
    ``epoch`` "best" is the epoch of the run's best_epoch tag.

    Name the run by ``run_id``, or by a filter such as "params.lr = '0.01'" or
    "attributes.run_name = 'baseline'" that matches exactly one run.
    """
    client, experiment_id = connect(tracking.tracking_uri, tracking.experiment)
    if run_id is None:
        if not filter_string:
            raise UsageError("get_state_dict needs a run_id or a filter_string naming one run")
        runs = client.search_runs([experiment_id], filter_string=filter_string, max_results=2)
        if len(runs) != 1:
            found = "no run matches" if not runs else "several runs match"
            raise UsageError(
                f"{found} {filter_string!r} in experiment {tracking.experiment!r}; "
                "name exactly one run, e.g. \"attributes.run_id = '...'\""
            )
        run_id = runs[0].info.run_id
    if str(epoch) == "best":
        epoch = client.get_run(run_id).data.tags.get("best_epoch")
        if epoch is None:
            raise UsageError(
                f"run {run_id} has no best_epoch tag (it did not finish); name an epoch instead"
            )
    artifacts = [artifact.path for artifact in client.list_artifacts(run_id)]
    saved = {match["epoch"]: path for path in artifacts if (match := STATE_DICT_NAME.match(path))}
    if str(epoch) not in saved:
        epochs = sorted(saved)
        raise UsageError(
            f"run {run_id} has no state dict for epoch {epoch}; "
            f"it has epochs: {', '.join(epochs) or 'none'}"
        )
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    state_dict = saved[str(epoch)]
    run_info = f"run_info_{STATE_DICT_NAME.match(state_dict)['date']}.json"
    with s3_endpoint(tracking.endpoint_url):
        if run_info in artifacts:
            client.download_artifacts(run_id, run_info, str(dst))
        return Path(client.download_artifacts(run_id, state_dict, str(dst)))
