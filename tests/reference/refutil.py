"""Helpers shared by the reference cross-checks in tests/reference/.

Tests are plain scripts run by CTest with ~/.cache/optiq/venv/bin/python and the
environment OPTIQ_BIN, OPTIQ_SHARED_DIR, OPTIQ_SOURCE_DIR, OPTIQ_BINARY_DIR. They
exit 0 (pass), 1 (fail) or 77 (skipped: a package, the model or the binary is missing).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SKIP = 77
HERE = Path(__file__).resolve().parent


def source_dir() -> Path:
    return Path(os.environ.get("OPTIQ_SOURCE_DIR") or HERE.parent.parent)


def shared_dir() -> Path:
    s = os.environ.get("OPTIQ_SHARED_DIR")
    return Path(s) if s else (source_dir().parent / "shared")


def cache_dir() -> Path:
    c = os.environ.get("OPTIQ_CACHE")
    return Path(c) if c else Path.home() / ".cache" / "optiq"


# Models the reference tests know, by short name (see scripts/fetch_models.py).
def model_path(name: str) -> Path:
    paths = {
        "smollm2": cache_dir() / "models" / "smollm2-135m-instruct-q4_1.gguf",
        "gemma3": cache_dir() / "models" / "gemma-3-270m-q4_k_m.gguf",
        "stories260k": shared_dir() / "models" / "stories260K" / "stories260K.gguf",
    }
    if name not in paths:
        raise KeyError(f"unknown model '{name}': known: {', '.join(paths)}")
    return paths[name]


def data_path(rel: str) -> Path:
    return shared_dir() / "data" / rel


def threads() -> int:
    return int(os.environ.get("OPTIQ_THREADS", "2"))


def skip(msg: str) -> "NoReturn":  # noqa: F821
    print(f"SKIP: {msg}", flush=True)
    sys.exit(SKIP)


def require_llama_cpp():
    """Import llama_cpp and numpy or skip the test (exit 77)."""
    try:
        import numpy  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError as e:
        skip(f"python package missing ({e}): run scripts/setup.sh (venv ~/.cache/optiq/venv)")
    return llama_cpp


def optiq_bin() -> Path:
    b = os.environ.get("OPTIQ_BIN")
    p = Path(b) if b else Path(os.environ.get("OPTIQ_BINARY_DIR") or source_dir() / "build") / "optiq"
    if not p.is_file() or not os.access(p, os.X_OK):
        skip(f"{p}: optiq binary not built (set OPTIQ_BIN)")
    return p


def run_optiq(args: list, timeout: float = 300) -> tuple[str, float]:
    """Run optiq with args; return (stdout, seconds). Raises RuntimeError with stderr on failure."""
    cmd = [str(optiq_bin())] + [str(a) for a in args]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"`{shlex.join(cmd)}` exited {p.returncode}:\n{p.stderr[-4000:]}{p.stdout[-2000:]}")
    return p.stdout, dt


def write_ids(path: Path, ids) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(" ".join(str(int(i)) for i in ids) + "\n")
    os.replace(tmp, path)


def read_ids(path: Path) -> list[int]:
    return [int(t) for t in Path(path).read_text().split()]


def temp_dir(prefix: str = "optiq-ref-") -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=prefix)


def _file_id(path) -> list:
    st = Path(path).resolve().stat()
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


class LlamaCppCrashed(RuntimeError):
    pass


def run_isolated(kind: str, compute, npy: bool = False):
    """Runs compute() (llama.cpp work) in a forked child, so that a crash inside llama.cpp
    (e.g. a CPU path it takes on this machine) fails the test with a message naming llama.cpp
    instead of killing the test process. The result comes back through a temporary file."""
    import json
    import signal

    with tempfile.TemporaryDirectory(prefix="optiq-llamacpp-") as td:
        out = Path(td) / ("result.npy" if npy else "result.json")
        err = Path(td) / "error.txt"
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                val = compute()
                if npy:
                    import numpy as np
                    np.save(out, val)
                else:
                    out.write_text(json.dumps(val))
            except BaseException as e:  # noqa: BLE001
                err.write_text(f"{type(e).__name__}: {e}")
                code = 3
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            raise LlamaCppCrashed(
                f"llama.cpp (llama-cpp-python) crashed with {name} while computing '{kind}': the reference "
                f"wheel may use a CPU path that fails on this machine; rebuild it with scripts/setup.sh "
                f"(portable flags) and rerun")
        if os.WEXITSTATUS(status) != 0:
            raise RuntimeError(f"llama.cpp reference '{kind}' failed: "
                               f"{err.read_text() if err.exists() else 'exit ' + str(os.WEXITSTATUS(status))}")
        if npy:
            import numpy as np
            return np.load(out)
        return json.loads(out.read_text())


def cached(kind: str, params: dict, compute, files=(), npy: bool = False):
    """Memoize a deterministic llama.cpp reference result in $OPTIQ_CACHE/reference/.

    The key covers params, the identity (path, size, mtime) of `files` and the llama-cpp-python
    version. compute() returns a dict (stored as JSON) or, with npy=True, an array (.npy).
    OPTIQ_REF_NO_CACHE=1 disables the cache."""
    import hashlib
    import json

    if os.environ.get("OPTIQ_REF_NO_CACHE") == "1":
        return run_isolated(kind, compute, npy)
    import llama_cpp

    # The build's CPU features are part of the key: a wheel built with other flags computes
    # (slightly) different numbers.
    try:
        sysinfo = llama_cpp.llama_print_system_info().decode(errors="replace")
    except Exception:  # noqa: BLE001
        sysinfo = ""
    key = json.dumps({"kind": kind, "params": params, "files": [_file_id(f) for f in files],
                      "llama_cpp": llama_cpp.__version__, "system_info": sysinfo}, sort_keys=True, default=str)
    h = hashlib.sha256(key.encode()).hexdigest()[:24]
    d = cache_dir() / "reference"
    path = d / f"{kind}-{h}.{'npy' if npy else 'json'}"
    try:
        if npy:
            import numpy as np
            return np.load(path)
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    val = run_isolated(kind, compute, npy)
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}" + (".npy" if npy else ""))
        if npy:
            import numpy as np
            np.save(tmp, val)
        else:
            tmp.write_text(json.dumps(val))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache is not an error
    return val


def compare_logits(ref, got, tie_tol: float = 0.0) -> dict:
    """Compare two [n_tokens, vocab] logit arrays (ref = llama.cpp).

    max_abs:   max |got - ref| over all entries
    rel_err:   ||got - ref||_F / ||ref||_F
    row_rel_max: worst per-position relative error ||got_i - ref_i|| / ||ref_i||
    top1:      fraction of positions whose argmax is the same
    top1_ties: same, counting a different argmax as agreeing when the reference logits of the two
               candidates differ by at most tie_tol (a near-tie that rounding may flip)
    """
    import numpy as np

    ref = np.asarray(ref, dtype=np.float32)
    got = np.asarray(got, dtype=np.float32)
    if ref.shape != got.shape:
        raise ValueError(f"logits shapes differ: reference {ref.shape}, optiq {got.shape}")
    if not np.isfinite(got).all():
        bad = int((~np.isfinite(got)).sum())
        raise ValueError(f"optiq logits have {bad} non-finite values")
    d = (got - ref).astype(np.float64)
    r64 = ref.astype(np.float64)
    row_norm = np.linalg.norm(r64, axis=1)
    row_err = np.linalg.norm(d, axis=1) / np.maximum(row_norm, 1e-30)
    a_ref = ref.argmax(axis=1)
    a_got = got.argmax(axis=1)
    same = a_ref == a_got
    rows = np.arange(ref.shape[0])
    gap = ref[rows, a_ref] - ref[rows, a_got]
    ties = same | (gap <= tie_tol)
    worst = int(np.abs(d).max(axis=1).argmax())
    return {
        "n": int(ref.shape[0]),
        "vocab": int(ref.shape[1]),
        "max_abs": float(np.abs(d).max()),
        "mean_abs": float(np.abs(d).mean()),
        "rel_err": float(np.linalg.norm(d) / max(np.linalg.norm(r64), 1e-30)),
        "row_rel_max": float(row_err.max()),
        "worst_pos": worst,
        "top1": float(same.mean()),
        "top1_ties": float(ties.mean()),
        "top1_mismatch_pos": [int(i) for i in np.nonzero(~same)[0][:20]],
        "ref_logit_range": (float(ref.min()), float(ref.max())),
    }


class Results:
    """Collects named checks; prints a summary line and exits 0/1/77."""

    def __init__(self, name: str):
        self.name = name
        self.passed: list[str] = []
        self.failed: list[str] = []
        self.skipped: list[str] = []

    def check(self, cond: bool, what: str) -> bool:
        (self.passed if cond else self.failed).append(what)
        print(f"  {'ok  ' if cond else 'FAIL'} {what}", flush=True)
        return cond

    def skip(self, what: str) -> None:
        self.skipped.append(what)
        print(f"  skip {what}", flush=True)

    def finish(self) -> "NoReturn":  # noqa: F821
        print(f"{self.name}: {len(self.passed)} passed, {len(self.failed)} failed, {len(self.skipped)} skipped",
              flush=True)
        if self.failed:
            sys.exit(1)
        if not self.passed:
            sys.exit(SKIP)
        sys.exit(0)


def optiq_logits(model, ids, tmp, extra_args=()) -> "np.ndarray":  # noqa: F821
    """`optiq logits MODEL --ids ... --out ...` on one sequence; returns float32 [len(ids), vocab].
    tmp: a scratch directory. Raises RuntimeError (with optiq's stderr) when optiq fails."""
    import numpy as np

    tmp = Path(tmp)
    ids_file = tmp / "ids.txt"
    write_ids(ids_file, ids)
    out = tmp / "logits.npy"
    if out.exists():
        out.unlink()
    run_optiq(["-q", "logits", model, "--ids", ids_file, "--out", out, *extra_args])
    return np.load(out)


def max_rel_err(got, ref) -> float:
    """max |got - ref| / max |ref| (the measure test_mlx_roundtrip.py uses)."""
    import numpy as np

    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(got - ref).max() / max(1e-6, np.abs(ref).max()))


def row_rel_errs(got, ref) -> "np.ndarray":  # noqa: F821
    """Per position max |got_i - ref_i| / max |ref|: shows where along the sequence logits part."""
    import numpy as np

    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return np.abs(got - ref).max(axis=1) / max(1e-6, np.abs(ref).max())
