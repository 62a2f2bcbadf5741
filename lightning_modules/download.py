"""Fetching dataset archives safely: download to a temporary file, check the md5, rename;
extract into a temporary folder, then rename the finished folder into place.

Nothing half-written is ever left under its final name: a failed or interrupted download
removes its ``.part`` file (only a killed process leaves one, ignored afterwards), a bad md5
or a broken archive raises :class:`DatasetError` and removes what this call wrote. ``file://`` URLs
work (mirrors, tests).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass

from odconv.atomic_files import atomic_output

CHUNK = 1 << 20


class DatasetError(RuntimeError):
    """A dataset is missing, corrupt or cannot be fetched; the message says what to do."""


class DownloadError(DatasetError):
    """The archive could not be fetched (no network, bad URL)."""


@dataclass(frozen=True)
class Archive:
    """An official dataset archive: where it comes from and what it extracts to."""

    url: str
    md5: str
    filename: str  # name of the archive file in data_dir
    folder: str  # top-level folder the archive extracts to


def md5sum(path: str | os.PathLike) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download_file(url: str, dest: str, md5: str | None = None, timeout: float = 60.0) -> str:
    """Download ``url`` to ``dest`` through a temporary ``.part`` file in the same folder
    (:func:`odconv.atomic_files.atomic_output`); check ``md5`` before the final rename.
    Returns ``dest``."""
    with atomic_output(dest, "wb", suffix=".part") as out:
        h = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                for chunk in iter(lambda: resp.read(CHUNK), b""):
                    out.write(chunk)
                    h.update(chunk)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise DownloadError(f"could not download {url}: {err}") from err
        got = h.hexdigest()
        if md5 is not None and got != md5:
            raise DatasetError(f"md5 mismatch for {url}: expected {md5}, got {got} (download corrupted or "
                               f"the file changed upstream); nothing was kept")
    return dest


def _safe_members_zip(zf: zipfile.ZipFile, root: str) -> None:
    for name in zf.namelist():
        target = os.path.realpath(os.path.join(root, name))
        if not target.startswith(os.path.realpath(root) + os.sep):
            raise DatasetError(f"archive member {name!r} would extract outside {root}")


def extract_archive(archive: str, data_dir: str, folder: str) -> str:
    """Extract ``archive`` (tar[.gz] or zip) into ``data_dir`` so that ``data_dir/folder``
    appears complete or not at all. Returns the folder's path."""
    final = os.path.join(data_dir, folder)
    tmp = tempfile.mkdtemp(prefix=f".{folder}.extract-", dir=data_dir)
    try:
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zf:
                    _safe_members_zip(zf, tmp)
                    bad = zf.testzip()
                    if bad is not None:
                        raise DatasetError(f"corrupt member {bad!r} in {archive}")
                    zf.extractall(tmp)
            else:
                with tarfile.open(archive) as tf:
                    tf.extractall(tmp, filter="data")
        except DatasetError:
            raise
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
            raise DatasetError(f"cannot extract {archive} (truncated or corrupt archive: {err}); delete it and "
                               f"download again") from err
        src = os.path.join(tmp, folder)
        if not os.path.isdir(src):
            raise DatasetError(f"{archive} does not contain the expected folder {folder!r} "
                               f"(found: {sorted(os.listdir(tmp))})")
        if os.path.exists(final):  # another process finished first
            return final
        os.replace(src, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch(archive: Archive, data_dir: str, *, download: bool = True, how_to: str = "") -> str:
    """Make ``data_dir/archive.folder`` exist: keep an extracted folder, else extract a local
    archive (md5-checked), else download it (if ``download``). Returns the folder's path."""
    final = os.path.join(data_dir, archive.folder)
    if os.path.isdir(final):
        return final
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, archive.filename)
    if os.path.isfile(path):
        got = md5sum(path)
        if got != archive.md5:
            raise DatasetError(f"{path} has md5 {got}, expected {archive.md5}: the file is corrupt or incomplete; "
                               f"delete it (it will be downloaded again from {archive.url})")
    elif not download:
        raise DatasetError(f"{archive.folder}/ not found in {os.path.abspath(data_dir)} and download=False. "
                           f"Put {archive.filename} (from {archive.url}) or the extracted {archive.folder}/ there. "
                           + how_to)
    else:
        try:
            download_file(archive.url, path, archive.md5)
        except DownloadError as err:
            raise DatasetError(f"{err}. Without network, put {archive.filename} (from {archive.url}) or the extracted "
                               f"{archive.folder}/ into {os.path.abspath(data_dir)}. {how_to}") from err
    return extract_archive(path, data_dir, archive.folder)
