"""Compare two runs of the same benchmark row by row: ``python bench/compare.py encode encode-issue11``.

Reads ``bench/results/<name>.json`` for both names, matches rows on every field that is not a measurement, and
prints a Markdown table of each measurement in both runs with the ratio new / old.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MEASURES = ("ms", "steps_per_s", "samples_per_s", "matmul_peak_fraction", "encoder_ms", "adapter_ms")


def rows(name: str) -> dict:
    data = json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
    out = {}
    for row in data["rows"]:
        key = tuple(sorted((k, str(v)) for k, v in row.items() if k not in MEASURES and not isinstance(v, float)))
        out[key] = row
    return out


def main(old: str, new: str) -> None:
    before, after = rows(old), rows(new)
    print(f"| row | measure | {old} | {new} | ratio |\n|---|---|---|---|---|")
    for key in before.keys() & after.keys():
        label = ", ".join(v for k, v in key if k in ("path", "arch", "batch", "prompt", "recipe", "encoder"))
        for m in MEASURES:
            a, b = before[key].get(m), after[key].get(m)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a:
                print(f"| {label} | {m} | {a:.4g} | {b:.4g} | {b / a:.2f} |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
