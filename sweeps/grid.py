"""Grid points and their names: the canonical CLI keys of a grid axis, a point's key (stable
across reorderings of the YAML), its variant label and its file-system slug. Shared by the
sweep definition, the running side (queue, records) and the reporting side (tables)."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

ALIASES = {"conv": "model.conv", "seed": "seed_everything", "lr": "model.lr",
           "weight_decay": "model.weight_decay", "model_name": "model.model", "backbone": "model.model"}
SEED_KEY = "seed_everything"
CONV_KEY = "model.conv"
MODEL_KEY = "model.model"


@dataclass(frozen=True)
class GridPoint:
    """One cell of the grid: ``params`` maps canonical CLI keys to values."""

    params: dict[str, Any]

    @property
    def key(self) -> str:
        return grid_key(self.params)

    @property
    def seed(self) -> Any:
        return self.params.get(SEED_KEY)

    @property
    def variant(self) -> str:
        return variant_label({k: v for k, v in self.params.items() if k != SEED_KEY})

    @property
    def slug(self) -> str:
        return slugify(self.key)


def block_points(block: dict[str, list[Any]]) -> list[GridPoint]:
    """The cartesian product of one grid block's axes (axes and values as written)."""
    axes = list(block)
    return [GridPoint(dict(zip(axes, combo))) for combo in itertools.product(*(block[a] for a in axes))]


def canonical_key(key: str) -> str:
    key = str(key).strip()
    if key.startswith("--"):
        key = key[2:]
    return ALIASES.get(key, key)


def canonical_value(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":")) if isinstance(v, (dict, list)) else str(v)


def grid_key(params: dict[str, Any]) -> str:
    """A stable string naming a grid point (axes sorted, so reordering the YAML keeps keys)."""
    return ",".join(f"{k}={canonical_value(params[k])}" for k in sorted(params))


def variant_label(params: dict[str, Any]) -> str:
    """Human label of a variant: the conv spec, plus any other non-seed axis values."""
    parts = []
    if CONV_KEY in params:
        parts.append(str(params[CONV_KEY]))
    for k in sorted(params):
        if k in (CONV_KEY, SEED_KEY):
            continue
        parts.append(f"{k.split('.')[-1]}={canonical_value(params[k])}")
    return " ".join(parts) if parts else "default"


def slugify(text: str) -> str:
    """A filesystem-safe, readable and unique name for a grid key."""
    s = re.sub(r"[^A-Za-z0-9_.+=-]+", "_", text.replace("model.", "").replace("seed_everything", "seed"))
    s = s.strip("_")
    if len(s) > 80 or s != text:
        s = s[:80] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return s
