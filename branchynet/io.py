"""Atomic file writes (a result or checkpoint is either the old file or the new one) and
one writer per results folder."""
import json
import os
import tempfile
from contextlib import contextmanager

try:
    import fcntl
except ImportError:  # not a POSIX system: folders are not locked
    fcntl = None


class FolderInUse(RuntimeError):
    """Another process holds the folder (``folder_lock``)."""


@contextmanager
def folder_lock(folder):
    """Hold ``folder`` (made if missing) for one process during the block, so that two
    runs never write into one folder: a second process asking meanwhile gets
    ``FolderInUse`` at once. The lock is the operating system's advisory lock on the
    folder itself (no lock file), released however the process ends. A folder the block
    made and left empty is removed."""
    made = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FolderInUse(f"{folder} is in use by another run: wait for it to end, "
                                  "or give another folder") from None
        yield
    finally:
        os.close(fd)
        if made and not os.listdir(folder):
            os.rmdir(folder)


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; move it into place if the block succeeds,
    with the permissions a plain ``open(path, 'w')`` gives (``path``'s own if it exists,
    else 0o666 less the umask), not ``mkstemp``'s private 0o600."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _mode_of(path))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _mode_of(path):
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json(path, obj):
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _json_default(obj):
    # NumPy scalars and arrays appear throughout results; store them as plain JSON.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in JSON")
