"""What a class folder holds: its image files (by extension), walked with its subfolders, linked ones
included, each real folder once; hidden names and the folders NAS boxes and file systems add left out."""
from __future__ import annotations

import errno
import os
from pathlib import Path

from PIL import Image

# torchvision ImageFolder's extensions, plus .gif (its first frame), .jfif, .jpe, and .avif where Pillow reads it.
IMAGE_EXTS = {".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
IMAGE_EXTS |= {".avif"} & set(Image.registered_extensions())  # features.check warns on a Pillow without it
# What NAS boxes, zip files and file systems put beside photos, never classes or images of their own:
# Synology's thumbnails and recycle bin, macOS's resource forks in a zip, Windows' and ext4's own folders.
SYSTEM_FOLDERS = {"@eaDir", "#recycle", "#snapshot", "__MACOSX", "$RECYCLE.BIN", "System Volume Information",
                  "lost+found"}


def hidden(name: str) -> bool:
    """Left out of every listing of photos: hidden names and SYSTEM_FOLDERS."""
    return name.startswith(".") or name in SYSTEM_FOLDERS


def class_files(folder: Path, fence: set = frozenset()) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """(images, bad, ignored) under a class folder (recursive, sorted, hidden names ignored): files
    with an image extension; dangling symbolic links and unreadable subfolders (bad); other files
    (ignored). Linked subfolders are followed, as predict follows them, each real folder once (by device
    and inode, the path met first naming it): a link loop ends, and two links to one folder count its
    images once. Links to the folder's parents or to `fence` (the split folder, the class folders) are not
    followed: they would read other classes' images as this one's. scandir's entry types cost no system
    call per plain file (one stat per folder), which matters for ImageNet-sized folders."""
    files, bad, ignored = [], [], []
    seen = set(fence) | dir_keys([folder, *Path(os.path.realpath(folder)).parents])
    pending = [str(folder)]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as it:
                entries = sorted((e for e in it if not hidden(e.name)), key=lambda e: e.name)
        except OSError as err:
            bad.append((current, f"cannot list the folder ({err.strerror or err})"))
            continue
        plain, linked = [], []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                plain.append(entry.path)
            elif entry.is_symlink() and not os.path.exists(entry.path):
                bad.append((entry.path, broken_link(entry.path)))
            elif entry.is_symlink() and entry.is_dir():
                linked.append(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTS:
                files.append(entry.path)
            else:
                ignored.append(entry.path)
        fresh = []
        for path in plain + linked:  # a folder's own path claims it before a link to it does
            key = dir_keys([path])  # empty where it cannot be stat'ed: then listed, which says why
            if not key & seen:
                fresh.append(path)
            seen |= key
        pending += sorted(fresh, reverse=True)  # depth first, in name order: a folder's files, then its subfolders
    return files, bad, ignored


def dir_keys(paths) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of the folders that can be stat'ed: a folder's identity, whatever path or link leads to it."""
    keys = set()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:  # scandir, or no one, says why
            continue
        keys.add((st.st_dev, st.st_ino))
    return keys


def broken_link(path: str) -> str:
    """Why a symbolic link leads nowhere: a target that does not exist, or links that point at each other."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return f"a symbolic link loop (to {os.readlink(path)}, which leads back to it)"
    return f"dangling symbolic link (to {os.readlink(path)}, which does not exist)"
