#!/usr/bin/env python3
"""llama.cpp's CPU decode cost per weight, by GGUF type: the speed table optiq's planner uses.

    ~/.cache/optiq/venv/bin/python bench/llamacpp_speed_table.py [--types Q8_0,Q4_K,...]
        [--layers 8] [--shape HIDDEN,HEADS,KV_HEADS,FF[,HEAD_DIM]] [--rounds 3] [--threads 2] [--out-json FILE] [--json]

Why: a GGUF plan is read by llama.cpp, whose decode speed per weight differs by type far more
than the bytes say (Q5_0 unpacks a fifth bit per weight; Q4_0 and IQ4_NL are repacked into
interleaved rows on x86; F16 converts every weight). `optiq plan|auto --target gguf
--max-slowdown` keeps a plan's predicted decode time within a bound of llama.cpp's own mix of
the same size, predicted with ns per weight per type (src/plan/decode_speed.cpp holds the table
measured by this script; `--speed-table FILE` takes this script's JSON instead).

Method: one synthetic Llama model (random F32 weights, every width a multiple of 256 so that no
k-quant falls back: hidden 1024, 16 heads, 4 kv heads, MLP 2816, --layers layers, untied output,
the SmolLM2 tokenizer so llama.cpp can load it), `llama-quantize --pure` to each type (every
matrix, output included, in that one type), then `llama-bench -p 0 -n 32 -t THREADS` on each
file, the files taken round-robin --rounds times so that a slow spell of the shared machine hits
every type alike. ns per weight = median time per token / weights of the matrices read per token
(layers and output; the embedding is a lookup). Attention and norms at these short contexts are
included in that time (a few percent; the same for every type).

On a model's own widths (--shape, e.g. Gemma 3 270M: 640,4,1,2048,256 with --layers 18) a width 256
does not divide makes llama-quantize store a k-quant's matrices as its fallback (Q4_K -> Q5_0,
Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K/IQ4_XS -> IQ4_NL), so such a file holds two types. The
type's own cost is then derived from the matrices that kept it: (time per token - the fallback
matrices' weights x the fallback type's measured cost) / the kept matrices' weights (the
fallback type must be among --types; the row says "derived", with the share of weights it rests
on). The planner applies the same fallbacks, so it looks a k-quant up only for such matrices.
llama.cpp is the build bench/gguf_compare.py uses on this CPU (noamx on AMX CPUs, else native).
Output: a Markdown table on stdout and the JSON under bench/results/<date>-llamacpp-speed-table.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("OPTIQ_CACHE", Path.home() / ".cache/optiq"))
DEFAULT_TYPES = "F16,Q8_0,Q6_K,Q5_K,Q4_K,Q3_K,Q2_K,Q5_1,Q5_0,Q4_1,Q4_0,IQ4_NL,IQ4_XS"
SHAPE = dict(hidden=1024, heads=16, kv_heads=4, ff=2816)
SHAPE_KEYS = ("hidden", "heads", "kv_heads", "ff", "head_dim")


class SpeedError(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def variant() -> str:
    """bench/gguf_compare.py's choice (noamx on AMX CPUs), so the table matches the llama.cpp compared."""
    sys.path.insert(0, str(ROOT / "bench"))
    import gguf_compare
    return gguf_compare.llamacpp_variant()


