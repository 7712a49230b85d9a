#!/usr/bin/env python3
"""optiq against MLX peers at equal bytes, in MLX format (issue 13, item 6).

Why: optiq's other tables compare its plans with baselines that optiq itself
implements. This one runs the real MLX tools on the same float model, measures
how many weight bytes each one wrote, has optiq make a model of exactly that
many bytes, and scores every output the same way: `optiq eval OUT --ref
SOURCE.gguf` on held-out text (KL divergence to the source model, its standard
error, perplexity, top-1 agreement).

Rows, for each model and budget (bits per weight over all parameters):

  float       the source written by optiq as an unquantized MLX / Hugging Face
              directory (`optiq quantize --plan` with "default": "float");
              the peers start from it. Its row is the floor: the fp16 (Gemma:
              bf16) rounding of the GGUF source.
  dynamic     mlx_lm.quant.dynamic_quant --target-bpw BUDGET: each matrix at a
              low or a high q*/g64 level by a gradient sensitivity; low is the
              largest level whose size is below the budget (4.5 -> q3/q4,
              5.0 -> q4/q5 as mlx-lm's defaults). Its sensitivities are kept
              in WORK/MODEL and reused by the other budgets of those levels.
  gptq        mlx_lm.quant.gptq at the uniform format nearest the budget among
              the bits it packs (2, 4, 8), the embedding (its "fallback") too.
              It sums its Hessian in the model's dtype, which overflows fp16
              (stories260K's lm_head: 9e4 > 65504, KLD 16.6): with
              --peer-compute native it starts from a bf16 float directory, the
              dtype of the Hugging Face checkpoints it is made for; with fp32
              (the default) it sums in fp32 and starts from the same directory
              as the others.
  awq         mlx_lm.quant.awq at the uniform format nearest the budget, the
              embedding too (the model types mlx-lm's AWQ lists: llama, qwen,
              gemma3, ...)
  dwq         mlx_lm.quant.dwq: the uniform format nearest the budget, its
              scales and biases then distilled towards the float model's
              logits (mlx-lm's learning rate; --dwq-samples windows, where
              mlx-lm's default is 2048: with few it barely moves)
  mlx-optiq   mlx-optiq 0.7.7 (PyPI; the project whose article optiq follows)
              `optiq convert --target-bpw BUDGET --candidate-bits ...`, in its
              own venv ~/.cache/optiq/venv-mlx-optiq with mlx-lm 0.31.x, made
              here on first use (with mlx-lm 0.32 it writes uniform 4-bit; a
              uniform output is flagged). Its per-block floor may overshoot the
              budget (stories260K at 4.5: 5.47 by its count); optiq is matched
              to what it wrote. Cost: modules x candidate bits x
              --mlx-optiq-samples forward passes of 512 tokens (SmolLM2 at
              3,4,8 bits: 630 passes a window, ~4.5 s each in fp32 on one
              core here: 48 min).
  optiq@PEER  `optiq auto SOURCE.gguf --size <PEER's bytes>B` (default
              candidates, --optiq-args for more): optiq at that peer's bytes.

Uniform formats by size (fp16 scale and bias per group): bits + 32/group, so
3.0 = q2 g32, 3.5 = q3 g64, 4.0 = q3 g32, 4.5 = q4 g64, 5.0 = q4 g32.

Bytes are counted as optiq's --size counts them (src/plan/budget.h): each
weight matrix as stored (packed codes plus a 16-bit scale and bias per group,
or 2 bytes a weight in float), plus the RMSNorm weights (2 per layer and the
final one) at 2 bytes each; bpw is those bytes over those parameters. (optiq's
plans report the same count; file_bytes in a row is the safetensors' size.)

Calibration: every method gets the same text and the same number of windows
(--calib-samples x --calib-seq tokens): C4 (shared/data/c4) for SmolLM2 and
Gemma, the first 400 kB of shared/data/tinystories for stories260K. mlx-lm's
tools read only their own data, downloaded (dynamic, GPTQ, AWQ: a file from a
GitHub gist; DWQ: a Hugging Face dataset), so this script runs each tool's own
main() with its loader swapped for one that cuts that text into random windows
as the tool's loader does. --peer-calib own runs them untouched; with no
network such a row reads "needs network". mlx-optiq takes the text as a JSONL
mix (--calibration-mix) in 512-token windows.

Evaluation, never on the calibration text: WikiText-2 test for SmolLM2 and
Gemma, TinyStories after the first 400 kB for stories260K. The first peer
output of each model and budget is also scored by mlx-lm itself (fp32) on the
same windows, a cross-check of optiq's reading of mlx-lm's files (mlx_ppl; a
line under the table; equal to 4 digits on stories260K).

stories260K's MLP is 172 wide, which no group size of 32/64/128 divides:
mlx-lm's dynamic, GPTQ and AWQ quantize every matrix and fail on it
("unsupported" rows); DWQ and mlx-optiq leave those matrices in float.
`--models stories-pad` is the same model with its MLP padded with zero
channels to 192 (the same function; its float directory is its source and
reference), on which every peer runs: a quick check of the whole pipeline.

mlx-lm runs on the CPU here (mlx[cpu]), whose wheel's reference BLAS does
about 2 GFLOP/s, so the peers run with Debian's OpenBLAS preloaded
(LD_PRELOAD: ~20x faster here; `apt-get install libopenblas0` if it is missing).
OpenBLAS multiplies only fp32: mlx's CPU products in fp16/bf16 are its own
loops, ~13x slower (a SmolLM2 forward of 512 tokens: 40 s fp16, 3 s fp32). So
by default (--peer-compute fp32) every peer computes in fp32: the mlx-lm tools'
model is cast to fp32 after loading and back to the source's float type before
saving (so the files hold 16-bit scales, biases and norms, as from a 16-bit
run), DWQ trains in fp32 (mlx-lm's default: bf16), and mlx-optiq's running
model is cast to fp32 for its sensitivity probes (its final convert reads the
16-bit source as usual). --peer-compute native runs them as shipped.

Usage:

    bench/mlx_peers.py [--models stories,smollm2,gemma3] [--bpw 4.5,...]
                       [--peers dynamic,gptq,awq,dwq,mlx-optiq] [--threads N]
                       [--calib-samples N] [--calib-seq N] [--chunks N]
                       [--mlx-optiq-bits auto|B,B,..] [--mlx-optiq-samples N]
                       [--dwq-samples N] [--peer-calib ours|own]
                       [--peer-dtype auto|bf16] [--peer-compute fp32|native]
                       [--optiq-args '...']
                       [--redo METHODS|all] [--keep] [--timeout S]
                       [--work ~/.cache/optiq/mlx-peers] [--build build]

e.g. bench/mlx_peers.py --models smollm2 --bpw 3.5,4.5
     bench/mlx_peers.py --models gemma3 --bpw 4.5 --peers dynamic,gptq,awq
     bench/mlx_peers.py --models stories-pad --peers dynamic,gptq,dwq,mlx-optiq \
         --mlx-optiq-samples 2   (a check of the pipeline: ~6 minutes on a busy 2-core machine)

Results are appended to WORK/results.jsonl, one JSON object a row; a row
already there (same model, budget, method and settings) is not run again, so
the script resumes; --redo runs methods again (the last row of a key wins;
peer-specific options such as --dwq-samples are recorded in the row but are
not part of the key: --redo that peer after changing them). A run killed by a
signal is not recorded. The table is printed in markdown. Each run's log is in
WORK/MODEL/logs/; optiq's profile (WORK/MODEL/optiq-NxL.profile.json) and
dynamic_quant's sensitivities are made once per model and reused: a row's
time says "(with profile)" where it made them. Outputs are deleted once scored
(--keep keeps them). Benchmarks, not tests: the peers take minutes (stories260K)
to hours (SmolLM2, Gemma: AWQ and mlx-optiq especially) on a 2-core CPU;
--timeout bounds each run (default 4 h).
"""
import argparse
import glob
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = (ROOT / ".." / "shared").resolve()
CACHE = Path(os.environ.get("OPTIQ_CACHE", Path.home() / ".cache" / "optiq"))
VENV = Path(os.environ.get("OPTIQ_VENV", CACHE / "venv"))
PEER_VENV = CACHE / "venv-mlx-optiq"
MLX_OPTIQ_PIP = ["mlx-optiq==0.7.7", "mlx-lm>=0.31,<0.32", "mlx[cpu]"]
OPENBLAS = ["/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
            "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"]
