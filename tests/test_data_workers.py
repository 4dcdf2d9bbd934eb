"""The decoding worker processes: sized to the shared memory their batches pass through (a small
/dev/shm made the run wait for ever), a run that cannot get a batch from them (a worker killed, a
batch that never comes, a limit on processes or files) ends in one line, and no worker is left."""
import multiprocessing
import os
import signal
import time
from collections import namedtuple

import pytest
import torch

from resnetlab.data import workers
from resnetlab.errors import ResnetlabWarning, UserError

Usage = namedtuple("Usage", "total used free")


class Items(torch.utils.data.Dataset):
    """Item i is tensor([i]); the item `bad` does `what` in its worker first."""

    def __init__(self, n: int, bad: int = -1, what=None):
        self.n, self.bad, self.what = n, bad, what

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.bad:
            self.what()
        return torch.tensor([i])


def test_the_workers_are_as_many_as_shared_memory_has_room_for(monkeypatch):
    monkeypatch.setattr(workers, "_SAID", set())
    monkeypatch.setattr(workers.shutil, "disk_usage", lambda folder: Usage(64 << 20, 63 << 20, 1 << 20))
    with pytest.warns(ResnetlabWarning, match=r"/dev/shm has 1 MiB free; 2 decoding workers need about 3 MiB there "
                                              r"for their batches, so none are used \(in Docker, --shm-size=1g"):
        assert workers.workers_that_fit(2, 442368) == 0  # 16 images of 96 x 96 x 3
    assert workers.workers_that_fit(2, 100_000) == 2
    monkeypatch.setattr(workers.shutil, "disk_usage", lambda folder: (_ for _ in ()).throw(FileNotFoundError(folder)))
    assert workers.workers_that_fit(4, 1 << 30) == 4  # no /dev/shm: torch's own way


def test_a_worker_killed_mid_epoch_is_one_line_and_no_worker_is_left():
    items = workers.worker_items(Items(8, bad=5, what=lambda: os.kill(os.getpid(), signal.SIGKILL)), 2, False)
    children = set(multiprocessing.active_children())
    # the worker is named whichever the loader met first: torch's SIGCHLD handler, a reset queue or an EOF
    with pytest.raises(UserError, match=r"the image-decoding worker processes failed \(DataLoader worker \(pid \d+\) "
                                        r"is killed by signal: (SIGKILL|Killed)"):
        list(items)
    assert not [c for c in multiprocessing.active_children() if c not in children]


def test_a_batch_that_never_comes_ends_the_wait(monkeypatch):
    """A worker whose batch could not be handed over (a full /dev/shm) printed a traceback and the run
    waited for that batch for ever."""
    monkeypatch.setattr(workers, "BATCH_TIMEOUT_S", 1.0)
    started = time.monotonic()
    with pytest.raises(UserError, match=r"failed \(DataLoader timed out after 1\.0 seconds\)"):
        list(workers.worker_items(Items(4, bad=2, what=lambda: time.sleep(30)), 1, False))
    assert time.monotonic() - started < 20  # the sleeping worker was ended, not waited for


def test_an_error_raised_in_a_worker_is_said_by_its_own_last_line():
    def fail():
        raise RuntimeError("unable to allocate shared memory(shm) for file </torch_1_2_3>: No space left on device (28)")

    with pytest.raises(UserError, match=r"failed \(RuntimeError: unable to allocate shared memory\(shm\) for file "
                                        r"</torch_1_2_3>: No space left on device \(28\)\): a limit"):
        list(workers.worker_items(Items(4, bad=1, what=fail), 1, False))
