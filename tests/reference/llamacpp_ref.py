#!/usr/bin/env python3
"""llama.cpp reference harness (through llama-cpp-python's low-level API).

Module and CLI:

    llamacpp_ref.py tokenize MODEL --text FILE [--max-tokens N] [--no-bos] [--out IDS.txt]
    llamacpp_ref.py ppl      MODEL --text FILE [--ctx 512] [--chunks N] [--threads T] [--json]
    llamacpp_ref.py logits   MODEL --ids IDS.txt --out LOGITS.npy [--threads T]
    llamacpp_ref.py bench    MODEL [--threads T] [--n-prompt 512] [--n-gen 128] [--reps 3] [--json]

Ids files are whitespace-separated integers (the format `optiq logits --ids` reads).
Logits files are float32 .npy arrays of shape [n_tokens, n_vocab] (what `optiq logits` writes).

Perplexity protocol (exactly llama.cpp's tools/perplexity/perplexity.cpp, function
`perplexity()`, with the default --ppl-stride 0):

 1. Read the file as bytes; if it ends with '\\n', drop that one final newline (common/arg.cpp, -f).
 2. Tokenize the whole text once: llama_tokenize(add_special=true, parse_special=false), i.e.
    a BOS token is prepended iff the vocab's add_bos flag (tokenizer.ggml.add_bos_token) is set;
    special-token text in the file is tokenized as plain text.
 3. n_chunk_max = n_tokens // ctx (the tail that does not fill a window is dropped); the run is
    refused if n_tokens < 2*ctx. n_chunk = min(--chunks, n_chunk_max) (all if --chunks < 0 / absent).
 4. Chunk i is the non-overlapping window tokens[i*ctx : (i+1)*ctx], evaluated from an empty KV
    cache at positions 0..ctx-1. If add_bos, its first token is replaced by BOS (for chunk 0 it
    already is BOS); otherwise the window is used as is.
 5. first = ctx // 2. The logits at positions j = first .. ctx-2 score the next token
    tokens[i*ctx + j + 1] (original tokens; position 0, the only one ever replaced, is never
    scored). So each chunk scores ctx - first - 1 tokens (255 for ctx 512), the second half
    of the window minus the last position, whose logits predict beyond the window.
 6. nll_j = log(sum_v exp(l_v - max)) + max - l_tok, with exp in float32 and the sum in float64,
    accumulated in double over all scored tokens; ppl = exp(sum nll / count).
    The reported uncertainty is llama.cpp's: sqrt(var(nll)/(count-1)) * ppl.

llama-perplexity's default -b 2048 packs 4 chunks into one batch as 4 sequences; here each chunk is
one batch (n_batch = ctx, i.e. `llama-perplexity -c 512 -b 512`): the same computation per chunk.

Contexts use llama-cpp-python's defaults otherwise: F16 KV cache (llama.cpp's default; `--kv-type
f32` for an F32 one) and flash attention off.

Logits are requested per batch position through llama_batch.logits (the low-level equivalent of
Llama(logits_all=True)): all positions for `logits`, positions >= ctx/2 for `ppl`, the last one for
`bench`.

Speed (`bench`), following llama-bench: prefill = one batch of n_prompt tokens (BOS + random ids,
fixed seed) into an empty KV cache, timed to completion (llama_synchronize); decode = n_gen
single-token decodes starting from an empty KV cache (llama-bench's tg), tokens/s = n / seconds.
One untimed warm-up of each first; median over --reps. n_threads and n_threads_batch are both
set to --threads.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def _llama_cpp():
    import llama_cpp  # imported lazily so that --help works without it
    return llama_cpp


def _silence_llama_logs():
    """Drop llama.cpp's log output (model load chatter on stderr)."""
    llama_cpp = _llama_cpp()
    import ctypes

    @llama_cpp.llama_log_callback
    def _cb(level, text, user_data):  # noqa: ARG001
        pass

    _silence_llama_logs.cb = _cb  # keep a reference alive
    llama_cpp.llama_log_set(_cb, ctypes.c_void_p(0))


_KV_TYPES = {"f32": 0, "f16": 1}  # GGML_TYPE_F32, GGML_TYPE_F16


