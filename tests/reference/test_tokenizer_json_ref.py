#!/usr/bin/env python3
"""Tokenizer files written by optiq (write_hf_tokenizer, via `optiq quantize` of a GGUF)
against Hugging Face `tokenizers` / `transformers` / mlx-lm.

For SmolLM2-135M (byte-level BPE) and stories260K (SentencePiece BPE):
  * `optiq quantize MODEL.gguf -o OUT --bits 8` writes OUT/tokenizer.json, tokenizer_config.json,
    special_tokens_map.json;
  * tokenizers.Tokenizer.from_file(OUT/tokenizer.json).encode(line).ids (BOS added by the
    written post-processor, as configured) must equal optiq's ids (tokenize_dump MODEL --lines
    --bos) on every line of the first ~200 KB of WikiText-2 wiki.test.raw, and on that text as
    one string. SmolLM2 must be exact. For SentencePiece the written merges are derived from
    piece scores (as HF's converter does) and HF applies them by merge rank while optiq merges by
    score; the two differ only when two different pieces of equal score compete, so >= 99.9% of
    lines must agree (stories260K has distinct scores: 100% is expected);
  * decoding HF's ids gives the line back;
  * transformers.AutoTokenizer.from_pretrained(OUT) loads, has the configured BOS/EOS and encodes
    like `tokenizers`; mlx_lm's tokenizer loader (when installed) picks the matching streaming
    detokenizer, which reproduces the text.
Exit 0 pass, 1 fail, 77 skipped (package, model or binary missing).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refutil  # noqa: E402

try:
    import numpy as np
    import tokenizers
except ImportError as e:
    refutil.skip(f"python package missing ({e})")

TEXT_BYTES = 200_000
MIN_LINE_AGREEMENT = {"smollm2": 1.0, "stories260k": 0.999}


def dump_binary() -> Path:
    b = Path(os.environ.get("OPTIQ_BINARY_DIR") or refutil.source_dir() / "build") / "tests" / "tokenize_dump"
    if not b.is_file():
        refutil.skip(f"{b}: tokenize_dump not built")
    return b


def optiq_line_ids(model: Path, text_path: Path, tmp: Path, lines: bool) -> list:
    out = tmp / "ids.bin"
    cmd = [str(dump_binary()), str(model), str(text_path), "--bos", "--out", str(out)] + (["--lines"] if lines else [])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()}")
    a = np.fromfile(out, dtype=np.int32)
    if not lines:
        return a.tolist()
    res, pos = [], 0
    while pos < len(a):
        n = int(a[pos])
        res.append(a[pos + 1:pos + 1 + n].tolist())
        pos += 1 + n
    return res


def check_model(name: str, res: refutil.Results, text: str, text_path: Path, tmp: Path) -> None:
    model = refutil.model_path(name)
    if not model.is_file():
        res.skip(f"{name}: {model} missing (scripts/fetch_models.py)")
        return
    out = tmp / f"{name}-mlx"
    _, dt = refutil.run_optiq(["quantize", model, "-o", out, "--bits", "8"])
    print(f"  {name}: optiq quantize --bits 8 in {dt:.1f} s", flush=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if not res.check((out / f).is_file(), f"{name}: {f} written"):
            return
    cfg = json.loads((out / "tokenizer_config.json").read_text())

    tk = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    lines = text.split("\n")
    ref = optiq_line_ids(model, text_path, tmp, lines=True)
    res.check(len(ref) == len(lines), f"{name}: optiq tokenized {len(ref)} lines of {len(lines)}")
    t0 = time.perf_counter()
    enc = tk.encode_batch(lines)
    dt = time.perf_counter() - t0
    bad = [i for i, (e, r) in enumerate(zip(enc, ref)) if e.ids != r]
    agree = 1.0 - len(bad) / max(len(lines), 1)
    print(f"  {name}: {len(lines)} lines, {sum(len(r) for r in ref)} tokens; tokenizers {dt:.2f} s; "
          f"{len(bad)} lines differ ({100 * (1 - agree):.3f}%)", flush=True)
    for i in bad[:3]:
        print(f"    line {i}: {lines[i][:100]!r}\n      optiq {ref[i][:30]}\n      hf    {enc[i].ids[:30]}")
    res.check(agree >= MIN_LINE_AGREEMENT[name],
              f"{name}: line agreement {100 * agree:.3f}% >= {100 * MIN_LINE_AGREEMENT[name]:.1f}%")
    if cfg.get("add_bos_token"):
        res.check(all(e.ids[:1] == [tk.token_to_id(cfg["bos_token"])] for e in enc[:50]),
                  f"{name}: BOS {cfg['bos_token']!r} prepended by the post-processor")

    whole = optiq_line_ids(model, text_path, tmp, lines=False)
    res.check(tk.encode(text).ids == whole, f"{name}: whole text ({len(whole)} tokens) equal")

    dec_bad = sum(tk.decode(e.ids) != l for e, l in zip(enc, lines))
    res.check(dec_bad == 0, f"{name}: tokenizers decode gives every line back ({dec_bad} differ)")

    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        res.skip(f"{name}: transformers missing ({e})")
        return
    at = AutoTokenizer.from_pretrained(str(out))
    res.check(at.bos_token == cfg.get("bos_token") and at.eos_token == cfg.get("eos_token"),
              f"{name}: AutoTokenizer loads ({type(at).__name__}, bos {at.bos_token!r}, eos {at.eos_token!r})")
    sample = [l for l in lines if l.strip()][:200]
    res.check(all(at(l)["input_ids"] == tk.encode(l).ids for l in sample),
              f"{name}: AutoTokenizer encodes {len(sample)} lines like tokenizers")

    try:
        from mlx_lm import tokenizer_utils
    except Exception as e:  # noqa: BLE001 (mlx may fail to import for reasons other than ImportError)
        res.skip(f"{name}: mlx_lm not importable ({e})")
        return
    w = tokenizer_utils.load(out)
    det = w.detokenizer
    want = tokenizer_utils.SPMStreamingDetokenizer if name == "stories260k" else \
        tokenizer_utils.BPEStreamingDetokenizer
    res.check(isinstance(det, want), f"{name}: mlx_lm picks {type(det).__name__}")
    para = "\n".join(sample[:20])
    ids = tk.encode(para, add_special_tokens=False).ids  # generated text: no BOS (the detokenizer would print it)
    det.reset()
    for t in ids:
        det.add_token(t)
    det.finalize()
    got = det.text
    res.check(got.strip() == para.strip(), f"{name}: mlx_lm streaming detokenizer gives the text back")


def main() -> None:
    res = refutil.Results("test_tokenizer_json_ref")
    dump_binary()
    refutil.optiq_bin()
    wiki = refutil.data_path("wikitext-2-raw/wiki.test.raw")
    if not wiki.is_file():
        refutil.skip(f"{wiki} missing")
    raw = wiki.read_text(encoding="utf-8")[:TEXT_BYTES]
    text = raw[:raw.rfind("\n")]
    with refutil.temp_dir("optiq-tokjson-") as d:
        tmp = Path(d)
        text_path = tmp / "text.txt"
        text_path.write_bytes(text.encode("utf-8"))
        for name in ("stories260k", "smollm2"):
            check_model(name, res, text, text_path, tmp)
    res.finish()


if __name__ == "__main__":
    main()
