"""Data-parallel training under ``torchrun``: the process group and the few collectives the engine needs.

Launched as ``torchrun --nproc_per_node N polylens sae train ...``, every process trains the same
SAEs on its own slice of every global batch (``TrainConfig.batch_size`` rows, split evenly). The
fused kernel writes ``.grad`` itself, so DistributedDataParallel's autograd hooks would never fire:
the engine all-reduces the gradients explicitly, one flat buffer a step (``mean_``), and keeps
across ranks what must agree: the dead-latent counters (a latent fired on any rank), BatchTopK's
threshold, resampling (rank 0's result broadcast), the losses the NaN stop reads. gloo on CPU,
nccl on GPU. A collective that waits past ``TIMEOUT_S`` (a rank died or hangs) ends every rank
with one line instead of hanging. Without torchrun (``WORLD_SIZE`` unset or 1) everything here is
a no-op and nothing is initialised.
"""

from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass

import torch
from torch import Tensor

TIMEOUT_S = float(os.environ.get("POLYLENS_DIST_TIMEOUT", "300"))


@dataclass(frozen=True)
class Context:
    """This process's place in the run: ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes checkpoints, exports and logs."""
        return self.rank == 0

    def _run(self, what: str, fn):
        try:
            return fn()
        except RuntimeError as err:  # gloo/nccl: a timeout or a peer that closed its connection
            raise ValueError(
                f"rank {self.rank} of {self.world}: {what} failed ({str(err).splitlines()[0][:160]}); another process "
                f"probably died or stalled (waited up to {TIMEOUT_S:g} s); stopping this one too"
            ) from None

    def mean_(self, tensors: list[Tensor]) -> None:
        """Average ``tensors`` over the ranks in place, as one flat all-reduce."""
        if self.world == 1 or not tensors:
            return
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1) for t in tensors])
        self._run("all-reduce of the gradients", lambda: dist.all_reduce(flat))
        flat /= self.world
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def any_(self, mask: Tensor) -> Tensor:
        """Logical OR of a bool tensor over the ranks."""
        if self.world == 1:
            return mask
        import torch.distributed as dist

        as_int = mask.to(torch.uint8)
        self._run("all-reduce of the fired latents", lambda: dist.all_reduce(as_int, op=dist.ReduceOp.MAX))
        return as_int.bool()

    def broadcast_(self, tensors: list[Tensor]) -> None:
        """Rank 0's values of ``tensors`` on every rank."""
        if self.world == 1:
            return
        import torch.distributed as dist

        for t in tensors:
            self._run("broadcast from rank 0", lambda t=t: dist.broadcast(t, src=0))

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            self._run("barrier", dist.barrier)


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def exit_rank(code: int) -> None:
    """End a torchrun rank now, with ``code``: leave the process group, flush, ``os._exit``. At
    normal interpreter exit a rank sometimes aborted ("terminate called without an active
    exception", SIGABRT, in C++ teardown after every Python frame was gone; about 1 run in 10
    under load), and torchrun then reports the whole run failed. No-op outside a process group."""
    import sys

    import torch.distributed as dist

    if not dist.is_initialized():
        return
    _leave()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def context(device: str = "cpu") -> Context:
    """The run's context: under torchrun (``WORLD_SIZE`` > 1) the process group, initialised once
    (gloo for CPU, nccl for CUDA), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=TIMEOUT_S))
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"could not join the torchrun process group ({str(err).splitlines()[0][:160]})") from None
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # Leave the group before the interpreter exits: a rank that ends first (not rank 0, which
        # still evaluates) otherwise aborts in gloo's thread teardown ("terminate called without
        # an active exception", SIGABRT) and torchrun reports the whole run failed.
        atexit.register(_leave)
    return Context(dist.get_rank(), dist.get_world_size())
