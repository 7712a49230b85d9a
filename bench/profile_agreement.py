#!/usr/bin/env python3
"""Rank agreement between a fast profile and an exact one of the same model.

    bench/profile_agreement.py FAST.json EXACT.json

Spearman rank correlation of the fast profile's KL estimates (kl_fast) with the
exact profile's measured KL (kl) over every (module, format) both contain,
anchors of the fast profile excluded (their kl_fast is an exact measurement).
The two may use different calibration sizes; the exact one is usually a
smaller run over a few candidate formats, since it costs one forward pass per
module and format.
"""
from __future__ import annotations

import json
import sys


def ranks(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2
        i = j + 1
    return r


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    fast, exact = (json.load(open(p)) for p in sys.argv[1:])
    a, b = [], []
    for path, m in exact["modules"].items():
        fm = fast["modules"].get(path)
        if not fm:
            continue
        for f, e in m["formats"].items():
            if "kl" not in e or f == fm.get("anchor") or "kl_fast" not in fm["formats"].get(f, {}):
                continue
            a.append(fm["formats"][f]["kl_fast"])
            b.append(e["kl"])
    if len(a) < 3:
        print("fewer than 3 common (module, format) pairs")
        return 1
    print(json.dumps({"pairs": len(a), "spearman": spearman(a, b)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
