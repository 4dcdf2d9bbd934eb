"""A Ctrl-C that reaches a small-image decoding worker as it starts, before its initializer has set
its signals (the window a SIGINT to the process group can fall into): prints the images decoded,
or the worker dies of KeyboardInterrupt with a traceback on stderr.
Run as a script (it patches resnetlab in this process only): python pool_start_sigint.py FOLDER"""
import os
import signal
import sys

import numpy as np
from PIL import Image

from resnetlab.data import folder

paths = []
for i in range(8):
    paths.append(os.path.join(sys.argv[1], f"{i}.png"))
    Image.fromarray(np.full((8, 8, 3), i * 20, dtype=np.uint8)).save(paths[-1])
set_signals = folder._default_signals


def after_a_sigint():
    try:  # the first worker only (the pool replaces a worker that died: each would die again)
        os.close(os.open(os.path.join(sys.argv[1], "sent"), os.O_CREAT | os.O_EXCL))
        os.kill(os.getpid(), signal.SIGINT)  # inherited: Python's default handler, as in `resnetlab data`
    except FileExistsError:
        pass
    set_signals()


folder._default_signals = after_a_sigint
with folder.decode_pool(2) as pool:
    parts = pool.starmap(folder._decode_chunk, [(paths[:4], 8, False), (paths[4:], 8, False)])
    pool.close()
    pool.join()
print("images", sum(len(p[0]) for p in parts))
