"""Reads the records of an offline W&B run file (``run-<id>.wandb``) for tests.

The file is a 7-byte header followed by LevelDB-log framed records (32 KiB blocks; each chunk: crc32 u32, length u16,
type u8 with 1 = full, 2 = first, 3 = middle, 4 = last), each record a ``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER, CHUNK = 32768, 7, 7


def read_records(path: str | Path) -> list:
    data = Path(path).read_bytes()
    if not data.startswith(b":W&B"):
        raise ValueError(f"{path}: not a W&B run file")
    records, partial, i = [], b"", HEADER
    while i + CHUNK <= len(data):
        left = BLOCK - i % BLOCK
        if left < CHUNK:  # block trailer padding
            i += left
            continue
        _, length, kind = struct.unpack("<IHB", data[i : i + CHUNK])
        if kind == 0 and length == 0:
            i += left
            continue
        payload = data[i + CHUNK : i + CHUNK + length]
        i += CHUNK + length
        if kind == 1:
            records.append(payload)
        elif kind == 2:
            partial = payload
        elif kind == 3:
            partial += payload
        elif kind == 4:
            records.append(partial + payload)
    out = []
    for raw in records:
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        out.append(rec)
    return out


def history(path: str | Path) -> list[dict]:
    """Every logged history row as {key: value}."""
    rows = []
    for rec in read_records(path):
        if rec.WhichOneof("record_type") == "history":
            rows.append({(it.key or "/".join(it.nested_key)): json.loads(it.value_json) for it in rec.history.item})
    return rows


def config_keys(path: str | Path) -> set[str]:
    keys = set()
    for rec in read_records(path):
        if rec.WhichOneof("record_type") == "config":
            keys |= {it.key or "/".join(it.nested_key) for it in rec.config.update}
    return keys
