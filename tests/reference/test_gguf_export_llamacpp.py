"""optiq's GGUF export, loaded by llama.cpp: for a tiny random model of every family optiq supports
(llama, mistral, qwen2, qwen3, phi3, gemma3: Hugging Face directories from tinymodels.py with
byte-level BPE vocabularies) and stories260K (a llama2.c checkpoint with its SentencePiece
tokenizer.bin), `optiq quantize --format gguf --plan` writes a GGUF with a mixed plan: every GGUF
block type (k-quants on 256-wide rows, llama.cpp's fallback on narrower ones: q4_k->q5_0, ...), affine
groups of 32 (written losslessly as Q4_1/Q5_1), and F16. Then, per model:

1. llama.cpp (llama-cpp-python) loads the file and its logits on 32 token ids (F32 KV cache) equal
   `optiq logits` on the same file within llama.cpp's numerics noise. Noise: llama.cpp multiplies
   quantized weights with activations rounded to 8-bit blocks (Q8_0/Q8_1/Q8_K), optiq (exact numerics)
   does not. The noise floor is optiq's own distance between exact numerics and its emulation of
   llama.cpp's rounding (--numerics llamacpp), on the same file; asserted:
     rel_err (||diff||_F / ||ref||_F) <= max(0.02, 3 * floor's rel_err), and every position where the
     top-1 tokens differ is a near-tie: llama.cpp's logits of the two tokens within 2 * floor's max_abs
     (tiny random models have many near-ties; the floor's own top-1 is 87-100% on 32 positions).
   A wrong architecture key, tensor type, row order or norm shows up as a relative error near 1.
2. The same model exported with every matrix in F16 (no activation rounding in llama.cpp's F16
   products beyond fp16 inputs): rel_err <= 2e-3, top-1 identical.
3. llama.cpp tokenizes a text from the exported vocabulary as the source's tokenizer does (HF
   `tokenizers` for the directories, llama.cpp on stories260K.gguf for the llama2.c checkpoint).
4. The first family again with `--method gptq` (4-bit GGUF blocks, GPTQ's error feedback): as 1.

Model directory names avoid "phi3": llama.cpp's vocabulary loader special-cases models named so and
looks up "</s>", which the tiny vocabulary lacks (see test_gguf_family.py). The exporter names the
model after its directory.
Exits 0 (pass), 1 (fail), 77 (llama_cpp, numpy, safetensors or the optiq binary missing).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import refutil

try:
    import numpy as np
    import safetensors.numpy
    import tokenizers
except ImportError as e:
    refutil.skip(f"python package missing ({e})")
refutil.require_llama_cpp()
import llamacpp_ref  # noqa: E402
import tinymodels as tm  # noqa: E402

WIDE = {"hidden_size": 256, "intermediate_size": 256}  # rows of 256: real k-quant blocks too
FAMILIES = {  # directory -> (config, tensors); gemma3: a query_pre_attn_scalar llama.cpp cannot state (folded into the q norm)
    "llama": (lambda: tm.llama_config(**WIDE), tm.llama_tensors),
    "mistral": (lambda: tm.mistral_config(**WIDE), tm.mistral_tensors),
    "qwen2": (lambda: tm.qwen2_config(**WIDE), tm.qwen2_tensors),
    "qwen3": (lambda: tm.qwen3_config(**WIDE), tm.qwen3_tensors),
    "tiny-p3": (lambda: tm.phi3_config(**WIDE), tm.phi3_tensors),
    "gemma3": (lambda: tm.gemma3_config(query_pre_attn_scalar=24), tm.gemma3_tensors),
}
MIX = ["q4_k", "q6_k", "q8_0", "iq4_nl", "q4_0", "q5_1", "q2_k", "q4g32", "q3_k", "iq4_xs", "q5_0", "q5_k", "q4_1",
       "q5g32", "float"]
N_IDS = 32
TEXT = "Once upon a time, the quick brown fox met Lily in the park: café 123!"


def write_family(root: Path, name: str) -> Path:
    make_config, make_tensors = FAMILIES[name]
    c = make_config()
    d = root / name
    d.mkdir(parents=True)
    tensors = make_tensors(c, np.random.default_rng(sum(map(ord, name))))
    (d / "config.json").write_text(json.dumps(c, indent=2))
    safetensors.numpy.save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
                                str(d / "model.safetensors"), metadata={"format": "pt"})
    tm.write_tokenizer(d)
    return d


def modules(info: dict) -> list[tuple[str, int]]:
    """(module path, input width) of every quantizable matrix, from `optiq info --json`."""
    c = info["config"]
    d, ff, hd = c["dim"], c["hidden_dim"], c["head_dim"]
    fused = any(t["name"].endswith("qkv_proj.weight") or ".attn_qkv." in t["name"] for t in info["tensors"])
    per_layer = ["self_attn.qkv_proj"] if fused else ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
    per_layer += ["self_attn.o_proj"] + (["mlp.gate_up_proj"] if fused else ["mlp.gate_proj", "mlp.up_proj"])
    out = [("model.embed_tokens", d)]
    for i in range(c["n_layers"]):
        for m in per_layer:
            out.append((f"model.layers.{i}.{m}", c["n_heads"] * hd if m.endswith("o_proj") else d))
        out.append((f"model.layers.{i}.mlp.down_proj", ff))
    if not c["tied_embeddings"]:
        out.append(("lm_head", d))
    return out


def write_plan(path: Path, mods: list[tuple[str, int]], mixed: bool) -> None:
    t = {}
    for k, (m, cols) in enumerate(mods):
        f = MIX[k % len(MIX)] if mixed and cols % 32 == 0 else "float"
        t[m] = "float" if f == "float" else ({"bits": int(f[1]), "group_size": 32} if "g" in f else {"gguf": f.upper()})
    path.write_text(json.dumps({"format": "optiq-plan", "version": 1, "tensors": t}))


def llama_cpp_logits(gg: Path, ids: list[int]) -> np.ndarray:
    with llamacpp_ref.LlamaRef(gg, n_ctx=64, n_threads=refutil.threads(), kv_type="f32") as ref:
        return ref.logits(ids)


def llama_cpp_tokens(gg: Path) -> list[int]:
    with llamacpp_ref.LlamaRef(gg, n_ctx=64, n_threads=1) as ref:
        return ref.tokenize(TEXT, add_special=False)


def fmt(c: dict) -> str:
    return f"rel_err {c['rel_err']:.3g}, max_abs {c['max_abs']:.3g}, top-1 {100 * c['top1']:.1f}%"


def check_against_floor(res: refutil.Results, what: str, gg: Path, ids: list[int], got: np.ndarray, tmp: Path) -> None:
    """llama.cpp's logits on gg against optiq's (got), within the noise of llama.cpp's activation rounding."""
    try:
        lg = refutil.run_isolated("logits", lambda: llama_cpp_logits(gg, ids), npy=True)
    except Exception as e:  # noqa: BLE001 - a load failure is the finding
        res.check(False, f"{what}: llama.cpp loads and runs the export: {type(e).__name__}: {e}")
        return
    emu = refutil.optiq_logits(gg, ids, tmp, ["--numerics", "llamacpp"])
    floor = refutil.compare_logits(got, emu)
    rtol, tie = max(0.02, 3 * floor["rel_err"]), 2 * floor["max_abs"]
    c = refutil.compare_logits(lg, got, tie_tol=tie)
    res.check(c["rel_err"] <= rtol and c["top1_ties"] == 1.0,
              f"{what}: llama.cpp vs optiq on the export: {fmt(c)}, top-1 counting near-ties "
              f"{100 * c['top1_ties']:.1f}% (noise floor: {fmt(floor)}; tol rel_err {rtol:.3g}, "
              f"near-tie {tie:.3g})")


