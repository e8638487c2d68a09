"""Atomic outputs: all or nothing, with the permissions a plain write would give."""

from __future__ import annotations

import os
import stat

import pytest

from mmentail.io_utils import atomic_directory, atomic_write_json


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_outputs_get_the_permissions_of_a_plain_write(tmp_path):
    atomic_write_json(tmp_path / "metrics.json", {"accuracy": 1.0})
    with atomic_directory(tmp_path / "export") as tmp:
        (tmp / "saved_model.pb").write_bytes(b"x")
    assert _mode(tmp_path / "metrics.json") == 0o666 & ~_umask()
    assert _mode(tmp_path / "export") == 0o777 & ~_umask()


def test_a_failed_write_leaves_the_old_output(tmp_path):
    target = tmp_path / "export"
    with atomic_directory(target) as tmp:
        (tmp / "saved_model.pb").write_bytes(b"good")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "saved_model.pb").write_bytes(b"half")
        raise RuntimeError("the export failed")
    assert (target / "saved_model.pb").read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
