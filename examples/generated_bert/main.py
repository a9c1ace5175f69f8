"""Train the generated-bert model; `python main.py --help` lists every flag.

    python -m generated_bert.data --synthetic   # once: prepare data/
    python -m generated_bert.hf --tiny-model models/tiny-bert   # offline: a small BERT
    python main.py --bert_type models/tiny-bert --lr 1e-3
    python main.py --epochs 3                # one process; a GPU if one is visible
    python main.py --gpus 4                  # one process per GPU
    python main.py --procs 2                 # two CPU processes (DDP with gloo)
    torchrun --nproc-per-node 4 main.py
    python main.py --use_ray_tune --num_samples 8   # search tune.yaml's space
"""

import argparse
import sys

from generated_bert.args import UsageError, add_ddp_args, add_learn_args
from generated_bert.checkpoints import checkpoint_path, load_checkpoint
from generated_bert.files import find_data_date
from generated_bert.model import add_model_args
from generated_bert.tracking import add_mlflow_args, mlflow_run
from generated_bert.train import train
from generated_bert.tune import add_ray_tune_args, load_config_file, load_search_space, run_search
from generated_bert.world import launch

PREPARE_DATA = "python -m generated_bert.data --synthetic"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_ddp_args(parser)
    # Fine-tuning defaults: BERT's recipe of a linear warmup over the first 10% of the
    # steps, then a linear decay; gradients clipped to norm 1 as in HF's Trainer.
    # Change them here or on the command line.
    add_learn_args(parser, {"epochs": 3, "bs": 32, "lr": 5e-5, "warmup_ratio": 0.1,
                            "clip_grad": 1.0})
    add_model_args(parser)
    add_mlflow_args(parser)
    add_ray_tune_args(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    # --config FILE: its values replace the defaults; flags on the command line still win.
    config_file = parser.parse_known_args(argv)[0].config
    if config_file:
        try:
            parser.set_defaults(**load_config_file(config_file, parser))
        except (UsageError, ValueError, argparse.ArgumentTypeError) as error:
            parser.error(str(error))
    args = parser.parse_args(argv)
    # Absolute paths: processes started later may run in other folders.
    args.data_dir = args.data_dir.resolve()
    args.output_dir = (args.output_dir or args.data_dir).resolve()
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        # Decided once, before any process starts, so that every rank reads the same files.
        args.data_date = find_data_date(args.data_dir, args.data_date, PREPARE_DATA)
        if args.resume:  # fail here, with one line, rather than in every process
            load_checkpoint(checkpoint_path(args.output_dir, args.data_date), "cpu", args.epochs)
        # Checked before Ray starts, so a typo costs seconds, not a cluster start.
        space = load_search_space(args.tune_config, build_parser()) if args.use_ray_tune else None
        # One run for the whole job, however many processes train in it
        # (for a search: the parent of one run per trial).
        with mlflow_run(args) as args.mlflow_run_id:
            if args.use_ray_tune:
                run_search(args, train, space)
            else:
                launch(train, args)
    except UsageError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        # Checkpoints are written after every epoch, atomically: the last one is whole.
        print(f"\ninterrupted; continue from the last finished epoch with --resume "
              f"(checkpoint in {args.output_dir})", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