class LlamaRef:
    """One llama.cpp model + context, driven with explicit batches."""

    def __init__(self, model_path: str | os.PathLike, n_ctx: int = 512, n_threads: int = 2,
                 n_batch: int | None = None, kv_type: str = "f16", quiet: bool = True):
        """kv_type: KV cache element type, "f16" (llama.cpp's default) or "f32"."""
        llama_cpp = _llama_cpp()
        if not Path(model_path).is_file():
            raise FileNotFoundError(f"{model_path}: model file not found")
        if quiet:
            _silence_llama_logs()
        self.n_ctx = int(n_ctx)
        self.n_batch = int(n_batch or n_ctx)
        self.n_threads = int(n_threads)
        # logits_all=False only stops the high-level Llama.eval from keeping an [n_ctx, n_vocab]
        # score matrix; which positions return logits is chosen per token in our own batches.
        self.llm = llama_cpp.Llama(
            model_path=str(model_path), n_ctx=self.n_ctx, n_batch=self.n_batch,
            n_ubatch=min(self.n_batch, 512), n_threads=self.n_threads, n_threads_batch=self.n_threads,
            logits_all=False, verbose=not quiet, flash_attn=False,
            type_k=_KV_TYPES[kv_type], type_v=_KV_TYPES[kv_type])
        self.ctx = self.llm.ctx
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)

    def close(self):
        if getattr(self, "_batch", None) is not None:
            _llama_cpp().llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "llm", None) is not None:
            self.llm.close()
            self.llm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- tokens -----------------------------------------------------------------------------
    def tokenize(self, text: bytes | str, add_special: bool = True) -> list[int]:
        """llama_tokenize(add_special, parse_special=False), as common_tokenize(ctx, text, true)."""
        if isinstance(text, str):
            text = text.encode("utf-8")
        return list(self.llm.tokenize(text, add_bos=add_special, special=False))

    # --- evaluation -------------------------------------------------------------------------
    def clear(self):
        llama_cpp = _llama_cpp()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)

    def decode(self, tokens, pos0: int = 0, logits_from: int | None = 0, want_logits: bool = True):
        """Decode tokens at positions pos0.. in sequence 0 (one llama_decode call).

        Logits are produced for batch positions k >= logits_from (None: only the last one).
        Returns float32 [n_out, n_vocab] (a copy), or None if want_logits is False.
        """
        llama_cpp = _llama_cpp()
        n = len(tokens)
        if n == 0 or n > self.n_batch:
            raise ValueError(f"decode: {n} tokens, batch holds 1..{self.n_batch}")
        if pos0 + n > self.n_ctx:
            raise ValueError(f"decode: positions up to {pos0 + n} exceed n_ctx {self.n_ctx}")
        b = self._batch
        lf = n - 1 if logits_from is None else logits_from
        n_out = 0
        for k, t in enumerate(tokens):
            b.token[k] = int(t)
            b.pos[k] = pos0 + k
            b.n_seq_id[k] = 1
            b.seq_id[k][0] = 0
            out = k >= lf
            b.logits[k] = out
            n_out += out
        b.n_tokens = n
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with {rc} ({n} tokens at pos {pos0})")
        if not want_logits or n_out == 0:
            llama_cpp.llama_synchronize(self.ctx)
            return None
        ptr = llama_cpp.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out * self.n_vocab,)).reshape(n_out, self.n_vocab).copy()

    def logits(self, ids) -> np.ndarray:
        """Full logits [len(ids), n_vocab] for ids at positions 0.. from an empty cache.

        The ids are used as given (no BOS is added)."""
        self.clear()
        out = np.empty((len(ids), self.n_vocab), dtype=np.float32)
        for s in range(0, len(ids), self.n_batch):
            chunk = ids[s:s + self.n_batch]
            out[s:s + len(chunk)] = self.decode(chunk, pos0=s, logits_from=0)
        return out


def read_text_file(path: str | os.PathLike) -> bytes:
    """The text as llama.cpp's -f reads it: raw bytes minus one trailing newline."""
    data = Path(path).read_bytes()
    if data.endswith(b"\n"):
        data = data[:-1]
    return data


