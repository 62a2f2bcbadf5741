"""The training layer: DataModules, the ``ImageClassifier`` LightningModule, callbacks and
the ``lightning``/``odconv-bench`` CLI (:mod:`lightning_modules.cli`).

The names below load on first use (PEP 562), so that importing a light submodule, such as
:mod:`lightning_modules.contract`, does not load Lightning."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ImageClassifier": ".module",
    "ImageDataModule": ".data", "SyntheticDataModule": ".data", "CIFAR10DataModule": ".data",
    "CIFAR100DataModule": ".data", "TinyImageNetDataModule": ".data", "DATAMODULES": ".data",
    "build_datamodule": ".data",
    "DatasetError": ".download",
    "TemperatureScheduler": ".callbacks", "linear_temperature": ".callbacks",
    "ResumableCSVLogger": ".callbacks", "KeepEarlierMetrics": ".callbacks",
}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
