"""DataModules: CIFAR-10, CIFAR-100, Tiny-ImageNet-200 and a synthetic set, one interface.

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
``set_epoch``; each image's crop offsets and flip are a hash of (seed, epoch, image index),
so a run resumed from a checkpoint, or run on another number of processes, sees exactly the
same augmented images as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .download import Archive, DatasetError, fetch

log = logging.getLogger(__name__)

ARCHIVES: dict[str, Archive] = {
    "cifar10": Archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                       "c58f30108f718f92721af3b95e74349a", "cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": Archive("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python.tar.gz", "cifar-100-python"),
    "tinyimagenet": Archive("http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                            "90528d7ca1a48142e341f4ef8d21d0de", "tiny-imagenet-200.zip", "tiny-imagenet-200"),
}

_M32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor | int) -> torch.Tensor | int:
    """A 32-bit integer mix (no int64 overflow: operands stay below 2**32 * 2**27)."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return ((x >> 16) ^ x) & _M32


def augmentation_bits(seed: int, epoch: int, index: torch.Tensor, stream: int) -> torch.Tensor:
    """Deterministic pseudo-random 32-bit integers, one per image, for (seed, epoch, stream)."""
    key = _hash32(_hash32((seed & _M32) ^ 0x5BD1E995) ^ (epoch & _M32))
    return _hash32(_hash32((index.long() * 4 + stream) & _M32) ^ key)


def random_crop_flip(x: torch.Tensor, index: torch.Tensor, seed: int, epoch: int, padding: int = 4,
                     crop: bool = True, flip: bool = True) -> torch.Tensor:
    """Batched random crop (zero padding ``padding``, same size out) and horizontal flip of
    ``x`` (B, C, H, W), any dtype, on x's device. Offsets/flips depend only on (seed, epoch,
    index)."""
    b, _, h, w = x.shape
    index = index.to(x.device)
    if crop and padding > 0:
        span = 2 * padding + 1
        dy = augmentation_bits(seed, epoch, index, 0) % span
        dx = augmentation_bits(seed, epoch, index, 1) % span
        padded = F.pad(x, (padding, padding, padding, padding))
        rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
        cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W)
        bidx = torch.arange(b, device=x.device)[:, None, None]
        x = padded[bidx, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B,H,W,C) -> (B,C,H,W)
    if flip:
        f = ((augmentation_bits(seed, epoch, index, 2) >> 11) & 1).bool()
        x = torch.where(f[:, None, None, None], x.flip(-1), x)
    return x.contiguous()


