"""Hyperparameter search with Ray Tune, each trial running the same train(); and a
plain run as a Ray Train job on a Ray cluster.

    python main.py --use_ray_tune --num_samples 8            # one process per trial
    python main.py --use_ray_tune --workers_per_trial 2      # each trial a 2-process DDP job
    python main.py --config data/best_config_{date}.yaml     # train the winner
    python main.py --ray_address 10.0.0.5:6379 --ray_workers 4   # train on a Ray cluster

tune.yaml names training arguments and how to sample each (pytorch-quik's format):

    lr: {loguniform: {lower: 1.0e-4, upper: 1.0e-1}}
    bs: {choice: {categories: [256, 512, 1024]}}

ASHA stops poor trials early on ``valid_loss``; at the end the trials are
printed as a table and the best configuration is saved as
data/best_config_{date}.yaml. Ray is imported only for a search or a
--ray_address run.
"""

import argparse
import importlib.util
import math
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

import yaml

from .args import (
    PROJECT_DIR,
    FlagValues,
    UsageError,
    apply_defaults,
    non_negative_int,
    positive_int,
)
from .files import data_file, write_atomically
from .tracking import TrackedRun, TrackingSettings, finish_search, open_run
from .world import joined_world

# sampler name -> the arguments it takes, as in ray.tune's functions of that name.
SAMPLERS = {
    "choice": ("categories",),
    "grid_search": ("values",),
    "uniform": ("lower", "upper"),
    "quniform": ("lower", "upper", "q"),
    "loguniform": ("lower", "upper"),
    "qloguniform": ("lower", "upper", "q"),
    "randint": ("lower", "upper"),
    "qrandint": ("lower", "upper", "q"),
    "lograndint": ("lower", "upper"),
    "randn": ("mean", "sd"),
}
FLOAT_SAMPLERS = {"uniform", "quniform", "loguniform", "qloguniform", "randn"}
# What a search may vary: the flags of these groups, except where files are.
TUNABLE_GROUPS = {"learning", "model", "hugging face"}
NOT_TUNABLE = {"data_dir", "data_date", "output_dir", "run", "resume"}
RESULTS_DIR = PROJECT_DIR / "ray_results"


@dataclass(frozen=True)
class ClusterSettings(FlagValues):
    """The flags of a plain run on a Ray cluster."""

    ray_address: str | None
    ray_workers: int
    ray_gpus: bool
    ray_max_failures: int


def add_ray_tune_args(parser: argparse.ArgumentParser, defaults: dict | None = None):
    """Hyperparameter search, training from a saved configuration, and training on a
    Ray cluster."""
    group = parser.add_argument_group("ray tune")
    group.add_argument(
        "--use_ray_tune",
        action="store_true",
        help="search hyperparameters over --tune_config instead of training once",
    )
    group.add_argument(
        "--num_samples", type=positive_int, default=20, help="trials to run (default: %(default)s)"
    )
    group.add_argument(
        "--workers_per_trial",
        type=positive_int,
        default=1,
        help="processes per trial; above 1 each trial is a DDP job run by Ray "
        "Train, one GPU per process where there are GPUs (default: %(default)s)",
    )
    group.add_argument(
        "--tune_config",
        type=Path,
        default=PROJECT_DIR / "tune.yaml",
        help="the search space (default: the project's tune.yaml)",
    )
    group.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML of argument values to train with, such as a saved "
        "data/best_config_{date}.yaml; command-line flags still win",
    )
    group.add_argument(
        "--ray_address",
        default=None,
        help="train as a Ray Train job of --ray_workers DDP processes on the Ray cluster "
        "at this address (e.g. 10.0.0.5:6379), or on one started here for the job (local)",
    )
    group.add_argument(
        "--ray_workers",
        type=positive_int,
        default=2,
        help="processes of a --ray_address job (default: %(default)s)",
    )
    group.add_argument(
        "--ray_gpus", action="store_true", help="one GPU for each process of a --ray_address job"
    )
    group.add_argument(
        "--ray_max_failures",
        type=non_negative_int,
        default=3,
        help="times a --ray_address job restarts after losing a worker, resuming its "
        "checkpoint (default: %(default)s)",
    )
    return apply_defaults(parser, defaults)


