"""Where KernelWarehouse saves parameters at all: each KW configuration's parameters and MACs as a
multiple of static's, across widths, for `cifar_resnet18` and `cifar_mobilenetv2` (32x32 inputs).
Counted, not timed (models built on the meta device): the same on every machine.

    .venv/bin/python scripts/kw_widths.py [--widths 0.125,0.25,0.5,1] [--out results/bench/kw_widths.md]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

from odconv import build_model, count_macs, count_params
from odconv.kw_family import KWAttentionCostWarning

SPECS = ("kw1d4x", "kw1x", "kw4x")
MODELS = ("cifar_resnet18", "cifar_mobilenetv2")


def costs(model: str, conv: str, width: float, classes: int) -> tuple[int, int] | None:
    """(parameters, MACs per 32x32 image), or None where the spec cannot cut the layers into cells."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", KWAttentionCostWarning)  # the table shows that cost
            with torch.device("meta"):
                m = build_model(model, conv=conv, width=width, num_classes=classes)
    except ValueError:
        return None
    return count_params(m), count_macs(m, (3, 32, 32))


def table(widths: list[float], classes: int) -> list[str]:
    lines = ["| model | width | static params | static MACs | " + " | ".join(f"{s} params / MACs" for s in SPECS)
             + " |", "|---|---|---|---|" + "---|" * len(SPECS)]
    for model in MODELS:
        for w in widths:
            p0, m0 = costs(model, "static", w, classes)
            cells = []
            for spec in SPECS:
                c = costs(model, spec, w, classes)
                cells.append("cannot be built" if c is None else f"{c[0] / p0:.2f}x / {c[1] / m0:.2f}x")
            lines.append(f"| `{model}` | {w:g} | {p0 / 1e6:.3f}M | {m0 / 1e6:.1f}M | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="0.125,0.25,0.5,1")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--out", default="results/bench/kw_widths.md")
    a = ap.parse_args(argv)
    widths = [float(w) for w in a.widths.split(",")]
    out = ["# KernelWarehouse's cost as a multiple of static's, by width", "",
           f"`scripts/kw_widths.py`: parameters and MACs per 32x32 image ({a.classes} classes), counted on "
           "models built on the meta device. KW's attention grows with its number of cells, not with the "
           "channels, so at small widths it outweighs the kernels it replaces: below 1.00x parameters, KW "
           "saves parameters.", "", *table(widths, a.classes), ""]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(out))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
