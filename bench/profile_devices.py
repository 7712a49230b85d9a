#!/usr/bin/env python3
"""Agreement of two profiles of the same model and method run on different
devices (e.g. --device cpu and --device cuda).

    bench/profile_devices.py A.json B.json

Over every (module, format) both hold: Spearman rank correlation and the
largest relative difference of the measured KL ("kl", exact method) and of
the fast estimate ("kl_fast", fast method), whichever the profiles have.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from profile_agreement import spearman  # noqa: E402


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    a, b = (json.load(open(p)) for p in sys.argv[1:])
    out = {}
    for key in ("kl", "kl_fast"):
        xs, ys = [], []
        for path, m in a["modules"].items():
            other = b["modules"].get(path, {}).get("formats", {})
            for f, e in m["formats"].items():
                if key in e and key in other.get(f, {}):
                    xs.append(e[key])
                    ys.append(other[f][key])
        if len(xs) >= 3:
            worst = max(abs(x - y) / max(abs(x), abs(y), 1e-12) for x, y in zip(xs, ys))
            out[key] = {"pairs": len(xs), "spearman": spearman(xs, ys), "max_rel_diff": worst}
    if not out:
        print("fewer than 3 common (module, format) pairs")
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
