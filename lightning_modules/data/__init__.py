"""DataModules: CIFAR-10, CIFAR-100, Tiny-ImageNet-200 and a synthetic set, one interface
(:class:`ImageDataModule`, see :mod:`.base` for the splits and batches).

- :mod:`.augmentation`: batched, reproducible random crop + flip;
- :mod:`.base`: :class:`ImageDataModule`, :func:`stratified_split`;
- :mod:`.cifar`, :mod:`.tinyimagenet`, :mod:`.synthetic`: one module per dataset.
"""

from __future__ import annotations

from typing import Any

from ..download import DatasetError
from .augmentation import augmentation_bits, random_crop_flip
from .base import ImageDataModule, IndexedImages, stratified_split
from .cifar import CIFAR10DataModule, CIFAR100DataModule, CIFARDataModule
from .synthetic import SyntheticDataModule
from .tinyimagenet import TINY_CACHE_NAME, TinyImageNetDataModule

#: The DataModules by dataset name (``ImageDataModule.name``).
DATAMODULES: dict[str, type[ImageDataModule]] = {
    cls.name: cls for cls in (SyntheticDataModule, CIFAR10DataModule, CIFAR100DataModule, TinyImageNetDataModule)
}


def build_datamodule(name: str, **kwargs: Any) -> ImageDataModule:
    """A DataModule by dataset name (``synthetic``, ``cifar10``, ``cifar100``, ``tinyimagenet``)."""
    try:
        cls = DATAMODULES[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATAMODULES)}") from None
    return cls(**kwargs)


__all__ = ["ImageDataModule", "IndexedImages", "SyntheticDataModule", "CIFARDataModule", "CIFAR10DataModule",
           "CIFAR100DataModule", "TinyImageNetDataModule", "DATAMODULES", "build_datamodule", "random_crop_flip",
           "augmentation_bits", "stratified_split", "DatasetError", "TINY_CACHE_NAME"]
