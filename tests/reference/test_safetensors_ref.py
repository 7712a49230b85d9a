"""Cross-check optiq's safetensors reader and writer against the safetensors Python package.

1. Writes a file with safetensors.numpy.save_file (random, non-zero tensors of every dtype optiq
   supports that numpy has: F32, F16, U32, I32, I64, U8; odd shapes, a scalar, an empty tensor;
   metadata). tests/reference safetensors_roundtrip (optiq::SafetensorsFile) must list exactly
   those names, dtypes, shapes and bytes (FNV-1a of the raw data) and the metadata.
2. The same program rewrites the file with optiq::SafetensorsWriter; safetensors.numpy.load_file
   and safe_open must read it back with identical values and metadata.
3. A BF16 tensor (numpy has no bfloat16, so the file is made by hand) survives the round trip
   bit for bit, checked through safetensors' own header parsing (safe_open metadata + raw bytes).
4. A file with an F64 tensor is refused with "... has dtype F64, which optiq does not support".
Exits 77 when numpy/safetensors or the safetensors_roundtrip binary is missing.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import refutil

try:
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file
except ImportError as e:  # pragma: no cover
    refutil.skip(f"python package missing ({e}): run scripts/setup.sh (venv ~/.cache/optiq/venv)")

DTYPE_NAMES = {np.float32: "F32", np.float16: "F16", np.uint32: "U32", np.int32: "I32", np.int64: "I64",
               np.uint8: "U8"}


def roundtrip_bin() -> Path:
    bdir = Path(os.environ.get("OPTIQ_BINARY_DIR") or refutil.source_dir() / "build")
    for p in (bdir / "tests" / "safetensors_roundtrip", bdir / "safetensors_roundtrip"):
        if p.is_file() and os.access(p, os.X_OK):
            return p
    refutil.skip(f"safetensors_roundtrip not built under {bdir}")


def fnv1a64(b: bytes) -> str:
    h = 0xCBF29CE484222325
    for x in b:
        h = ((h ^ x) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def random_tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    def nonzero_normal(shape, dtype):
        a = rng.standard_normal(shape).astype(np.float32)
        a[a == 0] = 1e-3
        return a.astype(dtype)

    def nonzero_ints(shape, dtype):
        info = np.iinfo(dtype)
        lo, hi = max(info.min, -(2**40)), min(info.max, 2**40)
        a = rng.integers(lo, hi, size=shape, dtype=np.int64)
        a = a.astype(dtype)
        a[a == 0] = 1
        return a

    return {
        "model.embed_tokens.weight": nonzero_normal((17, 5), np.float32),
        "model.layers.0.self_attn.q_proj.weight": nonzero_normal((3, 5, 7), np.float16),
        "packed.qweight": nonzero_ints((9, 3), np.uint32),
        "ids": nonzero_ints((13,), np.int32),
        "positions": nonzero_ints((2, 3), np.int64),
        "raw": nonzero_ints((11,), np.uint8),
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float16),
        "one": nonzero_normal((1,), np.float32),
    }


def run_roundtrip(exe: Path, src: Path, dst: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), str(src), str(dst)], capture_output=True, text=True, timeout=60)


def parse_listing(out: str):
    tensors, meta = {}, {}
    for line in out.splitlines():
        parts = line.split("\t")
        if parts[0] == "meta":
            meta[parts[1]] = parts[2]
        else:
            name, dtype, shape, h = parts
            tensors[name] = (dtype, tuple(int(x) for x in shape.split(",") if x), h)
    return tensors, meta


def main() -> int:
    exe = roundtrip_bin()
    rng = np.random.default_rng(20240611)
    failures = []
    with tempfile.TemporaryDirectory(prefix="optiq-st-ref-") as tmp:
        tmp = Path(tmp)
        # 1 + 2: python -> optiq -> python.
        tensors = random_tensors(rng)
        metadata = {"format": "pt", "optiq.test": "values \"quoted\" and unicode \u00e9"}
        src, dst = tmp / "py.safetensors", tmp / "optiq.safetensors"
        save_file(tensors, str(src), metadata=metadata)
        r = run_roundtrip(exe, src, dst)
        if r.returncode != 0:
            print(f"FAIL: safetensors_roundtrip on a safetensors-written file: {r.stderr.strip()}")
            return 1
        listed, listed_meta = parse_listing(r.stdout)
        if set(listed) != set(tensors):
            failures.append(f"tensor names differ: optiq {sorted(listed)} vs {sorted(tensors)}")
        for name, a in tensors.items():
            if name not in listed:
                continue
            want = (DTYPE_NAMES[a.dtype.type], tuple(a.shape), fnv1a64(np.ascontiguousarray(a).tobytes()))
            if listed[name] != want:
                failures.append(f"{name}: optiq read {listed[name]}, safetensors wrote {want}")
        if listed_meta != metadata:
            failures.append(f"metadata: optiq read {listed_meta}, expected {metadata}")

        back = load_file(str(dst))
        if set(back) != set(tensors):
            failures.append(f"after optiq write: names {sorted(back)} vs {sorted(tensors)}")
        for name, a in tensors.items():
            b = back.get(name)
            if b is None:
                continue
            if b.dtype != a.dtype or b.shape != a.shape or a.tobytes() != b.tobytes():
                failures.append(f"{name}: optiq wrote {b.dtype}{b.shape}, expected {a.dtype}{a.shape} (or values differ)")
        with safe_open(str(dst), framework="numpy") as f:
            if (f.metadata() or {}) != metadata:
                failures.append(f"metadata after optiq write: {f.metadata()} vs {metadata}")
        header_len = struct.unpack("<Q", dst.read_bytes()[:8])[0]
        if header_len % 8:
            failures.append(f"optiq header length {header_len} is not a multiple of 8")

        # 3: BF16, made by hand (numpy cannot), plus an odd-sized U8 before it.
        bf16 = (rng.standard_normal(21).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        bf16[bf16 == 0] = 0x3F80
        u8 = rng.integers(1, 256, size=3, dtype=np.uint8)
        header = {"a_bytes": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
                  "w": {"dtype": "BF16", "shape": [3, 7], "data_offsets": [3, 45]}}
        hb = json.dumps(header).encode()
        bsrc, bdst = tmp / "bf16.safetensors", tmp / "bf16.out.safetensors"
        bsrc.write_bytes(struct.pack("<Q", len(hb)) + hb + u8.tobytes() + bf16.tobytes())
        r = run_roundtrip(exe, bsrc, bdst)
        if r.returncode != 0:
            failures.append(f"BF16 file refused: {r.stderr.strip()}")
        else:
            listed, _ = parse_listing(r.stdout)
            if listed.get("w") != ("BF16", (3, 7), fnv1a64(bf16.tobytes())):
                failures.append(f"BF16 tensor read as {listed.get('w')}")
            with safe_open(str(bdst), framework="numpy") as f:
                if set(f.keys()) != {"a_bytes", "w"}:
                    failures.append(f"BF16 round trip keys: {list(f.keys())}")
                if not np.array_equal(f.get_tensor("a_bytes"), u8):
                    failures.append("U8 tensor changed in round trip")
            raw = bdst.read_bytes()
            n = struct.unpack("<Q", raw[:8])[0]
            hdr = json.loads(raw[8:8 + n])
            b, e = hdr["w"]["data_offsets"]
            if hdr["w"]["dtype"] != "BF16" or hdr["w"]["shape"] != [3, 7] or raw[8 + n + b:8 + n + e] != bf16.tobytes():
                failures.append("BF16 tensor changed in round trip")

        # 4: F64 is refused with a clear message.
        save_file({"x": rng.standard_normal(4)}, str(tmp / "f64.safetensors"))
        r = run_roundtrip(exe, tmp / "f64.safetensors", tmp / "f64.out.safetensors")
        want = "tensor x has dtype F64, which optiq does not support"
        if r.returncode != 2 or want not in r.stderr:
            failures.append(f"F64 file: rc {r.returncode}, stderr {r.stderr.strip()!r}, expected {want!r}")

    for f in failures:
        print(f"FAIL: {f}")
    if failures:
        return 1
    print(f"ok: {len(tensors)} tensors python->optiq->python, BF16 round trip, F64 refused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
