"""Read the records of an offline wandb run file (run-*.wandb), for tests.

The file is a 7-byte header (":W&B", a 2-byte magic, a version byte) followed by
a LevelDB-style log: 32 KiB blocks of chunks, each with a 7-byte header (crc32c,
little-endian length, type FULL/FIRST/MIDDLE/LAST); the chunks of one record
join into a serialized `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a wandb run file"
    records, pending, offset = [], b"", HEADER
    while offset + HEADER <= len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            offset += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER])
        if length == 0 and kind == 0:
            offset += left_in_block  # zero padding up to the next block
            continue
        chunk = data[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
        if kind in (FULL, FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def logged(path: Path) -> dict:
    """{'config': {key: json}, 'history': [ {key: json} ], 'summary': {key: json}} of a run file."""
    out: dict = {"config": {}, "history": [], "summary": {}}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            out["config"].update({item.key: item.value_json for item in record.config.update})
        elif kind == "run":  # the config given to wandb.init travels in the run record
            out["config"].update({item.key: item.value_json for item in record.run.config.update})
        elif kind == "history":
            out["history"].append(
                {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            )
        elif kind == "summary":
            out["summary"].update(
                {item.key or "/".join(item.nested_key): item.value_json for item in record.summary.update}
            )
    return out
