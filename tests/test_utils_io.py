"""utils_io.py: atomic writes leave the old file or the new one, never a torn one; JSON read
back with one-line errors."""

import errno
import json
import os

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


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES])
def test_a_refused_write_is_one_line_naming_the_file_and_keeps_the_old_one(tmp_path, code):
    """A full disk, a quota, a read-only or unwritable folder: one FileError line that names
    the file; the file as it was before, no temporary left."""
    path = tmp_path / "metrics.json"
    write_json(path, {"epochs": [1]})

    def disk_full(f):
        f.write(b"{\"epochs\": [1, 2")
        raise OSError(code, os.strerror(code))

    with pytest.raises(FileError) as err:
        atomic_write(path, disk_full)
    assert str(path) in str(err.value) and os.strerror(code) in str(err.value) and "\n" not in str(err.value)
    assert json.loads(path.read_text()) == {"epochs": [1]} and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_other_errors_of_the_writer_are_its_own(tmp_path):
    """A reader's error inside the writer (a broken download stream) is not called a full disk."""
    def broken_source(f):
        raise ConnectionResetError(errno.ECONNRESET, "reset")

    with pytest.raises(ConnectionResetError):
        atomic_write(tmp_path / "x.h5", broken_source)


def test_a_full_disk_during_training_is_one_line_and_leaves_the_earlier_files(root, tmp_path, monkeypatch, capsys):
    import main
    import utils_io
    real_fsync, calls = os.fsync, []

    def fsync_fills_the_disk(fd):
        calls.append(fd)
        if len(calls) >= 4:  # config.json, provenance.json, then the first checkpoint
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(utils_io.os, "fsync", fsync_fills_the_disk)
    with pytest.raises(SystemExit) as exit_:
        main.main(["--dataset_name", "mts_xor", "--n_hid", "4", "--n_epochs", "2", "--batch_size", "512",
                   "--results_dir", str(tmp_path), "--save_dir_name", "run", "--progress", "false",
                   "--compilation_cache", "false"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code != 0 and len(err.splitlines()) == 1 and "No space left on device" in err
    assert "cannot write" in err and str(tmp_path / "run") in err
    folder = tmp_path / "run"
    assert json.loads((folder / "config.json").read_text())["n_hid"] == 4
    assert isinstance(json.loads((folder / "provenance.json").read_text()), list)
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_an_atomic_folder_appears_whole_or_not_at_all(tmp_path):
    from utils_io import atomic_folder
    dest = tmp_path / "cache"
    with pytest.raises(RuntimeError), atomic_folder(dest) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_folder(dest) as tmp:
        (tmp / "a").write_text("1")
    assert (dest / "a").read_text() == "1" and oct(dest.stat().st_mode & 0o777) == oct(0o755)
    with pytest.raises(OSError), atomic_folder(dest) as tmp:  # never over an existing folder...
        (tmp / "b").write_text("2")
    with atomic_folder(dest, replace=True) as tmp:  # ...unless asked to replace it
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"] and [p.name for p in dest.iterdir()] == ["b"]


def test_a_lock_is_held_until_its_file_is_closed(tmp_path):
    from utils_io import flock, locked
    held = flock(tmp_path / ".lock")
    with pytest.raises(BlockingIOError):
        flock(tmp_path / ".lock", wait=False)
    held.close()
    with locked(tmp_path / ".lock"):
        with pytest.raises(BlockingIOError):
            flock(tmp_path / ".lock", wait=False)
    flock(tmp_path / ".lock", wait=False).close()