def _number(key: str, name: str, value, whole: bool = False):
    """A number from YAML (PyYAML reads 1e-4 as a string; 1.0e-4 as a float)."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (whole and number != int(number)):
        kind = "a whole number" if whole else "a number"
        raise UsageError(f"tune.yaml: {key}.{name} must be {kind}, got {value!r}")
    return int(number) if whole else number


def load_search_space(path: Path, parser: argparse.ArgumentParser) -> dict:
    """tune.yaml, checked before Ray starts: {argument: (sampler, kwargs)}."""
    if not Path(path).is_file():
        raise UsageError(
            f"no search space at {path}; write one (see tune.py) or pass --tune_config"
        )
    try:
        space = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise UsageError(f"{path} is not valid YAML{line}; fix its syntax") from None
    if not isinstance(space, dict) or not space:
        raise UsageError(
            f"{path} must map argument names to samplers, e.g. "
            "lr: {loguniform: {lower: 1.0e-4, upper: 1.0e-1}}"
        )
    tunable = [
        action
        for group in parser._action_groups
        if group.title in TUNABLE_GROUPS
        for action in group._group_actions
        if action.dest not in NOT_TUNABLE
    ]
    actions = flags_by_name(tunable)
    checked = {}
    for key, spec in space.items():
        if key not in actions:
            raise UsageError(
                f"tune.yaml: {key!r} is not a training argument that can be "
                "searched; use a name from `python main.py --help`, e.g. lr or bs"
            )
        if not isinstance(spec, dict) or len(spec) != 1:
            raise UsageError(
                f"tune.yaml: {key} must be one sampler, e.g. "
                + key
                + ": {choice: {categories: [...]}}"
            )
        ((sampler, kwargs),) = spec.items()
        if sampler not in SAMPLERS:
            raise UsageError(
                f"tune.yaml: {key} uses unknown sampler {sampler!r}; "
                f"use one of {', '.join(SAMPLERS)}"
            )
        if not isinstance(kwargs, dict) or set(kwargs) != set(SAMPLERS[sampler]):
            raise UsageError(
                f"tune.yaml: {key}.{sampler} takes exactly {', '.join(SAMPLERS[sampler])}"
            )
        default = actions[key].default
        whole = isinstance(default, int) and not isinstance(default, bool)
        if sampler in ("choice", "grid_search"):
            values = next(iter(kwargs.values()))
            if not isinstance(values, list) or not values:
                raise UsageError(f"tune.yaml: {key}.{sampler} needs a non-empty list")
            for value in values:
                try:
                    flag_value(actions[key], value)
                except (ValueError, argparse.ArgumentTypeError) as error:
                    raise UsageError(f"tune.yaml: {key}: {error}") from None
            checked[key] = (sampler, kwargs)
            continue
        if whole and sampler in FLOAT_SAMPLERS:
            raise UsageError(
                f"tune.yaml: {key} takes whole numbers; use randint, qrandint, "
                f"lograndint or choice instead of {sampler}"
            )
        numbers = {
            name: _number(key, name, value, whole and name != "q") for name, value in kwargs.items()
        }
        if "lower" in numbers and not numbers["lower"] < numbers["upper"]:
            raise UsageError(
                f"tune.yaml: {key}.{sampler} has lower {numbers['lower']} >= "
                f"upper {numbers['upper']}; swap or fix them"
            )
        if sampler.startswith(("log", "qlog")) and numbers["lower"] <= 0:
            raise UsageError(f"tune.yaml: {key}.{sampler} needs lower > 0")
        if numbers.get("q", 1) <= 0 or numbers.get("sd", 1) <= 0:
            raise UsageError(f"tune.yaml: {key}.{sampler} needs q and sd > 0")
        checked[key] = (sampler, numbers)
    return checked


def load_config_file(path: Path, parser: argparse.ArgumentParser) -> dict:
    """Argument values from a YAML file such as best_config_{date}.yaml."""
    if not Path(path).is_file():
        raise UsageError(f"--config {path}: no such file")
    values = yaml.safe_load(Path(path).read_text()) or {}
    actions = flags_by_name(parser._actions)
    unknown = sorted(set(values) - set(actions)) if isinstance(values, dict) else ["?"]
    if unknown:
        raise UsageError(f"--config {path}: unknown argument(s) {', '.join(map(str, unknown))}")
    converted = {}
    for key, value in values.items():
        if isinstance(value, list):  # a YAML list, such as betas: [0.9, 0.99]
            converted[key] = tuple(value)
            continue
        try:
            converted[key] = flag_value(actions[key], value)
        except (ValueError, argparse.ArgumentTypeError) as error:
            raise UsageError(f"--config {path}: {key}: {error}") from None
    return converted


def flags_by_name(actions: list[argparse.Action]) -> dict[str, argparse.Action]:
    """Per name, the flag that takes a value (--precision, not -amp's shortcut to it)."""
    by_name = {action.dest: action for action in actions if action.nargs == 0}
    by_name.update({action.dest: action for action in actions if action.nargs != 0})
    return by_name


def flag_value(action: argparse.Action, value):
    """``value`` as the command line takes it for ``action``: converted by the
    flag's type, then checked against its choices, in argparse's words."""
    if action.type is not None:
        value = action.type(str(value))
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise argparse.ArgumentTypeError(f"invalid choice {value!r} (choose from {choices})")
    return value


def report_epoch(row: dict, in_ray_train: bool) -> None:
    """Hand one epoch's metrics to Ray: to Tune in a search, where ASHA may end the
    trial here. In a Ray Train job the report carries an (empty) checkpoint: the
    weights are in the run's own checkpoint file, and Ray's tells a worker group
    restarted after a failure that there is one to resume (run_ray_train_job)."""
    if in_ray_train:
        import ray.train

        with tempfile.TemporaryDirectory() as empty:
            # Every worker reports; Tune receives rank 0's row.
            ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(empty))
    else:
        from ray import tune

        tune.report(row)


