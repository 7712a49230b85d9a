#!/usr/bin/env python3
"""Reference GGUF of a model: every quantized tensor dequantized to F32 (or F16).

    ~/.cache/optiq/venv/bin/python bench/gguf_reference.py MODEL.gguf [-o OUT.gguf] [--dtype f32|f16]
        [--force] [--json]

A quantized GGUF's dequantized weights ARE the model (SmolLM2-135M's Q4_1 file, Gemma 3 270M's
Q4_K_M file): this writes them out at full precision, so that llama.cpp's own tools
(llama-imatrix, llama-quantize, llama-perplexity --kl-divergence-base) can use them as the
source and the reference of bench/gguf_compare.py. The metadata (architecture, hyper-parameters,
tokenizer, chat template) is copied key for key with its GGUF value types; general.file_type
becomes ALL_F32 (or MOSTLY_F16) and `optiq.reference.source_sha256` records the source. Tensors
already in F32/F16/BF16 stay bit-identical when the target is F32 (F16 and BF16 widen exactly);
quantized tensors go through gguf-py's numpy dequantizers (gguf.quants.dequantize).

Default output: ~/.cache/optiq/gguf-compare/reference/<source stem>-<sha256[:12]>-<dtype>.gguf,
reused when it exists (the name carries the source's hash). Prints the output path (or a JSON
object with --json). Tensors are streamed one at a time; peak memory is about the largest tensor.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

CACHE = Path(os.environ.get("OPTIQ_CACHE", Path.home() / ".cache/optiq"))
DEFAULT_DIR = CACHE / "gguf-compare" / "reference"


class RefError(Exception):
    """One-line error: '<file>: <what is wrong>; <what to do>'."""


def import_gguf():
    try:
        import numpy as np
        import gguf
    except ImportError as e:
        raise RefError(f"python package missing ({e}); run with ~/.cache/optiq/venv/bin/python "
                       "(scripts/setup.sh makes it)") from e
    return np, gguf


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def source_sha(path: Path) -> str:
    """sha256 of the source; a `<file>.sha256` beside it (newer than the file) is trusted."""
    side = path.with_name(path.name + ".sha256")
    if side.is_file() and side.stat().st_mtime >= path.stat().st_mtime:
        text = side.read_text().split()
        if text and len(text[0]) == 64:
            return text[0]
    return sha256_of(path.resolve())


def default_output(src: Path, sha: str, dtype: str) -> Path:
    return DEFAULT_DIR / f"{src.name.removesuffix('.gguf')}-{sha[:12]}-{dtype}.gguf"


def copy_metadata(reader, writer, gguf, dtype: str, sha: str) -> None:
    """Every key/value of the source except the header fields and those the writer owns."""
    skip = {"general.architecture", "general.file_type", "general.alignment"}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in skip:
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            if len(field.types) > 2:
                raise RefError(f"{name}: nested GGUF arrays are not supported by this copier")
            writer.add_key_value(name, field.contents(), vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(name, field.contents(), vtype)
    align = reader.fields.get("general.alignment")
    if align is not None:
        writer.add_custom_alignment(int(align.contents()))
    ftype = gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16
    writer.add_file_type(int(ftype))
    writer.add_string("optiq.reference.source_sha256", sha)
    writer.add_string("optiq.reference.made_by", "bench/gguf_reference.py (gguf.quants.dequantize)")


def target_type(tensor, gguf, dtype: str):
    """GGML type a tensor is written in: 1-D tensors (norms) and F32 sources stay F32."""
    t = gguf.GGMLQuantizationType
    if dtype == "f32" or len(tensor.shape) < 2 or tensor.tensor_type == t.F32:
        return t.F32
    return t.F16


def as_float(tensor, np, gguf, ttype):
    """The tensor's values in numpy order (rows, cols), as float32 or float16."""
    shape = [int(d) for d in reversed(tensor.shape)]
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
    return values.astype(np.float32 if ttype == gguf.GGMLQuantizationType.F32 else np.float16, copy=False)


def write_reference(src: Path, out: Path, dtype: str, sha: str, progress) -> dict:
    np, gguf = import_gguf()
    try:
        reader = gguf.GGUFReader(src)
    except Exception as e:  # gguf-py raises ValueError/struct errors on damaged files
        raise RefError(f"{src}: not a readable GGUF file ({e}); pass a GGUF v2/v3 model") from e
    arch = reader.fields["general.architecture"].contents()
    tmp = out.with_name(out.name + ".part")
    writer = gguf.GGUFWriter(tmp, arch)
    copy_metadata(reader, writer, gguf, dtype, sha)
    types = []
    n_params = 0
    for t in reader.tensors:
        tt = target_type(t, gguf, dtype)
        types.append(tt)
        shape = [int(d) for d in reversed(t.shape)]
        n = int(np.prod(shape))
        n_params += n
        np_type = np.dtype(np.float32 if tt == gguf.GGMLQuantizationType.F32 else np.float16)
        writer.add_tensor_info(t.name, shape, np_type, n * np_type.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for i, (t, tt) in enumerate(zip(reader.tensors, types)):
        try:
            writer.write_tensor_data(as_float(t, np, gguf, tt))
        except NotImplementedError as e:
            raise RefError(f"{src}: tensor {t.name}: {e}; upgrade the gguf package") from e
        progress(f"  [{i + 1}/{len(reader.tensors)}] {t.name} {t.tensor_type.name} -> {tt.name}")
    writer.close()
    os.replace(tmp, out)
    src_types = sorted({t.tensor_type.name for t in reader.tensors})
    return {"source": str(src), "source_sha256": sha, "out": str(out), "dtype": dtype, "parameters": n_params,
            "tensors": len(reader.tensors), "source_types": src_types, "bytes": out.stat().st_size, "cached": False}


def make_reference(src: Path, out: Path | None = None, dtype: str = "f32", force: bool = False,
                   progress=lambda s: None) -> dict:
    """Write (or reuse) the reference GGUF of `src`; returns a summary dict with its path."""
    if not src.is_file():
        raise RefError(f"{src}: no such model file; fetch it with scripts/fetch_models.py or pass a .gguf path")
    sha = source_sha(src)
    out = out or default_output(src, sha, dtype)
    if out.is_file() and not force:
        return {"source": str(src), "source_sha256": sha, "out": str(out), "dtype": dtype,
                "bytes": out.stat().st_size, "cached": True}
    out.parent.mkdir(parents=True, exist_ok=True)
    progress(f"gguf_reference: dequantizing {src.name} to {dtype.upper()} -> {out}")
    return write_reference(src, out, dtype, sha, progress)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Example: bench/gguf_reference.py ~/.cache/optiq/models/gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("model", type=Path, help="source GGUF (its dequantized weights are the reference model)")
    ap.add_argument("-o", "--out", type=Path, help=f"output GGUF (default: {DEFAULT_DIR}/<stem>-<sha>-<dtype>.gguf)")
    ap.add_argument("--dtype", choices=("f32", "f16"), default="f32",
                    help="type of every 2-D tensor (default f32: exact; f16 rounds the dequantized values)")
    ap.add_argument("--force", action="store_true", help="rewrite the output even if it exists")
    ap.add_argument("--json", action="store_true", help="print a JSON summary instead of the path")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    a = ap.parse_args(argv)
    progress = (lambda s: None) if a.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    try:
        info = make_reference(a.model, a.out, a.dtype, a.force, progress)
    except RefError as e:
        print(f"gguf_reference: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=1) if a.json else info["out"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
