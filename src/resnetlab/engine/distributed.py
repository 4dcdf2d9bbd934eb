"""Data-parallel training switched on by the variables `torchrun` sets (RANK, WORLD_SIZE, LOCAL_RANK).

`torchrun --nproc_per_node=N -m resnetlab train ...` gives N processes; each builds the same
model from the same seed, DDP averages gradients, and every process sees its slice of each
global batch (data.LoaderSpec(rank=, world_size=)). NCCL on GPUs, gloo on CPU.
Only rank 0 writes files or prints.
"""
from __future__ import annotations

import gc
import os
import socket
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from resnetlab.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info_from_env(env=os.environ) -> DistInfo:
    """The process's place in a torchrun job, or the single-process default."""
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return DistInfo()
    try:
        return DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"])))
    except ValueError:
        raise UserError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers, got {env['RANK']!r}/{env['WORLD_SIZE']!r}") from None


def init_distributed(dist_info: DistInfo, device: torch.device) -> None:
    """Join the process group (env:// rendezvous from torchrun) if there is more than one process."""
    if not dist_info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend, rank=dist_info.rank, world_size=dist_info.world_size)
        return
    # torchrun's agent keeps one store for every restart of the job: without a prefix per attempt,
    # restarted workers read the addresses the dead ones published and cannot connect
    # (pytorch/pytorch#135712; measured: `--max-restarts=1` failed in connectFullMesh every time).
    store, _, _ = next(dist.rendezvous("env://"))
    store = dist.PrefixStore(f"resnetlab/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    dist.init_process_group(backend, store=store, rank=dist_info.rank, world_size=dist_info.world_size)


def shutdown_distributed(synchronize: bool = False) -> None:
    """Leave the process group. After a successful run every process first waits for the others
    (so none tears the group down while another still uses it), and the DDP wrappers, which hold
    gloo work, are collected before the group goes."""
    if not dist.is_initialized():
        return
    if synchronize:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def per_rank_batch(global_batch: int, dist_info: DistInfo) -> int:
    """optim.batch_size is the GLOBAL batch; each process takes an equal share of it."""
    if global_batch % dist_info.world_size:
        raise UserError(f"optim.batch_size {global_batch} (the global batch) does not split evenly over "
                        f"{dist_info.world_size} processes; pick a multiple of {dist_info.world_size}")
    return global_batch // dist_info.world_size


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over processes (identity when not distributed)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_objects(obj, dist_info: DistInfo) -> list:
    """Every rank's value of a small picklable object, in rank order, on every rank ([obj] alone when
    not distributed)."""
    if not dist_info.enabled:
        return [obj]
    box = [None] * dist.get_world_size()
    dist.all_gather_object(box, obj)
    return box


def broadcast_object(obj, dist_info: DistInfo):
    """Rank 0's value of a small picklable object on every rank (e.g. a stop flag)."""
    if not dist_info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agreed_signal(signum: int | None, signals: tuple[int, ...], device: torch.device) -> int | None:
    """The signal any process has received (the first of `signals` that one did), or None; every
    process calls it at the same step, so all of them stop at the same one."""
    got = torch.tensor([float(signum == s) for s in signals], device=device)
    return next((s for s, n in zip(signals, all_reduce_sum(got).tolist()) if n), None)


def local_peers(dist_info: DistInfo) -> tuple[int, ...]:
    """The process ids of the job's other processes on this machine (a collective: every process calls it).

    torchrun's agent stops the processes still running as soon as one of them exits with a failing
    status, and reports each of them as failed too: the one process that exits failing waits for
    these to end first (wait_for_exit)."""
    if not dist_info.enabled:
        return ()
    here = (os.environ.get("GROUP_RANK"), socket.gethostname(), os.getppid())  # the node, and its agent
    return tuple(pid for *where, pid in gather_objects((*here, os.getpid()), dist_info)
                 if tuple(where) == here and pid != os.getpid())


def wait_for_exit(pids: tuple[int, ...], timeout_s: float = 60.0) -> None:
    """Return once none of the processes exists any more (torchrun reaps its own), or after timeout_s."""
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:  # the id is another user's process now: ours has ended
                break
            time.sleep(0.02)
