#!/usr/bin/env python3
"""optiq's tokenizers against reference tokenizers, token id for token id.

Text: all of WikiText-2 wiki.test.raw, as one string and line by line.

  stories260K.gguf   (SentencePiece)     vs llama.cpp (llama_cpp, vocab_only)
  stories260K tok512.bin (llama2.c)      vs the same llama.cpp ids
  SmolLM2-135M GGUF  (byte-level, smollm) vs llama.cpp
  Gemma 3 270M GGUF  (SentencePiece)     vs llama.cpp
  tokenizer.json files built from SmolLM2's vocabulary and merges with three
  pre-tokenizers (Digits+ByteLevel = SmolLM2's own, Qwen2's and Llama 3's Split
  regex + ByteLevel)                     vs Hugging Face `tokenizers`

optiq's ids come from the helper binary tokenize_dump (OPTIQ_BINARY_DIR/tests).
llama.cpp's reference ids are cached under ~/.cache/optiq/ref/tokenizer, keyed by
the model file, the text and the llama_cpp version (llama.cpp's tokenizer takes
~40 s over the whole file for the three models; later runs take seconds).
Exit 0 pass, 1 fail, 77 skipped (venv package, model or binary missing).
"""
from __future__ import annotations

import hashlib
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
except ImportError as e:
    refutil.skip(f"python package missing ({e})")

LINE_STEP = 5  # llama.cpp line-by-line comparison: every 5th line (HF: every line)


def dump_binary() -> Path:
    b = Path(os.environ.get("OPTIQ_BINARY_DIR") or refutil.source_dir() / "build") / "tests" / "tokenize_dump"
    if not b.is_file():
        refutil.skip(f"{b}: tokenize_dump not built")
    return b


def optiq_ids(args: list, text_path: Path, bos: bool, lines: bool, tmp: Path) -> np.ndarray:
    out = tmp / "ids.bin"
    cmd = [str(dump_binary())] + [str(a) for a in args] + [str(text_path), "--out", str(out)]
    if bos:
        cmd.append("--bos")
    if lines:
        cmd.append("--lines")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()}")
    print(f"    {p.stderr.strip()}", flush=True)
    return np.fromfile(out, dtype=np.int32)


def split_lines(flat: np.ndarray) -> list[list[int]]:
    """tokenize_dump --lines output: per line, count then ids."""
    res, i = [], 0
    while i < len(flat):
        n = int(flat[i])
        res.append(flat[i + 1:i + 1 + n].tolist())
        i += 1 + n
    return res


