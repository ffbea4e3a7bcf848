"""Multi-process training with DistributedDataParallel, launched by ``torchrun``.

``torchrun --nproc-per-node N -m negrec_fast train ...`` starts N processes; each reads its
rank from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), joins the process group
(``train.dist_backend``: NCCL on CUDA, Gloo on CPU by default) and trains on its local device
(``cuda:LOCAL_RANK``).

- Batches: every rank draws the same global batch of ``train.batch_size`` sequences and K
  negatives (keyed by seed, epoch and batch index, as in one process), so the data order,
  the negatives and mid-epoch resume do not depend on the number of processes.
- A step (:class:`ShardedStep`): rank r runs the encoder and the query projection on a
  contiguous block of about 1/N of the rows (with its own dropout stream). The blocks' outputs are gathered
  (without gradient), so every rank holds the global batch's queries and computes the loss of
  the whole batch: the sampled softmax scores each query against *all* the batch's targets and
  its logQ term counts them all, BERT4Rec masks the global batch (one generator, the same
  state on every rank), and the means run over the global batch's targets and anchors. Each
  rank's loss value is therefore the single-process loss of the batch.
- Gradients: rank r back-propagates ``N * loss``; the gradient reaches the encoder only
  through its own rows, and the parts every rank computes alike (the item table as the
  output layer, the InfoNCE item embeddings, any parameter the loss reads directly) pass 1/N
  of theirs. DDP averages over ranks, so the step's gradient is the single-process gradient
  of the global batch up to float rounding (``tests/test_distributed.py``: losses equal,
  gradients within 1e-5 relative + 1e-7 absolute).
- Cost: the loss over the global batch runs on every rank (its sampled softmax couples all
  the batch's rows); only the encoder and the output projection are split, so the speed-up
  is bounded by their share of a step.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from negrec_fast.config import TrainConfig
from negrec_fast.errors import ConfigError
from negrec_fast.objective import BatchTensors, Objective
from negrec_fast.run_folder import resolve_device

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # the process group was started here and ends with close()

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder, validates and reports."""
        return self.rank == 0

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        if self.size == 1:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def local_first(self, fn: Callable[[], T]) -> T:
        """``fn()`` on local rank 0 first, then on the node's other ranks (e.g. to build a cache once)."""
        if self.size == 1:
            return fn()
        result = fn() if self.local_rank == 0 else None
        dist.barrier()
        return fn() if self.local_rank != 0 else result

    def close(self) -> None:
        """Ends the process group if it was started by :func:`join`."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def is_main_process() -> bool:
    """Whether this process is rank 0 (always, outside torchrun)."""
    return _env_int("RANK", 0) == 0


def join(cfg: TrainConfig) -> tuple[World, torch.device]:
    """This process's world and training device; under torchrun (``WORLD_SIZE > 1``) joins the
    process group (or uses the one already started) and pins the process to ``cuda:LOCAL_RANK``
    when training on CUDA."""
    size = _env_int("WORLD_SIZE", 1)
    if size == 1:
        return World(), resolve_device(cfg.device)
    rank, local_rank = _env_int("RANK", None), _env_int("LOCAL_RANK", None)
    if not 0 <= rank < size or local_rank < 0:
        raise ConfigError(f"RANK={rank}, LOCAL_RANK={local_rank} do not fit WORLD_SIZE={size}")
    device = _rank_device(cfg.device, local_rank)
    backend = cfg.dist_backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("train.dist_backend='nccl' needs CUDA devices; use gloo (or auto) to train on CPU")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (rank, size):
            raise ConfigError(
                f"the process group already started is rank {dist.get_rank()} of {dist.get_world_size()}, "
                f"the environment says RANK={rank} of WORLD_SIZE={size}"
            )
        return World(rank, size, local_rank), device
    dist.init_process_group(backend, rank=rank, world_size=size, device_id=device if device.type == "cuda" else None)
    return World(rank, size, local_rank, owns_group=True), device


def _env_int(name: str, default: int | None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ConfigError(f"WORLD_SIZE is set but {name} is not: launch distributed training with torchrun")
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer (torchrun sets it)") from None


def _rank_device(name: str, local_rank: int) -> torch.device:
    """The device of local rank ``local_rank`` for ``train.device`` (auto, cpu or cuda)."""
    device = resolve_device(name)
    if device.type == "cpu":
        return device
    if device.type != "cuda" or device.index is not None:
        raise ConfigError(
            f"train.device={name!r}: under torchrun each process uses cuda:LOCAL_RANK; use auto, cuda or cpu"
        )
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
            "start at most that many processes per node (--nproc-per-node)"
        )
    return torch.device("cuda", local_rank)


def shard_sizes(n_rows: int, world_size: int) -> list[int]:
    """Rows of each rank's contiguous block of an ``n_rows`` batch (sizes differ by at most 1)."""
    return [n_rows // world_size + (r < n_rows % world_size) for r in range(world_size)]


class ShardedStep(nn.Module):
    """The training objective of a global batch, run under DDP on this rank's block of rows
    (module docstring). ``forward(items, skips, negatives, neg_logq)`` returns the objective's
    ``(total, rec, nce)`` of the whole batch; back-propagate ``world.size * total``."""

    def __init__(self, model: nn.Module, objective: Objective, generator: torch.Generator | None, world: World):
        super().__init__()
        self.model = model
        self.objective = objective
        self.generator = generator
        self.world = world

    def forward(self, items: Tensor, skips: Tensor, negatives: Tensor, neg_logq: Tensor):
        batch = BatchTensors(items=items, skips=skips, negatives=negatives, neg_logq=neg_logq)
        return self.objective(_RankRows(self.model, self.world, items.shape[0]), batch, self.generator)


def wrap(model: nn.Module, objective: Objective, generator: torch.Generator | None, world: World,
         device: torch.device) -> nn.parallel.DistributedDataParallel:
    """``model`` and ``objective`` as one DDP module (:class:`ShardedStep`); rank 0's parameters
    are copied to every rank."""
    step = ShardedStep(model, objective, generator, world)
    return nn.parallel.DistributedDataParallel(step, device_ids=[device] if device.type == "cuda" else None)


class _ScaleGrad(torch.autograd.Function):
    """Identity whose gradient is multiplied by ``scale``."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


class _RankRows:
    """The model as the objective sees it in a sharded step: global-batch tensors in and out.

    - ``encode``, ``project`` and calls run on this rank's rows only; the other ranks' rows
      are copied in (detached).
    - Computations every rank repeats on the same values pass 1/N of their gradient:
      ``embed`` of the global batch and parameters read directly (``item_weight``, ...).
    - ``mask_items`` masks the global batch with the shared generator; ``has_context`` reads
      the global batch (no parameters).
    """

    def __init__(self, model: nn.Module, world: World, n_rows: int):
        self._model = model
        self._world = world
        self._sizes = shard_sizes(n_rows, world.size)
        self._lo = sum(self._sizes[: world.rank])
        self._hi = self._lo + self._sizes[world.rank]

    def encode(self, items: Tensor, skips: Tensor | None = None) -> Tensor:
        return self._by_rows(self._model.encode, items, skips)

    def __call__(self, items: Tensor, skips: Tensor | None = None) -> Tensor:
        return self._by_rows(self._model, items, skips)

    def project(self, hidden: Tensor) -> Tensor:
        self._check_rows(hidden)
        return self._assemble(self._model.project(hidden[self._lo : self._hi]))

    def embed(self, items: Tensor) -> Tensor:
        return _ScaleGrad.apply(self._model.embed(items), 1.0 / self._world.size)

    def mask_items(self, items: Tensor, *args: Any, **kwargs: Any):
        return self._model.mask_items(items, *args, **kwargs)

    def has_context(self, items: Tensor, skips: Tensor | None = None) -> Tensor:
        return self._model.has_context(items, skips)  # no parameters: every rank computes the same

    def __getattr__(self, name: str) -> Tensor:
        value = getattr(self._model, name)
        if not isinstance(value, Tensor):
            raise AttributeError(
                f"the training objective uses model.{name}, which distributed training does not split by rank "
                "(negrec_fast.distributed._RankRows)"
            )
        return _ScaleGrad.apply(value, 1.0 / self._world.size)

    def _by_rows(self, fn: Callable[[Tensor, Tensor | None], Tensor], items: Tensor, skips: Tensor | None) -> Tensor:
        """``fn`` of this rank's rows, assembled into the global batch."""
        self._check_rows(items)
        lo, hi = self._lo, self._hi
        if lo == hi:  # a last batch with fewer rows than ranks: run one row and keep none, so that
            # every parameter still gets a (zero) gradient, as DDP needs (GRU4Rec cannot pack 0 rows)
            lo, hi = 0, 1
        out = fn(items[lo:hi], None if skips is None else skips[lo:hi])
        return self._assemble(out[: self._hi - self._lo])

    def _check_rows(self, tensor: Tensor) -> None:
        if tensor.shape[0] != sum(self._sizes):
            raise ValueError(f"expected the global batch of {sum(self._sizes)} rows, got {tensor.shape[0]}")

    def _assemble(self, local: Tensor) -> Tensor:
        """The global batch: every rank's block in rank order, this rank's with its gradient."""
        width = max(self._sizes)
        padded = torch.cat([local.detach(), local.new_zeros((width - local.shape[0], *local.shape[1:]))])
        blocks = [torch.empty_like(padded) for _ in self._sizes]
        dist.all_gather(blocks, padded)
        blocks = [block[:n] for block, n in zip(blocks, self._sizes)]
        blocks[self._world.rank] = local
        return torch.cat(blocks)
