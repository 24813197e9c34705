"""Where this process runs: its share of the work, its device, its threads, its process group.

Three ways to split an evaluation over processes, all giving a single process's results:

- ``torchrun --nproc_per_node N run_eval.py run ...`` (and ``--nnodes``): :func:`discover` reads
  ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``LOCAL_WORLD_SIZE``; the ranks join one
  ``torch.distributed`` group (nccl when the models run on the ranks' GPUs, else gloo), claim each cell's remaining batches
  first come, first served from a counter in torchrun's store (the same batches, longest prompts
  first, as one process would run, so no rank idles for long at the end and batch composition
  never depends on the number of processes), meet at a barrier when they finish it, and rank 0
  merges the shards and writes the metrics in the same run.
- ``--shard K/N``, or ``--shard slurm`` in a SLURM array job (``SLURM_ARRAY_TASK_ID``,
  ``SLURM_ARRAY_TASK_COUNT``): independent processes, no group; each journals its share and a
  later run without ``--shard`` merges.
- one process.

Per-sample journals stay the source of truth: the group only carries barriers, small objects
(a cell's status, counts, timings) and the work counters. Demos are a pure function of (seed, task, query,
shots), so who computes a query never changes its record.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Mapping, Sequence, TypeVar

from harness.errors import HarnessError
from harness.devices import _env_int, resolve_device  # noqa: F401 (resolve_device re-exported)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a rank waits for the others at a barrier (a cell's end waits for the slowest rank).
#: torchrun ends every rank when one dies, so a long wait never hangs on a dead peer.
BARRIER_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class Launch:
    """This process's place among the processes evaluating the same sweep."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    #: "single", "torchrun" (one process group, merged in the run) or "shard" (independent shards).
    kind: str = "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int] | None:
        """(k, n) for an independent shard; None otherwise (torchrun ranks shard inside the runner)."""
        return (self.rank, self.world_size) if self.kind == "shard" else None


def slurm_array_shard(env: Mapping[str, str]) -> tuple[int, int]:
    """(k, n) of this SLURM array task: its position among the array's tasks (ids may start at any
    number and step by any amount: ``--array=1-8:2`` gives tasks 0..3 of 4)."""
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        raise HarnessError("--shard slurm: $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT are not set; "
                           "submit with `sbatch --array=0-N` (or give --shard K/N)")
    task_id = _env_int(env, "SLURM_ARRAY_TASK_ID")
    count = _env_int(env, "SLURM_ARRAY_TASK_COUNT")
    first = _env_int(env, "SLURM_ARRAY_TASK_MIN", 0)
    step = _env_int(env, "SLURM_ARRAY_TASK_STEP", 1) or 1
    k, rem = divmod(task_id - first, step)
    if rem or not 0 <= k < count:
        raise HarnessError(f"--shard slurm: array task {task_id} is not one of {count} tasks from {first} by {step}; "
                           f"use a plain range (--array=0-{count - 1}) or give --shard K/N")
    return k, count


def discover(shard: tuple[int, int] | str | None = None, env: Mapping[str, str] | None = None) -> Launch:
    """This process's Launch from ``--shard`` (``(k, n)``, ``"slurm"`` or None) and the environment.

    torchrun is recognised by the variables it sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``TORCHELASTIC_RUN_ID``). A SLURM array is used only with ``--shard slurm``: array jobs often
    run different configurations per task, which must not be split silently.
    """
    env = os.environ if env is None else env
    local_rank = _env_int(env, "LOCAL_RANK", 0)
    if "TORCHELASTIC_RUN_ID" in env or ("RANK" in env and "WORLD_SIZE" in env and "MASTER_ADDR" in env):
        if shard is not None:
            raise HarnessError("--shard under torchrun: torchrun already splits the work over its ranks; drop --shard")
        world = _env_int(env, "WORLD_SIZE")
        rank = _env_int(env, "RANK")
        if not 0 <= rank < world:
            raise HarnessError(f"$RANK={rank} is not below $WORLD_SIZE={world}")
        local_world = _env_int(env, "LOCAL_WORLD_SIZE", 1)
        return Launch(rank, world, local_rank, local_world, "torchrun" if world > 1 else "single")
    if shard == "slurm":
        shard = slurm_array_shard(env)
    if shard is not None:
        k, n = shard
        return Launch(k, n, local_rank, _env_int(env, "LOCAL_WORLD_SIZE", 1), "shard" if n > 1 else "single")
    return Launch()


# ---- balanced shares ----------------------------------------------------------------------------
def balanced_share(items: Sequence[T], costs: Sequence[float], k: int, n: int) -> list[T]:
    """Shard ``k`` of ``n``: items sorted by cost (longest first, ties in input order) and dealt
    like cards, forwards then backwards (0..n-1, n-1..0, ...), so every shard gets about the same
    total cost and the same count (within one). Returned in input order; a pure function of its
    arguments, so every process computes the same split."""
    if len(items) != len(costs):
        raise ValueError("one cost per item")
    order = sorted(range(len(items)), key=lambda i: (-costs[i], i))
    mine = [i for pos, i in enumerate(order) if _dealt_to(pos, n) == k]
    return [items[i] for i in sorted(mine)]


