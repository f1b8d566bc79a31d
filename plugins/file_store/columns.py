"""A run's metric points as binary columns beside its metrics log, for fast reading.

``metrics.jsonl`` is the truth; ``metrics.columns`` repeats its batches as 8-byte
numbers so that a reader takes a million points without parsing a million numbers
from text. Each record covers one line of the log by its byte offsets::

    MAGIC
    <header length: uint32><payload length: uint32><header JSON><payload>
    ...

The header is ``{"start": s, "end": e, "crc": c, "series": [[name, points, steps kind,
values kind, timestamps length], ...]}`` and the payload holds, per series, its
steps and values, little-endian, each ``"q"`` (int64) or ``"d"`` (float64), then its
timestamps as the log has them (the JSON array's text without its brackets: ISO
times never hold a quote or a comma, so splitting it is decoding it). A batch of
other values (text, booleans, ints past 64 bits, ints mixed with floats) gets no
record: readers decode those lines from the log, as they do any line a record is
missing for (a torn write, a full disk) and any whose bytes in the log no longer have
the CRC-32 ``c`` they had when it was written (the log was edited or cut).
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from collections.abc import Iterator, Sequence
from typing import Any

MAGIC = b"expkit metric columns 1\n"
_SIZES = struct.Struct("<II")
_SWAP = sys.byteorder != "little"

Batch = dict[str, tuple[list, list, list]]


def packed_batch(
    batch: list[tuple[Any, Any, bytes, Any]], start: int, end: int, crc: int
) -> bytes | None:
    """The record of a batch ``[(name, steps, timestamps as JSON, values)]`` written to
    the log at bytes ``start:end`` whose CRC-32 is ``crc``; ``None`` if its numbers would
    not read back exactly as the log's JSON gives them."""
    series: list[list] = []
    payload: list[bytes] = []
    for name, steps, times, values in sorted(batch, key=lambda s: str(s[0])):
        if not len(steps):
            continue
        packed = [_packed(steps), _packed(values)]
        if None in packed or len(steps) != len(values) or not times.startswith(b'["'):
            return None
        times = times[1:-1]
        series.append([str(name), len(steps), packed[0][0], packed[1][0], len(times)])
        payload += [packed[0][1], packed[1][1], times]
    if not series:
        return None
    header = json.dumps({"start": start, "end": end, "crc": crc, "series": series}).encode()
    body = b"".join(payload)
    return _SIZES.pack(len(header), len(body)) + header + body


def records(data: bytes, log_size: int) -> Iterator[tuple[dict, memoryview]]:
    """The header and payload of each whole record of a columns file's ``data``, in
    order, up to the first that is torn, damaged or beyond the ``log_size`` bytes of the
    log; :func:`batch_of` unpacks a payload."""
    if not data.startswith(MAGIC):
        return
    view = memoryview(data)
    pos = len(MAGIC)
    while pos + _SIZES.size <= len(data):
        head_len, body_len = _SIZES.unpack_from(data, pos)
        body_at = pos + _SIZES.size + head_len
        if body_at + body_len > len(data):
            return  # torn: the process died while appending it
        try:
            header = json.loads(view[pos + _SIZES.size : body_at].tobytes())
            for key in ("start", "end", "crc"):
                header[key] = int(header[key])
        except (ValueError, TypeError, KeyError, IndexError):
            return
        if not 0 <= header["start"] < header["end"] <= log_size:
            return  # the log was cut back past this batch
        yield header, view[body_at : body_at + body_len]
        pos = body_at + body_len


def whole_length(data: bytes, log_size: int) -> int:
    """How many leading bytes of a columns file's ``data`` hold whole, usable records."""
    if not data.startswith(MAGIC):
        return 0
    pos = len(MAGIC)
    for _ in records(data, log_size):
        head_len, body_len = _SIZES.unpack_from(data, pos)
        pos += _SIZES.size + head_len + body_len
    return pos


def _packed(numbers: Sequence[Any]) -> tuple[str, bytes] | None:
    # Exact types: a bool or a float subclass would not read back as the log gives it.
    kinds = set(map(type, numbers))
    kind = "d" if kinds == {float} else "q" if kinds == {int} else ""
    if not kind:
        return None
    try:
        column = array(kind, numbers)
    except OverflowError:
        return None  # an int JSON holds exactly but 64 bits do not
    if _SWAP:
        column.byteswap()
    return kind, column.tobytes()


def batch_of(header: dict, payload: memoryview) -> Batch:
    """``{name: (steps, timestamps, values)}`` of a record; :class:`ValueError` if damaged."""
    try:
        return _unpacked(header["series"], payload)
    except (TypeError, KeyError, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"damaged record: {exc}") from None


def _unpacked(series: list, payload: memoryview) -> Batch:
    batch: Batch = {}
    pos = 0
    for name, points, steps_kind, values_kind, times_size in series:
        columns = []
        for kind in (steps_kind, values_kind):
            if kind not in ("q", "d"):
                raise ValueError(f"unknown column kind {kind!r}")
            column = array(kind)
            size = points * column.itemsize
            if pos + size > len(payload):
                raise ValueError("payload shorter than its header says")
            column.frombytes(payload[pos : pos + size])
            if _SWAP:
                column.byteswap()
            columns.append(column.tolist())
            pos += size
        times = bytes(payload[pos + 1 : pos + times_size - 1]).decode("ascii").split('","')
        if len(times) != points:
            raise ValueError("timestamps and points differ in number")
        pos += times_size
        batch[str(name)] = (columns[0], times, columns[1])
    return batch