PEERS = ["dynamic", "gptq", "awq", "dwq", "mlx-optiq"]
LEVELS = [2, 3, 4, 5, 6, 8]  # MLX affine bits
OWN_DATA = {"dynamic": "mlx-lm's calibration file (a GitHub gist)", "gptq": "mlx-lm's calibration file (a GitHub gist)",
            "awq": "mlx-lm's calibration file (a GitHub gist)",
            "dwq": "the Hugging Face dataset allenai/tulu-3-sft-mixture (and the datasets package)",
            "mlx-optiq": "its model from the Hugging Face hub"}
NEEDS_NETWORK = 75           # a driver's exit status when a peer wanted the network
PROG = "mlx_peers"


def die(msg):
    sys.exit(f"{PROG}: {msg}")


# ---------------------------------------------------------------- models


def model_spec(name, work, args):
    """Source GGUF, calibration files, held-out text and default settings of a named model."""
    mdir = work / name
    mdir.mkdir(parents=True, exist_ok=True)
    if name in ("stories", "stories-pad"):
        # stories-pad: the same model with its MLP padded from 172 to 192 zero
        # channels (the same function), its float directory the source.
        src = SHARED / "models/stories260K/stories260K.gguf" if name == "stories" else mdir / "float"
        story_file = SHARED / "data/tinystories/tinystories-valid-head.txt"
        for f in (SHARED / "models/stories260K/stories260K.gguf", story_file):
            if not f.exists():
                die(f"{f}: not found; the shared data is expected at {SHARED} (see shared/README.md)")
        calib_txt, held = mdir / "calib.txt", mdir / "heldout.txt"
        if not calib_txt.exists() or not held.exists():
            text = story_file.read_bytes()  # calibrate on the first 400 kB, evaluate on the rest
            calib_txt.write_bytes(text[:400_000])
            held.write_bytes(text[400_000:])
        calib_optiq = calib_txt
        docs = [p for p in calib_txt.read_text(errors="replace").split("\n") if p.strip()]
        defaults = {"samples": 64, "seq": 256, "ctx": 256, "chunks": 100}
    else:
        file = {"smollm2": "smollm2-135m-instruct-q4_1.gguf", "gemma3": "gemma-3-270m-q4_k_m.gguf"}[name]
        src = CACHE / "models" / file
        if not src.exists():
            die(f"{src}: not found; run scripts/setup.sh (it fetches the models into {CACHE / 'models'})")
        c4 = SHARED / "data/c4/c4-validation-2k.jsonl"
        held = SHARED / "data/wikitext-2-raw/wiki.test.raw"
        for f in (c4, held):
            if not f.exists():
                die(f"{f}: not found; the shared data is expected at {SHARED} (see shared/README.md)")
        calib_optiq = c4
        docs = [json.loads(l)["text"] for l in c4.read_text().splitlines() if l.strip()]
        calib_txt = mdir / "calib.txt"
        if not calib_txt.exists():
            calib_txt.write_text("\n\n".join(docs))
        defaults = {"samples": 16, "seq": 256, "ctx": 512, "chunks": 12}
    calib_jsonl = mdir / "calib-mix.jsonl"  # mlx-optiq's schema: {"domain", "text"}
    if not calib_jsonl.exists():
        with open(calib_jsonl, "w") as f:
            for d in docs:
                f.write(json.dumps({"domain": name + "-calib", "text": d}) + "\n")
    s = {k: getattr(args, a) if getattr(args, a) is not None else v
         for k, v, a in [("samples", defaults["samples"], "calib_samples"), ("seq", defaults["seq"], "calib_seq"),
                         ("ctx", defaults["ctx"], "ctx"), ("chunks", defaults["chunks"], "chunks")]}
    return {"name": name, "src": src, "dir": mdir, "calib_optiq": calib_optiq, "calib_txt": calib_txt,
            "calib_jsonl": calib_jsonl, "held": held, **s}