def _dealt_to(position: int, n: int) -> int:
    rnd, seat = divmod(position, n)
    return seat if rnd % 2 == 0 else n - 1 - seat


# ---- threads and devices --------------------------------------------------------------------------
def default_threads(local_processes: int = 1, cores: int | None = None, load: float | None = None) -> int:
    """Intra-op threads for one of ``local_processes`` on this machine: its share of the cores
    that other work leaves free (:func:`busy_cores`), at least one.

    torch's own default (one thread per core in every process) makes N processes, or one process
    beside a busy neighbour, oversubscribe the cores; OpenMP threads then spin against each other
    and a run takes several times longer (see docs/distributed.md for measurements).
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load is None:
        load = busy_cores()
    free = max(1, cores - int(load + 0.5))
    return max(1, min(cores // max(1, local_processes), free // max(1, local_processes)))


def busy_cores(interval: float = 0.25) -> float:
    """How many cores other processes keep busy now: /proc/stat sampled over ``interval`` seconds
    while this process sleeps (Linux), else the 1-minute load average. The load average lags by
    a minute, so right after a finished job it would still report a busy machine."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if total1 <= total0:
        return 0.0
    return (1.0 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def set_threads(requested: int | None, launch: Launch) -> int:
    """Set this process's intra-op thread count: ``--threads`` if given; else ``$OMP_NUM_THREADS``
    if set outside torchrun (torchrun sets it to 1 itself); else :func:`default_threads`.

    Works before torch is imported (through ``$OMP_NUM_THREADS``, which the OpenMP runtime reads
    when torch loads) and after (``torch.set_num_threads``).
    """
    if requested is not None and requested < 1:
        raise HarnessError(f"--threads must be >= 1, got {requested}")
    env = os.environ.get("OMP_NUM_THREADS", "")
    if requested:
        n, why = requested, "--threads"
    elif launch.kind != "torchrun" and env.isdigit() and int(env) > 0:
        n, why = int(env), "$OMP_NUM_THREADS"
    else:
        n, why = default_threads(launch.local_world_size), "free cores / local processes"
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    log.info("torch threads: %d (%s)", n, why)
    return n


# ---- the process group ----------------------------------------------------------------------------
class Group:
    """The torch.distributed group of a torchrun launch: barriers and small objects only."""

    def __init__(self, launch: Launch, backend: str = "gloo"):
        import torch
        import torch.distributed as dist

        self.launch = launch
        self.rank, self.world_size = launch.rank, launch.world_size
        if backend == "nccl":
            torch.cuda.set_device(launch.local_rank)
        self.backend = backend
        self._dist = dist
        self._queues = 0
        dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
        log.info("rank %d of %d joined the %s process group", self.rank, self.world_size, backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size

    def barrier(self) -> None:
        self._dist.barrier()

    def all_gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        box = [obj]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 only, its value (or its error) given to every rank."""
        value, error = None, None
        if self.is_main:
            try:
                value = fn()
            except HarnessError as exc:
                error = str(exc)
                self.broadcast((None, error))
                raise
            except BaseException:
                self.broadcast((None, "rank 0 failed; see its log"))
                raise
        value, error = self.broadcast((value, error))
        if error is not None:
            raise HarnessError(error)
        return value

    def work_queue(self, name: str) -> "WorkQueue":
        """A counter shared by the ranks; every rank must ask for the same names in the same order."""
        self._queues += 1
        return WorkQueue(self._dist.distributed_c10d._get_default_store(), f"harness/{self._queues}/{name}")

    def close(self) -> None:
        if self._dist.is_initialized():
            self._dist.destroy_process_group()


class WorkQueue:
    """Items handed out first come, first served across the ranks: an atomic counter in the
    process group's key-value store (torchrun's rendezvous store, reachable from every node)."""

    def __init__(self, store: Any, key: str):
        self._store, self._key = store, key

    def claims(self, n_items: int):
        """Indices in ``range(n_items)`` this rank should process, each given to exactly one rank."""
        while (i := self._store.add(self._key + "/next", 1) - 1) < n_items:
            yield i

    def report_done(self, n: int) -> int:
        """Add ``n`` finished items to the shared tally; returns the tally (for one progress bar)."""
        return self._store.add(self._key + "/done", n)


def start_group(launch: Launch, on_gpu: bool = False) -> Group | None:
    """The process group of a torchrun launch of 2+ processes (NCCL if the models run on the
    ranks' GPUs, else gloo); None otherwise."""
    return Group(launch, "nccl" if on_gpu else "gloo") if launch.kind == "torchrun" else None
