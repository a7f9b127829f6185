"""Compare two ``kn-lens reproduce`` folders (or results.json files): every number, every neuron.

    python benchmarks/compare_results.py OLD_DIR NEW_DIR [--tol 0]

Written to check that a refactoring leaves the figures unchanged. Keys and schema names renamed in
0.x are mapped (``identification`` -> ``identify``, schemas ``update_facts`` -> ``update`` and
``erase_relations`` -> ``erase``); the paper's numbers, which older files also stored inside each
result, are compared once, under ``paper``. Timestamps, durations, versions, the command line and
the device are ignored. Prints every difference and exits 1 when there is one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

RENAMED_KEYS = {"identification": "identify"}
RENAMED_SCHEMAS = {
    "identification": "identify",
    "update_facts": "update",
    "erase_relations": "erase",
}
IGNORED_META = {"timings", "cpu_seconds", "created", "updated", "versions", "command", "device"}


def _load(path: Path, name: str) -> dict[str, Any]:
    p = path / name if path.is_dir() else path
    return json.loads(p.read_text())


def normalise(doc: dict[str, Any]) -> dict[str, Any]:
    """The comparable content of a results.json, in the newest names."""
    results, paper = {}, dict(doc.get("paper", {}))
    for key, res in doc.get("results", {}).items():
        key = RENAMED_KEYS.get(key, key)
        res = dict(res)
        if "paper" in res:  # older files kept the paper's numbers in each result too
            paper.setdefault(key, res.pop("paper"))
        schema = str(res.get("schema"))
        res["schema"] = RENAMED_SCHEMAS.get(schema, schema)
        results[key] = res
    paper = {RENAMED_KEYS.get(k, k): v for k, v in paper.items()}
    meta = {k: v for k, v in doc.get("meta", {}).items() if k not in IGNORED_META}
    return {"meta": meta, "results": results, "paper": paper}


def diff(a: Any, b: Any, path: str, tol: float, out: list[str]) -> int:
    """Append differences between ``a`` and ``b`` to ``out``; returns the numbers compared."""
    if isinstance(a, dict) and isinstance(b, dict):
        n = 0
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'new' if k not in a else 'old'}")
                continue
            n += diff(a[k], b[k], f"{path}.{k}", tol, out)
        return n
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: {len(a)} items vs {len(b)}")
            return 0
        return sum(
            diff(x, y, f"{path}[{i}]", tol, out) for i, (x, y) in enumerate(zip(a, b, strict=False))
        )
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool):
        fa, fb = float(a), float(b)
        same = (math.isnan(fa) and math.isnan(fb)) or abs(fa - fb) <= tol * max(1.0, abs(fa))
        if not same:
            out.append(f"{path}: {a!r} vs {b!r}")
        return 1
    if a != b:
        out.append(f"{path}: {a!r} vs {b!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--tol", type=float, default=0.0, help="relative tolerance (default: exact)")
    args = ap.parse_args(argv)
    out: list[str] = []
    n = diff(
        normalise(_load(args.old, "results.json")),
        normalise(_load(args.new, "results.json")),
        "results.json",
        args.tol,
        out,
    )
    if args.old.is_dir() and args.new.is_dir():
        a, b = _load(args.old, "neurons.json"), _load(args.new, "neurons.json")
        n += diff(a["neurons"], b["neurons"], "neurons.json", args.tol, out)
    for line in out:
        print(line)
    print(f"{n} numbers compared, {len(out)} difference(s)")
    return 1 if out else 0


if __name__ == "__main__":
    sys.exit(main())