def check_model(res: refutil.Results, name: str, model: Path, extra: list, tmp: Path, ref_tokens: list[int],
                gptq: bool = False) -> None:
    info = json.loads(refutil.run_optiq(["info", model, *extra, "--json", "--tensors"])[0])
    mods = modules(info)
    ids = [int(i) for i in np.random.default_rng(7).integers(3, info["config"]["vocab_size"], N_IDS)]
    for mixed in (True, False):
        what = f"{name} {'mixed' if mixed else 'f16'}"
        plan, gg = tmp / f"{name}-{mixed}.json", tmp / f"{name}-{'mixed' if mixed else 'f16'}.gguf"
        write_plan(plan, mods, mixed)
        try:
            refutil.run_optiq(["-q", "quantize", model, *extra, "--format", "gguf", "--plan", plan, "-o", gg])
            got = refutil.optiq_logits(gg, ids, tmp)
        except RuntimeError as e:
            res.check(False, f"{what}: optiq exports and runs the GGUF: {str(e).strip().splitlines()[-1][:300]}")
            continue
        if mixed:
            check_against_floor(res, what, gg, ids, got, tmp)
            continue
        try:
            lg = refutil.run_isolated("logits", lambda: llama_cpp_logits(gg, ids), npy=True)
        except Exception as e:  # noqa: BLE001 - a load failure is the finding
            res.check(False, f"{what}: llama.cpp loads and runs the export: {type(e).__name__}: {e}")
            continue
        c = refutil.compare_logits(lg, got)
        res.check(c["rel_err"] <= 2e-3 and c["top1"] == 1.0,
                  f"{what}: llama.cpp vs optiq on the export: {fmt(c)} (tol rel_err 2e-3, top-1 100%)")
        toks = refutil.run_isolated("tokens", lambda: llama_cpp_tokens(gg))
        res.check(toks == ref_tokens, f"{name}: llama.cpp tokenizes the exported vocabulary as the source "
                                      f"({len(toks)} vs {len(ref_tokens)} tokens)")
    if gptq:  # error-compensated blocks are plain GGUF blocks: llama.cpp runs them as any other
        what, gg = f"{name} --method gptq", tmp / f"{name}-gptq.gguf"
        try:
            refutil.run_optiq(["-q", "quantize", model, *extra, "--format", "gguf", "--bits", 4, "--method", "gptq",
                               "--calib", "self", "--calib-samples", 4, "--calib-seq", 32, "-o", gg])
            got = refutil.optiq_logits(gg, ids, tmp)
        except RuntimeError as e:
            res.check(False, f"{what}: optiq exports and runs the GGUF: {str(e).strip().splitlines()[-1][:300]}")
            return
        check_against_floor(res, what, gg, ids, got, tmp)


def main() -> int:
    refutil.optiq_bin()
    res = refutil.Results("test_gguf_export_llamacpp")
    with refutil.temp_dir("optiq-gguf-export-") as td:
        tmp = Path(td)
        for name in FAMILIES:
            d = write_family(tmp, name)
            ref_tokens = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json")).encode(TEXT).ids
            check_model(res, name, d, [], tmp, ref_tokens, gptq=name == next(iter(FAMILIES)))
        stories = refutil.shared_dir() / "models" / "stories260K"
        if (stories / "stories260K.bin").is_file():
            ref_tokens = refutil.run_isolated("tokens", lambda: llama_cpp_tokens(stories / "stories260K.gguf"))
            check_model(res, "stories260K", stories / "stories260K.bin", ["--tokenizer", stories / "tok512.bin"],
                        tmp, ref_tokens)
        else:
            res.skip(f"{stories}/stories260K.bin missing")
    res.finish()


if __name__ == "__main__":
    sys.exit(main())