# ---------------------------------------------------------------- sizes


def safetensors_headers(d):
    """{tensor name: (dtype, shape, bytes)} over every .safetensors file of an MLX directory."""
    files = sorted(glob.glob(str(Path(d) / "*.safetensors")))
    if not files:
        raise RuntimeError(f"{d}: no .safetensors file")
    out = {}
    for f in files:
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            h = json.loads(fh.read(n))
        for k, v in h.items():
            if k != "__metadata__":
                out[k] = (v["dtype"], v["shape"], v["data_offsets"][1] - v["data_offsets"][0])
    return out


def config_of(d):
    c = json.loads((Path(d) / "config.json").read_text())
    return c.get("text_config", c) if "num_hidden_layers" not in c else c


def weight_bytes(d):
    """(weight bytes, parameters, file bytes, format histogram) of an MLX directory, counted as optiq's --size."""
    t = safetensors_headers(d)
    c = config_of(d)
    nbytes = params = 0
    formats = {}
    qcfg = json.loads((Path(d) / "config.json").read_text()).get("quantization", {})
    for name, (dtype, shape, size) in t.items():
        if not name.endswith(".weight") or len(shape) != 2:
            continue
        mod = name[: -len(".weight")]
        if mod + ".scales" in t:
            bits = qcfg.get(mod, qcfg) if isinstance(qcfg.get(mod, qcfg), dict) else qcfg
            b, g = bits.get("bits"), bits.get("group_size")
            if b is None or g is None:
                raise RuntimeError(f"{d}: {mod} is packed but config.json's quantization map gives no bits/group")
            cols = shape[1] * 32 // b
            params += shape[0] * cols
            nbytes += size + t[mod + ".scales"][2] + t.get(mod + ".biases", (0, 0, 0))[2]
            fmt = f"q{b}g{g}"
        else:
            params += shape[0] * shape[1]
            nbytes += 2 * shape[0] * shape[1]
            fmt = "float"
        formats[fmt] = formats.get(fmt, 0) + 1
    fixed = (2 * c["num_hidden_layers"] + 1) * c["hidden_size"]  # RMSNorm weights, as optiq counts them
    files = sum(os.path.getsize(f) for f in glob.glob(str(Path(d) / "*.safetensors")))
    return nbytes + 2 * fixed, params + fixed, files, formats


# ---------------------------------------------------------------- running


def run_logged(cmd, log, env=None, cwd=None, timeout=None, capture=True):
    """Runs cmd with its stderr in log, and its stdout too (at the end when captured, else as it comes);
    returns (returncode, captured stdout, seconds)."""
    t0 = time.time()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        f.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        f.flush()
        try:
            r = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE if capture else f, stderr=f,
                               text=True, env=env, cwd=cwd, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            f.write(out)
            return 124, out, time.time() - t0
        if capture:
            f.write(r.stdout)
    return r.returncode, r.stdout or "", time.time() - t0


