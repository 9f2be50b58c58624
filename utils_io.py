"""Files that are never half-written, and JSON read back with one-line errors.

Every file a run or a sweep writes goes through `atomic_write`: written under a temporary
name in the same folder, flushed to disk, then renamed over the real name, so that a kill at
any moment leaves either the old file or the new one, never a torn one.
"""

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

# a write the system refuses: full disk or quota, read-only or unwritable folder, file too large
REFUSED_WRITES = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
FILE_MODE = 0o644  # mkstemp's 0600 would hide results and data from the other users of a machine


class FileError(RuntimeError):
    """A file cannot be read as what it should be (unreadable, damaged), or cannot be written
    (full disk, no permission); the message, one line, names the file, what is wrong and what
    to do."""


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path next to `path`, renamed to `path` when the block succeeds and removed
    when it fails (for writers that need a file name, such as h5py). The file `path` held
    before stays as it was unless the whole write succeeded; a write that the system refuses
    (a full disk, no permission) is one FileError naming `path`."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as err:
        if err.errno not in REFUSED_WRITES:
            raise
        raise FileError(f"cannot write {path} ({err.strerror or err}); free some space or make the folder "
                        "writable, then run the same command again") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path, write):
    """`write(f)` on the binary handle of a temporary file, fsync, then rename over `path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_folder(dest, replace: bool = False):
    """A temporary folder beside `dest`, renamed to `dest` when the block succeeds and removed
    when it fails, so that `dest` appears whole or not at all (readable by other users: mode
    0755, where mkdtemp gives 0700). The rename fails (OSError) if `dest` exists, unless
    `replace`: then the old `dest` is swapped out and removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # named after `dest` (shortened: a name of the longest length allowed must get one too)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name[:64]}."))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if replace and dest.exists():
            old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name[:64]}.old."))
            os.replace(dest, old / dest.name)
            os.rename(tmp, dest)
            shutil.rmtree(old)
        else:
            os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left after a rename


def flock(path, wait: bool = True):
    """`path` (created if missing) opened in binary append mode with an exclusive flock, held
    until the file is closed (or the process ends, even by SIGKILL). Without `wait`, a lock
    held elsewhere raises BlockingIOError at once."""
    f = open(path, "a+b")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BaseException:
        f.close()
        raise
    return f


@contextlib.contextmanager
def locked(path):
    """`flock(path)` for the duration of a block."""
    f = flock(path)
    try:
        yield f
    finally:
        f.close()


def write_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def read_json(path, what: str = "JSON file", fix: str = "delete it and run again"):
    """The object in `path`; a missing, unreadable or invalid file raises one FileError line."""
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError:
        raise FileError(f"{path}: not a text file, so not the {what} it should be; {fix}") from None
    except OSError as err:
        raise FileError(f"{path}: cannot read it ({err.strerror or err}); {fix}") from None
    try:
        return json.loads(text)
    except ValueError as err:
        raise FileError(f"{path}: invalid JSON ({err}), so not the {what} it should be; {fix}") from None
