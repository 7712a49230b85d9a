#!/usr/bin/env python3
"""GGUF: optiq against llama.cpp's imatrix quants at equal file size, measured by llama.cpp (issue 12).

    ~/.cache/optiq/venv/bin/python bench/gguf_compare.py MODEL [--types Q3_K_M,Q4_K_M,Q5_K_M,IQ4_XS]
        [--chunks 20] [--calib-chunks 64] [--optiq [LABEL=]FILE.gguf ...] [--optiq-auto build/optiq]
        [--speed-table FILE.json] [--optiq-tag TAG] [--json] [--dry-run | --self-check]

MODEL is `smollm2` (SmolLM2-135M-Instruct Q4_1), `gemma3` (Gemma 3 270M Q4_K_M) or a .gguf path.
The model's dequantized weights are the reference (bench/gguf_reference.py writes them as an F32
GGUF). Everything below runs in llama.cpp's own tools (bench/llamacpp_build.sh builds them from
the llama-cpp-python sdist pinned in requirements.txt), so both sides are measured the same way:

  1. llama-imatrix on the reference, over the first --calib-chunks windows of --ctx tokens of the
     C4 calibration text (default 64 x 512 = 32,768 tokens; --no-ppl, output tensor not collected:
     llama.cpp's defaults). Cached.
  2. llama-quantize --imatrix from the F32 reference to each of --types. Cached.
  3. llama-perplexity on wiki.test.raw, --ctx 512, the first --chunks windows: once on the
     reference with --kl-divergence-base (saves its log-probabilities), then with --kl-divergence
     for every other file: perplexity, Δppl against the reference, KL(reference || file) mean and
     99th percentile, and "Same top p" (top-1 agreement), all over the same scored tokens.
  4. llama-bench decode speed: tg --tg-n tokens from an empty cache, --tg-reps repetitions,
     --threads threads, CPU; the table shows the fastest repetition (the least disturbed by other
     processes; the JSON keeps every sample and the 1-minute load average before the run).

Extra files: --optiq FILE.gguf (repeatable, `LABEL=FILE` to name the row) are evaluated the same
way; --optiq-auto BINARY runs `optiq auto REFERENCE --format gguf --size <bytes>B ...` at each
baseline's tensor bytes (when the binary's `auto --help` has --format; otherwise the rows say
'optiq GGUF export not available') and evaluates those, so the table reads llama.cpp against
optiq at equal size. --speed-table passes `--speed-table FILE` (bench/llamacpp_speed_table.py's
JSON: llama.cpp's decode cost per type, for the plan's --max-slowdown bound) to optiq auto; the
optiq files' names then carry the table's hash. --optiq-tag TAG names the optiq profile and files
(optiq-auto-TAG.profile.json, ...-optiq-auto-TAG-...): a run with other optiq settings or another
optiq build then starts its own profile instead of reusing (or overwriting) an earlier run's.
--optiq-model source gives optiq auto the source GGUF instead of the F32 reference (the same
weights, in the source's quantized storage), so that the `source` candidate (--optiq-args
"--candidates ...,source") can keep a tensor's own blocks; its profile and files carry '-src'.

Sizes: "file MB" is the whole file (10^6 bytes); bpw = tensor data bytes x 8 / parameters, over
every tensor in the file (norms, embeddings included; llama.cpp's own "BPW" of a loaded model).

Output: a Markdown table on stdout (or the JSON object with --json) and the JSON under
bench/results/<date>-gguf-compare-<model>.json (--out-json to change, --no-save to skip).
Big intermediates (reference, imatrix, quants, base log-probabilities: Gemma 3's 262k vocabulary
makes ~134 MB per chunk) live in ~/.cache/optiq/gguf-compare/<model>/ (--workdir). Progress goes
to stderr. Evaluations are cached there too (keyed by file size/mtime and protocol), so an
interrupted run resumes; --fresh ignores that cache.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import gguf_reference  # noqa: E402

CACHE = Path(os.environ.get("OPTIQ_CACHE", Path.home() / ".cache/optiq"))
SHARED = Path(os.environ.get("OPTIQ_SHARED", ROOT.parent / "shared"))
MODELS = {
    "smollm2": CACHE / "models" / "smollm2-135m-instruct-q4_1.gguf",
    "gemma3": CACHE / "models" / "gemma-3-270m-q4_k_m.gguf",
}
DEFAULT_TYPES = "Q3_K_M,Q4_K_M,Q5_K_M,IQ4_XS"
TOOLS = ("llama-bench", "llama-perplexity", "llama-quantize", "llama-imatrix")
EVAL_VERSION = 1  # bump when the parsing or the protocol of an evaluation changes


class CompareError(Exception):
    """One-line error: '<file>: <what is wrong>; <what to do>'."""


def log(msg: str) -> None:
    print(f"gguf_compare: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Command lines


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Details:\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("model", help="smollm2, gemma3, or a GGUF path (its dequantized weights are the reference)")
    ap.add_argument("--types", default=DEFAULT_TYPES,
                    help=f"llama-quantize types made with the imatrix (default {DEFAULT_TYPES})")
    ap.add_argument("--text", type=Path, default=SHARED / "data/wikitext-2-raw/wiki.test.raw",
                    help="evaluation text (default ../shared/data/wikitext-2-raw/wiki.test.raw)")
    ap.add_argument("--ctx", type=int, default=512, help="context of every window, imatrix and perplexity (512)")
    ap.add_argument("--chunks", type=int, default=20,
                    help="perplexity windows of --ctx tokens from the start of --text (default 20: 5,100 scored tokens)")
    ap.add_argument("--calib", type=Path, default=SHARED / "data/c4/c4-validation-2k.txt",
                    help="calibration text for llama-imatrix (default ../shared/data/c4/c4-validation-2k.txt)")
    ap.add_argument("--calib-chunks", type=int, default=64,
                    help="imatrix windows of --ctx tokens from the start of --calib (default 64: 32,768 tokens)")
    ap.add_argument("--threads", type=int, default=2, help="threads for every llama.cpp tool (default 2)")
    ap.add_argument("--tg-n", type=int, default=32, help="llama-bench decode tokens (default 32)")
    ap.add_argument("--tg-reps", type=int, default=5,
                    help="llama-bench repetitions (default 5; the table shows the fastest, the JSON all of them)")
    ap.add_argument("--no-speed", action="store_true", help="skip llama-bench")
    ap.add_argument("--redo-speed", action="store_true",
                    help="measure speed again even when cached (e.g. once the machine is idle)")
    ap.add_argument("--no-source-row", action="store_true",
                    help="skip the source file's row (same weights in their quantized storage: llama.cpp's "
                         "numerics floor)")
    ap.add_argument("--optiq", action="append", default=[], metavar="[LABEL=]FILE.gguf",
                    help="extra GGUF file to evaluate the same way (repeatable)")
    ap.add_argument("--optiq-auto", type=Path, metavar="OPTIQ_BINARY",
                    help="run `optiq auto ... --format gguf --size <baseline tensor bytes>B` at every baseline's size")
    ap.add_argument("--optiq-args", default="",
                    help="extra arguments for optiq auto, one string (e.g. \"--method exact --select predicted\")")
    ap.add_argument("--speed-table", type=Path, metavar="FILE.json",
                    help="optiq auto --speed-table: llama.cpp's decode cost per GGUF type "
                         "(bench/llamacpp_speed_table.py's JSON) for the plans' --max-slowdown bound")
    ap.add_argument("--optiq-tag", default="", metavar="TAG",
                    help="names the optiq profile and files (optiq-auto-TAG...), so other optiq settings or "
                         "builds do not reuse an earlier run's")
    ap.add_argument("--optiq-model", choices=("reference", "source"), default="reference",
                    help="what optiq auto quantizes: the F32 reference (default) or the source GGUF itself, the "
                         "same weights in their quantized storage (for the `source` candidate, which keeps a "
                         "tensor's source blocks; its profile and files are named with '-src')")
    ap.add_argument("--optiq-calib", type=Path, default=SHARED / "data/c4/c4-validation-2k.jsonl",
                    help="optiq auto --calib (default the same C4 text, .jsonl); its --calib-samples/--calib-seq "
                         "are --calib-chunks/--ctx, so both sides calibrate on as many tokens")
    ap.add_argument("--optiq-calib-samples", type=int,
                    help="optiq auto --calib-samples (default --calib-chunks; fewer profile faster)")
    ap.add_argument("--llamacpp-bin", type=Path, help="directory with llama.cpp's tools (default: bench/llamacpp_build.sh)")
    ap.add_argument("--workdir", type=Path, help="intermediates (default ~/.cache/optiq/gguf-compare/<model>)")
    ap.add_argument("--out-json", type=Path, help="results JSON (default bench/results/<date>-gguf-compare-<model>.json)")
    ap.add_argument("--no-save", action="store_true", help="do not write the results JSON")
    ap.add_argument("--fresh", action="store_true", help="re-run every evaluation (keeps reference, imatrix, quants)")
    ap.add_argument("--json", action="store_true", help="print the JSON object instead of the Markdown table")
    ap.add_argument("--dry-run", action="store_true", help="print the commands that would run, run nothing")
    ap.add_argument("--self-check", action="store_true",
                    help="check inputs, tools and the output parsers on canned llama.cpp output; runs no model")
    a = ap.parse_args(argv)
    for name in ("ctx", "chunks", "calib_chunks", "threads", "tg_n", "tg_reps"):
        if getattr(a, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0")
    a.types = [t.strip() for t in a.types.split(",") if t.strip()]
    if a.optiq_tag and not re.fullmatch(r"[A-Za-z0-9_.-]+", a.optiq_tag):
        ap.error("--optiq-tag: letters, digits, '_', '.', '-' only")
    return a


def model_source(name: str) -> tuple[str, Path]:
    """(short name, path) of MODEL."""
    if name in MODELS:
        return name, MODELS[name]
    p = Path(name).expanduser()
    if p.suffix != ".gguf":
        raise CompareError(f"{name}: unknown model; give {', '.join(MODELS)} or a .gguf path")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", p.name.removesuffix(".gguf")), p


def check_input(path: Path, what: str, hint: str) -> None:
    if not path.is_file():
        raise CompareError(f"{path}: {what} not found; {hint}")


# ---------------------------------------------------------------------------------------------
# llama.cpp tools


def llamacpp_variant() -> str:
    """native, or noamx on AMX CPUs (llama.cpp's AMX path crashes there, see bench/llamacpp_build.sh)."""
    if os.environ.get("OPTIQ_LLAMACPP_VARIANT"):
        return os.environ["OPTIQ_LLAMACPP_VARIANT"]
    flags = ""
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        pass
    return "noamx" if " amx" in flags else "native"


def build_hint(variant: str) -> str:
    return f"build them with: OPTIQ_LLAMACPP_VARIANT={variant} bench/llamacpp_build.sh (once; ~15 min on 2 cores)"


def find_tools(bindir: Path | None, variant: str, build: bool) -> Path:
    """The bin/ directory with all of TOOLS; builds them (bench/llamacpp_build.sh) when allowed."""
    if bindir is None:
        if not build:
            found = sorted(CACHE.glob(f"llamacpp-tools/*-{variant}-*/build/bin"))
            found = [d for d in found if all((d / t).is_file() for t in TOOLS)]
            if not found:
                raise CompareError(f"{CACHE / 'llamacpp-tools'}: no {variant} build of {', '.join(TOOLS)}; "
                                   + build_hint(variant))
            return found[-1]
        log(f"locating llama.cpp tools ({variant}; bench/llamacpp_build.sh builds them if missing: minutes)")
        env = dict(os.environ, OPTIQ_LLAMACPP_VARIANT=variant)
        r = subprocess.run([str(ROOT / "bench/llamacpp_build.sh"), *TOOLS], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise CompareError(f"bench/llamacpp_build.sh: failed ({tail}); " + build_hint(variant))
        bindir = Path(r.stdout.strip().splitlines()[-1])
    missing = [t for t in TOOLS if not (bindir / t).is_file()]
    if missing:
        raise CompareError(f"{bindir}: missing {', '.join(missing)}; " + build_hint(variant))
    return bindir


def llamacpp_version() -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(r"llama[-_]cpp[-_]python==(\S+)", line)
        if m:
            return m.group(1)
    return "unknown"


class Runner:
    """Runs commands, logs them (the exact command lines go into the JSON), or only prints them."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        self.commands: list[str] = []

    def cached(self, log_file: Path) -> None:
        """Records the command of a step whose result is cached (first line of its log: '$ cmd')."""
        try:
            first = log_file.read_text(errors="replace").split("\n", 1)[0]
        except OSError:
            return
        if first.startswith("$ "):
            self.commands.append(first[2:] + "   # cached")

    def run(self, cmd: list, what: str, log_file: Path | None = None) -> str:
        line = shlex.join(str(c) for c in cmd)
        self.commands.append(line)
        if self.dry_run:
            print(line)
            return ""
        log(f"{what} ..." + (f" (output: {log_file})" if log_file else ""))
        t0 = time.time()
        if log_file is None:
            r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, errors="replace")
            out = r.stdout if r.returncode == 0 else r.stdout + r.stderr  # stdout alone: llama-bench's JSON
        else:  # streamed to the log, so a long run can be followed with tail -f
            with open(log_file, "w") as f:
                f.write(f"$ {line}\n")
                f.flush()
                r = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT)
            out = log_file.read_text(errors="replace")
        if r.returncode != 0:
            tail = " | ".join(ln.strip() for ln in out.strip().splitlines()[-3:])
            where = f" (full output: {log_file})" if log_file else ""
            raise CompareError(f"{Path(str(cmd[0])).name}: exit {r.returncode} for {what}: {tail}{where}")
        log(f"{what}: done in {time.time() - t0:.0f} s")
        return out


# ---------------------------------------------------------------------------------------------
# GGUF file facts


def gguf_facts(path: Path) -> dict:
    """File bytes, tensor data bytes, parameter count, tensors per GGML type."""
    _, gguf = gguf_reference.import_gguf()
    r = gguf.GGUFReader(path)
    types: dict[str, int] = {}
    tensor_bytes = params = 0
    for t in r.tensors:
        tensor_bytes += int(t.n_bytes)
        params += int(t.n_elements)
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return {"file_bytes": path.stat().st_size, "tensor_bytes": tensor_bytes, "parameters": params,
            "bpw": tensor_bytes * 8 / params, "tensor_types": dict(sorted(types.items()))}


# ---------------------------------------------------------------------------------------------
# Parsing llama.cpp's output


def _num(pattern: str, text: str, what: str, group: int = 1) -> float:
    m = re.search(pattern, text, re.MULTILINE)
    if not m:
        raise CompareError(f"llama-perplexity output: no '{what}' line; see the log next to the file")
    return float(m.group(group))


PM = r"\s*(?:±|\+/-)\s*"  # llama.cpp prints both '±' and '+/-'


def parse_base_ppl(out: str) -> dict:
    """llama-perplexity (with or without --kl-divergence-base): 'Final estimate: PPL = x +/- y'."""
    m = re.search(r"Final estimate: PPL = ([0-9.]+)" + PM + r"([0-9.]+)", out)
    if not m:
        raise CompareError("llama-perplexity output: no 'Final estimate: PPL' line; see the log next to the file")
    return {"ppl": float(m.group(1)), "ppl_err": float(m.group(2))}


def parse_kld(out: str) -> dict:
    """llama-perplexity --kl-divergence summary."""
    f = r"([-0-9.eE+]+)"
    return {
        "ppl": _num(r"^Mean PPL\(Q\)\s*:\s*" + f, out, "Mean PPL(Q)"),
        "ppl_err": _num(r"^Mean PPL\(Q\)\s*:\s*" + f + PM + f, out, "Mean PPL(Q)", 2),
        "ppl_base": _num(r"^Mean PPL\(base\)\s*:\s*" + f, out, "Mean PPL(base)"),
        "ppl_ratio": _num(r"^Mean PPL\(Q\)/PPL\(base\)\s*:\s*" + f, out, "Mean PPL(Q)/PPL(base)"),
        "ppl_ratio_err": _num(r"^Mean PPL\(Q\)/PPL\(base\)\s*:\s*" + f + PM + f, out, "Mean PPL(Q)/PPL(base)", 2),
        "kld_mean": _num(r"^Mean\s+KLD:\s*" + f, out, "Mean KLD"),
        "kld_err": _num(r"^Mean\s+KLD:\s*" + f + PM + f, out, "Mean KLD", 2),
        "kld_p99": _num(r"^99\.0%\s+KLD:\s*" + f, out, "99.0% KLD"),
        "kld_median": _num(r"^Median\s+KLD:\s*" + f, out, "Median KLD"),
        "kld_max": _num(r"^Maximum KLD:\s*" + f, out, "Maximum KLD"),
        "top1_pct": _num(r"^Same top p:\s*" + f, out, "Same top p"),
        "top1_err": _num(r"^Same top p:\s*" + f + PM + f, out, "Same top p", 2),
    }


def parse_bench(out: str) -> dict:
    """llama-bench -o json: the tg row's mean and standard deviation."""
    try:
        rows = json.loads(out[out.index("["):out.rindex("]") + 1])
    except ValueError as e:
        raise CompareError(f"llama-bench output: not JSON ({e}); run it by hand to see why") from e
    for r in rows:
        if r.get("n_gen", 0) > 0 and r.get("n_prompt", 0) == 0:
            return {"tg_tok_s": r["avg_ts"], "tg_std": r.get("stddev_ts", 0.0), "tg_samples": r.get("samples_ts", [])}
    raise CompareError("llama-bench output: no tg row; run it by hand to see why")


# ---------------------------------------------------------------------------------------------
# The pipeline


class Compare:
    def __init__(self, a, name: str, source: Path, tools: Path | None, runner: Runner):
        self.a, self.name, self.source, self.tools, self.run = a, name, source, tools, runner
        self.work = a.workdir or (CACHE / "gguf-compare" / name)
        self.cache_file = self.work / "evaluations.json"
        self.evals = {} if a.fresh or not self.cache_file.is_file() else json.loads(self.cache_file.read_text())

    def tool(self, t: str) -> Path:
        return (self.tools / t) if self.tools else Path(t)

    # -- inputs ----------------------------------------------------------------------------------
    def reference(self) -> Path:
        if self.run.dry_run:
            sha = gguf_reference.source_sha(self.source)
            out = gguf_reference.default_output(self.source, sha, "f32")
            print(shlex.join([sys.executable, str(ROOT / "bench/gguf_reference.py"), str(self.source)]))
            return out
        info = gguf_reference.make_reference(self.source, progress=lambda s: None if "[" in s else log(s))
        log(f"reference: {info['out']}{' (cached)' if info['cached'] else ''}")
        return Path(info["out"])

    def imatrix(self, ref: Path) -> Path:
        a = self.a
        out = self.work / f"imatrix-{a.calib.stem}-{a.calib_chunks}x{a.ctx}.gguf"
        if out.is_file():
            log(f"imatrix: {out} (cached)")
            self.run.cached(self.work / (out.name + ".log"))
            return out
        self.run.run([self.tool("llama-imatrix"), "-m", ref, "-f", a.calib, "-c", a.ctx, "--chunks", a.calib_chunks,
                      "-t", a.threads, "--no-ppl", "-o", out], f"llama-imatrix ({a.calib_chunks} x {a.ctx} tokens "
                     f"of {a.calib.name})", self.work / (out.name + ".log"))
        return out

    def quantize(self, ref: Path, imatrix: Path, qtype: str) -> Path:
        out = self.work / f"{self.name}-{qtype}-imat-{imatrix.stem.removeprefix('imatrix-')}.gguf"
        if out.is_file():
            log(f"{qtype}: {out} (cached)")
            self.run.cached(self.work / (out.name + ".log"))
            return out
        tmp = out.with_name(out.name + ".part")
        self.run.run([self.tool("llama-quantize"), "--imatrix", imatrix, ref, tmp, qtype, self.a.threads],
                     f"llama-quantize {qtype}", self.work / (out.name + ".log"))
        if not self.run.dry_run:
            os.replace(tmp, out)
        return out

    def kld_base(self, ref: Path) -> tuple[Path, dict]:
        a = self.a
        base = self.work / f"kld-base-{a.text.stem}-{a.chunks}x{a.ctx}.bin"
        key = self.eval_key(ref, "base")
        if base.is_file() and key in self.evals:
            log(f"KLD base: {base} (cached)")
            self.run.cached(self.work / (base.name + ".log"))
            return base, self.evals[key]
        tmp = base.with_name(base.name + ".part")
        out = self.run.run([self.tool("llama-perplexity"), "-m", ref, "-f", a.text, "-c", a.ctx, "--chunks", a.chunks,
                            "-t", a.threads, "--kl-divergence-base", tmp],
                           f"llama-perplexity reference + KLD base ({a.chunks} x {a.ctx})", self.work / (base.name + ".log"))
        if self.run.dry_run:
            return base, {}
        os.replace(tmp, base)
        res = parse_base_ppl(out)
        self.save_eval(key, res)
        return base, res

    # -- evaluation --------------------------------------------------------------------------------
    def eval_key(self, path: Path, what: str) -> str:
        st = path.stat() if path.is_file() else None
        a = self.a
        parts = [what, str(path), str(st.st_size if st else 0), str(int(st.st_mtime) if st else 0),
                 f"{a.text}:{a.chunks}x{a.ctx}", f"t{a.threads}", f"v{EVAL_VERSION}"]
        if what == "speed":
            parts.append(f"tg{a.tg_n}r{a.tg_reps}")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]

    def save_eval(self, key: str, res: dict) -> None:
        self.evals[key] = res
        self.cache_file.write_text(json.dumps(self.evals, indent=1))

    def quality(self, path: Path, base: Path) -> dict:
        key = self.eval_key(path, "kld")
        if key in self.evals:
            self.run.cached(self.work / (path.name + ".kld.log"))
            return self.evals[key]
        out = self.run.run([self.tool("llama-perplexity"), "-m", path, "-c", self.a.ctx, "-t", self.a.threads,
                            "--kl-divergence-base", base, "--kl-divergence"],
                           f"llama-perplexity --kl-divergence {path.name}", self.work / (path.name + ".kld.log"))
        if self.run.dry_run:
            return {}
        res = parse_kld(out)
        self.save_eval(key, res)
        return res

    def speed(self, path: Path) -> dict:
        if self.a.no_speed:
            return {}
        key = self.eval_key(path, "speed")
        cmd = [self.tool("llama-bench"), "-m", path, "-t", self.a.threads, "-p", 0, "-n", self.a.tg_n,
               "-r", self.a.tg_reps, "-o", "json"]
        if key in self.evals and not self.a.redo_speed:
            self.run.commands.append(shlex.join(str(c) for c in cmd) + "   # cached")
            return self.evals[key]
        load = os.getloadavg()[0]
        out = self.run.run(cmd, f"llama-bench tg{self.a.tg_n} {path.name}")
        if self.run.dry_run:
            return {}
        res = {**parse_bench(out), "tg_load_avg_1min_before": round(load, 2)}
        self.save_eval(key, res)
        return res

    def row(self, label: str, kind: str, path: Path, base: Path | None, ref_ppl: float | None, **extra) -> dict:
        row = {"label": label, "kind": kind, "file": str(path), **extra}
        if self.run.dry_run:
            if path.is_file():  # sizes of files already made (the optiq --size budgets)
                row.update(gguf_facts(path))
            if base is not None:
                self.quality(path, base)
            self.speed(path)
            return row
        row.update(gguf_facts(path))
        if base is not None:
            row.update(self.quality(path, base))
            row["dppl_pct"] = (row["ppl_ratio"] - 1) * 100
        else:
            row.update({"ppl": ref_ppl, "dppl_pct": 0.0, "kld_mean": 0.0, "kld_p99": 0.0, "top1_pct": 100.0})
        row.update(self.speed(path))
        return row

    # -- optiq ---------------------------------------------------------------------------------------
    def optiq_auto_rows(self, ref: Path, baselines: list[dict], base: Path, ref_ppl) -> list[dict]:
        a = self.a
        binary = a.optiq_auto
        if not binary.is_file() or not os.access(binary, os.X_OK):
            raise CompareError(f"{binary}: no optiq binary there; build optiq (scripts/build.sh) or fix --optiq-auto")
        help_text = subprocess.run([str(binary), "auto", "--help"], capture_output=True, text=True).stdout
        rows = []
        if "--format" not in help_text:
            log("optiq GGUF export not available (`optiq auto --help` has no --format); skipping the optiq rows")
            for b in baselines:
                rows.append({"label": f"optiq auto @ {b['label']}", "kind": "optiq-auto", "status":
                             "optiq GGUF export not available", "target_tensor_bytes": b.get("tensor_bytes")})
            return rows
        tag = f"-{a.optiq_tag}" if a.optiq_tag else ""
        if a.optiq_model == "source":  # another model for optiq: its own profile and files
            tag += "-src"
        model = self.source if a.optiq_model == "source" else ref
        profile = self.work / f"optiq-auto{tag}.profile.json"
        if a.speed_table:  # the plan depends on the table: another table, other files
            check_input(a.speed_table, "--speed-table file", "write it with bench/llamacpp_speed_table.py")
            tag += "-st" + hashlib.sha256(a.speed_table.read_bytes()).hexdigest()[:8]
        for b in baselines:
            target = b.get("tensor_bytes", 0)
            out = self.work / f"{self.name}-optiq-auto{tag}-{b['type']}-{target}B.gguf"
            # optiq's --size counts its planned matrices (norms as fp16); the file also holds F32
            # norms, the tokenizer and the plan. Shrink the budget by what the file came out over
            # the baseline's file (or tensor bytes) until it fits: equal or smaller, never larger.
            budget_file = out.with_name(out.name + ".budget")  # the --size that made `out`
            budget = int(budget_file.read_text()) if out.is_file() and budget_file.is_file() else target
            failed = None
            for attempt in range(4):
                if out.is_file() and not a.fresh and attempt == 0:
                    pass  # made by an earlier run: checked below like a new one
                else:
                    cmd = [binary, "auto", model, "--format", "gguf"]
                    if "--target" in help_text:
                        cmd += ["--target", "gguf"]
                    cmd += ["--size", f"{budget}B", "--calib", a.optiq_calib,
                            "--calib-samples", a.optiq_calib_samples or a.calib_chunks,
                            "--calib-seq", a.ctx, "--cache", profile, "-t", a.threads, "-o", out, "--force",
                            *(["--speed-table", a.speed_table] if a.speed_table else []),
                            *shlex.split(a.optiq_args)]
                    try:
                        self.run.run(cmd, f"optiq auto --size {budget}B ({b['type']} size)",
                                     self.work / (out.name + ".log"))
                        if not self.run.dry_run:
                            budget_file.write_text(str(budget))
                    except CompareError as e:
                        failed = str(e)
                        break
                if self.run.dry_run or not out.is_file():
                    break
                facts = gguf_facts(out)
                over = max(facts["file_bytes"] - b["file_bytes"], facts["tensor_bytes"] - target)
                if over <= 0 or attempt == 3:
                    break  # fits (or the last try: kept, its row's "fits" says false)
                # From what the plan took (it may sit below its budget), not from the budget.
                plan_json = out.with_name(out.name + ".plan.json")
                planned = json.loads(plan_json.read_text()).get("bytes", budget) if plan_json.is_file() else budget
                budget = min(budget, planned) - over - 4096
                log(f"optiq @ {b['type']}: {over} bytes over llama.cpp's file; again with --size {budget}B")
                out.unlink()
            if failed:
                rows.append({"label": f"optiq auto @ {b['type']}", "kind": "optiq-auto", "status": failed})
                continue
            row = self.row(f"optiq auto @ {b['type']}", "optiq-auto", out, base, ref_ppl, target_tensor_bytes=target,
                           optiq_size_budget=budget)
            if not self.run.dry_run:
                row["fits"] = row["tensor_bytes"] <= target and row["file_bytes"] <= b["file_bytes"]
            rows.append(row)
        return rows

    def extra_files(self) -> list[tuple[str, Path]]:
        files = []
        for spec in self.a.optiq:
            label, sep, path = spec.partition("=")
            p = Path(path if sep else label).expanduser()
            check_input(p, "--optiq file", "pass an existing GGUF file")
            files.append((label if sep else f"optiq {p.name}", p))
        return files

    def go(self) -> dict:
        a = self.a
        self.work.mkdir(parents=True, exist_ok=True)
        extras = self.extra_files()
        ref = self.reference()
        imat = self.imatrix(ref)
        quants = [(q, self.quantize(ref, imat, q)) for q in a.types]
        base, base_res = self.kld_base(ref)
        ref_ppl = base_res.get("ppl")
        rows = [self.row("reference (F32)", "reference", ref, None, ref_ppl, ppl_err=base_res.get("ppl_err"))]
        baselines = [self.row(f"llama.cpp {q} + imatrix", "llamacpp", path, base, ref_ppl, type=q)
                     for q, path in quants]
        rows += baselines
        for label, path in extras:
            rows.append(self.row(label, "optiq", path, base, ref_ppl))
        if a.optiq_auto:
            rows += self.optiq_auto_rows(ref, baselines, base, ref_ppl)
        if not a.no_source_row:  # measured last (the least needed), shown second
            rows.insert(1, self.row(f"source ({self.source.name})", "source", self.source, base, ref_ppl))
        return {"rows": rows, "reference": str(ref), "imatrix": str(imat), "kld_base": str(base)}


# ---------------------------------------------------------------------------------------------
# Report


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return "unknown CPU"


def fmt(v, spec: str, empty: str = "") -> str:
    return empty if v is None else format(v, spec)


def markdown(result: dict) -> str:
    p = result["protocol"]
    lines = [f"{result['model']} ({Path(result['source']).name}); llama.cpp {p['llamacpp']} ({p['variant']}); "
             f"{result['cpu']}, {p['threads']} threads; wiki.test.raw first {p['chunks']} x {p['ctx']} "
             f"({p['scored_tokens']:,} scored tokens); imatrix on {p['calib_chunks']} x {p['ctx']} tokens of "
             f"{Path(p['calib']).name}; bpw = tensor bytes x 8 / {result.get('parameters') or 0:,} parameters", "",
             "| model | file MB | bpw | ppl | Δppl | KLD mean | KLD p99 | top-1 | tg tok/s (best of reps) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        if "status" in r and "ppl" not in r:
            lines.append(f"| {r['label']} | | | | | | | | {r['status']} |")
            continue
        dppl = r.get("dppl_pct")
        lines.append(
            f"| {r['label']} | {fmt(r.get('file_bytes') and r['file_bytes'] / 1e6, '.2f')} | {fmt(r.get('bpw'), '.3f')} "
            f"| {fmt(r.get('ppl'), '.4f')} | {fmt(dppl, '+.2f')}{'%' if dppl is not None else ''} "
            f"| {fmt(r.get('kld_mean'), '.5f')} | {fmt(r.get('kld_p99'), '.4f')} "
            f"| {fmt(r.get('top1_pct'), '.2f')}{'%' if r.get('top1_pct') is not None else ''} "
            f"| {fmt(max(r['tg_samples']) if r.get('tg_samples') else r.get('tg_tok_s'), '.1f')} |")
    return "\n".join(lines)


def result_object(a, name: str, source: Path, tools: Path | None, variant: str, out: dict, commands: list) -> dict:
    params = next((r["parameters"] for r in out["rows"] if r.get("parameters")), None)
    return {
        "date": dt.date.today().isoformat(), "model": name, "source": str(source), "cpu": cpu_model(),
        "cores": os.cpu_count(), "load_average_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        "parameters": params,
        "protocol": {"llamacpp": f"llama-cpp-python {llamacpp_version()}", "variant": variant,
                     "tools": str(tools), "threads": a.threads, "ctx": a.ctx, "chunks": a.chunks,
                     "scored_tokens": a.chunks * (a.ctx - a.ctx // 2 - 1), "text": str(a.text),
                     "calib": str(a.calib), "calib_chunks": a.calib_chunks, "calib_tokens": a.calib_chunks * a.ctx,
                     "types": a.types, "tg_n": a.tg_n, "tg_reps": a.tg_reps,
                     "optiq_speed_table": str(a.speed_table) if a.speed_table else None,
                     "optiq_tag": a.optiq_tag or None, "optiq_model": a.optiq_model,
                     "bpw": "tensor data bytes x 8 / parameters (all tensors in the file)",
                     "file_mb": "file bytes / 1e6"},
        **{k: v for k, v in out.items() if k != "rows"},
        "commands": commands, "rows": out["rows"],
    }


# ---------------------------------------------------------------------------------------------
# Self-check


CANNED_KLD = """\
====== Perplexity statistics ======
Mean PPL(Q)                   :  25.526600 ±   0.718000
Mean PPL(base)                :  24.497400 ±   0.716600
Cor(ln(PPL(Q)), ln(PPL(base))):  98.12%
Mean ln(PPL(Q)/PPL(base))     :   0.041200 ±   0.003100
Mean PPL(Q)/PPL(base)         :   1.042000 ±   0.003200
Mean PPL(Q)-PPL(base)         :   1.029200 ±   0.080000

====== KL divergence statistics ======
Mean    KLD:   0.049360 ±   0.001200
Maximum KLD:   3.100000
99.9%   KLD:   1.700000
99.0%   KLD:   0.540000
95.0%   KLD:   0.180000
90.0%   KLD:   0.110000
Median  KLD:   0.021000

====== Token probability statistics ======
Same top p: 85.590 ± 0.450 %
"""
CANNED_BENCH = '[{"n_prompt": 0, "n_gen": 32, "avg_ts": 101.5, "stddev_ts": 1.25, "samples_ts": [100, 102, 102.5]}]'


def self_check(a, name: str, source: Path, variant: str) -> int:
    ok = True

    def report(good: bool, what: str) -> None:
        nonlocal ok
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} {what}")

    k = parse_kld(CANNED_KLD)
    report(k["kld_mean"] == 0.04936 and k["kld_p99"] == 0.54 and k["top1_pct"] == 85.59 and k["ppl_ratio"] == 1.042,
           "parse llama-perplexity --kl-divergence summary")
    report(parse_base_ppl("Final estimate: PPL = 24.4974 +/- 0.71660")["ppl"] == 24.4974, "parse 'Final estimate'")
    report(parse_bench("noise\n" + CANNED_BENCH)["tg_tok_s"] == 101.5, "parse llama-bench JSON")
    for path, what in ((source, "model"), (a.text, "evaluation text"), (a.calib, "calibration text")):
        report(path.is_file(), f"{what}: {path}")
    report(a.text.resolve() != a.calib.resolve(), "evaluation text is not the calibration text")
    try:
        tools = find_tools(a.llamacpp_bin, variant, build=False)
        report(True, f"llama.cpp tools: {tools}")
    except CompareError as e:
        report(False, str(e))
    try:
        gguf_reference.import_gguf()
        report(True, "python packages numpy, gguf")
    except gguf_reference.RefError as e:
        report(False, str(e))
    if a.optiq_auto:
        has = a.optiq_auto.is_file() and "--format" in subprocess.run(
            [str(a.optiq_auto), "auto", "--help"], capture_output=True, text=True).stdout
        print(f"info optiq GGUF export {'available' if has else 'not available'} in {a.optiq_auto}")
    print("self-check: " + ("all good" if ok else "problems above"))
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        name, source = model_source(a.model)
        variant = llamacpp_variant()
        if a.self_check:
            return self_check(a, name, source, variant)
        check_input(source, "model", "fetch it with scripts/fetch_models.py (scripts/setup.sh) or pass a .gguf path")
        check_input(a.text, "evaluation text", "pass --text FILE (../shared/data/wikitext-2-raw/wiki.test.raw)")
        check_input(a.calib, "calibration text", "pass --calib FILE (../shared/data/c4/c4-validation-2k.txt)")
        if a.text.resolve() == a.calib.resolve():
            raise CompareError(f"{a.text}: the evaluation text is also the calibration text; use different texts")
        tools = None if a.dry_run and not a.llamacpp_bin else find_tools(a.llamacpp_bin, variant, build=not a.dry_run)
        runner = Runner(a.dry_run)
        cmp = Compare(a, name, source, tools, runner)
        out = cmp.go()
        if a.dry_run:
            return 0
        result = result_object(a, name, source, tools, variant, out, runner.commands)
        result["command"] = shlex.join(["bench/gguf_compare.py", *(sys.argv[1:] if argv is None else argv)])
        if not a.no_save:
            path = a.out_json or ROOT / "bench/results" / f"{result['date']}-gguf-compare-{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=1) + "\n")
            log(f"results: {path}")
        print(json.dumps(result, indent=1) if a.json else markdown(result))
        return 0
    except (CompareError, gguf_reference.RefError) as e:
        print(f"gguf_compare: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