@dataclass(frozen=True)
class SearchSettings(FlagValues):
    """The ray tune flags a search runs by, the space it searches (tune.yaml, as
    load_search_space checked it) and the data set it searches on."""

    search_space: dict
    num_samples: int
    workers_per_trial: int
    epochs: int
    data_dir: Path
    data_date: str


def search_trial(
    args,
    train_fn,
    parent_run: TrackedRun | None,
    config: dict,
    trial_id: str,
    output_dir: Path,
    worker_resources: dict,
) -> None:
    """One trial of a search: ``train_fn`` with the trial's values in place of the
    flags', as a run of its own in the search's folder ``output_dir``
    (runs/{trial_id}/), tracked as a child of the search's run ``parent_run``
    where runs are tracked, and reporting each epoch to Tune. With
    --workers_per_trial > 1 it runs as a Ray Train DDP job of that many processes,
    each taking ``worker_resources``."""
    # A trial that Ray restarts (tune.FailureConfig) continues from its own checkpoint.
    trial_args = argparse.Namespace(
        **{**vars(args), **config, "output_dir": output_dir, "run": trial_id, "resume": "auto"}
    )
    with open_run(
        TrackingSettings.pick(vars(trial_args)),
        vars(trial_args),
        parent=parent_run,
        tags={"ray_trial_id": trial_id},
        name=trial_id,
    ) as tracked_run:
        run_trial_job(
            partial(train_fn, trial_args, tracked_run=tracked_run),
            args.workers_per_trial,
            worker_resources,
            trial_id,
            output_dir / "train",
        )


def run_trial_job(job, workers: int, worker_resources: dict, name: str, storage_path: Path) -> None:
    """job(world, on_epoch=...) in this process, or with ``workers`` > 1 as a Ray
    Train DDP job."""
    import torch

    if workers == 1:
        with joined_world(0 if torch.cuda.is_available() else None) as world:
            job(world, on_epoch=partial(report_epoch, in_ray_train=False))
    else:
        run_ray_train_job(job, workers, worker_resources, name, storage_path)