class IndexedImages(Dataset):
    """``(image_uint8, label, index)`` from tensors held in memory."""

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
    """Indices (train, val) with ``round(fraction * n_c)`` images of each class c in val."""
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

    def __init__(self, data_dir: str = "data", batch_size: int = 128, num_workers: int = 0,
                 val_split: float = 0.1, seed: int | None = None, split_seed: int = 0,
                 random_crop: bool = True, crop_padding: int = 4, horizontal_flip: bool = True,
                 normalize: bool = True, eval_batch_size: int | None = None, download: bool = True,
                 pin_memory: bool = True) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= val_split < 1.0:
            raise ValueError(f"val_split must be in [0, 1), got {val_split}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        self.data_dir = str(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_split = val_split
        self.seed = seed
        self.split_seed = split_seed
        self.random_crop = random_crop
        self.crop_padding = crop_padding
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
        """uint8 batch -> float batch: augmentation (if ``train``) then normalisation."""
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


# ---------------------------------------------------------------------------------------
# Synthetic


class SyntheticDataModule(ImageDataModule):
    """A learnable, procedurally generated 10-class image set made in memory from
    ``split_seed``: each class is a smooth random colour pattern; an image is its class
    pattern, randomly shifted and scaled in contrast, plus Gaussian noise.

    For tests and smoke runs only: it is *not* a stand-in for real results, and says so
    (``synthetic = True``; ``describe()["note"]``).
    """

    name = "synthetic"
    synthetic = True

    def __init__(self, num_classes: int = 10, image_size: int = 32, num_train: int = 1000, num_test: int = 200,
                 noise: float = 0.25, data_dir: str = "data", batch_size: int = 64, num_workers: int = 0,
                 val_split: float = 0.1, seed: int | None = None, split_seed: int = 0, random_crop: bool = True,
                 crop_padding: int = 4, horizontal_flip: bool = True, normalize: bool = True,
                 eval_batch_size: int | None = None, download: bool = True, pin_memory: bool = True) -> None:
        super().__init__(data_dir=data_dir, batch_size=batch_size, num_workers=num_workers, val_split=val_split,
                         seed=seed, split_seed=split_seed, random_crop=random_crop, crop_padding=crop_padding,
                         horizontal_flip=horizontal_flip, normalize=normalize, eval_batch_size=eval_batch_size,
                         download=download, pin_memory=pin_memory)
        if num_classes < 2 or image_size < 4 or num_train < num_classes or num_test < 1:
            raise ValueError("synthetic data needs num_classes >= 2, image_size >= 4, num_train >= num_classes, "
                             "num_test >= 1")
        self.num_classes = num_classes
        self.image_size = image_size
        self.num_train = self.train_images = num_train
        self.num_test = self.test_images = num_test
        self.noise = noise

    def _generate(self, n: int, g: torch.Generator, protos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.image_size
        labels = torch.arange(n) % self.num_classes
        labels = labels[torch.randperm(n, generator=g)]
        x = protos[labels]  # (n, 3, s, s) in [0, 1]
        shifts = torch.randint(-s // 8, s // 8 + 1, (n, 2), generator=g)
        x = torch.stack([torch.roll(img, (int(a), int(b)), dims=(1, 2)) for img, (a, b) in zip(x, shifts)])
        contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)
        x = 0.5 + (x - 0.5) * contrast + self.noise * torch.randn(x.shape, generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels

    def load_arrays(self):
        g = torch.Generator().manual_seed(self.split_seed)
        low = torch.rand(self.num_classes, 3, 4, 4, generator=g)
        protos = F.interpolate(low, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        protos = (protos - protos.amin(dim=(1, 2, 3), keepdim=True)) / (
            protos.amax(dim=(1, 2, 3), keepdim=True) - protos.amin(dim=(1, 2, 3), keepdim=True) + 1e-6)
        x_tr, y_tr = self._generate(self.num_train, g, protos)
        x_te, y_te = self._generate(self.num_test, g, protos)
        return x_tr, y_tr, x_te, y_te


# ---------------------------------------------------------------------------------------
# CIFAR


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


class _CIFARBase(ImageDataModule):
    archive_key = ""
    train_files: list[str] = []
    test_files: list[str] = []
    label_key = b"labels"

    @property
    def folder(self) -> str:
        return os.path.join(self.data_dir, ARCHIVES[self.archive_key].folder)

    def _how_to(self) -> str:
        return ""

    def prepare_data(self) -> None:
        fetch(ARCHIVES[self.archive_key], self.data_dir, download=self.download, how_to=self._how_to())

    def load_arrays(self):
        self.prepare_data()  # no-op when present; makes the module usable without a Trainer
        x_tr, y_tr = load_cifar_batches(self.folder, self.train_files, self.label_key)
        x_te, y_te = load_cifar_batches(self.folder, self.test_files, self.label_key)
        return x_tr, y_tr, x_te, y_te


class CIFAR10DataModule(_CIFARBase):
    """CIFAR-10 from the official python archive (or an extracted ``cifar-10-batches-py/``
    in ``data_dir``; ``../shared/datasets/make_cifar10.py DATA_DIR`` writes one)."""

    name = "cifar10"
    num_classes = 10
    train_images, test_images = 50_000, 10_000
    image_size = 32
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    archive_key = "cifar10"
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    test_files = ["test_batch"]
    label_key = b"labels"

    def _how_to(self) -> str:
        return (f"(In this project's dev setup: `python ../shared/datasets/make_cifar10.py {self.data_dir}` "
                f"writes cifar-10-batches-py/.)")


class CIFAR100DataModule(_CIFARBase):
    """CIFAR-100 (fine labels) from the official python archive or an extracted
    ``cifar-100-python/`` in ``data_dir``."""

    name = "cifar100"
    num_classes = 100
    train_images, test_images = 50_000, 10_000
    image_size = 32
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    archive_key = "cifar100"
    train_files = ["train"]
    test_files = ["test"]
    label_key = b"fine_labels"


# ---------------------------------------------------------------------------------------
# Tiny-ImageNet

TINY_CACHE_VERSION = 1
TINY_CACHE_NAME = "uint8_cache.pt"


def _read_jpeg(path: str, size: int) -> np.ndarray:
    from PIL import Image

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

    @property
    def folder(self) -> str:
        return os.path.join(self.data_dir, ARCHIVES["tinyimagenet"].folder)

    @property
    def cache_path(self) -> str:
        return os.path.join(self.folder, TINY_CACHE_NAME)

    def _index(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]], str]:
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
                x[i] = _read_jpeg(os.path.join(self.folder, rel), s)
            return torch.from_numpy(x), torch.tensor([y for _, y in items], dtype=torch.long)

        log.info("decoding %d Tiny-ImageNet JPEGs into %s (once)", len(train) + len(val), self.cache_path)
        train_x, train_y = decode(train)
        test_x, test_y = decode(val)
        data = {"fingerprint": fingerprint, "train_x": train_x, "train_y": train_y, "test_x": test_x,
                "test_y": test_y}
        tmp = f"{self.cache_path}.tmp-{os.getpid()}"
        try:
            torch.save(data, tmp)
            os.replace(tmp, self.cache_path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return data

    def prepare_data(self) -> None:
        fetch(ARCHIVES["tinyimagenet"], self.data_dir, download=self.download)
        self._build_cache()

    def load_arrays(self):
        fetch(ARCHIVES["tinyimagenet"], self.data_dir, download=self.download)
        data = self._build_cache()  # reads the cache prepare_data wrote (checks it first)
        return data["train_x"], data["train_y"], data["test_x"], data["test_y"]


DATAMODULES: dict[str, type[ImageDataModule]] = {
    "synthetic": SyntheticDataModule,
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "tinyimagenet": TinyImageNetDataModule,
}


def build_datamodule(name: str, **kwargs: Any) -> ImageDataModule:
    """A DataModule by dataset name (``synthetic``, ``cifar10``, ``cifar100``, ``tinyimagenet``)."""
    try:
        cls = DATAMODULES[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATAMODULES)}") from None
    return cls(**kwargs)


__all__ = ["ImageDataModule", "SyntheticDataModule", "CIFAR10DataModule", "CIFAR100DataModule",
           "TinyImageNetDataModule", "DATAMODULES", "ARCHIVES", "build_datamodule", "random_crop_flip",
           "stratified_split", "DatasetError"]
