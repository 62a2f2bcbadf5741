"""Tiny-ImageNet-200 from the official zip, decoded once into a uint8 cache."""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np
import torch
from PIL import Image

from odconv.atomic_files import atomic_output

from ..download import Archive, DatasetError, fetch
from .base import ImageDataModule

log = logging.getLogger(__name__)

TINY_CACHE_VERSION = 1
TINY_CACHE_NAME = "uint8_cache.pt"


def read_jpeg(path: str, size: int) -> np.ndarray:
    """One JPEG as uint8 (3, size, size) RGB (grayscale images become 3 equal channels)."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as err:  # noqa: BLE001
        raise DatasetError(f"cannot decode {path}: {err}") from err
    if arr.shape != (size, size, 3):
        raise DatasetError(f"{path}: expected a {size}x{size} image, got {arr.shape}")
    return arr.transpose(2, 0, 1)


class TinyImageNetDataModule(ImageDataModule):
    """Tiny-ImageNet-200 (64x64, 200 classes) from the official zip (``wnids.txt``,
    ``train/<wnid>/images/*.JPEG``, ``val/images`` + ``val_annotations.txt``).

    The JPEGs are decoded once into ``tiny-imagenet-200/uint8_cache.pt`` (written
    atomically, keyed by a fingerprint of the file lists); a stale or unreadable cache is
    rebuilt. The official ``val/`` split is the test split (its test labels are not public).
    """

    name = "tinyimagenet"
    num_classes = 200
    train_images, test_images = 100_000, 10_000
    image_size = 64
    mean = (0.4802, 0.4481, 0.3975)
    std = (0.2770, 0.2691, 0.2821)
    archive = Archive("http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                      "90528d7ca1a48142e341f4ef8d21d0de", "tiny-imagenet-200.zip", "tiny-imagenet-200")

    @property
    def folder(self) -> str:
        return os.path.join(self.data_dir, self.archive.folder)

    @property
    def cache_path(self) -> str:
        return os.path.join(self.folder, TINY_CACHE_NAME)

    def _index(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]], str]:
        """(train [(relative path, label)], val [(relative path, label)], fingerprint)."""
        root = self.folder
        wnids_path = os.path.join(root, "wnids.txt")
        ann_path = os.path.join(root, "val", "val_annotations.txt")
        for p in (wnids_path, ann_path):
            if not os.path.isfile(p):
                raise DatasetError(f"missing {p}: {root} is not a complete tiny-imagenet-200 folder")
        with open(wnids_path) as f:
            wnids = [w.strip() for w in f if w.strip()]
        if len(wnids) != self.num_classes or len(set(wnids)) != len(wnids):
            raise DatasetError(f"{wnids_path} lists {len(wnids)} class ids, expected {self.num_classes} distinct")
        label = {w: i for i, w in enumerate(wnids)}
        train: list[tuple[str, int]] = []
        for w in wnids:
            d = os.path.join(root, "train", w, "images")
            if not os.path.isdir(d):
                raise DatasetError(f"missing {d}")
            train += [(os.path.join("train", w, "images", n), label[w])
                      for n in sorted(os.listdir(d)) if n.lower().endswith((".jpeg", ".jpg"))]
        val: list[tuple[str, int]] = []
        with open(ann_path) as f:
            for line in f:
                parts = line.strip().split("\t")
                if len(parts) < 2:
                    continue
                if parts[1] not in label:
                    raise DatasetError(f"{ann_path}: unknown class id {parts[1]!r} for {parts[0]}")
                val.append((os.path.join("val", "images", parts[0]), label[parts[1]]))
        h = hashlib.md5(f"v{TINY_CACHE_VERSION}".encode())
        for rel, y in train + val:
            st = os.stat(os.path.join(root, rel))
            h.update(f"{rel}:{y}:{st.st_size}\n".encode())
        return train, val, h.hexdigest()

    def _load_cache(self, fingerprint: str) -> dict | None:
        path = self.cache_path
        if not os.path.isfile(path):
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            ok = (isinstance(data, dict) and data.get("fingerprint") == fingerprint
                  and all(isinstance(data.get(k), torch.Tensor) for k in ("train_x", "train_y", "test_x", "test_y"))
                  and data["train_x"].dtype == torch.uint8 and len(data["train_x"]) == len(data["train_y"])
                  and len(data["test_x"]) == len(data["test_y"]))
        except Exception as err:  # noqa: BLE001 - truncated/corrupt file
            log.warning("Tiny-ImageNet cache %s is unreadable (%s): rebuilding it", path, err)
            return None
        if not ok:
            log.warning("Tiny-ImageNet cache %s is stale (does not match the image files): rebuilding it", path)
            return None
        return data

    def _build_cache(self) -> dict:
        train, val, fingerprint = self._index()
        cached = self._load_cache(fingerprint)
        if cached is not None:
            return cached
        s = self.image_size

        def decode(items):
            x = np.empty((len(items), 3, s, s), dtype=np.uint8)
            for i, (rel, _) in enumerate(items):
                x[i] = read_jpeg(os.path.join(self.folder, rel), s)
            return torch.from_numpy(x), torch.tensor([y for _, y in items], dtype=torch.long)

        log.info("decoding %d Tiny-ImageNet JPEGs into %s (once)", len(train) + len(val), self.cache_path)
        train_x, train_y = decode(train)
        test_x, test_y = decode(val)
        data = {"fingerprint": fingerprint, "train_x": train_x, "train_y": train_y, "test_x": test_x,
                "test_y": test_y}
        with atomic_output(self.cache_path, "wb") as f:
            torch.save(data, f)
        return data

    def prepare_data(self) -> None:
        fetch(self.archive, self.data_dir, download=self.download)
        self._build_cache()

    def load_arrays(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        fetch(self.archive, self.data_dir, download=self.download)
        data = self._build_cache()  # reads the cache prepare_data wrote (checks it first)
        return data["train_x"], data["train_y"], data["test_x"], data["test_y"]


__all__ = ["TinyImageNetDataModule", "TINY_CACHE_NAME", "read_jpeg"]
