"""Where dataset files live, how they are checked, and how missing ones are fetched.

Search order for a dataset's files: the directory given on the command line (or in code),
then ``$BRANCHYNET_DATA``, then a per-user cache (``$XDG_CACHE_HOME/branchynet`` or
``~/.cache/branchynet``). Each root is tried as ``<root>/<dataset>/`` and ``<root>/``.
Missing files are downloaded into the cache, checksum-verified, and moved into place
atomically; a file with the wrong checksum is reported and never used.
"""
import hashlib
import os
import shutil
import tempfile
import urllib.request

ENV_VAR = "BRANCHYNET_DATA"


class DatasetError(RuntimeError):
    """A dataset could not be found, fetched or verified; the message says how to fix it."""


class DatasetValueError(DatasetError, ValueError):
    """An unknown dataset name or option (also a ValueError, as such errors used to be)."""


def cache_dir():
    """The per-user cache directory for datasets and preprocessed arrays."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "branchynet")


def absolute_path(path):
    """``path`` (``~`` expanded) as an absolute, normalised path, relative to the current
    working directory: a folder a user typed, resolved once."""
    return os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def environment_data_dir():
    """``$BRANCHYNET_DATA`` as an absolute path; None when it is unset or empty."""
    value = os.environ.get(ENV_VAR)
    return absolute_path(value) if value else None


def resolve_data_dir(data_dir=None):
    """For a command line, at its start: ``data_dir`` (``--data-dir``) as an absolute path
    (None stays None), and a relative ``$BRANCHYNET_DATA`` made absolute in the
    environment, so every later lookup, record and child process sees the same folder
    whatever the working directory then is."""
    if os.environ.get(ENV_VAR):
        os.environ[ENV_VAR] = environment_data_dir()
    return absolute_path(data_dir) if data_dir else data_dir


def search_roots(data_dir=None):
    """The data roots to search, in priority order (flag > environment > cache)."""
    roots = []
    if data_dir:
        roots.append(absolute_path(data_dir))
    if environment_data_dir():
        roots.append(environment_data_dir())
    roots.append(cache_dir())
    return roots


def file_digest(path, algorithm, chunk=1 << 20):
    """Hex digest of a file's bytes (``algorithm``: a hashlib name), read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def md5sum(path):
    return file_digest(path, "md5")


def sha256sum(path):
    return file_digest(path, "sha256")


def file_record(path):
    """What ``Dataset.info`` records of a file read: absolute path, size and SHA-256."""
    path = os.path.abspath(path)
    return {"path": path, "bytes": os.path.getsize(path), "sha256": sha256sum(path)}


def _candidates(dataset, filename, roots):
    for root in roots:
        yield os.path.join(root, dataset, filename)
        yield os.path.join(root, filename)


def locate(dataset, files, data_dir=None, mirrors=(), how_to="", explain_mismatch=None):
    """Return ``{filename: path}`` for every file in ``files`` (a ``{filename: md5}`` dict).

    Each file is looked up in the search roots; the first copy found is checked against
    its md5. Files found nowhere are downloaded from ``mirrors`` (base URLs tried in order)
    into the cache. Raises DatasetError naming the files, the places searched and how to
    provide them when that fails, and for any file with another md5:
    ``explain_mismatch(path, actual_md5, expected_md5)`` may return the message for such
    a file (e.g. "a valid file of another dataset"), else it is reported as corrupt.
    """
    roots = search_roots(data_dir)
    found, missing = {}, []
    for filename, md5 in files.items():
        path = next((p for p in _candidates(dataset, filename, roots) if os.path.isfile(p)), None)
        if path is None:
            missing.append(filename)
            continue
        _verify(path, md5, explain_mismatch)
        found[filename] = path
    if not missing:
        return found

    target = os.path.join(cache_dir(), dataset)
    errors = []
    for filename in missing:
        path = os.path.join(target, filename)
        try:
            download(filename, files[filename], path, mirrors)
            found[filename] = path
        except DatasetError as err:
            errors.append(str(err))
    if errors:
        searched = "\n".join(f"  {os.path.join(r, dataset)}/ and {r}/" for r in roots)
        still = [f for f in missing if f not in found]
        raise DatasetError(
            f"{dataset}: missing file(s) {', '.join(still)}.\n"
            f"Looked in (command-line --data-dir, then ${ENV_VAR}, then the cache):\n{searched}\n"
            f"Download failed:\n  " + "\n  ".join(errors) + "\n"
            f"To fix: put the files in one of those folders, or pass --data-dir / set {ENV_VAR} "
            f"to the folder holding them. {how_to}".rstrip())
    return found


def _verify(path, md5, explain_mismatch=None):
    actual = md5sum(path)
    if actual != md5:
        message = explain_mismatch(path, actual, md5) if explain_mismatch else None
        if message:
            raise DatasetError(message)
        raise DatasetError(
            f"{path} is corrupt: md5 {actual}, expected {md5}. "
            f"Delete it and provide the official file (or let it be downloaded again).")


def download(filename, md5, path, mirrors, timeout=30):
    """Fetch ``filename`` from the first mirror that serves it with the right md5.

    The file is written to a temporary name beside ``path`` and moved into place only
    once verified, so an interrupted or corrupt download never appears as the file.
    """
    if not mirrors:
        raise DatasetError(f"{filename}: no download mirror is known")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    reasons = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + filename
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix="." + filename + ".")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, out)
            actual = md5sum(tmp)
            if actual != md5:
                reasons.append(f"{url}: wrong md5 {actual}")
                continue
            os.replace(tmp, path)
            return path
        except Exception as err:  # any network or HTTP failure: try the next mirror
            reasons.append(f"{url}: {err}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise DatasetError("; ".join(reasons))
