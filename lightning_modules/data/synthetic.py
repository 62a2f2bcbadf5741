"""A procedurally generated image set for tests and smoke runs (not a benchmark)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeInt, PositiveInt

from .base import FractionBelowOne, ImageDataModule


class SyntheticDataModule(ImageDataModule):
    """A learnable, procedurally generated image set made in memory from ``split_seed``:
    each class is a smooth random colour pattern; an image is its class pattern, randomly
    shifted and scaled in contrast, plus Gaussian noise of std ``noise``.

    For tests and smoke runs only: it is *not* a stand-in for real results, and says so
    (``synthetic = True``; ``describe()["note"]``). The other arguments are those of
    :class:`~lightning_modules.data.ImageDataModule`.
    """

    name = "synthetic"
    synthetic = True

    def __init__(self, num_classes: PositiveInt = 10, image_size: PositiveInt = 32, num_train: PositiveInt = 1000,
                 num_test: PositiveInt = 200, noise: float = 0.25, data_dir: str = "data",
                 batch_size: PositiveInt = 64, num_workers: NonNegativeInt = 0, val_split: FractionBelowOne = 0.1,
                 seed: int | None = None, split_seed: int = 0, random_crop: bool = True,
                 crop_padding: NonNegativeInt = 4, horizontal_flip: bool = True, normalize: bool = True,
                 eval_batch_size: PositiveInt | None = None, download: bool = True, pin_memory: bool = True) -> None:
        super().__init__(data_dir=data_dir, batch_size=batch_size, num_workers=num_workers, val_split=val_split,
                         seed=seed, split_seed=split_seed, random_crop=random_crop, crop_padding=crop_padding,
                         horizontal_flip=horizontal_flip, normalize=normalize, eval_batch_size=eval_batch_size,
                         download=download, pin_memory=pin_memory)
        if num_classes < 2 or image_size < 4 or num_train < num_classes or num_test < 1:
            raise ValueError(f"synthetic data needs num_classes >= 2, image_size >= 4, num_train >= num_classes, "
                             f"num_test >= 1; got num_classes={num_classes}, image_size={image_size}, "
                             f"num_train={num_train}, num_test={num_test}")
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.num_train = self.train_images = int(num_train)
        self.num_test = self.test_images = int(num_test)
        self.noise = float(noise)

    def _generate(self, n: int, g: torch.Generator, protos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images uint8 (n, 3, s, s) and labels (n,) from class patterns ``protos`` (C, 3, s, s)."""
        s = self.image_size
        labels = torch.arange(n) % self.num_classes
        labels = labels[torch.randperm(n, generator=g)]
        x = protos[labels]  # (n, 3, s, s) in [0, 1]
        shifts = torch.randint(-s // 8, s // 8 + 1, (n, 2), generator=g)
        x = torch.stack([torch.roll(img, (int(a), int(b)), dims=(1, 2)) for img, (a, b) in zip(x, shifts)])
        contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)
        x = 0.5 + (x - 0.5) * contrast + self.noise * torch.randn(x.shape, generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels

    def load_arrays(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.split_seed)
        low = torch.rand(self.num_classes, 3, 4, 4, generator=g)
        protos = F.interpolate(low, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        protos = (protos - protos.amin(dim=(1, 2, 3), keepdim=True)) / (
            protos.amax(dim=(1, 2, 3), keepdim=True) - protos.amin(dim=(1, 2, 3), keepdim=True) + 1e-6)
        x_tr, y_tr = self._generate(self.num_train, g, protos)
        x_te, y_te = self._generate(self.num_test, g, protos)
        return x_tr, y_tr, x_te, y_te


__all__ = ["SyntheticDataModule"]
