"""DataModules: fixtures in the official layouts, downloads, md5, truncation, caches,
batched augmentation."""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from lightning_modules import data as D
from lightning_modules.data import tinyimagenet
from lightning_modules.download import Archive, DatasetError, fetch

MODULES = {"cifar10": D.CIFAR10DataModule, "cifar100": D.CIFAR100DataModule, "tinyimagenet": D.TinyImageNetDataModule}


def md5(path) -> str:
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def leftovers(folder) -> list[str]:
    """Temporary files/folders our download/extract code could leave behind."""
    return [n for n in os.listdir(folder) if n.startswith(".") or n.endswith((".part", ".tmp"))]


# ---------------------------------------------------------------------------- fixtures


def write_cifar(root, kind: str, n_train: int = 30, n_test: int = 10, seed: int = 0) -> dict:
    """Write cifar-10-batches-py/ or cifar-100-python/ (official pickles) under root."""
    rng = np.random.default_rng(seed)
    classes = 10 if kind == "cifar10" else 100
    key = b"labels" if kind == "cifar10" else b"fine_labels"
    folder = os.path.join(root, "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
    os.makedirs(folder)
    out = {}

    def batch(name, n):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, classes, n)]
        d = {b"data": x, key: y, b"filenames": [f"{name}_{i}.png".encode() for i in range(n)],
             b"batch_label": name.encode()}
        if kind == "cifar100":
            d[b"coarse_labels"] = [v // 5 for v in y]
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(d, f, protocol=2)
        out[name] = (x, y)

    if kind == "cifar10":
        for i in range(1, 6):
            batch(f"data_batch_{i}", n_train // 5)
        batch("test_batch", n_test)
        with open(os.path.join(folder, "batches.meta"), "wb") as f:
            pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    else:
        batch("train", n_train)
        batch("test", n_test)
        with open(os.path.join(folder, "meta"), "wb") as f:
            pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    return out


def make_tar(src_root, folder, dest) -> str:
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(os.path.join(src_root, folder), arcname=folder)
    return dest


def write_tiny(root, per_class: int = 1, seed: int = 0) -> list[str]:
    """A tiny-imagenet-200/ tree with 200 wnids, per_class train JPEGs each, 200 val JPEGs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = os.path.join(root, "tiny-imagenet-200")
    wnids = [f"n{i:08d}" for i in range(200)]
    os.makedirs(os.path.join(base, "val", "images"))
    with open(os.path.join(base, "wnids.txt"), "w") as f:
        f.write("\n".join(wnids) + "\n")
    for w in wnids:
        d = os.path.join(base, "train", w, "images")
        os.makedirs(d)
        for j in range(per_class):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(os.path.join(d, f"{w}_{j}.JPEG"))
    lines = []
    for i in range(200):
        name = f"val_{i}.JPEG"
        img = rng.integers(0, 256, (64, 64), dtype=np.uint8)  # grayscale: must become RGB
        Image.fromarray(img, mode="L").save(os.path.join(base, "val", "images", name))
        lines.append(f"{name}\t{wnids[(i * 7) % 200]}\t0\t0\t63\t63")
    with open(os.path.join(base, "val", "val_annotations.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    os.makedirs(os.path.join(base, "test", "images"))
    return wnids


def zip_tree(src_root, folder, dest) -> str:
    with zipfile.ZipFile(dest, "w") as zf:
        for dirpath, _, files in os.walk(os.path.join(src_root, folder)):
            for n in files:
                p = os.path.join(dirpath, n)
                zf.write(p, os.path.relpath(p, src_root))
    return dest


@pytest.fixture
def archives(monkeypatch):
    """Point a DataModule's archive at a test fixture: returns a setter(key, path, md5=None)."""

    def set_archive(key, path, md5sum=None):
        cls = MODULES[key]
        a = cls.archive
        monkeypatch.setattr(cls, "archive", Archive("file://" + os.path.abspath(path), md5sum or md5(path),
                                                    a.filename, a.folder))

    return set_archive


# ---------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("kind,cls", [("cifar10", D.CIFAR10DataModule), ("cifar100", D.CIFAR100DataModule)])
def test_cifar_download_extract_load(tmp_path, archives, kind, cls):
    src = tmp_path / "src"
    ref = write_cifar(src, kind)
    folder = cls.archive.folder
    tgz = make_tar(src, folder, tmp_path / "archive.tar.gz")
    archives(kind, tgz)
    data_dir = tmp_path / "data"
    dm = cls(data_dir=str(data_dir), batch_size=8, val_split=0.0)
    dm.prepare_data()
    assert (data_dir / folder).is_dir() and (data_dir / cls.archive.filename).is_file()
    assert leftovers(data_dir) == []
    dm.setup("fit")
    train_names = [f"data_batch_{i}" for i in range(1, 6)] if kind == "cifar10" else ["train"]
    test_name = "test_batch" if kind == "cifar10" else "test"
    x_ref = np.concatenate([ref[n][0] for n in train_names]).reshape(-1, 3, 32, 32)
    y_ref = sum((ref[n][1] for n in train_names), [])
    assert dm.train_set.images.dtype == torch.uint8 and tuple(dm.train_set.images.shape) == x_ref.shape
    assert torch.equal(dm.train_set.images, torch.from_numpy(x_ref))
    assert dm.train_set.labels.tolist() == y_ref
    assert torch.equal(dm.test_set.images, torch.from_numpy(ref[test_name][0].reshape(-1, 3, 32, 32)))
    assert dm.val_set is dm.test_set and not dm.has_test_set
    # class count and image size as the archive's own metadata and images say
    meta_name, names_key = ("batches.meta", b"label_names") if kind == "cifar10" else ("meta", b"fine_label_names")
    with open(data_dir / folder / meta_name, "rb") as f:
        assert dm.num_classes == len(pickle.load(f)[names_key])
    assert dm.image_size == dm.train_set.images.shape[-1] == dm.train_set.images.shape[-2]
    # A second module with the folder present does not need the archive any more.
    os.remove(data_dir / cls.archive.filename)
    dm2 = cls(data_dir=str(data_dir), val_split=0.2)
    dm2.setup()
    assert len(dm2.train_set) + len(dm2.val_set) == len(y_ref) and dm2.has_test_set
    x, y, idx = next(iter(dm2.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32) and y.dtype == torch.long


def test_extracted_folder_is_used_without_archive(tmp_path, archives):
    write_cifar(tmp_path, "cifar10")  # an extracted cifar-10-batches-py/, no archive
    archives("cifar10", tmp_path / "nonexistent.tar.gz", "0" * 32)
    dm = D.CIFAR10DataModule(data_dir=str(tmp_path), download=False)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 30


def test_wrong_md5_download_leaves_nothing(tmp_path, archives):
    src = tmp_path / "src"
    write_cifar(src, "cifar10")
    tgz = make_tar(src, "cifar-10-batches-py", tmp_path / "archive.tar.gz")
    archives("cifar10", tgz, "0123456789abcdef0123456789abcdef")
    data_dir = tmp_path / "data"
    with pytest.raises(DatasetError, match="md5 mismatch.*expected 0123456789abcdef"):
        D.CIFAR10DataModule(data_dir=str(data_dir)).prepare_data()
    assert os.listdir(data_dir) == []


def test_local_archive_with_wrong_md5(tmp_path, archives):
    src = tmp_path / "src"
    write_cifar(src, "cifar10")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    tgz = make_tar(src, "cifar-10-batches-py", data_dir / "cifar-10-python.tar.gz")
    archives("cifar10", tgz, "f" * 32)
    with pytest.raises(DatasetError, match="corrupt or incomplete; delete it"):
        D.CIFAR10DataModule(data_dir=str(data_dir)).prepare_data()
    assert not (data_dir / "cifar-10-batches-py").exists() and leftovers(data_dir) == []


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_truncated_archive_leaves_nothing(tmp_path, fmt):
    src = tmp_path / "src"
    if fmt == "tar":
        write_cifar(src, "cifar100", n_train=200)
        full = make_tar(src, "cifar-100-python", tmp_path / "full.tar.gz")
        folder = "cifar-100-python"
    else:
        write_tiny(src)
        full = zip_tree(src, "tiny-imagenet-200", tmp_path / "full.zip")
        folder = "tiny-imagenet-200"
    blob = open(full, "rb").read()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    cut = data_dir / ("a.tar.gz" if fmt == "tar" else "a.zip")
    cut.write_bytes(blob[: len(blob) * 2 // 3])
    # Even when the (truncated) file's md5 is what we were told, extraction fails cleanly.
    archive = Archive("file:///nowhere", md5(cut), cut.name, folder)
    with pytest.raises(DatasetError, match="truncated or corrupt|not contain the expected folder|corrupt member"):
        fetch(archive, str(data_dir))
    assert not (data_dir / folder).exists()
    assert leftovers(data_dir) == []


def test_missing_dataset_without_network_says_where_to_put_it(tmp_path, archives):
    archives("cifar10", tmp_path / "missing.tar.gz", "0" * 32)  # file:// URL to a missing file
    data_dir = tmp_path / "data"
    with pytest.raises(DatasetError) as err:
        D.CIFAR10DataModule(data_dir=str(data_dir)).prepare_data()
    msg = str(err.value)
    assert "could not download" in msg and str(data_dir) in msg and "cifar-10-batches-py" in msg
    assert "cifar-10-python.tar.gz" in msg and "missing.tar.gz" in msg  # what to get, and from where
    assert "../shared" not in msg and "make_cifar10" not in msg  # no paths of the project's development machines
    with pytest.raises(DatasetError, match="download=False"):
        D.CIFAR100DataModule(data_dir=str(data_dir), download=False).setup()
    assert leftovers(data_dir) == []


def test_corrupt_cifar_pickle(tmp_path):
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DatasetError, match="data_batch_3"):
        D.CIFAR10DataModule(data_dir=str(tmp_path), download=False).setup()


# ---------------------------------------------------------------------------- Tiny-ImageNet


def test_tinyimagenet_zip_cache_and_rebuild(tmp_path, archives, monkeypatch):
    src = tmp_path / "src"
    wnids = write_tiny(src, per_class=2)
    archives("tinyimagenet", zip_tree(src, "tiny-imagenet-200", tmp_path / "t.zip"))
    data_dir = tmp_path / "data"
    dm = D.TinyImageNetDataModule(data_dir=str(data_dir), val_split=0.5)
    dm.prepare_data()
    cache = data_dir / "tiny-imagenet-200" / D.TINY_CACHE_NAME
    assert cache.is_file() and leftovers(data_dir) == []
    assert [n for n in os.listdir(cache.parent) if "tmp" in n] == []
    dm.setup()
    assert dm.num_classes == len(wnids) and dm.image_size == dm.test_set.images.shape[-1] and dm.has_test_set
    assert len(dm.train_set) == 200 and len(dm.val_set) == 200 and len(dm.test_set) == 200
    assert dm.test_set.images.shape[1:] == (3, 64, 64) and dm.test_set.images.dtype == torch.uint8
    # val_annotations labels; grayscale JPEGs became 3 equal channels
    assert dm.test_set.labels[:3].tolist() == [0, 7, 14]
    img = dm.test_set.images[0].int()
    assert (img[0] - img[1]).abs().max() <= 2
    from PIL import Image
    ref = np.asarray(Image.open(src / "tiny-imagenet-200/train" / wnids[0] / "images" / f"{wnids[0]}_0.JPEG"))
    x_tr = torch.cat([dm.train_set.images, dm.val_set.images])
    assert any(torch.equal(x, torch.from_numpy(ref.transpose(2, 0, 1).copy())) for x in x_tr)

    # The cache is used: decoding is not needed any more.
    def no_decode(*a, **k):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(tinyimagenet, "read_jpeg", no_decode)
    D.TinyImageNetDataModule(data_dir=str(data_dir)).setup()
    monkeypatch.undo()

    # A corrupt (truncated) cache is rebuilt.
    blob = cache.read_bytes()
    cache.write_bytes(blob[: len(blob) // 2])
    dm3 = D.TinyImageNetDataModule(data_dir=str(data_dir), val_split=0.5)
    dm3.setup()
    assert torch.equal(dm3.test_set.images, dm.test_set.images)
    assert cache.stat().st_size == len(blob)

    # A stale cache (images changed) is rebuilt.
    from PIL import Image as _I
    p = data_dir / "tiny-imagenet-200/train" / wnids[5] / "images" / "extra.JPEG"
    _I.fromarray(np.zeros((64, 64, 3), np.uint8)).save(p)
    dm4 = D.TinyImageNetDataModule(data_dir=str(data_dir), val_split=0.0)
    dm4.setup()
    assert len(dm4.train_set) == 401


def test_tinyimagenet_incomplete_tree(tmp_path):
    write_tiny(tmp_path)
    os.remove(tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt")
    with pytest.raises(DatasetError, match="val_annotations.txt"):
        D.TinyImageNetDataModule(data_dir=str(tmp_path), download=False).setup()


# ---------------------------------------------------------------------------- synthetic + splits


def test_synthetic_is_deterministic_learnable_and_labelled_synthetic():
    a = D.SyntheticDataModule(num_train=400, num_test=100, val_split=0.25, split_seed=3)
    b = D.SyntheticDataModule(num_train=400, num_test=100, val_split=0.25, split_seed=3)
    a.setup()
    b.setup()
    assert torch.equal(a.train_set.images, b.train_set.images)
    assert a.synthetic and a.describe()["synthetic"] and "synthetic" in a.describe()["note"]
    assert a.describe()["num_train"] == 300 and a.describe()["num_val"] == 100 and a.describe()["num_test"] == 100
    # learnable: nearest class-mean on raw pixels is far above chance
    x, y = a.train_set.images.float().flatten(1), a.train_set.labels
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    xt, yt = a.test_set.images.float().flatten(1), a.test_set.labels
    acc = (torch.cdist(xt, means).argmin(1) == yt).float().mean().item()
    assert acc > 0.5
    c = D.SyntheticDataModule(num_train=400, num_test=100, split_seed=4)
    c.setup()
    assert not torch.equal(a.test_set.images, c.test_set.images)


def test_stratified_split():
    labels = torch.arange(100) % 4
    tr, va = D.stratified_split(labels, 0.2, seed=0)
    assert len(va) == 20 and len(tr) == 80 and set(tr.tolist()).isdisjoint(va.tolist())
    assert torch.bincount(labels[va]).tolist() == [5, 5, 5, 5]
    tr2, va2 = D.stratified_split(labels, 0.2, seed=0)
    assert torch.equal(va, va2)
    with pytest.raises(ValueError, match="val_split"):
        D.stratified_split(labels, 1.0, 0)


def test_epoch_order_depends_only_on_seed_and_epoch():
    dm = D.SyntheticDataModule(num_train=100, num_test=10, seed=5, batch_size=10)
    dm.setup()
    l1, l2 = dm.train_dataloader(), dm.train_dataloader()
    for loader in (l1, l2):
        loader.sampler.set_epoch(3)
    o1 = torch.cat([b[2] for b in l1])
    torch.manual_seed(123)  # the global RNG plays no part
    o2 = torch.cat([b[2] for b in l2])
    assert torch.equal(o1, o2) and sorted(o1.tolist()) == list(range(len(dm.train_set)))
    l2.sampler.set_epoch(4)
    assert not torch.equal(o1, torch.cat([b[2] for b in l2]))


# ---------------------------------------------------------------------------- augmentation


def test_random_crop_flip_batched_matches_per_image_reference():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    idx = torch.arange(100, 116)
    out = D.random_crop_flip(x, idx, seed=1, epoch=2, padding=2)
    assert out.shape == x.shape and out.dtype == torch.uint8
    dy = D.augmentation_bits(1, 2, idx, 0) % 5
    dx = D.augmentation_bits(1, 2, idx, 1) % 5
    fl = (D.augmentation_bits(1, 2, idx, 2) >> 11) & 1
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        ref = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
        if fl[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)
    assert 0 < int(fl.sum()) < 16 and len(set(dy.tolist())) > 1
    # deterministic in (seed, epoch, index); changes with the epoch; order-independent
    assert torch.equal(D.random_crop_flip(x, idx, 1, 2, 2), out)
    perm = torch.randperm(16)
    assert torch.equal(D.random_crop_flip(x[perm], idx[perm], 1, 2, 2), out[perm])
    assert not torch.equal(D.random_crop_flip(x, idx, 1, 3, 2), out)
    # no padding, no flip: identity
    assert torch.equal(D.random_crop_flip(x, idx, 1, 2, padding=0, flip=False), x)


def test_transform_batch_normalises_and_augments_only_in_training():
    dm = D.CIFAR10DataModule()
    x = torch.full((4, 3, 32, 32), 128, dtype=torch.uint8)
    idx = torch.arange(4)
    ev = dm.transform_batch(x, idx, train=False)
    mean = torch.tensor(dm.mean).view(1, 3, 1, 1)
    std = torch.tensor(dm.std).view(1, 3, 1, 1)
    assert ev.dtype == torch.float32 and torch.allclose(ev, (128 / 255 - mean) / std, atol=1e-5)
    tr = dm.transform_batch(x, idx, train=True, epoch=0)
    assert (tr < ev.min() - 1e-3).any()  # some zero padding came in
