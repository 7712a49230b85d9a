"""Cross-check optiq's GGUF reader and ggml dequantizers against the gguf Python package.

1. Builds a GGUF with gguf.GGUFWriter holding random tensors of every type optiq supports
   (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 quantized by gguf.quants; Q2_K..Q6_K as random
   blocks with sane fp16 scales, since gguf-py can only dequantize those) plus metadata of every
   value type, and checks that tests/reference gguf_dump (optiq::GgufFile + dequantize) reproduces
   the metadata, shapes and gguf.quants.dequantize's floats bit for bit (1 ulp allowed).
2. Does the same on rows sampled from the real model files that exist (SmolLM2 Q4_1, Gemma 3 270M
   Q4_K_M, stories260K F32).
Exits 77 when numpy/gguf or the gguf_dump binary is missing.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gguf_minireader
import refutil

try:
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize, quantize
except ImportError as e:  # pragma: no cover
    refutil.skip(f"python package missing ({e}): run scripts/setup.sh (venv ~/.cache/optiq/venv)")

MAX_ROWS = 48
# gguf.GGUFValueType names -> optiq's gguf_type_name()
GGUF_TYPE_NAMES = {"UINT8": "u8", "INT8": "i8", "UINT16": "u16", "INT16": "i16", "UINT32": "u32", "INT32": "i32",
                   "FLOAT32": "f32", "BOOL": "bool", "STRING": "string", "ARRAY": "array", "UINT64": "u64",
                   "INT64": "i64", "FLOAT64": "f64"}


def dump_bin() -> Path:
    bdir = Path(os.environ.get("OPTIQ_BINARY_DIR") or refutil.source_dir() / "build")
    for p in (bdir / "tests" / "gguf_dump", bdir / "gguf_dump"):
        if p.is_file() and os.access(p, os.X_OK):
            return p
    refutil.skip(f"gguf_dump not built under {bdir} (make gguf_dump)")


def run_dump(path: Path, out: Path) -> tuple[list, dict]:
    p = subprocess.run([str(dump_bin()), str(path), str(out), str(MAX_ROWS)], capture_output=True, text=True,
                       timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"gguf_dump {path} exited {p.returncode}: {p.stderr.strip()}")
    meta, tensors = [], []
    for line in p.stdout.splitlines():
        f = line.split("\t")
        if f[0] == "M":
            meta.append(f[1:])
        elif f[0] == "T":
            tensors.append((f[1], f[2], tuple(int(x) for x in f[3].split(","))))
    data = {}
    buf = out.read_bytes()
    pos = 0
    while pos < len(buf):
        (nl,) = np.frombuffer(buf, np.uint32, 1, pos)
        pos += 4
        name = buf[pos:pos + nl].decode()
        pos += int(nl)
        row, n = np.frombuffer(buf, np.uint64, 2, pos)
        pos += 16
        idx = np.frombuffer(buf, np.uint64, int(n), pos).astype(np.int64)
        pos += 8 * int(n)
        vals = np.frombuffer(buf, np.float32, int(n * row), pos).reshape(int(n), int(row))
        pos += 4 * int(n * row)
        data[name] = (idx, vals)
    return meta, {"tensors": tensors, "data": data}


def ulp_diff(a: np.ndarray, b: np.ndarray) -> int:
    """Max distance in units of last place between two float32 arrays (NaNs must match)."""
    a = np.ascontiguousarray(a, np.float32)
    b = np.ascontiguousarray(b, np.float32)
    if a.shape != b.shape:
        return 1 << 40
    na, nb = np.isnan(a), np.isnan(b)
    if (na != nb).any():
        return 1 << 40
    ia = a.view(np.int32).astype(np.int64)
    ib = b.view(np.int32).astype(np.int64)
    # map to a monotonic integer line (so -0 and +0 are 0 apart)
    ia = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = np.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    d = np.abs(ia - ib)[~na]
    return int(d.max()) if d.size else 0


def compare_file(res: refutil.Results, label: str, path: Path, tmp: Path) -> None:
    meta, got = run_dump(path, tmp / (path.stem + ".bin"))
    # Header parsed independently of optiq (gguf_minireader; gguf.GGUFReader is far too slow on a
    # 262k-token vocabulary), values decoded by gguf.quants.
    h = gguf_minireader.read_header(path)
    res.check([f.key for f in h.fields] == [m[0] for m in meta], f"{label}: metadata keys and order ({len(meta)})")
    bad = []
    for f, m in zip(h.fields, meta):
        if (f.type, f.elem_type) != (m[1], m[2]):
            bad.append(f"{f.key}: type {m[1]}/{m[2]} != {f.type}/{f.elem_type}")
        elif f.type == "array":
            if int(m[3]) != f.count:
                bad.append(f"{f.key}: array length {m[3]} != {f.count}")
        elif f.type == "string":
            if "\\" not in m[4] and len(f.value) <= 100 and m[4] != '"' + f.value.replace('"', '\\"') + '"':
                bad.append(f"{f.key}: {m[4]} != {f.value!r}")
        elif f.type == "bool":
            if m[4] != ("true" if f.value else "false"):
                bad.append(f"{f.key}: {m[4]} != {f.value}")
        elif f.type in ("f32", "f64"):
            if not np.isclose(float(m[4]), f.value, rtol=1e-6, atol=0):
                bad.append(f"{f.key}: {m[4]} != {f.value}")
        elif int(m[4]) != int(f.value):
            bad.append(f"{f.key}: {m[4]} != {f.value}")
    res.check(not bad, f"{label}: metadata values" + (": " + "; ".join(bad[:5]) if bad else ""))

    # tensors: names, types, shapes (optiq: outermost first = reversed ggml ne), values
    want = [(t.name, Q(t.ggml_type).name, tuple(reversed(t.ne))) for t in h.tensors]
    res.check(want == got["tensors"], f"{label}: {len(want)} tensor names/types/shapes")
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    worst, worst_name, checked = 0, "", 0
    for t in h.tensors:
        if t.name not in got["data"]:
            continue
        idx, vals = got["data"][t.name]
        qt = Q(t.ggml_type)
        row = int(t.ne[0])
        bs, ts = gguf.constants.GGML_QUANT_SIZES[qt]
        n_el = int(np.prod(t.ne))
        start = h.data_offset + t.offset
        raw = mm[start:start + n_el // bs * ts].reshape(-1, row // bs * ts)
        ref = dequantize(np.ascontiguousarray(raw[idx]), qt).reshape(len(idx), row)
        d = ulp_diff(ref, vals)
        checked += vals.size
        if d > worst:
            worst, worst_name = d, t.name
    res.check(worst <= 1, f"{label}: dequantized values of {checked} elements within 1 ulp"
              f" (worst {worst} ulp{' in ' + worst_name if worst_name else ''})")
    if worst == 0:
        print(f"  info {label}: bit-identical", flush=True)


def check_reader_agrees(res: refutil.Results, path: Path) -> None:
    """gguf.GGUFReader and gguf_minireader see the same header (validates the mini reader)."""
    r = gguf.GGUFReader(str(path))
    h = gguf_minireader.read_header(path)
    a = [(f.name, GGUF_TYPE_NAMES[f.types[0].name]) for f in r.fields.values() if not f.name.startswith("GGUF.")]
    b = [(f.key, f.type) for f in h.fields]
    ta = [(t.name, int(t.tensor_type), [int(x) for x in t.shape], int(t.data_offset)) for t in r.tensors]
    tb = [(t.name, t.ggml_type, t.ne, h.data_offset + t.offset) for t in h.tensors]
    res.check(a == b and ta == tb, f"{path.name}: gguf_minireader agrees with gguf.GGUFReader")


def random_kquant(rng: np.random.Generator, qtype, n_blocks: int) -> np.ndarray:
    """Random k-quant blocks whose fp16 scale fields are sane (small positive normals)."""
    bs, ts = gguf.constants.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_blocks, ts), dtype=np.uint8)

    def f16(lo, hi):
        return rng.uniform(lo, hi, size=(n_blocks, 1)).astype(np.float16).view(np.uint8)

    if qtype == Q.Q2_K:  # scales[16] qs[64] d dmin
        blocks[:, 80:82] = f16(1e-3, 0.05)
        blocks[:, 82:84] = f16(1e-3, 0.05)
    elif qtype == Q.Q3_K:  # hmask[32] qs[64] scales[12] d
        blocks[:, 108:110] = f16(-0.05, 0.05)
    elif qtype in (Q.Q4_K, Q.Q5_K):  # d dmin scales[12] ...
        blocks[:, 0:2] = f16(1e-3, 0.05)
        blocks[:, 2:4] = f16(1e-3, 0.05)
    elif qtype == Q.Q6_K:  # ql[128] qh[64] scales[16] d
        blocks[:, 208:210] = f16(-0.05, 0.05)
    return blocks


def build_synthetic(path: Path) -> None:
    rng = np.random.default_rng(1234)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("optiq synthetic")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 65000)
    w.add_int16("t.i16", -32000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 0.1)
    w.add_uint64("t.u64", 1 << 62)
    w.add_int64("t.i64", -(1 << 62))
    w.add_float64("t.f64", 1.0 / 3.0)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo \"world\"")
    w.add_array("t.arr_str", ["a", "", "ccc"])
    w.add_array("t.arr_i32", [1, -2, 3])
    w.add_array("t.arr_f32", [0.5, -1.25])
    w.add_array("t.arr_bool", [True, False])
    w.add_array("t.arr_empty", [])

    def norm(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    w.add_tensor("f32_1d", norm(37))
    w.add_tensor("f32_3d", norm(2, 3, 5))
    w.add_tensor("f16", norm(7, 13).astype(np.float16))
    bf = quantize(norm(5, 11), Q.BF16)
    w.add_tensor("bf16", bf, raw_shape=bf.shape, raw_dtype=Q.BF16)
    for qt, shapes in [(Q.Q8_0, [(3, 96), (2, 3, 64)]), (Q.Q4_0, [(5, 64)]), (Q.Q4_1, [(3, 160)]),
                       (Q.Q5_0, [(4, 96)]), (Q.Q5_1, [(3, 32)])]:
        for k, s in enumerate(shapes):
            q = quantize(norm(*s) * 0.1, qt)
            w.add_tensor(f"{qt.name.lower()}_{k}", q, raw_shape=q.shape, raw_dtype=qt)
    for qt, rows, cols in [(Q.Q2_K, 3, 256), (Q.Q3_K, 5, 512), (Q.Q4_K, 3, 768), (Q.Q5_K, 2, 256),
                           (Q.Q6_K, 7, 256)]:
        b = random_kquant(rng, qt, rows * cols // 256).reshape(rows, -1)
        w.add_tensor(qt.name.lower(), b, raw_shape=b.shape, raw_dtype=qt)
    # a bigger tensor so that dequantize() takes the multi-threaded path
    big = quantize(norm(300, 512) * 0.02, Q.Q8_0)
    w.add_tensor("q8_0_big", big, raw_shape=big.shape, raw_dtype=Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    dump_bin()
    res = refutil.Results("test_gguf_dequant")
    with refutil.temp_dir() as td:
        tmp = Path(td)
        syn = tmp / "synthetic.gguf"
        build_synthetic(syn)
        check_reader_agrees(res, syn)
        compare_file(res, "synthetic", syn, tmp)
        for name in ("stories260k", "smollm2", "gemma3"):
            p = refutil.model_path(name)
            if p.exists():
                compare_file(res, name, p, tmp)
            else:
                res.skip(f"{name}: {p} missing (scripts/fetch_models.py)")
    res.finish()


if __name__ == "__main__":
    main()
