"""utils_io.py: atomic writes leave the old file or the new one, never a torn one; JSON read
back with one-line errors."""

import json

import pytest

from utils_io import FileError, atomic_path, atomic_write, read_json, write_json


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"x": 1})
    write_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")

    def half_then_fail(f):
        f.write(b"new, half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "b.h5") as tmp:
        tmp.write_bytes(b"x")
        raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


@pytest.mark.parametrize("content,reason", [(b"{broken", "invalid JSON"), (b"\xff\xfe", "not a text file")])
def test_read_json_errors_are_one_line(tmp_path, content, reason):
    path = tmp_path / "x.json"
    path.write_bytes(content)
    with pytest.raises(FileError) as err:
        read_json(path, "run metrics", "delete it")
    assert "\n" not in str(err.value) and str(path) in str(err.value) and reason in str(err.value)
    with pytest.raises(FileError, match="cannot read it"):
        read_json(tmp_path / "missing.json")
