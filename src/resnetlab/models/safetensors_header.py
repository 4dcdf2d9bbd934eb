"""Byte-reproducible safetensors files: the safetensors writer keeps the string metadata in a hash
map, so the order of its keys in the JSON header (and so the file's bytes) changed from run to run.
`sorted_metadata` rewrites the header with the metadata keys sorted, same length and padding, so
the data offsets and every reader (safe_open, load_weights' digest check) see the same file."""
from __future__ import annotations

import json
import struct


def sorted_metadata(blob: bytes) -> bytes:
    """`blob` (a whole safetensors file) with its header's "__metadata__" keys in sorted order; `blob`
    itself when the header cannot be rewritten to the same length (left as safetensors wrote it)."""
    (size,) = struct.unpack("<Q", blob[:8])
    header = blob[8:8 + size]
    text = header.decode("utf-8").rstrip(" ")  # the writer pads with spaces to 8-byte alignment
    parsed = json.loads(text)
    meta = parsed.get("__metadata__")
    if not isinstance(meta, dict):
        return blob
    parsed["__metadata__"] = dict(sorted(meta.items()))
    rewritten = json.dumps(parsed, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(rewritten) != len(text.encode("utf-8")) or json.loads(rewritten) != json.loads(text):
        return blob
    return blob[:8] + rewritten + b" " * (size - len(rewritten)) + blob[8 + size:]