def tools_dir() -> Path:
    env = dict(os.environ, OPTIQ_LLAMACPP_VARIANT=variant())
    out = subprocess.run([str(ROOT / "bench/llamacpp_build.sh"), "llama-bench", "llama-quantize"],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SpeedError(f"bench/llamacpp_build.sh failed: {out.stderr.strip()[-400:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def tokenizer_source() -> Path:
    p = CACHE / "models" / "smollm2-135m-instruct-q4_1.gguf"
    if not p.exists():
        raise SpeedError(f"{p}: missing; run scripts/setup.sh (it fetches SmolLM2's GGUF)")
    return p


def write_synthetic(out: Path, layers: int, shape: dict, seed: int = 1) -> int:
    """The synthetic F32 model; returns the weights of the matrices a decode step reads."""
    import numpy as np
    import gguf
    src = gguf.GGUFReader(tokenizer_source())
    vocab = len(src.fields["tokenizer.ggml.tokens"].contents())
    h, nh, nkv, ff = shape["hidden"], shape["heads"], shape["kv_heads"], shape["ff"]
    hd = shape.get("head_dim", h // nh)
    tmp = out.with_name(out.name + ".part")
    w = gguf.GGUFWriter(tmp, "llama")
    for name, field in src.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vt = field.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, field.contents(), vt, sub_type=field.types[-1])
        else:
            w.add_key_value(name, field.contents(), vt)
    w.add_name("optiq synthetic speed model")
    w.add_context_length(2048)
    w.add_embedding_length(h)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_dimension_count(hd)
    if hd != h // nh:  # e.g. Gemma 3: 4 heads of 256 on a 640-wide model
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    rng = np.random.default_rng(seed)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float32)

    w.add_tensor("token_embd.weight", mat(vocab, h))
    w.add_tensor("output_norm.weight", np.ones(h, np.float32))
    w.add_tensor("output.weight", mat(vocab, h))
    read = vocab * h
    for i in range(layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(h, np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(h, np.float32))
        for name, r, c in [("attn_q", nh * hd, h), ("attn_k", nkv * hd, h), ("attn_v", nkv * hd, h),
                           ("attn_output", h, nh * hd), ("ffn_gate", ff, h), ("ffn_up", ff, h), ("ffn_down", h, ff)]:
            w.add_tensor(p + name + ".weight", mat(r, c))
            read += r * c
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, out)
    return read


def quantize(tools: Path, src: Path, out: Path, qtype: str) -> None:
    if out.exists():
        return
    tmp = out.with_name(out.name + ".part")
    r = subprocess.run([str(tools / "llama-quantize"), "--pure", str(src), str(tmp), qtype],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SpeedError(f"llama-quantize {qtype}: {r.stderr.strip()[-400:]}")
    os.replace(tmp, out)


def bench(tools: Path, model: Path, threads: int, n: int, reps: int) -> list[float]:
    """ns per generated token, one value per repetition."""
    r = subprocess.run([str(tools / "llama-bench"), "-m", str(model), "-p", "0", "-n", str(n), "-r", str(reps),
                        "-t", str(threads), "-o", "json"], capture_output=True, text=True)
    if r.returncode != 0:
        raise SpeedError(f"llama-bench {model.name}: {r.stderr.strip()[-400:]}")
    rows = json.loads(r.stdout[r.stdout.index("["):r.stdout.rindex("]") + 1])
    for row in rows:
        if row.get("n_gen", 0) > 0:
            return [s / n for s in row["samples_ns"]]
    raise SpeedError(f"llama-bench {model.name}: no tg row")


def read_weights_by_type(path: Path) -> dict[str, int]:
    """Weights of the matrices a decode step reads (every 2-D tensor but the embedding), by stored type."""
    import gguf
    out: dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        if len(t.shape) < 2 or t.name == "token_embd.weight":
            continue
        out[t.tensor_type.name] = out.get(t.tensor_type.name, 0) + int(t.n_elements)
    return out


def derive_mixed(rows: dict, by_type: dict[str, dict[str, int]]) -> None:
    """ns per weight of the types whose files hold fallback matrices (see the docstring), in place."""
    for t, mix in by_type.items():
        others = {k: v for k, v in mix.items() if k != t}
        if not others:
            continue
        own = mix.get(t, 0)
        missing = [k for k in others if k not in rows or rows[k].get("derived")]
        if own == 0 or missing:
            rows[t]["derived"] = False
            rows[t]["note"] = (f"no matrix kept {t} on this shape" if own == 0 else
                               f"fallback types {', '.join(missing)} not measured alone (add them to --types)")
            rows[t]["ns_per_weight"] = None
            continue
        rest = sum(rows[k]["ns_per_weight"] * w for k, w in others.items())
        rows[t]["ns_per_weight_whole_file"] = rows[t]["ns_per_weight"]
        rows[t]["ns_per_weight"] = (rows[t]["ns_per_token"] - rest) / own
        rows[t]["derived"] = True
        rows[t]["share_of_weights"] = own / sum(mix.values())
        rows[t]["fallbacks"] = others


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
        return m.group(1).strip() if m else "unknown CPU"
    except OSError:
        return "unknown CPU"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", default=DEFAULT_TYPES, help=f"GGUF types (default {DEFAULT_TYPES})")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--shape", default="",
                    help="HIDDEN,HEADS,KV_HEADS,FF[,HEAD_DIM] of the synthetic model (default 1024,16,4,2816; "
                         "HEAD_DIM HIDDEN/HEADS), e.g. a model's own widths (Gemma 3 270M: 640,4,1,2048,256 with "
                         "--layers 18); on widths 256 does not divide llama-quantize stores k-quants as their "
                         "fallbacks, and a k-quant's cost is derived from the matrices that kept it (docstring)")
    ap.add_argument("--rounds", type=int, default=3, help="round-robin passes over the files")
    ap.add_argument("--reps", type=int, default=3, help="llama-bench repetitions per pass")
    ap.add_argument("--n-gen", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=CACHE / "llamacpp-speed")
    ap.add_argument("--out-json", type=Path)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quantize-only", action="store_true",
                    help="make the files and stop (benchmark later, on a quiet machine)")
    a = ap.parse_args(argv)
    try:
        types = [t.strip().upper() for t in a.types.split(",") if t.strip()]
        tools = tools_dir()
        a.workdir.mkdir(parents=True, exist_ok=True)
        shape = dict(SHAPE)
        if a.shape:
            try:
                vals = [int(x) for x in a.shape.split(",")]
                if len(vals) not in (4, 5):
                    raise ValueError
                shape = dict(zip(SHAPE_KEYS, vals))
            except ValueError:
                raise SpeedError(f"--shape {a.shape}: expected HIDDEN,HEADS,KV_HEADS,FF[,HEAD_DIM], "
                                 "e.g. 640,4,1,2048,256")
            if min(shape.values()) <= 0 or shape["heads"] % shape["kv_heads"] or (
                    "head_dim" not in shape and shape["hidden"] % shape["heads"]):
                raise SpeedError(f"--shape {a.shape}: kv heads must divide heads, and heads divide hidden "
                                 "unless HEAD_DIM is given")
            if shape.get("head_dim") == shape["hidden"] // shape["heads"] and shape["hidden"] % shape["heads"] == 0:
                del shape["head_dim"]  # the default: same files as the 4-number form
        # The default shape keeps its old file names (cached files stay valid).
        tag = f"l{a.layers}" if shape == SHAPE else f"l{a.layers}-h{shape['hidden']}-{shape['heads']}-{shape['kv_heads']}-f{shape['ff']}"
        if "head_dim" in shape:
            tag += f"-d{shape['head_dim']}"
        src = a.workdir / f"synthetic-{tag}-f32.gguf"
        meta = a.workdir / f"synthetic-{tag}.json"
        if not src.exists() or not meta.exists():
            log(f"writing {src}")
            meta.write_text(json.dumps({"weights_read": write_synthetic(src, a.layers, shape)}))
        weights = json.loads(meta.read_text())["weights_read"]
        files = {}
        for t in types:
            # Files made by another build's llama-quantize are the same bytes; the variant only changes the kernels.
            files[t] = a.workdir / f"synthetic-{tag}-{t}.gguf"
            log(f"quantize {t}")
            quantize(tools, src, files[t], t)
        if a.quantize_only:
            return 0
        samples: dict[str, list[float]] = {t: [] for t in types}
        for r in range(a.rounds):
            for t in types:
                samples[t] += bench(tools, files[t], a.threads, a.n_gen, a.reps)
                log(f"round {r + 1}/{a.rounds} {t}: {1e9 / statistics.median(samples[t]):.1f} tok/s")
        rows = {}
        by_type = {t: read_weights_by_type(files[t]) for t in types}
        for t in types:
            med = statistics.median(samples[t])
            rows[t] = {"ns_per_token": med, "tok_s": 1e9 / med, "ns_per_weight": med / weights,
                       "bytes": files[t].stat().st_size, "samples_ns_per_token": samples[t]}
            if sum(by_type[t].values()) != weights:
                raise SpeedError(f"{files[t]}: {sum(by_type[t].values())} weights in its matrices, expected {weights}")
        derive_mixed(rows, by_type)
        types = [t for t in types if rows[t]["ns_per_weight"] is not None] + \
                [t for t in types if rows[t]["ns_per_weight"] is None]
        today = dt.date.today().isoformat()
        result = {"runtime": "llamacpp-cpu", "date": today, "cpu": cpu_model(), "threads": a.threads,
                  "llama_cpp_variant": variant(),
                  "llama_cpp_tools": str(tools), "shape": shape | {"layers": a.layers},
                  "weights_read_per_token": weights, "n_gen": a.n_gen, "rounds": a.rounds, "reps": a.reps,
                  "load_average": os.getloadavg()[0],
                  "ns_per_weight": {t: rows[t]["ns_per_weight"] for t in types if rows[t]["ns_per_weight"]},
                  "rows": rows}
        out = a.out_json or ROOT / "bench" / "results" / f"{today}-llamacpp-speed-table.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        if a.json:
            print(json.dumps(result, indent=1))
        else:
            base = rows.get("Q8_0", next(iter(rows.values())))["ns_per_weight"]
            print(f"llama.cpp CPU decode ({variant()} build), {cpu_model()}, {a.threads} threads, "
                  f"{weights / 1e6:.1f} M weights read a token")
            print("| type | file MB | tok/s | ns/weight | vs Q8_0 | note |\n|---|---:|---:|---:|---:|---|")
            for t in types:
                r = rows[t]
                if r["ns_per_weight"] is None:
                    print(f"| {t} | {r['bytes'] / 1e6:.1f} | {r['tok_s']:.1f} | | | {r['note']} |")
                    continue
                note = ""
                if r.get("derived"):
                    note = (f"derived from its {r['share_of_weights']:.0%} of the weights (rest: "
                            f"{', '.join(r['fallbacks'])}); whole file {r['ns_per_weight_whole_file']:.4f}")
                print(f"| {t} | {r['bytes'] / 1e6:.1f} | {r['tok_s']:.1f} | {r['ns_per_weight']:.4f} | "
                      f"{r['ns_per_weight'] / base:.2f} | {note} |")
            log(f"saved {out}")
        return 0
    except SpeedError as e:
        print(f"llamacpp_speed_table.py: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
