"""Training across processes and hosts: torch.distributed as torchrun sets it up, nothing home-made.

torchrun (`python -m torch.distributed.run`) starts the processes, runs the rendezvous (one host:
`--standalone`; several: `--nnodes N --rdzv-backend c10d --rdzv-endpoint host:port`) and sets
`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR/PORT` in each process's environment. This module
reads them, joins the process group (nccl when the run trains on CUDA, gloo on CPU) and decides
which samples each rank trains on.

The batch order is a pure function of (seed, step, global batch size), never of the world size:
every global batch is one slice of a seeded per-epoch permutation of the dataset's sample windows
(each window lies inside one episode), and rank r trains on the r-th contiguous part of it. Ranks
never share a window within an epoch, and their parts together are exactly the batch one process
would take with the combined batch size. With DistributedDataParallel averaging gradients over
ranks, N processes with batch b then train the same weights as one process with batch N*b (up to
float summation order), and a run resumed with a different number of processes continues the
same sequence of global batches (the per-process batch is the saved global batch / new world).
"""

from __future__ import annotations

import datetime
import logging
import math
import os

try:
    import torch
except ImportError as exc:  # a robot-side install has no torch: name the extra to add
    from tether.core.optional import missing_extra

    raise missing_extra(__name__, "torch") from exc

from tether.core.errors import ConfigError

__all__ = ["BatchOrder", "Distributed", "backend_for", "per_rank_batch"]

log = logging.getLogger(__name__)

# Seconds a rank waits for the others (a collective, the first rendezvous) before failing.
TIMEOUT_S = float(os.environ.get("TETHER_DIST_TIMEOUT_S", "1800"))


def backend_for(device: str) -> str:
    """nccl for CUDA training (GPU-to-GPU all-reduce), gloo otherwise (CPU, and CPU clusters)."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


class Distributed:
    """This process's place in the run: rank, world size, and the collectives the trainer needs.

    A single process (no torchrun) is the inactive case: rank 0 of 1, every collective a no-op."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, active: bool = False,
                 backend: str | None = None) -> None:
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.active, self.backend = active, backend

    @classmethod
    def from_env(cls, device: str = "cpu") -> Distributed:
        """Join the process group torchrun describes in the environment (`WORLD_SIZE` > 1).

        `device` is the resolved training device ('cpu', 'cuda', 'cuda:N'); it picks the backend.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as tdist

        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        backend = backend_for(device)
        if backend == "nccl":
            torch.cuda.set_device(local_rank)  # one GPU per process, by its index on this host
        if not tdist.is_initialized():
            missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
            if missing:
                raise ConfigError(
                    f"WORLD_SIZE={world} is set but {', '.join(missing)} is not: start multi-process "
                    "training with torchrun (torchrun --nproc-per-node N -m tether.policies.train ...) "
                    "or tether train --nproc N, not by setting WORLD_SIZE by hand")
            tdist.init_process_group(backend, timeout=datetime.timedelta(seconds=TIMEOUT_S))
        rank, world = tdist.get_rank(), tdist.get_world_size()
        log.info("rank %d of %d (local rank %d, %s)", rank, world, local_rank, backend)
        return cls(rank, world, local_rank, True, backend)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics and progress."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as tdist

            tdist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any (so all ranks stop at the same step)."""
        if not self.active:
            return flag
        import torch.distributed as tdist

        device = torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the ranks (the logged loss is the global batch's, not rank 0's).

        Every rank must call it at the same step with the same keys (the trainer logs in lockstep)."""
        if not self.active or not values:
            return values
        import torch.distributed as tdist

        keys = sorted(values)
        device = torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
        tdist.all_reduce(t)
        return dict(zip(keys, (t / self.world).tolist(), strict=True))

    def close(self) -> None:
        if self.active:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()


def per_rank_batch(batch_size: int, saved_world: int, world: int) -> tuple[int, str | None]:
    """The per-process batch for a run resumed on `world` processes that saved its checkpoint with
    `saved_world` processes of `batch_size` each, and a note to show when it changed.

    The global batch stays (same optimisation, same batch order) when it divides evenly; otherwise
    the per-process batch stays and the global batch changes, which the note says."""
    if saved_world == world:
        return batch_size, None
    global_batch = batch_size * saved_world
    if global_batch % world == 0:
        new = global_batch // world
        return new, (f"resuming a {saved_world}-process run on {world} process(es): batch {new} per "
                     f"process keeps the global batch of {global_batch}")
    return batch_size, (f"resuming a {saved_world}-process run on {world} process(es): the global "
                        f"batch {global_batch} does not divide by {world}, so each process keeps batch "
                        f"{batch_size} (global batch now {batch_size * world}); the batch order differs "
                        "from the original run from here on")


class BatchOrder:
    """Sample indices per step as a pure function of (seed, step): a resumed run sees the same
    batches, and the ranks of one step split one global batch without overlap."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if n < 1:
            raise ConfigError("the dataset has no training samples; check --set episodes=... and the store")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.global_batch_size = batch_size * world
        self.per_epoch = max(1, n // self.global_batch_size)  # steps per epoch (drop_last)
        self._epoch = -1
        self._perm: torch.Tensor | None = None

    def global_batch(self, step: int) -> list[int]:
        """All ranks' samples of this step, in rank order (what one process with the combined
        batch size trains on)."""
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            perm = torch.randperm(self.n, generator=g)
            need = self.per_epoch * self.global_batch_size
            if need > self.n:  # tiny datasets: wrap around so every batch is full
                perm = perm.repeat(math.ceil(need / self.n))
            self._perm, self._epoch = perm, epoch
        start = pos * self.global_batch_size
        return self._perm[start:start + self.global_batch_size].tolist()

    def batch(self, step: int) -> list[int]:
        """This rank's part of the step's global batch."""
        part = self.global_batch(step)
        return part[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