def run_ray_train_job(
    job,
    workers: int,
    worker_resources: dict,
    name: str,
    storage_path: Path,
    in_search: bool = True,
    max_failures: int = 3,
) -> None:
    """job(world, on_epoch=..., resume=...) on ``workers`` Ray Train processes, one
    DDP job; Ray creates the process group, and each process its world on it.
    ``in_search``: a trial's job, whose epochs reach Tune. A worker lost (its
    process killed, its machine taken back) restarts the whole group, up to
    ``max_failures`` times, and the restarted group resumes the job's checkpoint."""
    from ray import train
    from ray.train.torch import TorchTrainer, get_device
    from ray.tune.integration.ray_train import TuneReportCallback

    def worker():
        # Ray gives each worker its GPUs (CUDA_VISIBLE_DEVICES), so it names the device.
        device = get_device()
        # A checkpoint reported to Ray (report_epoch): this group is a restart.
        restarted = train.get_checkpoint() is not None
        with joined_world(device.index if device.type == "cuda" else None) as world:
            job(
                world,
                on_epoch=partial(report_epoch, in_ray_train=True),
                resume="auto" if restarted else None,
            )

    TorchTrainer(
        worker,
        scaling_config=train.ScalingConfig(
            num_workers=workers,
            use_gpu="GPU" in worker_resources,
            resources_per_worker=worker_resources,
        ),
        run_config=train.RunConfig(
            name=f"train-{name}",
            storage_path=str(storage_path),
            callbacks=[TuneReportCallback()] if in_search else [],
            failure_config=train.FailureConfig(max_failures=max_failures),
            # The reported checkpoints are empty: keeping the last is enough.
            checkpoint_config=train.CheckpointConfig(num_to_keep=1),
            logging_config=train.LoggingConfig(log_level="WARNING"),
        ),
    ).fit()


def prepare_ray(flag: str) -> None:
    """Ray's settings for the processes it starts, set before it starts; a missing
    Ray is one line naming ``flag``."""
    if importlib.util.find_spec("ray") is None:
        raise UsageError(
            f"{flag} needs Ray: pip install 'ray[default,tune,train]' (or pip install -e '.[ray]')"
        )
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # keeps token auth, without its warning
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # trials keep the project folder
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # else each print shows twice
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def run_on_ray_cluster(job, cluster: ClusterSettings) -> None:
    """job(world) as a Ray Train job of --ray_workers DDP processes on the cluster at
    --ray_address ("local": one started on this machine for the job). The cluster's
    processes import this project's package from the copy Ray sends them; the data
    and output folders must be at the same paths on every machine, as with --nodes."""
    prepare_ray("--ray_address")
    import ray

    if cluster.ray_address == "local":  # never a cluster that `ray start` runs here
        ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    else:
        ray.init(
            address=cluster.ray_address,
            runtime_env={"py_modules": [str(Path(__file__).resolve().parent)]},
            logging_level="WARNING",
        )
    try:
        worker_resources = {"CPU": 1, **({"GPU": 1} if cluster.ray_gpus else {})}
        run_ray_train_job(
            job,
            cluster.ray_workers,
            worker_resources,
            f"{datetime.now():%Y%m%d_%H%M%S}",
            RESULTS_DIR,
            in_search=False,
            max_failures=cluster.ray_max_failures,
        )
    finally:
        ray.shutdown()


