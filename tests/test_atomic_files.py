"""``odconv.atomic_files``: a reader sees the old file or the complete new one, never part of
one; a failed write leaves the destination as it was and no temporary file behind."""

from __future__ import annotations

import json
import math
import os
import stat

import pytest

from odconv.atomic_files import atomic_output, write_json_atomic


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_json_atomic_creates_parents_and_passes_json_options(tmp_path):
    path = tmp_path / "a" / "b" / "record.json"
    write_json_atomic(path, {"b": 1, "a": [1.5, None]}, indent=2, sort_keys=True)
    assert path.read_text() == json.dumps({"a": [1.5, None], "b": 1}, indent=2, sort_keys=True)
    write_json_atomic(str(path), {"nan": float("nan")}, default=str)  # str paths too; replaces the file
    assert math.isnan(json.loads(path.read_text())["nan"])
    assert _names(path.parent) == ["record.json"]


def test_unserialisable_data_keeps_the_old_file(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"ok": True})
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json_atomic(path, {"ok": True, "bad": object()})  # fails after part of the document is written
    assert json.loads(path.read_text()) == {"ok": True}
    assert _names(tmp_path) == ["x.json"]


def test_the_destination_changes_only_when_the_block_ends(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old")
    with atomic_output(path, "wb", suffix=".part") as f:
        f.write(b"new contents")
        f.flush()
        assert path.read_bytes() == b"old"  # a reader meanwhile sees the old file
        tmp = [n for n in _names(tmp_path) if n != "data.bin"]
        assert len(tmp) == 1 and tmp[0].startswith(".data.bin.") and tmp[0].endswith(".part")
    assert path.read_bytes() == b"new contents"
    assert _names(tmp_path) == ["data.bin"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_exception_in_the_block_removes_the_temporary_file(tmp_path, error):
    path = tmp_path / "out.txt"
    with pytest.raises(type(error)):
        with atomic_output(path) as f:
            f.write("half")
            raise error
    assert _names(tmp_path) == []


def test_new_files_get_the_usual_permissions(tmp_path):
    """Created like ``open(path, "w")`` would (0o666 less the umask), not 0o600 as mkstemp."""
    umask = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "p.json", [])
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "p.json").stat().st_mode) == 0o644


def test_only_write_modes(tmp_path):
    for mode in ("a", "r+", "w+", "x"):
        with pytest.raises(ValueError, match="mode must be one of w, wt, wb"):
            with atomic_output(tmp_path / "f", mode):
                pass
    assert _names(tmp_path) == []
