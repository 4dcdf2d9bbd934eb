"""Which files a command that reads images (predict, embed, export's check) is given: the files
named, and every image file under the folders named."""
from __future__ import annotations

import os
from pathlib import Path

from resnetlab.errors import UserError


def image_extensions() -> set[str]:
    from resnetlab.data.folder import IMAGE_EXTS

    return IMAGE_EXTS


def collect_images(inputs: list[str]) -> list[str]:
    """Files as given, and for folders every image file under them (recursive, sorted, by extension;
    linked folders followed, each real folder once). A file named explicitly is kept whatever its
    extension, so a non-image is reported, not ignored; a folder without images, or a blank name
    ("" is the current folder to the file system: an unset shell variable), is refused."""
    out = []
    for item in inputs:
        if not str(item).strip():
            raise UserError(f"an image path is blank ({str(item)!r}; an unset shell variable?)")
        path = Path(item)
        if path.is_file():
            out.append(str(path))
        elif path.is_dir():
            found = folder_images(path)
            if not found:
                raise UserError(f"no image files found in {item} (none ending in "
                                f"{', '.join(sorted(image_extensions()))})")
            out += found
        elif path.exists():  # reading a FIFO could wait for ever; a device is no image either
            raise UserError(f"{item}: not a regular file or folder (a device, FIFO or socket)")
        else:
            raise UserError(f"{item}: no such file or folder")
    return out


def folder_images(folder: Path) -> list[str]:
    """Every image file under `folder` (hidden names left out), sorted. Linked folders are followed
    (a folder of links to class folders is a common way to make a subset), each real folder once, so a
    link loop ends."""
    from resnetlab.data.folder import hidden

    exts, found, seen = image_extensions(), [], set()
    for dirpath, dirnames, filenames in os.walk(folder, onerror=_unlistable, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not hidden(d)]  # as a training folder's: NAS thumbnails too
        found += [os.path.join(dirpath, f) for f in filenames
                  if not hidden(f) and os.path.splitext(f)[1].lower() in exts]
    return sorted(found)


def _unlistable(err: OSError):
    raise UserError(f"{err.filename}: cannot list the folder ({err.strerror or err}); fix its permissions, or leave "
                    "it out of the inputs")