def last_json(out):
    lines = [l for l in out.splitlines() if l.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def why_failed(log):
    """The most telling line of a failed run's log: an exception or error line, else the last line."""
    lines = [l.strip() for l in Path(log).read_text(errors="replace").splitlines() if l.strip()]
    lines = [l for l in lines if not l.startswith("$ ")] or ["(no output)"]
    for l in reversed(lines):
        if re.match(r"^([A-Za-z_.]*(Error|Exception)|error|optiq: |.*: error)", l):
            return l[:300]
    return lines[-1][:300]


def openblas():
    for p in OPENBLAS:
        if Path(p).exists():
            return p
    return None


def peer_env(threads):
    env = dict(os.environ)
    lib = openblas()
    if lib:
        env["LD_PRELOAD"] = (lib + " " + env.get("LD_PRELOAD", "")).strip()
    for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        env[k] = str(threads)
    env["HF_HUB_OFFLINE"] = "1"        # no network here: fail at once instead of retrying
    env["HF_DATASETS_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def venv_python():
    py = VENV / "bin" / "python"
    if not py.exists():
        die(f"{py}: not found; run scripts/setup.sh (it makes the venv with mlx[cpu] and mlx-lm)")
    return py


def mlx_optiq_cli(log_dir):
    """mlx-optiq's CLI in its own venv, made on first use; None and a reason if that fails."""
    cli = PEER_VENV / "bin" / "optiq"
    stamp = PEER_VENV / ".mlx-peers-installed"
    if cli.exists() and stamp.exists():
        return cli, None
    print(f"{PROG}: creating {PEER_VENV} for mlx-optiq (pip install {' '.join(MLX_OPTIQ_PIP)}) ...",
          file=sys.stderr, flush=True)
    log = log_dir / "venv-mlx-optiq.log"
    rc, _, _ = run_logged([sys.executable, "-m", "venv", PEER_VENV], log)
    if rc == 0:
        rc, _, _ = run_logged([PEER_VENV / "bin" / "python", "-m", "pip", "install", "-q"] + MLX_OPTIQ_PIP,
                              log.with_suffix(".pip.log"))
        log = log.with_suffix(".pip.log")
    if rc != 0 or not cli.exists():
        return None, f"installing mlx-optiq failed ({log}): {why_failed(log)}"
    stamp.write_text(" ".join(MLX_OPTIQ_PIP) + "\n")
    return cli, None


# ---------------------------------------------------------------- formats


def nearest_uniform(bpw, bits_allowed):
    """(bits, group) of the affine format whose size (bits + 32/group) is nearest bpw; ties: the smaller."""
    cands = sorted((b + 32 / g, b, g) for b in bits_allowed for g in (32, 64, 128))
    return min(cands, key=lambda c: (abs(c[0] - bpw), c[0]))[1:]


def dynamic_levels(bpw):
    """mlx-lm dynamic_quant's low and high bits (group 64) for a budget: low the largest level below it."""
    low = [b for b in LEVELS if b + 0.5 < bpw]
    if not low or low[-1] == LEVELS[-1]:
        return None
    return low[-1], LEVELS[LEVELS.index(low[-1]) + 1]


# ---------------------------------------------------------------- the peers


def run_peer(peer, spec, float_dir, bpw, out, args, log):
    """Runs one peer, writing its model to out; returns a row fragment with 'status' ('ok' or why not)."""
    work = spec["dir"]
    scratch = work / "scratch" / out.name
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    shutil.rmtree(out, ignore_errors=True)
    env = peer_env(args.threads)
    calib = "own" if args.peer_calib == "own" else str(spec["calib_txt"])
    n, L = spec["samples"], spec["seq"]
    res = {"calib": "peer's own data" if calib == "own" else f"{Path(spec['calib_txt']).name} {n}x{L}"}
    extra = {}
    if peer == "mlx-optiq":
        cli, err = mlx_optiq_cli(work / "logs")
        if cli is None:
            return {"status": "failed: " + err}
        bits = args.mlx_optiq_bits
        if bits == "auto":
            lv = dynamic_levels(bpw)
            if lv is None:
                return {"status": f"unsupported: no two levels around {bpw} bpw for --mlx-optiq-bits auto"}
            bits = ",".join(str(b) for b in sorted({lv[0], lv[1], 8}))
        n = args.mlx_optiq_samples or n
        cmd = [cli, "convert", float_dir, "-o", scratch / "convert", "--target-bpw", str(bpw), "--candidate-bits",
               bits, "--group-size", "64", "--n-calibration", str(n), "--skip-baselines"]
        if calib != "own":
            cmd += ["--calibration-mix", spec["calib_jsonl"]]
            res["calib"] = f"{Path(spec['calib_jsonl']).name} {n}x512"
        res["options"] = {"target_bpw": bpw, "candidate_bits": bits, "group_size": 64, "n_calibration": n,
                          "compute": args.peer_compute}
        if args.peer_compute == "fp32":
            # Through the driver, in mlx-optiq's venv: its running model cast to fp32 for the probes.
            job = {"peer": "mlx-optiq", "calib": "", "samples": n, "seq": 512,
                   "argv": [str(c) for c in cmd[1:]], "compute": "fp32"}
            cmd = [PEER_VENV / "bin" / "python", Path(__file__).resolve(), "_driver", json.dumps(job)]
        rc, _, secs = run_logged(cmd, log, env=env, cwd=scratch, timeout=args.timeout, capture=False)
        made = scratch / "convert" / "optiq_mixed"
        if rc == 0 and made.is_dir():
            shutil.move(str(made), str(out))
    else:
        if peer == "dynamic":
            lv = dynamic_levels(bpw)
            if lv is None:
                return {"status": f"unsupported: no two q*/g64 levels around {bpw} bpw"}
            lo, hi = lv
            argv = ["--target-bpw", str(bpw), "--low-bits", lo, "--low-group-size", 64, "--high-bits", hi,
                    "--high-group-size", 64]
            sens = work / (f"dynamic-sensitivities-q{lo}-q{hi}-{n}x{L}-{args.peer_calib}"
                           f"{'-fp32' if args.peer_compute == 'fp32' else ''}.json")
            if sens.exists():
                argv += ["--sensitivities", sens]
            else:
                extra["sensitivities_to"] = str(sens)
                res["profiled_here"] = True
            res["options"] = {"target_bpw": bpw, "low": f"q{lo}g64", "high": f"q{hi}g64"}
        elif peer == "gptq":
            b, g = nearest_uniform(bpw, [2, 4, 8])  # mlx-lm's GPTQ packs 2, 4 and 8 bits only
            argv = ["--bits", b, "--group-size", g, "--fallback-bits", b, "--fallback-group-size", g,
                    "--num-samples", n, "--sequence-length", L]
            res["options"] = {"format": f"q{b}g{g}", "fallback": f"q{b}g{g}"}
            if float_dtype(float_dir) == "float16" and args.peer_compute == "native":
                # mlx-lm's GPTQ sums its Hessian X^T X in the model's dtype: in fp16 it overflows (65504; the
                # lm_head's of stories260K on 8 windows: 9e4 -> KLD 16.6), so it starts from bf16, the dtype of
                # the Hugging Face checkpoints it is meant for.
                float_dir = make_float(args, spec, "bf16")
                res["options"]["input"] = "bf16 float directory (fp16 overflows its Hessian)"
        elif peer == "awq":
            b, g = nearest_uniform(bpw, LEVELS)
            argv = ["--bits", b, "--group-size", g, "--embed-bits", b, "--embed-group-size", g,
                    "--num-samples", n, "--sequence-length", L]
            res["options"] = {"format": f"q{b}g{g}", "embed": f"q{b}g{g}"}
        elif peer == "dwq":
            b, g = nearest_uniform(bpw, LEVELS)
            n = args.dwq_samples or n
            argv = ["--bits", b, "--group-size", g, "--num-samples", n, "--max-seq-length", L + 1,
                    "--batch-size", min(4, n)]
            res["options"] = {"format": f"q{b}g{g}", "learning_rate": "mlx-lm default", "batch": min(4, n),
                              "samples": n}
            res["calib"] = f"{Path(spec['calib_txt']).name} {n}x{L + 1}"
        else:
            raise ValueError(peer)
        argv = ["--model", float_dir, "--mlx-path", out] + argv
        res["options"]["compute"] = args.peer_compute
        job = {"peer": peer, "calib": calib, "samples": n, "seq": L, "argv": [str(a) for a in argv],
               "compute": args.peer_compute, **extra}
        rc, _, secs = run_logged([venv_python(), Path(__file__).resolve(), "_driver", json.dumps(job)], log,
                                 env=env, cwd=scratch, timeout=args.timeout, capture=False)
    shutil.rmtree(scratch, ignore_errors=True)
    res["seconds"] = secs
    if rc < 0:
        res["status"] = f"killed by signal {-rc}"  # not recorded: the next run tries again
    elif rc == NEEDS_NETWORK:
        res["status"] = "needs network: " + OWN_DATA[peer]
    elif rc == 124:
        res["status"] = f"timed out after {args.timeout} s (--timeout)"
    elif rc != 0 or not (out / "config.json").exists():
        why = why_failed(log)
        res["status"], res["log"] = f"failed: {why}", str(log)
        m = re.search(r"divisible by the quantization group size (\d+).*shape \((\d+), ?(\d+)\)", why)
        if m:
            res["status"] = (f"unsupported: it quantizes every matrix in groups of {m.group(1)}, which do not "
                             f"divide a width of this model (mx.quantize got a {m.group(2)}x{m.group(3)} "
                             f"matrix); error: {why}")
    else:
        res["status"] = "ok"
    return res


# ---------------------------------------------------------------- the driver (runs inside the mlx-lm venv)


def driver(job):
    """Runs an mlx-lm quant tool's own main() with its calibration loader reading our text."""
    import socket
    import urllib.error

    socket.setdefaulttimeout(30)
    peer, calib, samples, seq = job["peer"], job["calib"], job["samples"], job["seq"]

    if peer == "xcheck":
        return xcheck(job)
    if peer == "pad":
        return pad_mlp(job)

    import mlx.core as mx
    if peer == "mlx-optiq":
        return mlx_optiq_fp32(job)
    module = {"dynamic": "mlx_lm.quant.dynamic_quant", "gptq": "mlx_lm.quant.gptq", "awq": "mlx_lm.quant.awq",
              "dwq": "mlx_lm.quant.dwq"}[peer]
    mod = __import__(module, fromlist=["main"])

    def windows(tokenizer, length):
        ids = tokenizer.encode(Path(calib).read_text(errors="replace"))
        n = len(ids) // length
        if n < 1:
            raise SystemExit(f"{PROG}: {calib}: fewer than {length} tokens of calibration text")
        return mx.array(ids[: n * length]).reshape(n, length)

    def load_data(tokenizer, num_samples, sequence_length):
        # As mlx_lm.quant.utils.load_data, on our text: random non-overlapping windows.
        t = windows(tokenizer, sequence_length)
        order = mx.random.permutation(t.shape[0])
        k = num_samples if num_samples > 0 else samples
        return t[order[:k]]

    def load_data_dwq(tokenizer, data_path, num_samples, max_seq_length, num_valid_samples=32):
        # As mlx_lm.quant.dwq.load_data: (tokens, offset) pairs for training and validation.
        import numpy as np
        t = windows(tokenizer, max_seq_length)
        perm = np.random.permutation(t.shape[0]).tolist()
        # at least one batch (the script's --batch-size is min(4, windows)): DWQ refuses a smaller set
        nvalid = max(min(4, num_samples), min(num_valid_samples, num_samples // 4))
        rows = lambda idx: [(t[i].tolist(), 0) for i in idx]
        return rows(perm[:num_samples]), rows(perm[num_samples: num_samples + nvalid])

    if calib != "own":
        mod.load_data = load_data_dwq if peer == "dwq" else load_data
    if job.get("compute") == "fp32":
        # mlx's CPU products are fast in fp32 only (OpenBLAS): compute in fp32, save in the source's float type.
        from mlx.utils import tree_flatten
        load0, save0 = mod.load, mod.save
        source = {}

        def load_fp32(*a, **k):
            res = load0(*a, **k)
            model = res[0] if isinstance(res, tuple) else res
            kinds = {}
            for _, v in tree_flatten(model.parameters()):
                if mx.issubdtype(v.dtype, mx.floating):
                    kinds[v.dtype] = kinds.get(v.dtype, 0) + v.size
            source.setdefault("dtype", max(kinds, key=kinds.get))
            model.set_dtype(mx.float32)
            return res

        def save_source_dtype(*a, **k):
            model = a[2] if len(a) > 2 else k["model"]
            model.set_dtype(source.get("dtype", mx.float16))
            return save0(*a, **k)

        mod.load, mod.save = load_fp32, save_source_dtype
        if peer == "dynamic":
            # its budget search counts bytes (nbytes) of the quantized model: fp32 scales and norms would count
            # double, so it searches (and quantizes) the model back in the source's type, as a native run
            threshold0 = mod.estimate_threshold

            def threshold_source_dtype(model, *a, **k):
                model.set_dtype(source.get("dtype", mx.float16))
                return threshold0(model, *a, **k)

            mod.estimate_threshold = threshold_source_dtype
        if peer == "dwq":
            import functools
            mod.dwq_quantize = functools.partial(mod.dwq_quantize, dtype=mx.float32)
    sys.argv = [module] + job["argv"]
    try:
        mod.main()
    except (urllib.error.URLError, socket.gaierror, socket.timeout, ConnectionError) as e:
        print(f"{PROG}: {peer} needs the network: {e!r}", file=sys.stderr)
        sys.exit(NEEDS_NETWORK)
    except ModuleNotFoundError as e:
        if e.name != "datasets":
            raise
        print(f"{PROG}: {peer} needs the network: its default data is a Hugging Face dataset "
              f"(and the datasets package): {e!r}", file=sys.stderr)
        sys.exit(NEEDS_NETWORK)
    except Exception as e:
        text = repr(e)
        if any(s in text for s in ("OfflineModeIsEnabled", "LocalEntryNotFound", "offline mode",
                                   "Couldn't reach", "ConnectionError", "Name or service not known")):
            print(f"{PROG}: {peer} needs the network: {text}", file=sys.stderr)
            sys.exit(NEEDS_NETWORK)
        raise
    if job.get("sensitivities_to"):
        made = glob.glob("*_sensitivities.json")
        if made:
            shutil.move(made[0], job["sensitivities_to"])


def mlx_optiq_fp32(job):
    """mlx-optiq's `optiq convert` (in its venv) with its running model cast to fp32 for the sensitivity probes."""
    import mlx.core as mx
    import optiq.models.llm as llm
    from optiq.cli import cli

    probe0 = llm.analyze_sensitivity_exact

    def probe_fp32(model, *a, **k):
        model.set_dtype(mx.float32)
        return probe0(model, *a, **k)

    llm.analyze_sensitivity_exact = probe_fp32
    cli.main(args=job["argv"], prog_name="optiq")


def pad_mlp(job):
    """Copies a float MLX directory with the MLP's hidden width padded by zero channels to a multiple of
    job["multiple"]: gate/up get zero rows, down zero columns, so the model computes the same function."""
    import mlx.core as mx

    src, dst = Path(job["from"]), Path(job["to"])
    cfg = json.loads((src / "config.json").read_text())
    h = cfg["intermediate_size"]
    h2 = -(-h // job["multiple"]) * job["multiple"]
    w = {}
    for f in sorted(src.glob("*.safetensors")):
        w.update(mx.load(str(f)))
    for k, v in w.items():
        if k.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight")):
            w[k] = mx.pad(v, [(0, h2 - h), (0, 0)])
        elif k.endswith("mlp.down_proj.weight"):
            w[k] = mx.pad(v, [(0, 0), (0, h2 - h)])
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mx.save_safetensors(str(tmp / "model.safetensors"), w, metadata={"format": "mlx"})
    cfg["intermediate_size"] = h2
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for f in src.iterdir():
        if f.name != "config.json" and f.suffix != ".safetensors":
            shutil.copy(f, tmp / f.name)
    tmp.rename(dst)


def xcheck(job):
    """Perplexity by mlx-lm on the windows optiq eval scores (llama.cpp's protocol); prints one JSON line."""
    import math

    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm import load

    model, tok = load(job["model"])
    model.set_dtype(mx.float32)  # fp32 arithmetic, as optiq eval's exact numerics
    ids = tok.encode(Path(job["text"]).read_text(errors="replace"))
    bos = tok.bos_token_id
    add_bos = bos is not None and len(tok.encode("a")) > 0 and tok.encode("a")[0] == bos
    ctx, chunks = job["ctx"], job["chunks"]
    nll, count = 0.0, 0
    for c in range(min(chunks, len(ids) // ctx)):
        w = list(ids[c * ctx:(c + 1) * ctx])
        if add_bos:
            w[0] = bos
        logits = model(mx.array(w)[None])[0].astype(mx.float32)
        first = ctx // 2
        lp = nn.losses.cross_entropy(logits[first:ctx - 1], mx.array(w[first + 1:ctx]), reduction="sum")
        nll += lp.item()
        count += ctx - 1 - first
    print(json.dumps({"mlx_ppl": math.exp(nll / count), "mlx_tokens": count}))


# ---------------------------------------------------------------- optiq


def optiq_eval(args, spec, out, log):
    cmd = [args.optiq, "-t", args.threads, "eval", out, "--ref", spec["src"], "--text", spec["held"], "--ctx",
           spec["ctx"], "--chunks", spec["chunks"], "--json"]
    rc, stdout, secs = run_logged(cmd, log)
    e = last_json(stdout) if rc == 0 else None
    if e is None:
        raise RuntimeError(f"optiq eval failed ({log}): {why_failed(log)}")
    return {"kld": e["kld"], "kld_stderr": e["kld_stderr"], "ppl": e["ppl"], "ref_ppl": e["ref_ppl"],
            "top1": e["top1"], "eval_tokens": e["tokens"], "eval_s": secs}


def make_float(args, spec, dtype="auto"):
    """The float MLX directory the peers start from (cached): optiq's float type (--dtype auto: fp16, bf16 for
    Gemma), or bf16."""
    d = spec["dir"] / ("float" if dtype == "auto" else f"float-{dtype}")
    if (d / "config.json").exists():
        return d
    pad = spec["name"] == "stories-pad"
    src = SHARED / "models/stories260K/stories260K.gguf" if pad else spec["src"]
    made = d.with_name(d.name + "-unpadded") if pad else d
    plan = spec["dir"] / "float.plan.json"
    plan.write_text(json.dumps({"format": "optiq-plan", "version": 1, "default": "float"}) + "\n")
    log = spec["dir"] / "logs" / f"{d.name}.log"
    rc, _, _ = run_logged([args.optiq, "-t", args.threads, "quantize", src, "--plan", plan, "--dtype", dtype, "-o",
                           made, "--force", "--json"], log)
    if rc != 0:
        die(f"{src}: optiq could not write it as a float MLX directory ({log}): {why_failed(log)}")
    if pad:
        job = {"peer": "pad", "calib": "", "samples": 0, "seq": 0, "from": str(made), "to": str(d), "multiple": 64}
        plog = spec["dir"] / "logs" / f"{d.name}-pad.log"
        rc, _, _ = run_logged([venv_python(), Path(__file__).resolve(), "_driver", json.dumps(job)], plog,
                              env=peer_env(args.threads))
        if rc != 0:
            shutil.rmtree(d, ignore_errors=True)
            die(f"{made}: padding its MLP failed ({plog}): {why_failed(plog)}")
    return d


def float_dtype(d):
    c = json.loads((Path(d) / "config.json").read_text())
    return c.get("torch_dtype") or c.get("dtype") or "?"


def run_optiq(args, spec, peer_bytes, out, log):
    tag = re.sub(r"[^A-Za-z0-9,.=-]+", "", args.optiq_args.replace(" ", "_"))
    profile = spec["dir"] / f"optiq-{spec['samples']}x{spec['seq']}{'-' + tag if tag else ''}.profile.json"
    first = not profile.exists()
    cmd = [args.optiq, "-t", args.threads, "auto", spec["src"], "--calib", spec["calib_optiq"], "--calib-samples",
           spec["samples"], "--calib-seq", spec["seq"], "--size", f"{peer_bytes}B", "--cache", profile, "-o", out,
           "--force", "--json"] + (args.optiq_args.split() if args.optiq_args else [])
    rc, stdout, secs = run_logged(cmd, log, timeout=args.timeout)
    a = last_json(stdout) if rc == 0 else None
    if a is None:
        return {"status": f"failed: {why_failed(log)}", "log": str(log), "seconds": secs}
    res = {"status": "ok", "seconds": secs, "profiled_here": first, "calib": f"{Path(spec['calib_optiq']).name} "
           f"{spec['samples']}x{spec['seq']}", "options": {"size": f"{peer_bytes}B", "extra": args.optiq_args}}
    for k in ("predicted_kl", "bytes"):
        if k in a:
            res["plan_" + k] = a[k]
    return res


# ---------------------------------------------------------------- main


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "_driver":  # internal: runs inside the mlx-lm venv
        return driver(json.loads(sys.argv[2]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="The docstring at the top of bench/mlx_peers.py says what each row is, "
                                        "how bytes are counted and how calibration is shared.")
    ap.add_argument("--models", default="stories,smollm2,gemma3", help="stories, smollm2, gemma3, or stories-pad "
                    "(stories260K with its 172-wide MLP padded to 192 zero channels, the same function, so that "
                    "the mlx-lm tools that need 64 | every width run on it: a quick check of the pipeline; its "
                    "source and reference is its own float directory) (default %(default)s)")
    ap.add_argument("--bpw", default="4.5", help="budgets in bits per weight, comma-separated (default %(default)s)")
    ap.add_argument("--peers", default=",".join(PEERS), help="peers to run (default %(default)s)")
    ap.add_argument("--peer-calib", choices=["ours", "own"], default="ours",
                    help="ours: every peer calibrates on the same text as optiq (default); own: each peer's own "
                         "default data (needs the network)")
    ap.add_argument("--calib-samples", type=int, help="calibration windows (default: 64 stories, 16 others)")
    ap.add_argument("--calib-seq", type=int, help="tokens per calibration window (default 256)")
    ap.add_argument("--ctx", type=int, help="evaluation window (default: 256 stories, 512 others)")
    ap.add_argument("--chunks", type=int, help="evaluation windows (default: 100 stories, 12 others)")
    ap.add_argument("--mlx-optiq-bits", default="auto",
                    help="mlx-optiq's --candidate-bits, e.g. 2,3,4,8 (default auto: the two levels around the "
                         "budget, as for dynamic, and 8; its own default is 4,8)")
    ap.add_argument("--mlx-optiq-samples", type=int,
                    help="mlx-optiq's --n-calibration: 512-token windows per probe (default: --calib-samples); "
                         "its cost is modules x candidate bits x windows forward passes")
    ap.add_argument("--dwq-samples", type=int,
                    help="DWQ's training windows (default: --calib-samples; mlx-lm's own default is 2048 of 1025 "
                         "tokens)")
    ap.add_argument("--peer-dtype", choices=["auto", "bf16"], default="auto",
                    help="float type of the directory the peers start from: auto (optiq's: fp16, bf16 for Gemma; "
                         "with --peer-compute native GPTQ always gets bf16) or bf16")
    ap.add_argument("--peer-compute", choices=["fp32", "native"], default="fp32",
                    help="fp32: the peers compute in fp32 (mlx's CPU products in fp16/bf16 are ~13x slower) and save "
                         "in the source's float type; native: as shipped (default %(default)s)")
    ap.add_argument("--optiq-args", default="", help="extra options for optiq auto, e.g. '--methods weighted,gptq'")
    ap.add_argument("--cross-check", choices=["one", "none"], default="one",
                    help="one: mlx-lm's own perplexity of the first peer output of each model and budget (mlx's CPU "
                         "quantized matmul is slow: minutes for SmolLM2)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for optiq and OpenBLAS")
    ap.add_argument("--timeout", type=int, default=4 * 3600, help="seconds one peer or optiq run may take")
    ap.add_argument("--redo", default="", help="methods to run again even if WORK/results.jsonl has them "
                                               "(e.g. dynamic,optiq@dynamic; 'all')")
    ap.add_argument("--keep", action="store_true", help="keep the quantized outputs (default: deleted once scored)")
    ap.add_argument("--work", default=str(CACHE / "mlx-peers"), help="cache directory (default %(default)s)")
    ap.add_argument("--build", default=str(ROOT / "build"), help="optiq's build directory (default %(default)s)")
    args = ap.parse_args()

    args.optiq = Path(args.build) / "optiq"
    if not args.optiq.exists():
        die(f"{args.optiq}: not found; build optiq (cmake -B build && make -C build) or give --build")
    peers = [p for p in args.peers.split(",") if p]
    for p in peers:
        if p not in PEERS:
            die(f"--peers: unknown peer '{p}'; choose from {','.join(PEERS)}")
    models = [m for m in args.models.split(",") if m]
    for m in models:
        if m not in ("stories", "stories-pad", "smollm2", "gemma3"):
            die(f"--models: unknown model '{m}'; choose from stories,stories-pad,smollm2,gemma3")
    try:
        budgets = [float(b) for b in args.bpw.split(",")]
    except ValueError:
        die(f"--bpw '{args.bpw}': expected numbers like 3.5,4.5")
    if any(p != "mlx-optiq" for p in peers):
        venv_python()
    if not openblas():
        print(f"{PROG}: warning: no OpenBLAS at {OPENBLAS[0]}: mlx[cpu] will use its reference BLAS (~2 GFLOP/s); "
              "`apt-get install libopenblas0` makes the peers ~20x faster", file=sys.stderr)
    redo = set(args.redo.split(",")) if args.redo else set()

    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results.jsonl"
    done = {}
    if results.exists():
        for i, line in enumerate(results.read_text().splitlines()):
            try:
                r = json.loads(line)
                done[(r["model"], r["bpw"], r["method"], r["setup"])] = r
            except (json.JSONDecodeError, KeyError):
                die(f"{results}:{i + 1}: not a results row; move the file aside to start afresh")

    def record(r):
        with open(results, "a") as f:
            f.write(json.dumps(r) + "\n")
        done[(r["model"], r["bpw"], r["method"], r["setup"])] = r

    def wanted(key):
        return key not in done or "all" in redo or key[2] in redo

    table = []
    for name in models:
        spec = model_spec(name, work, args)
        setup = f"calib {spec['samples']}x{spec['seq']} {args.peer_calib}, eval {spec['chunks']}x{spec['ctx']}" + \
            (f", optiq auto {args.optiq_args}" if args.optiq_args else "") + \
            (f", peers from {args.peer_dtype}" if args.peer_dtype != "auto" else "") + \
            (", peers compute fp32" if args.peer_compute == "fp32" else "")
        logs = spec["dir"] / "logs"
        float_dir = make_float(args, spec)
        peer_dir = make_float(args, spec, args.peer_dtype)
        base = {"model": name, "setup": setup, "source": str(spec["src"]), "text": str(spec["held"]),
                "date": time.strftime("%Y-%m-%d")}
        key = (name, None, "float", setup)
        if wanted(key):
            print(f"{PROG}: {name} float ...", file=sys.stderr, flush=True)
            wb, params, fb, formats = weight_bytes(float_dir)
            r = {**base, "bpw": None, "method": "float", "status": "ok", "bytes": wb, "params": params,
                 "file_bytes": fb, "bpw_actual": 8 * wb / params, "formats": formats, "seconds": 0.0}
            r.update(optiq_eval(args, spec, float_dir, logs / "float.eval.log"))
            record(r)
        table.append(key)
        for bpw in budgets:
            checked = any(done.get((name, bpw, m, setup), {}).get("mlx_ppl") and not wanted((name, bpw, m, setup))
                          for m in PEERS)
            for peer in peers:
                key = (name, bpw, peer, setup)
                if wanted(key):
                    print(f"{PROG}: {name} {peer} @ {bpw} ...", file=sys.stderr, flush=True)
                    out = spec["dir"] / f"{peer}-{bpw}"
                    r = {**base, "bpw": bpw, "method": peer}
                    r.update(run_peer(peer, spec, peer_dir, bpw, out, args, logs / f"{peer}-{bpw}.log"))
                    if r["status"] == "ok":
                        wb, params, fb, formats = weight_bytes(out)
                        r.update({"bytes": wb, "params": params, "file_bytes": fb, "bpw_actual": 8 * wb / params,
                                  "formats": formats})
                        if peer == "mlx-optiq" and len(formats) == 1 and len(args.mlx_optiq_bits.split(",")) > 1:
                            r["warning"] = ("uniform output: mlx-optiq's mixed allocation did not apply "
                                            "(mlx-lm version?)")
                        r.update(optiq_eval(args, spec, out, logs / f"{peer}-{bpw}.eval.log"))
                        if args.cross_check == "one" and not checked:
                            job = {"peer": "xcheck", "calib": "", "samples": 0, "seq": 0, "model": str(out),
                                   "text": str(spec["held"]), "ctx": spec["ctx"], "chunks": spec["chunks"]}
                            xlog = logs / f"{peer}-{bpw}.xcheck.log"
                            rc, stdout, _ = run_logged([venv_python(), Path(__file__).resolve(), "_driver",
                                                        json.dumps(job)], xlog, env=peer_env(args.threads))
                            x = last_json(stdout) if rc == 0 else None
                            if x:
                                r.update(x)
                                checked = True
                            else:
                                r["xcheck_error"] = f"{xlog}: {why_failed(xlog)}"
                    if not args.keep:
                        shutil.rmtree(out, ignore_errors=True)
                    if r["status"].startswith("killed"):
                        print(f"{PROG}: {name} {peer} @ {bpw}: {r['status']} (not recorded)", file=sys.stderr)
                        continue
                    record(r)
                table.append(key)
                pr = done[key]
                if pr["status"] != "ok":
                    continue
                okey = (name, bpw, f"optiq@{peer}", setup)
                if wanted(okey) or done[okey].get("peer_bytes") != pr["bytes"]:
                    print(f"{PROG}: {name} optiq at {peer}'s {pr['bytes']} bytes ...", file=sys.stderr, flush=True)
                    out = spec["dir"] / f"optiq-{peer}-{bpw}"
                    r = {**base, "bpw": bpw, "method": f"optiq@{peer}", "peer_bytes": pr["bytes"]}
                    r.update(run_optiq(args, spec, pr["bytes"], out, logs / f"optiq-{peer}-{bpw}.log"))
                    if r["status"] == "ok":
                        wb, params, fb, formats = weight_bytes(out)
                        r.update({"bytes": wb, "params": params, "file_bytes": fb, "bpw_actual": 8 * wb / params,
                                  "formats": formats})
                        r.update(optiq_eval(args, spec, out, logs / f"optiq-{peer}-{bpw}.eval.log"))
                    if not args.keep:
                        shutil.rmtree(out, ignore_errors=True)
                    record(r)
                table.append(okey)

    print("| model | method | bytes | bpw | KLD | ± | ppl | top-1 | time |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    notes = []
    for key in table:
        r = done[key]
        label = r["method"] if r["bpw"] is None else f"{r['method']} @ {r['bpw']:g}"
        if r["status"] != "ok":
            st = r["status"]
            m = re.search(r"groups of (\d+).*got a \d+x(\d+) matrix", st)
            cell = (f"unsupported: groups of {m.group(1)} on a {m.group(2)}-wide matrix" if m else
                    "needs network" if st.startswith("needs network") else st.split(":")[0])
            print(f"| {r['model']} | {label} | | | | | | | {cell} (below) |")
            notes.append(f"{r['model']} {label}: {r['status']}" + (f" (log: {r['log']})" if r.get("log") else ""))
            continue
        t = f"{r.get('seconds', 0):.0f} s" + (" (with profile)" if r.get("profiled_here") else "")
        print(f"| {r['model']} | {label} | {r['bytes']:,} | {r['bpw_actual']:.3f} | {r['kld']:.4g} | "
              f"{r['kld_stderr']:.2g} | {r['ppl']:.3f} | {100 * r['top1']:.1f}% | {t} |")
        if r.get("warning"):
            notes.append(f"{r['model']} {label}: {r['warning']}")
        if r.get("mlx_ppl"):
            notes.append(f"{r['model']} {label}: cross-check: mlx-lm's perplexity {r['mlx_ppl']:.4f} on the same "
                         f"{r['mlx_tokens']} tokens, optiq eval's {r['ppl']:.4f} "
                         f"({100 * (r['mlx_ppl'] / r['ppl'] - 1):+.2f}%)")
        if r.get("xcheck_error"):
            notes.append(f"{r['model']} {label}: cross-check failed: {r['xcheck_error']}")
        if r["method"].startswith("optiq@"):
            if r["bytes"] > r["peer_bytes"]:
                notes.append(f"{r['model']} {label}: optiq's output is LARGER than the peer's "
                             f"({r['bytes']} > {r['peer_bytes']} bytes)")
    for n in notes:
        print(f"- {n}")


if __name__ == "__main__":
    main()