def _nll_rows(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, float32 exp, float64 sum (as perplexity.cpp)."""
    m = logits.max(axis=1)
    e = np.exp(logits - m[:, None]).astype(np.float64)
    s = e.sum(axis=1)
    return np.log(s) + m.astype(np.float64) - logits[np.arange(len(targets)), targets].astype(np.float64)


def perplexity(model_path, text_path, ctx: int = 512, chunks: int | None = None, threads: int = 2,
               ref: LlamaRef | None = None, progress: bool = False, kv_type: str = "f16") -> dict:
    """Perplexity of model on text with llama.cpp's protocol (see the module docstring)."""
    own = ref is None
    if own:
        ref = LlamaRef(model_path, n_ctx=ctx, n_threads=threads, n_batch=ctx, kv_type=kv_type)
    try:
        t0 = time.perf_counter()
        tokens = np.asarray(ref.tokenize(read_text_file(text_path), add_special=True), dtype=np.int64)
        t_tok = time.perf_counter() - t0
        if len(tokens) < 2 * ctx:
            raise ValueError(f"{text_path}: {len(tokens)} tokens; perplexity with ctx {ctx} needs at least {2 * ctx}")
        n_chunk_max = len(tokens) // ctx
        n_chunk = n_chunk_max if chunks is None or chunks < 0 else min(chunks, n_chunk_max)
        first = ctx // 2
        nll_sum = 0.0
        nll2_sum = 0.0
        count = 0
        t1 = time.perf_counter()
        for i in range(n_chunk):
            start = i * ctx
            window = tokens[start:start + ctx].copy()
            if ref.add_bos:
                window[0] = ref.bos
            ref.clear()
            lg = ref.decode(window.tolist(), pos0=0, logits_from=first)  # rows: positions first..ctx-1
            nll = _nll_rows(lg[:ctx - 1 - first], tokens[start + first + 1:start + ctx])
            nll_sum += float(nll.sum())
            nll2_sum += float((nll * nll).sum())
            count += ctx - first - 1
            if progress:
                print(f"[{i + 1}]{math.exp(nll_sum / count):.4f}", end=",", file=sys.stderr, flush=True)
        if progress:
            print(file=sys.stderr)
        t_eval = time.perf_counter() - t1
        mean = nll_sum / count
        ppl = math.exp(mean)
        var = nll2_sum / count - mean * mean
        err = math.sqrt(var / (count - 1)) * ppl if var > 0 and count > 1 else float("nan")
        return {
            "model": str(model_path), "text": str(text_path), "ctx": ctx, "chunks": n_chunk,
            "chunks_max": n_chunk_max, "ppl": ppl, "ppl_err": err, "nll": mean, "nll_sum": nll_sum,
            "tokens": count, "tokens_file": int(len(tokens)), "add_bos": ref.add_bos,
            "threads": ref.n_threads, "tokenize_s": t_tok, "eval_s": t_eval,
            "impl": f"llama.cpp via llama-cpp-python {_llama_cpp().__version__}",
        }
    finally:
        if own:
            ref.close()


def dump_logits(model_path, ids, out_path=None, threads: int = 2, kv_type: str = "f16") -> np.ndarray:
    """Full float32 logits [len(ids), n_vocab] for ids (positions 0.., no BOS added); saves .npy if out_path."""
    n_ctx = max(256, -(-len(ids) // 256) * 256)
    with LlamaRef(model_path, n_ctx=n_ctx, n_threads=threads, n_batch=n_ctx, kv_type=kv_type) as ref:
        bad = [t for t in ids if not 0 <= t < ref.n_vocab]
        if bad:
            raise ValueError(f"token ids out of range [0, {ref.n_vocab}): {bad[:5]}")
        lg = ref.logits(list(ids))
    if out_path is not None:
        out_path = Path(out_path)
        tmp = out_path.with_name(out_path.name + ".tmp.npy")
        np.save(tmp, lg)
        os.replace(tmp, out_path)
    return lg


def speed(model_path, threads: int = 2, n_prompt: int = 512, n_gen: int = 128, reps: int = 3,
          seed: int = 1234) -> dict:
    """llama-bench-like prefill and decode tokens/s (median of reps)."""
    llama_cpp = _llama_cpp()
    n_ctx = max(256, -(-(max(n_prompt, n_gen) + 1) // 256) * 256)
    with LlamaRef(model_path, n_ctx=n_ctx, n_threads=threads, n_batch=max(n_prompt, 1)) as ref:
        rng = np.random.default_rng(seed)
        prompt = rng.integers(0, ref.n_vocab, size=n_prompt).tolist()
        if n_prompt:
            prompt[0] = ref.bos
        gen_tok = [int(t) for t in rng.integers(0, ref.n_vocab, size=max(n_gen, 1))]

        def run_pp():
            ref.clear()
            t0 = time.perf_counter()
            ref.decode(prompt, pos0=0, logits_from=None, want_logits=False)
            llama_cpp.llama_synchronize(ref.ctx)
            return n_prompt / (time.perf_counter() - t0)

        def run_tg(n):
            ref.clear()
            t0 = time.perf_counter()
            for i in range(n):
                ref.decode([gen_tok[i]], pos0=i, logits_from=None, want_logits=False)
            llama_cpp.llama_synchronize(ref.ctx)
            return n / (time.perf_counter() - t0)

        pp, tg = [], []
        if n_prompt:
            run_pp()  # warm-up
            pp = [run_pp() for _ in range(reps)]
        if n_gen:
            run_tg(min(n_gen, 8))  # warm-up
            tg = [run_tg(n_gen) for _ in range(reps)]
        return {
            "model": str(model_path), "threads": threads, "n_prompt": n_prompt, "n_gen": n_gen,
            "reps": reps, "prefill_tps": statistics.median(pp) if pp else None, "prefill_runs": pp,
            "decode_tps": statistics.median(tg) if tg else None, "decode_runs": tg,
            "impl": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}",
        }


def tokenize_file(model_path, text_path, max_tokens: int | None = None, add_special: bool = True) -> list[int]:
    with LlamaRef(model_path, n_ctx=256, n_threads=1) as ref:
        ids = ref.tokenize(read_text_file(text_path), add_special=add_special)
    return ids[:max_tokens] if max_tokens else ids


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="llama.cpp reference: tokenize, perplexity, logits, speed",
                                 epilog="See the module docstring for the exact perplexity protocol.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("tokenize", help="token ids of a text file")
    p.add_argument("model")
    p.add_argument("--text", required=True)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--no-bos", action="store_true", help="add_special=false")
    p.add_argument("--out", help="write ids here (whitespace-separated) instead of stdout")

    p = sub.add_parser("ppl", help="perplexity with llama-perplexity's protocol")
    p.add_argument("model")
    p.add_argument("--text", required=True)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=-1, help="at most N chunks (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    p.add_argument("--progress", action="store_true", help="running ppl per chunk on stderr")
    p.add_argument("--kv-type", choices=sorted(_KV_TYPES), default="f16", help="KV cache type (default f16)")

    p = sub.add_parser("logits", help="full logits for a list of token ids")
    p.add_argument("model")
    p.add_argument("--ids", required=True, help="file of whitespace-separated token ids")
    p.add_argument("--out", required=True, help=".npy output, float32 [n_tokens, n_vocab]")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kv-type", choices=sorted(_KV_TYPES), default="f16", help="KV cache type (default f16)")

    p = sub.add_parser("bench", help="prefill and decode tokens/s")
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-prompt", type=int, default=512)
    p.add_argument("--n-gen", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", action="store_true")

    a = ap.parse_args(argv)
    if a.cmd == "tokenize":
        ids = tokenize_file(a.model, a.text, a.max_tokens, add_special=not a.no_bos)
        s = " ".join(map(str, ids)) + "\n"
        if a.out:
            Path(a.out).write_text(s)
            print(f"{len(ids)} tokens -> {a.out}", file=sys.stderr)
        else:
            sys.stdout.write(s)
    elif a.cmd == "ppl":
        r = perplexity(a.model, a.text, ctx=a.ctx, chunks=a.chunks, threads=a.threads, progress=a.progress,
                       kv_type=a.kv_type)
        if a.json:
            print(json.dumps(r))
        else:
            print(f"ppl {r['ppl']:.4f} +/- {r['ppl_err']:.4f}  nll {r['nll']:.6f}  tokens scored {r['tokens']}  "
                  f"chunks {r['chunks']}/{r['chunks_max']}  ctx {r['ctx']}  add_bos {r['add_bos']}  "
                  f"({r['eval_s']:.1f} s, {r['threads']} threads)")
    elif a.cmd == "logits":
        ids = [int(t) for t in Path(a.ids).read_text().split()]
        lg = dump_logits(a.model, ids, a.out, threads=a.threads, kv_type=a.kv_type)
        print(f"logits {lg.shape[0]}x{lg.shape[1]} float32 -> {a.out}", file=sys.stderr)
    elif a.cmd == "bench":
        r = speed(a.model, threads=a.threads, n_prompt=a.n_prompt, n_gen=a.n_gen, reps=a.reps)
        if a.json:
            print(json.dumps(r))
        else:
            print(f"prefill-{a.n_prompt}: {r['prefill_tps']:.1f} tok/s   decode ({a.n_gen}): "
                  f"{r['decode_tps']:.1f} tok/s   threads {a.threads}, median of {a.reps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
