"""Byte-reproducible safetensors files: the safetensors writer keeps the string metadata in a hash
map, so the order of its keys in the JSON header (and so the file's bytes) changed from run to run.
`sorted_metadata` rewrites the header with the metadata keys sorted, same length and padding, so
the data offsets and every reader (safe_open, load_weights' digest check) see the same file."""
from __future__ import annotations

import json
import struct


def sorted_metadata(blob: bytes) -> tuple[bytes, memoryview]:
    """`blob` (a whole safetensors file) as (its header with the "__metadata__" keys in sorted order,
    the rest unchanged and uncopied), to be written one after the other; the header as safetensors
    wrote it where it cannot be rewritten to the same length."""
    (size,) = struct.unpack("<Q", blob[:8])
    original, rest = blob[:8 + size], memoryview(blob)[8 + size:]
    text = original[8:].decode("utf-8").rstrip(" ")  # the writer pads with spaces to 8-byte alignment
    parsed = json.loads(text)
    if not isinstance(parsed.get("__metadata__"), dict):
        return original, rest
    parsed["__metadata__"] = dict(sorted(parsed["__metadata__"].items()))
    rewritten = json.dumps(parsed, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(rewritten) != len(text.encode("utf-8")):
        return original, rest
    return blob[:8] + rewritten + b" " * (size - len(rewritten)), rest
