"""CIFAR-10 and CIFAR-100 from the official python archives."""

from __future__ import annotations

import os
import pickle

import numpy as np
import torch

from ..download import Archive, DatasetError, fetch
from .base import ImageDataModule


def _unpickle(path: str) -> dict:
    if not os.path.isfile(path):
        raise DatasetError(f"missing {path}: the CIFAR folder is incomplete; delete it and download again")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DatasetError(f"cannot read {path} ({type(err).__name__}: {err}); delete the folder and "
                           f"download again") from err


def load_cifar_batches(folder: str, files: list[str], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate official CIFAR python batches into (uint8 (N,3,32,32), int64 (N,))."""
    xs, ys = [], []
    for name in files:
        d = _unpickle(os.path.join(folder, name))
        if b"data" not in d or label_key not in d:
            raise DatasetError(f"{os.path.join(folder, name)} lacks b'data' or {label_key!r}: not a CIFAR batch")
        data = np.asarray(d[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != len(d[label_key]):
            raise DatasetError(f"{os.path.join(folder, name)}: bad shape {data.shape}")
        xs.append(data)
        ys.extend(int(v) for v in d[label_key])
    x = torch.from_numpy(np.concatenate(xs).reshape(-1, 3, 32, 32).copy())
    return x, torch.tensor(ys, dtype=torch.long)


class CIFARDataModule(ImageDataModule):
    """Common part of the CIFAR DataModules: the official archive ``archive`` (downloaded,
    md5-checked and extracted into ``data_dir`` unless its folder is already there), its
    training and test batch files and label key."""

    archive: Archive
    train_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    label_key = b"labels"

    @property
    def folder(self) -> str:
        return os.path.join(self.data_dir, self.archive.folder)

    def prepare_data(self) -> None:
        fetch(self.archive, self.data_dir, download=self.download)

    def load_arrays(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        self.prepare_data()  # no-op when present; makes the module usable without a Trainer
        x_tr, y_tr = load_cifar_batches(self.folder, list(self.train_files), self.label_key)
        x_te, y_te = load_cifar_batches(self.folder, list(self.test_files), self.label_key)
        return x_tr, y_tr, x_te, y_te


class CIFAR10DataModule(CIFARDataModule):
    """CIFAR-10 from the official python archive, or an extracted ``cifar-10-batches-py/``
    in ``data_dir``."""

    name = "cifar10"
    num_classes = 10
    train_images, test_images = 50_000, 10_000
    image_size = 32
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    archive = Archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                      "c58f30108f718f92721af3b95e74349a", "cifar-10-python.tar.gz", "cifar-10-batches-py")
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = b"labels"


class CIFAR100DataModule(CIFARDataModule):
    """CIFAR-100 (fine labels) from the official python archive, or an extracted
    ``cifar-100-python/`` in ``data_dir``."""

    name = "cifar100"
    num_classes = 100
    train_images, test_images = 50_000, 10_000
    image_size = 32
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    archive = Archive("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                      "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python.tar.gz", "cifar-100-python")
    train_files = ("train",)
    test_files = ("test",)
    label_key = b"fine_labels"


__all__ = ["CIFARDataModule", "CIFAR10DataModule", "CIFAR100DataModule", "load_cifar_batches"]
