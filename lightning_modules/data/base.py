"""The DataModule base class: in-memory uint8 images, a stratified hold-out validation split,
batched augmentation and normalisation on the training device.

Every DataModule holds its images as one uint8 tensor ``(N, 3, H, W)`` in memory and
yields ``(images_uint8, labels, indices)`` batches. Augmentation (random crop with zero
padding, horizontal flip) and normalisation run batched on the training device in
:meth:`ImageDataModule.on_after_batch_transfer`, never per image in Python.

Splits (same meaning for every dataset):

- ``train``: the official training set minus the held-out validation part;
- ``val``: ``val_split`` of the official training set, stratified by class and chosen
  with ``split_seed`` (the same images for every run seed); with ``val_split=0`` the
  validation set *is* the official evaluation split;
- ``test``: the official evaluation split (CIFAR ``test_batch``/``test``; Tiny-ImageNet
  ``val/``, since its test labels are not public). ``has_test_set`` is True when it differs
  from the validation set (``val_split > 0``).

Randomness is reproducible and resumable: the epoch's order comes from a
``DistributedSampler`` seeded with ``seed`` (``None``: the run's ``seed_everything``) and
``set_epoch``; crops and flips come from :mod:`.augmentation` (a hash of seed, epoch and
image index).
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as L
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt, restricted_number_type
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..download import DatasetError
from .augmentation import random_crop_flip

#: A fraction in [0, 1): the command line refuses other values while parsing.
FractionBelowOne = restricted_number_type("FractionBelowOne", float, [(">=", 0), ("<", 1)])


class IndexedImages(Dataset):
    """``(image_uint8 (C, H, W), label, index)`` from tensors held in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i], i


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) into ``labels`` (N,), sorted, with ``round(fraction * n_c)``
    images of each class c in val."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_split must be in [0, 1), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(round(fraction * len(idx)))
        val.append(idx[:k])
        train.append(idx[k:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(val)).values


class ImageDataModule(L.LightningDataModule):
    """Base class: in-memory uint8 images, stratified hold-out validation, batched
    augmentation on the device.

    Args:
        data_dir: where the dataset lives / is downloaded to (relative to the working dir).
        batch_size: per process (with DDP the global batch is ``batch_size * world_size``).
        eval_batch_size: for val/test (default: ``batch_size``).
        num_workers: DataLoader workers (indexing an in-memory tensor is cheap: 0-2 suffice).
        val_split: fraction of the training set held out for validation (0: validate on the
            official evaluation split, which is then also the test split).
        seed: order and augmentation seed; ``None`` follows the run's ``seed_everything``.
        split_seed: chooses the held-out images (and the synthetic images); keep it fixed
            across the seeds of a sweep.
        random_crop, crop_padding, horizontal_flip: training augmentation.
        normalize: subtract the dataset mean, divide by its std (all splits).
        download: fetch the official archive when the data is not in ``data_dir``.
        pin_memory: pin host batches (only used with a CUDA trainer).
    """

    name: str = "base"
    num_classes: int = 0
    image_size: int = 32
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    synthetic: bool = False
    #: official split sizes (images), every class equally represented in order 0, 1, ...
    train_images: int = 0
    test_images: int = 0

    def __init__(self, data_dir: str = "data", batch_size: PositiveInt = 128, num_workers: NonNegativeInt = 0,
                 val_split: FractionBelowOne = 0.1, seed: int | None = None, split_seed: int = 0,
                 random_crop: bool = True, crop_padding: NonNegativeInt = 4, horizontal_flip: bool = True,
                 normalize: bool = True, eval_batch_size: PositiveInt | None = None, download: bool = True,
                 pin_memory: bool = True) -> None:
        super().__init__()
        # The command line validates these while parsing; these checks serve Python callers.
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= val_split < 1.0:
            raise ValueError(f"val_split must be in [0, 1), got {val_split}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.data_dir = str(data_dir)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.val_split = float(val_split)
        self.seed = None if seed is None else int(seed)
        self.split_seed = int(split_seed)
        self.random_crop = random_crop
        self.crop_padding = int(crop_padding)
        self.horizontal_flip = horizontal_flip
        self.normalize = normalize
        self.download = download
        self.pin_memory = pin_memory
        self.train_set: IndexedImages | None = None
        self.val_set: IndexedImages | None = None
        self.test_set: IndexedImages | None = None
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- what subclasses implement -------------------------------------------------------
    def load_arrays(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(train_images, train_labels, eval_images, eval_labels): uint8 (N,3,H,W), int64 (N,)."""
        raise NotImplementedError

    # -- properties ----------------------------------------------------------------------
    @property
    def has_test_set(self) -> bool:
        """True when the test split is distinct from the validation split."""
        return self.val_split > 0

    def split_sizes(self) -> tuple[int, int, int]:
        """(train, val, test) image counts of this configuration, from the official sizes and
        ``val_split`` as :meth:`setup` splits them (``round(val_split * n_c)`` of each class),
        without reading the data. With ``val_split=0`` val is the test set."""
        c, n = self.num_classes, self.train_images
        per_class = [n // c + (1 if k < n % c else 0) for k in range(c)]
        val = sum(int(round(self.val_split * m)) for m in per_class) if self.val_split > 0 else self.test_images
        train = n - val if self.val_split > 0 else n
        return train, val, self.test_images

    @property
    def run_seed(self) -> int:
        if self.seed is not None:
            return int(self.seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def describe(self) -> dict[str, Any]:
        """What a result record should say about the data."""
        info = {"dataset": self.name, "synthetic": self.synthetic, "num_classes": self.num_classes,
                "image_size": self.image_size, "val_split": self.val_split, "split_seed": self.split_seed,
                "has_test_set": self.has_test_set}
        for split in ("train", "val", "test"):
            ds = getattr(self, f"{split}_set")
            info[f"num_{split}"] = None if ds is None else len(ds)
        if self.synthetic:
            info["note"] = "synthetic procedurally generated images: not a real benchmark result"
        return info

    # -- Lightning hooks -----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        x_tr, y_tr, x_ev, y_ev = self.load_arrays()
        for what, x in (("train", x_tr), ("eval", x_ev)):
            if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
                raise DatasetError(f"{self.name} {what} images must be uint8 (N, 3, H, W), got "
                                   f"{x.dtype} {tuple(x.shape)}")
        for what, y in (("train", y_tr), ("eval", y_ev)):
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise DatasetError(f"{self.name} {what} labels outside [0, {self.num_classes})")
        eval_set = IndexedImages(x_ev, y_ev)
        if self.val_split > 0:
            tr, va = stratified_split(y_tr, self.val_split, self.split_seed)
            self.train_set = IndexedImages(x_tr[tr], y_tr[tr])
            self.val_set = IndexedImages(x_tr[va], y_tr[va])
        else:
            self.train_set = IndexedImages(x_tr, y_tr)
            self.val_set = eval_set
        self.test_set = eval_set

    def _loader(self, ds: IndexedImages, train: bool) -> DataLoader:
        trainer = self.trainer
        pin = bool(self.pin_memory and trainer is not None and trainer.strategy.root_device.type == "cuda")
        kwargs: dict[str, Any] = dict(num_workers=self.num_workers, pin_memory=pin,
                                      persistent_workers=self.num_workers > 0,
                                      generator=torch.Generator().manual_seed(self.run_seed))
        if train:
            world = trainer.world_size if trainer is not None else 1
            rank = trainer.global_rank if trainer is not None else 0
            # Explicit DistributedSampler (also with one process): its order depends only on
            # (seed, epoch), which Lightning sets through set_epoch, so resuming is exact.
            sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=self.run_seed)
            return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, drop_last=False, **kwargs)
        return DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False, **kwargs)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        self.setup("test")
        return self._loader(self.test_set, False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._stats:
            mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1) * 255.0
            std = torch.tensor(self.std, device=device).view(1, -1, 1, 1) * 255.0
            self._stats[device] = (mean, std)
        return self._stats[device]

    def transform_batch(self, images: torch.Tensor, indices: torch.Tensor | None, train: bool,
                        epoch: int = 0) -> torch.Tensor:
        """uint8 batch (B, 3, H, W) -> float32 batch (B, 3, H, W): augmentation (if ``train``)
        then normalisation; ``indices`` (B,) are the images' dataset indices."""
        if train and indices is not None and (self.random_crop or self.horizontal_flip):
            images = random_crop_flip(images, indices, self.run_seed, epoch, self.crop_padding,
                                      crop=self.random_crop, flip=self.horizontal_flip)
        x = images.float()
        if self.normalize:
            mean, std = self._mean_std(x.device)
            x = (x - mean) / std
        else:
            x = x / 255.0
        return x

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels, *rest = batch
        if images.dtype != torch.uint8:  # already transformed
            return batch
        trainer = self.trainer
        train = bool(trainer is not None and trainer.training)
        epoch = trainer.current_epoch if trainer is not None else 0
        return self.transform_batch(images, rest[0] if rest else None, train, epoch), labels

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "split_seed": self.split_seed, "val_split": self.val_split}


__all__ = ["ImageDataModule", "IndexedImages", "stratified_split", "FractionBelowOne"]