def file_key(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def compare(res: refutil.Results, what: str, ref, got, decode=None) -> None:
    ref = list(ref)
    got = list(got)
    n = min(len(ref), len(got))
    a, b = np.asarray(ref[:n], dtype=np.int64), np.asarray(got[:n], dtype=np.int64)
    diff = np.nonzero(a != b)[0]
    first = int(diff[0]) if len(diff) else (n if len(ref) != len(got) else -1)
    ok = first < 0
    msg = f"{what}: {len(ref)} reference tokens, {len(got)} optiq, {len(diff)} mismatching positions"
    if not ok:
        lo = max(0, first - 4)
        msg += f"; first difference at {first}: ref {ref[lo:first + 6]} optiq {got[lo:first + 6]}"
        if decode:
            msg += f" (ref text {decode(ref[lo:first + 6])!r})"
    res.check(ok, msg)


def llama_ref(llama_cpp, model: Path, text: bytes, lines: list[bytes], bos: bool):
    """llama.cpp ids for the whole text and for every LINE_STEP-th line, cached."""
    cache = refutil.cache_dir() / "ref" / "tokenizer"
    key = f"{model.name}-{file_key(model)}-{hashlib.sha256(text).hexdigest()[:16]}-{int(bos)}-{LINE_STEP}-" \
          f"{llama_cpp.__version__}"
    cf = cache / f"{key}.json"
    if cf.is_file():
        d = json.loads(cf.read_text())
        return d["whole"], d["lines"], None
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
    whole = llm.tokenize(text, add_bos=bos, special=False)
    per_line = [llm.tokenize(ln, add_bos=bos, special=False) for ln in lines[::LINE_STEP]]
    print(f"    llama.cpp reference: {time.perf_counter() - t0:.1f} s (cached for next runs)", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cf.with_suffix(".tmp")
    tmp.write_text(json.dumps({"whole": whole, "lines": per_line}))
    os.replace(tmp, cf)
    return whole, per_line, llm


def check_gguf(res, llama_cpp, name: str, model: Path, text_path: Path, text: bytes, lines, tmp: Path,
               extra_args=None):
    if not model.is_file():
        res.skip(f"{name}: {model} missing")
        return
    print(f"  {name}: {model}", flush=True)
    whole, per_line, _ = llama_ref(llama_cpp, model, text, lines, bos=True)
    args = extra_args if extra_args else [model]
    got = optiq_ids(args, text_path, True, False, tmp)
    compare(res, f"{name} whole file (add_bos)", whole, got)
    got_lines = split_lines(optiq_ids(args, text_path, True, True, tmp))[::LINE_STEP]
    ok_lines = sum(1 for r, g in zip(per_line, got_lines) if r == g)
    n_tok = sum(len(r) for r in per_line)
    bad = [i * LINE_STEP for i, (r, g) in enumerate(zip(per_line, got_lines)) if r != g]
    res.check(len(per_line) == len(got_lines) and ok_lines == len(per_line),
              f"{name} line by line: {ok_lines}/{len(per_line)} lines ({n_tok} tokens) equal"
              + (f"; first bad line {bad[0]}" if bad else ""))


def hf_tokenizer_dirs(tmp: Path, smollm: Path):
    """tokenizer.json files built from SmolLM2's GGUF vocabulary with several pre-tokenizers."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    r = GGUFReader(str(smollm))

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    tokens = strings("tokenizer.ggml.tokens")
    merges = strings("tokenizer.ggml.merges")
    f = r.fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[i][0]) for i in f.data]
    vocab = {t: i for i, t in enumerate(tokens)}
    merge_pairs = [tuple(m.split(" ", 1)) for m in merges]
    specials = [t for t, ty in zip(tokens, types) if ty == 3]
    qwen2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    llama3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    variants = {
        "smollm2 (Digits+ByteLevel)": pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
        "qwen2 Split regex": pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(qwen2), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        "llama3 Split regex": pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(llama3), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
    }
    out = {}
    for i, (name, pt) in enumerate(variants.items()):
        tk = Tokenizer(models.BPE(vocab=vocab, merges=merge_pairs))
        tk.pre_tokenizer = pt
        tk.decoder = decoders.ByteLevel()
        tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
        d = tmp / f"hf{i}"
        d.mkdir()
        tk.save(str(d / "tokenizer.json"))
        (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": tokens[0], "add_bos_token": False}))
        out[name] = (d, tk)
    return out


def main() -> None:
    llama_cpp = refutil.require_llama_cpp()
    res = refutil.Results("tokenizer_ref")
    text_path = refutil.data_path("wikitext-2-raw/wiki.test.raw")
    if not text_path.is_file():
        refutil.skip(f"{text_path} missing")
    dump_binary()
    text = text_path.read_bytes()
    lines = text.split(b"\n")
    with refutil.temp_dir() as td:
        tmp = Path(td)
        stories = refutil.model_path("stories260k")
        check_gguf(res, llama_cpp, "stories260K.gguf", stories, text_path, text, lines, tmp)
        tok512 = stories.parent / "tok512.bin"
        if tok512.is_file():
            check_gguf(res, llama_cpp, "stories260K tok512.bin (llama2.c)", stories, text_path, text, lines, tmp,
                       extra_args=["--llama2c", tok512, "--vocab", 512])
        check_gguf(res, llama_cpp, "SmolLM2-135M", refutil.model_path("smollm2"), text_path, text, lines, tmp)
        check_gguf(res, llama_cpp, "Gemma 3 270M", refutil.model_path("gemma3"), text_path, text, lines, tmp)

        smollm = refutil.model_path("smollm2")
        try:
            import tokenizers  # noqa: F401
            import gguf  # noqa: F401
        except ImportError as e:
            res.skip(f"HF tokenizers: package missing ({e})")
            smollm = None
        if smollm is not None and smollm.is_file():
            s = text.decode("utf-8")
            slines = s.split("\n")
            for name, (d, tk) in hf_tokenizer_dirs(tmp, smollm).items():
                print(f"  HF tokenizer.json, {name}", flush=True)
                t0 = time.perf_counter()
                ref = tk.encode(s, add_special_tokens=False).ids
                ref_lines = [e.ids for e in tk.encode_batch(slines, add_special_tokens=False)]
                print(f"    tokenizers reference: {time.perf_counter() - t0:.1f} s", flush=True)
                got = optiq_ids(["--hf", d], text_path, False, False, tmp)
                compare(res, f"HF {name} whole file", ref, got)
                got_lines = split_lines(optiq_ids(["--hf", d], text_path, False, True, tmp))
                bad = [i for i, (r, g) in enumerate(zip(ref_lines, got_lines)) if r != g]
                res.check(len(ref_lines) == len(got_lines) and not bad,
                          f"HF {name} line by line: {len(ref_lines) - len(bad)}/{len(ref_lines)} lines "
                          f"({sum(map(len, ref_lines))} tokens) equal" + (f"; first bad line {bad[0]}" if bad else ""))
        # Chat-template text with special tokens parsed (llama.cpp special=True).
        if refutil.model_path("smollm2").is_file():
            chat = "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2? 日本 café<|im_end|>\n"
            p = tmp / "chat.txt"
            p.write_text(chat)
            llm = llama_cpp.Llama(model_path=str(refutil.model_path("smollm2")), vocab_only=True, verbose=False)
            ref = llm.tokenize(chat.encode(), add_bos=False, special=True)
            cmd = [str(dump_binary()), str(refutil.model_path("smollm2")), str(p), "--special", "--out", str(tmp / "c.bin")]
            subprocess.run(cmd, check=True, capture_output=True)
            compare(res, "SmolLM2 chat text with special tokens", ref, np.fromfile(tmp / "c.bin", dtype=np.int32))
    res.finish()


if __name__ == "__main__":
    main()
