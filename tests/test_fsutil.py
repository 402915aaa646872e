"""Atomic writes: readers see the old content or the new, files get ordinary permissions."""

from __future__ import annotations

import os

import pytest

from canopy.fsutil import atomic_dir, atomic_write_bytes


def test_atomic_write_replaces_and_respects_umask(tmp_path):
    path = tmp_path / "a" / "file.bin"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["file.bin"]


def test_atomic_dir_swaps_in_only_on_success(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as staging:
        (staging / "x").write_text("new")
    assert (target / "x").read_text() == "new"
    with pytest.raises(RuntimeError), atomic_dir(target) as staging:
        (staging / "x").write_text("half")
        raise RuntimeError("failed mid-way")
    assert (target / "x").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_staging_of_a_dead_process_is_removed(tmp_path):
    stale = tmp_path / ".out.staging-999999999-abc"
    stale.mkdir()
    with atomic_dir(tmp_path / "out"):
        pass
    assert not stale.exists()
