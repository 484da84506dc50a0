"""bneck_common: the atomic writes every package's state goes through."""

import os

import pytest

from bneck_common.paths import atomic_dir, atomic_write


def test_atomic_write_streams_and_leaves_nothing_behind_when_the_writer_fails(tmp_path):
    target = tmp_path / "x.bin"
    atomic_write(target, lambda f: [f.write(b"ab"), f.write(b"cd")])
    assert target.read_bytes() == b"abcd"

    def broken(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"abcd"  # the old content, whole
    assert sorted(os.listdir(tmp_path)) == ["x.bin"]  # no temp file left


def test_atomic_dir_replaces_a_directory_whole_and_cleans_a_crashed_attempt(tmp_path):
    final = tmp_path / "iter_0001"
    atomic_dir(final, {"spec.json": b"{}", "weights.pt": b"w1"})
    assert {p.name: p.read_bytes() for p in final.iterdir()} == {"spec.json": b"{}", "weights.pt": b"w1"}
    (tmp_path / ".iter_0001.crashed.tmp").mkdir()  # what a kill in the middle of a write leaves
    atomic_dir(final, {"weights.pt": b"w2"})
    assert {p.name: p.read_bytes() for p in final.iterdir()} == {"weights.pt": b"w2"}
    assert sorted(os.listdir(tmp_path)) == ["iter_0001"]
