"""Reading the CIFAR python batches without letting a file run code.

`pickle.load` calls whatever callable a file names (a `__reduce__` payload runs code), so a
"CIFAR" folder from a mirror could take over the machine. The official files are Python 2
cPickle dumps of one dict of byte strings, ints, lists of those and one uint8 numpy array; the
only globals they name are numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype.
This reader resolves those names (plus numpy 2's spelling of the module, and `_codecs.encode`,
which Python 3 writes for bytes at protocols 0-2) to stand-ins that accept only the arguments a
plain uint8 array needs and build the array themselves with np.frombuffer. Any other global is
refused before anything is called, and the result must have the official shape: a dict whose
values are bytes, str, int, a uint8 array or a list of bytes/str/int.
"""
from __future__ import annotations

import math
import pickle

import numpy as np

ARRAY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")  # numpy 1 and numpy 2 names
SCALARS = (bytes, str, int, float, bool, type(None))
UINT8_DTYPE_STATE = (3, "|", None, None, None, -1, -1, 0)  # numpy's dtype('u1').__reduce__() state


class RefusedPickle(pickle.UnpicklingError):
    """The file asks for something the official CIFAR files never contain; nothing was run."""


def read_cifar_pickle(file) -> dict:
    """The dict in one CIFAR python file, opened in binary mode (keys and strings as bytes, as
    `encoding="bytes"` gives; the image array is a read-only view of the file's bytes).

    Raises RefusedPickle for anything outside the official files' types (nothing is executed),
    and pickle.UnpicklingError / EOFError / ValueError ... for damaged files."""
    loaded = _CifarUnpickler(file, encoding="bytes").load()
    if not isinstance(loaded, dict):
        raise RefusedPickle(f"it holds a {type(loaded).__name__}, not the dict of a CIFAR file")
    return {_plain(key, "a key"): _value(value) for key, value in loaded.items()}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("numpy", "ndarray"):
            return _NDARRAY
        stand_in = {"_reconstruct": _reconstruct}.get(name) if module in ARRAY_MODULES else \
            {("numpy", "dtype"): _dtype, ("_codecs", "encode"): _latin1}.get((module, name))
        if stand_in is None:
            raise RefusedPickle(f"it asks for {module}.{name}, which the official CIFAR files never use")
        # A fresh function per lookup: whatever the file sets on it (BUILD) dies with this load.
        return lambda *args: stand_in(*args)

    def persistent_load(self, pid):
        raise RefusedPickle("it refers to a persistent object, which the official CIFAR files never use")


class _NdarrayName:
    """Stands for numpy.ndarray, which the files only pass to _reconstruct; not callable, no attributes."""

    __slots__ = ()


_NDARRAY = _NdarrayName()


class _Uint8Dtype:
    """What numpy.dtype('u1', False, True) becomes; usable once its pickled state is checked."""

    def __init__(self):
        self.checked = False

    def __setstate__(self, state):
        if not isinstance(state, tuple) or tuple(_text(s) for s in state) != UINT8_DTYPE_STATE:
            raise RefusedPickle(f"its dtype state {state!r} is not that of uint8")
        self.checked = True


class _Uint8Array:
    """What _reconstruct(ndarray, (0,), b'b') becomes; its state carries the shape and the raw bytes."""

    def __init__(self):
        self.value: np.ndarray | None = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise RefusedPickle("an array's state is not (version, shape, dtype, fortran, data)")
        version, shape, dtype, fortran, raw = state
        if not (version == 1 and isinstance(dtype, _Uint8Dtype) and dtype.checked and fortran in (False, 0)):
            raise RefusedPickle("it holds an array that is not a C-ordered uint8 array")
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
            raise RefusedPickle(f"an array's shape {shape!r} is not a tuple of sizes")
        if not isinstance(raw, bytes) or len(raw) != math.prod(shape):
            raise RefusedPickle(f"an array of shape {shape} does not hold {math.prod(shape)} bytes")
        self.value = np.frombuffer(raw, dtype=np.uint8).reshape(shape)  # read-only view of the bytes


def _reconstruct(subtype, shape, typecode):
    if subtype is not _NDARRAY or shape != (0,) or _text(typecode) != "b":
        raise RefusedPickle("it rebuilds an array in a way the official CIFAR files never do")
    return _Uint8Array()


def _dtype(name, align, copy):
    if _text(name) != "u1" or (align, copy) != (False, True):
        raise RefusedPickle(f"it asks for numpy dtype {name!r}; the CIFAR images are uint8")
    return _Uint8Dtype()


def _latin1(text, encoding):
    """_codecs.encode(text, 'latin1'): how Python 3 spells a bytes object at pickle protocols 0-2."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedPickle(f"it asks to encode {type(text).__name__} as {encoding!r}; only latin1 text is bytes")
    return text.encode("latin1")


def _text(value):
    """Python 2 strings arrive as bytes under encoding="bytes"; compare them as text."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def _plain(value, what: str):
    if not isinstance(value, SCALARS):
        raise RefusedPickle(f"{what} is a {type(value).__name__}, which the official CIFAR files never hold")
    return value


def _value(value):
    """A dict value: a uint8 array, a scalar, or a flat list of scalars; the official files hold nothing else."""
    if isinstance(value, _Uint8Array):
        if value.value is None:
            raise RefusedPickle("it holds an array without its data")
        return value.value
    if isinstance(value, list):
        return [_plain(item, "a list item") for item in value]
    return _plain(value, "a value")
