"""A small, fast GGUF header parser for the reference tests.

gguf.GGUFReader builds numpy objects for every string of a 262k-token vocabulary, which takes
tens of seconds; this reads the same header in well under a second. It returns plain Python
data so that the tests can compare it with optiq's gguf_dump output.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TYPE_NAMES = ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"]
_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NP = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8",
       12: "<f8"}


@dataclass
class Field:
    key: str
    type: str
    elem_type: str = "-"
    count: int = -1
    value: object = None


@dataclass
class Tensor:
    name: str
    ggml_type: int
    ne: list
    offset: int


@dataclass
class Header:
    version: int
    fields: list = field(default_factory=list)
    tensors: list = field(default_factory=list)
    data_offset: int = 0


def read_header(path: Path) -> Header:
    buf = Path(path).read_bytes() if Path(path).stat().st_size < (1 << 20) else None
    mm = np.memmap(path, dtype=np.uint8, mode="r") if buf is None else np.frombuffer(buf, np.uint8)
    pos = 0

    def take(fmt):
        nonlocal pos
        size = struct.calcsize(fmt)
        v = struct.unpack_from(fmt, mm, pos)[0]
        pos += size
        return v

    def string():
        nonlocal pos
        n = take("<Q")
        s = bytes(mm[pos:pos + n]).decode("utf-8", errors="replace")
        pos += n
        return s

    def value(t):
        nonlocal pos
        if t == 8:
            return string()
        if t == 9:
            et = take("<I")
            n = take("<Q")
            if et == 8:
                return et, n, [string() for _ in range(n)]
            if et == 9:
                return et, n, [value(9) for _ in range(n)]
            a = np.frombuffer(mm, _NP[et], n, pos)
            pos += a.nbytes
            return et, n, a
        return take(_FMT[t])

    assert bytes(mm[:4]) == b"GGUF"
    pos = 4
    h = Header(version=take("<I"))
    n_tensors = take("<Q")
    n_kv = take("<Q")
    for _ in range(n_kv):
        key = string()
        t = take("<I")
        v = value(t)
        if t == 9:
            h.fields.append(Field(key, "array", TYPE_NAMES[v[0]], v[1], v[2]))
        else:
            h.fields.append(Field(key, TYPE_NAMES[t], value=v))
    for _ in range(n_tensors):
        name = string()
        nd = take("<I")
        ne = [take("<Q") for _ in range(nd)]
        h.tensors.append(Tensor(name, take("<I"), ne, take("<Q")))
    align = next((f.value for f in h.fields if f.key == "general.alignment"), 32)
    h.data_offset = (pos + align - 1) // align * align
    return h
