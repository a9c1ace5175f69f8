"""Train the generated-bert model; `python main.py --help` lists every flag.

python -m generated_bert.data --synthetic   # once: prepare data/
python main.py --epochs 3                # one process; a GPU if one is visible
python main.py --gpus 4                  # one process per GPU
python main.py --procs 2                 # two CPU processes (DDP with gloo)
torchrun --nproc-per-node 4 main.py
"""

import os
import sys
from functools import partial

from generated_bert.args import UsageError
from generated_bert.checkpoints import checkpoint_path, load_checkpoint
from generated_bert.cli import parse_args
from generated_bert.launch import launch
from generated_bert.runs import check_writable, run_to_resume
from generated_bert.stopping import Stopped
from generated_bert.task import TaskSettings
from generated_bert.tracking import TrackingSettings, open_run
from generated_bert.train import RecordedSettings, train
from generated_bert.tune import (
    ClusterSettings,
    SearchSettings,
    run_on_ray_cluster,
    run_search,
    search_trial,
)


def main(argv=None) -> None:
    try:
        run(parse_args(argv))
    except UsageError as error:
        sys.exit(f"error: {error}")
    except Stopped as stopped:  # SIGTERM or Ctrl-C while training: a checkpoint is written
        if str(stopped):
            print(stopped, file=sys.stderr)
        sys.exit(stopped.exit_code)
    except KeyboardInterrupt:  # Ctrl-C before training started
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)


def run(args) -> None:
    # The run to resume, or the folder to write a new one in, is checked here, with
    # one line, not in every process, where rank 0 will run: it decides for the job.
    rank_0_here = args.nr == 0 and os.environ.get("RANK", "0") == "0"  # RANK: torchrun's
    if rank_0_here:
        folder, resuming = run_to_resume(args.output_dir, args.run, args.data_date, args.resume)
        if resuming:
            checkpoint = checkpoint_path(folder, args.data_date)
            settings = RecordedSettings.pick(vars(args)).recorded(TaskSettings.pick(vars(args)))
            load_checkpoint(checkpoint, "cpu", args.epochs, settings=settings)
        else:
            check_writable(args.output_dir)
    # One run of the tracker for the whole job, however many processes train in it
    # (for a search: the parent of one run per trial); None where nothing is tracked.
    tracking = TrackingSettings.pick(vars(args))
    with open_run(tracking, vars(args), node_rank=args.nr) as tracked_run:
        if args.use_ray_tune:  # a search of tune.yaml's space; see tune.py
            trial = partial(search_trial, args, train, tracked_run)
            run_search(trial, SearchSettings.pick(vars(args)), tracking, tracked_run)
            return
        if args.ray_address:  # one training job on a Ray cluster
            job = partial(train, args, tracked_run=tracked_run)
            run_on_ray_cluster(job, ClusterSettings.pick(vars(args)))
            return
        launch(
            partial(train, args, tracked_run=tracked_run),
            gpus=args.gpus,
            procs=args.procs,
            nodes=args.nodes,
            nr=args.nr,
            master_addr=args.master_addr,
            master_port=args.master_port,
        )


if __name__ == "__main__":
    main()
