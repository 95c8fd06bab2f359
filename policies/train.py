"""`python -m tether.policies.train`: the trainer's own entry point, for torchrun and schedulers.

    torchrun --nproc-per-node 2 -m tether.policies.train --dataset data.zarr --policy act --out runs/a
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint head:29500 \\
        -m tether.policies.train --dataset /shared/data.zarr --out /shared/runs/a

It takes the training options of `tether train` (same names, same `--set key=value` overrides,
same config files) and imports only the policies part, so each of the N processes starts
quickly. Twin evaluation during training (`--eval-task`) needs the app layer: launch
`torchrun ... -m tether.cli train ...` for that. `tether train --nproc N` execs torchrun with
this module.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

__all__ = ["main", "parser"]

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tether.policies.train",
        description="Train a policy on an episode store (one process, or one of N under torchrun).",
        epilog="Example: torchrun --nproc-per-node 2 -m tether.policies.train --dataset data.zarr "
               "--policy mlp --out runs/mlp")
    p.add_argument("--dataset", "-d", action="append", metavar="PATH[:WEIGHT]",
                   help="Episode store (.zarr or s3://... URL); repeat for several.")
    p.add_argument("--policy", "-p", help="Policy family (act, diffusion, mlp; default act).")
    p.add_argument("--preset", help="tiny, cpu, default or full (default: by device).")
    p.add_argument("--steps", type=int, help="Optimizer steps (default: preset).")
    p.add_argument("--out", "-o", help="Run directory (default runs/latest).")
    p.add_argument("--resume", help="Run directory to continue (on any number of processes).")
    p.add_argument("--overwrite", action="store_true", help="Replace the run in a non-empty --out.")
    p.add_argument("--config", "-c", help="YAML/TOML/JSON TrainConfig file.")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="TrainConfig override, repeatable (batch_size is per process).")
    p.add_argument("--seed", type=int, help="Random seed.")
    p.add_argument("--threads", type=int, help="torch threads per process (0 = torch default).")
    p.add_argument("--keep-every", type=int, help="Keep a checkpoint every N steps.")
    p.add_argument("--no-progress", action="store_true", help="Hide the progress bar / lines.")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from tether.core.errors import TetherError
    from tether.policies.trainer import TrainConfig, TrainingInterrupted, train

    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.resume:
            if args.overwrite:
                raise TetherError("--resume continues a run and --overwrite replaces it; choose one")
            config = TrainConfig(out=args.resume, steps=args.steps, progress=not args.no_progress)
            run_dir = train(config, resume=True)
        else:
            run_dir = train(config_from_args(args), overwrite=args.overwrite)
    except TrainingInterrupted as exc:
        print(f"interrupted ({exc.signal_name}) at step {exc.step}: checkpoint saved to "
              f"{exc.checkpoint}\ncontinue with: torchrun ... -m tether.policies.train --resume "
              f"{exc.run_dir}", file=sys.stderr)
        return 130
    except TetherError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":  # one line per run, not one per process
        print(f"done: {run_dir}", file=sys.stderr)
    return 0


def config_from_args(args: argparse.Namespace):
    """The TrainConfig the options ask for: file, then named options, then --set overrides."""
    from tether.core.config import apply_overrides, from_dict, load_mapping
    from tether.policies.trainer import TrainConfig

    data = load_mapping(args.config) if args.config else {}
    if args.dataset:  # one store as a string, several as a list (as `tether train` does)
        data["dataset"] = args.dataset[0] if len(args.dataset) == 1 else list(args.dataset)
    for key in ("policy", "preset", "out", "steps", "seed", "threads", "keep_every"):
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    data["progress"] = not args.no_progress
    return from_dict(TrainConfig, apply_overrides(data, args.overrides))


if __name__ == "__main__":
    raise SystemExit(main())