def run_search(
    run_trial,
    search: SearchSettings,
    tracking: TrackingSettings,
    parent_run: TrackedRun | None,
) -> Path:
    """Run the trials, each ``run_trial(config, trial_id, output_dir, worker_resources)``
    (search_trial with the job's flags); print the table and save the best
    configuration, whose path is returned. Where runs are tracked, ``parent_run``
    is the search's run: its trials' runs are ended, and it gets the best configuration."""
    prepare_ray("--use_ray_tune")
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    # One folder per search, so results of earlier searches never mix in.
    search_name = f"tune_{search.data_date}_{datetime.now():%H%M%S}"
    ray.init(logging_level="WARNING")
    # The cluster's resources, not this machine's: a head node may have no GPU.
    cpus = ray.cluster_resources().get("CPU", 1)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    workers = search.workers_per_trial
    if workers == 1:
        worker = {}
        trial_resources = {"cpu": 1, "gpu": 1} if gpus else {"cpu": 1}
        concurrent = gpus if gpus else int(cpus)
    else:
        # The trial itself only waits for its Ray Train job: a sliver of a CPU.
        # Its workers take a GPU each, or share the CPUs so that a trial fits.
        driver_cpu = 0.1
        worker = {"CPU": 1, "GPU": 1} if gpus else {"CPU": min(1.0, (cpus - driver_cpu) / workers)}
        trial_resources = {"cpu": driver_cpu}
        # Tune sees only the trials' own CPU, so cap how many start at once.
        per_trial_cpu = driver_cpu + workers * worker["CPU"]
        concurrent = gpus // workers if gpus else int(cpus // per_trial_cpu)
    if concurrent < 1:
        raise UsageError(
            f"--workers_per_trial {workers} needs {workers} GPUs per trial; {gpus} are visible"
        )

    def trial(config):  # Ray names the trials' folders trial_*
        trial_id = tune.get_context().get_trial_id()
        run_trial(config, trial_id, RESULTS_DIR / search_name, worker)

    tuner = tune.Tuner(
        tune.with_resources(trial, trial_resources),
        param_space={
            key: getattr(tune, sampler)(**kwargs)
            for key, (sampler, kwargs) in search.search_space.items()
        },
        tune_config=tune.TuneConfig(
            metric="valid_loss",
            mode="min",
            num_samples=search.num_samples,
            max_concurrent_trials=concurrent,
            scheduler=ASHAScheduler(max_t=search.epochs, grace_period=1),
        ),
        run_config=tune.RunConfig(name=search_name, storage_path=str(RESULTS_DIR), verbose=1),
    )
    results = tuner.fit()
    ray.shutdown()
    best_config = summarize(
        results, search.search_space, search.data_dir, search.data_date, RESULTS_DIR / search_name
    )
    if parent_run is not None:
        failed = {result.metrics.get("trial_id") for result in results if result.error}
        finish_search(tracking, parent_run, failed, best_config)
    return best_config


def summarize(results, space: dict, data_dir: Path, data_date: str, search_dir: Path) -> Path:
    """Print every trial's configuration and best valid_loss; save the best one into
    ``data_dir`` (the latest search's, replaced by the next) and ``search_dir`` (kept
    with the search's runs)."""
    import pandas as pd

    rows = []
    for result in results:
        history = result.metrics_dataframe
        reported = history is not None and "valid_loss" in history
        best = history["valid_loss"].min() if reported else None
        rows.append(
            {
                **{key: result.config[key] for key in space},
                "best_valid_loss": best,
                "epochs": 0 if history is None else len(history),
                "error": type(result.error).__name__ if result.error else "",
            }
        )
    table = pd.DataFrame(rows).sort_values("best_valid_loss", na_position="last")
    print(table.to_string(index=False))
    finished = table.dropna(subset=["best_valid_loss"])
    if finished.empty:
        raise UsageError("no trial finished an epoch; see the errors above")
    best = {key: finished.iloc[0][key] for key in space}
    best = {key: value.item() if hasattr(value, "item") else value for key, value in best.items()}
    path = data_file(data_dir, "best_config", data_date, ".yaml")
    kept = data_file(search_dir, "best_config", data_date, ".yaml")
    text = (
        f"# best of {len(table)} trials of {search_dir.name}: valid_loss "
        f"{finished.iloc[0]['best_valid_loss']:.6g}\n"
        f"# train with it: python main.py --config {path}\n" + yaml.safe_dump(best)
    )
    for copy in (kept, path):
        write_atomically(copy, lambda tmp: Path(tmp).write_text(text))
    print(f"best configuration: {best}\nsaved to {path} and {kept}")
    return path
