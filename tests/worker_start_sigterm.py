"""A SIGTERM that reaches a decoding worker as it starts, after torch's worker signal handlers and
before resnetlab's worker_init_fn (the window a SIGTERM to the process group fell into, now and
then): prints the batches made, or dies of DataLoader's "worker ... exited unexpectedly".
Run as a script (it patches torch in this process only): python worker_start_sigterm.py FOLDER"""
import os
import signal
import sys

import numpy as np
import torch
import torch.utils.data._utils.signal_handling as handling
from PIL import Image

from resnetlab.config import DataConfig
from resnetlab.data import FileDataset, LoaderSpec, make_train_loader

paths = []
for i in range(8):
    paths.append(os.path.join(sys.argv[1], f"{i}.png"))
    Image.fromarray(np.full((80, 80, 3), i * 20, dtype=np.uint8)).save(paths[-1])
signal.signal(signal.SIGTERM, lambda *args: None)  # the training's own handler records it and goes on
torch_handlers = handling._set_worker_signal_handlers


def then_sigterm(*args):
    torch_handlers(*args)
    os.kill(os.getpid(), signal.SIGTERM)  # not from the parent: torch's handler dies of it


handling._set_worker_signal_handlers = then_sigterm
loader = make_train_loader(FileDataset(paths, torch.arange(8) % 2, ["a", "b"]),
                           DataConfig(dataset="folder", val_size=0, image_size=32), LoaderSpec(4, workers=1))
print("batches", len(list(loader)))
