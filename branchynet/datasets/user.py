"""Datasets of your own: any dataset in MNIST's idx format, and a documented npz format.

Both are described, with a worked example, in ``docs/own_data.md``. In short:

* ``idx``: a folder with the four files ``<train>-images-idx3-ubyte``,
  ``<train>-labels-idx1-ubyte``, ``<test>-images-idx3-ubyte``, ``<test>-labels-idx1-ubyte``
  (each raw or ``.gz``), where ``<train>`` is ``train`` and ``<test>`` is ``t10k`` or
  ``test``, or any pair of prefixes holding ``train`` and ``test``/``t10k`` (e.g.
  ``fashion-train-...``, ``fashion-test-...``). Images (N, H, W) become (N, 1, H, W).
* ``npz``: a ``data.npz`` (or the only ``.npz`` of the folder, or a file named directly)
  with ``train_x``, ``train_y``, ``test_x``, ``test_y`` and optionally ``val_x``/``val_y``,
  ``layout`` ('NCHW' or 'NHWC') and ``label_names``.

Images are uint8 (divided by 255) or floating point (used as stored, as float32); labels
are integers 0..K-1. ``preprocess='standardize'`` then removes the training set's
per-channel mean and divides by its standard deviation. ``Dataset.info`` records every file
read (path, size, SHA-256), the samples, classes, layout, scaling and preprocessing.

Where the data is looked for: with ``data_dir`` only there (the folder and its ``<kind>/``
subfolder, or for npz also a file): for data of your own, falling back to another copy
elsewhere could silently train on other data. Without it, ``$BRANCHYNET_DATA`` then the
per-user cache, each as ``<root>/<kind>/`` and ``<root>/``.
"""
import gzip
import os
import re
import zipfile
import zlib

import numpy as np

from branchynet.datasets._files import (ENV_VAR, DatasetError, DatasetValueError,
                                        absolute_path, cache_dir, environment_data_dir,
                                        file_record)
from branchynet.datasets.base import Dataset

PREPROCESSINGS = ("scale", "standardize")
NPZ_KEYS = ("train_x", "train_y", "test_x", "test_y")
NPZ_OPTIONAL_KEYS = ("val_x", "val_y", "layout", "label_names")
# idx type codes (the third byte of the magic number) and their big-endian dtypes.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_NAME = re.compile(r"^(?P<prefix>.+?)[-_.](?P<kind>images|labels)[-_.]idx(?P<dims>\d)[-_.]ubyte"
                       r"(?P<gz>\.gz)?$", re.IGNORECASE)


class IdxError(ValueError):
    """A file is not a valid idx file (bad magic, truncated, trailing bytes, bad gzip)."""


# -- idx files -----------------------------------------------------------------------------

def _idx_bytes(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise IdxError(f"{path}: a damaged or truncated gzip file ({err})") from None
    return data


def _idx_header(data, path):
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise IdxError(f"{path}: not an idx file (it does not start with the idx magic 0x0000)")
    code, ndim = data[2], data[3]
    if code not in IDX_TYPES:
        raise IdxError(f"{path}: not an idx file (unknown element type 0x{code:02x})")
    if ndim < 1 or len(data) < 4 + 4 * ndim:
        raise IdxError(f"{path}: not an idx file (header of {ndim} dimensions is cut short)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[code])
    expected = 4 + 4 * ndim + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise IdxError(f"{path}: a damaged or truncated idx file ({len(data)} bytes after "
                       f"decompression, its header {shape} {dtype.name} needs {expected})")
    return shape, dtype, 4 + 4 * ndim


def read_idx(path):
    """Read an idx file (raw or gzip-compressed) into a native-endian array.

    Raises IdxError when the file is not a complete, valid idx file.
    """
    data = _idx_bytes(path)
    shape, dtype, offset = _idx_header(data, path)
    return np.frombuffer(data, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def describe_idx(path):
    """``'60000 x 28 x 28 uint8'`` for a valid idx file; raises IdxError for any other file."""
    shape, dtype, _ = _idx_header(_idx_bytes(path), path)
    return " x ".join(map(str, shape)) + " " + dtype.newbyteorder("=").name


def _role(prefix):
    tokens = [t.lower() for t in re.split(r"[-_.]", prefix) if t]
    if any(t.startswith("train") for t in tokens):
        return "train"
    if any(t.startswith("test") or t == "t10k" for t in tokens):
        return "test"
    return None


def find_idx_files(folder):
    """The idx files of ``folder``: ``{'train_x': path, 'train_y': ..., 'test_x': ..., ...}``.

    Returns None when the folder holds no idx-named file; raises DatasetError, saying what
    was found and how to fix it, when they do not make one unambiguous train/test pair.
    """
    if not os.path.isdir(folder):
        return None
    groups = {}
    for name in sorted(os.listdir(folder)):
        match = _IDX_NAME.match(name)
        if match and os.path.isfile(os.path.join(folder, name)):
            key = (match["prefix"], match["kind"].lower())
            groups.setdefault(key, []).append(name)
    if not groups:
        return None
    listing = ", ".join(n for names in groups.values() for n in names)
    for names in groups.values():
        if len(names) > 1:
            raise DatasetError(f"idx: {folder} holds {' and '.join(names)} for the same data. "
                               f"To fix: keep one of them (raw or .gz, not both).")
    pairs = {}
    for prefix in sorted({p for p, _ in groups}):
        if (prefix, "images") in groups and (prefix, "labels") in groups:
            pairs.setdefault(_role(prefix), []).append(prefix)
        else:
            have, lack = (("images", "labels") if (prefix, "images") in groups
                          else ("labels", "images"))
            raise DatasetError(
                f"idx: {folder} holds {prefix} {have} but no {prefix}-{lack}-idx"
                f"{3 if lack == 'images' else 1}-ubyte[.gz] (found: {listing}). "
                f"To fix: add the missing file, or remove the incomplete one.")
    train, test = pairs.get("train", []), pairs.get("test", [])
    if len(train) != 1 or len(test) != 1:
        raise DatasetError(
            f"idx: cannot tell one training and one test set apart in {folder} (found: "
            f"{listing}; training prefixes {train or 'none'}, test prefixes {test or 'none'}). "
            f"To fix: keep exactly one pair named train-*/t10k-* (or <name>-train-* and "
            f"<name>-test-*) per folder, one dataset per folder.")
    paths = {}
    for role, prefix in (("train", train[0]), ("test", test[0])):
        paths[f"{role}_x"] = os.path.join(folder, groups[(prefix, "images")][0])
        paths[f"{role}_y"] = os.path.join(folder, groups[(prefix, "labels")][0])
    return paths


# -- where the data is ---------------------------------------------------------------------

def _places(kind, data_dir):
    if data_dir:
        path = absolute_path(data_dir)
        return [path, os.path.join(path, kind)], True
    roots = []
    if environment_data_dir():
        roots.append(environment_data_dir())
    roots.append(cache_dir())
    return [p for root in roots for p in (os.path.join(root, kind), root)], False


def _npz_in(place):
    """The npz file ``place`` names: itself, its data.npz, or its only .npz file; else None."""
    if os.path.isfile(place):
        return place
    if not os.path.isdir(place):
        return None
    if os.path.isfile(os.path.join(place, "data.npz")):
        return os.path.join(place, "data.npz")
    found = sorted(n for n in os.listdir(place)
                   if n.lower().endswith(".npz") and os.path.isfile(os.path.join(place, n)))
    if len(found) > 1:
        raise DatasetError(f"npz: {place} holds several .npz files ({', '.join(found)}) and no "
                           f"data.npz. To fix: name the one to use, --dataset PATH.npz "
                           f"(or --data-dir PATH.npz), or rename it data.npz.")
    return os.path.join(place, found[0]) if found else None


def locate_user_data(kind, data_dir=None):
    """Where the ``kind`` ('idx' or 'npz') data is: an idx file dict or an npz path.

    Looks only in ``data_dir`` (itself, then ``<data_dir>/<kind>/``) when given, else in
    ``$BRANCHYNET_DATA`` then the cache (``<root>/<kind>/``, then ``<root>/``). Raises
    DatasetError naming the places searched.
    """
    places, explicit = _places(kind, data_dir)
    for place in places:
        found = find_idx_files(place) if kind == "idx" else _npz_in(place)
        if found:
            return found
    what = ("idx dataset (the four files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each raw or .gz)" if kind == "idx"
            else "data.npz (or a single .npz file; keys train_x, train_y, test_x, test_y)")
    if explicit and not os.path.exists(places[0]):
        raise DatasetError(f"{kind}: {places[0]}: no such file or folder. To fix: give the "
                           f"{'.npz file or the ' if kind == 'npz' else ''}folder holding the "
                           f"data. Formats: docs/own_data.md.")
    if explicit:
        what_dir = "the folder holding them" + (" or the .npz file" if kind == "npz" else "")
        raise DatasetError(f"{kind}: no {what} in --data-dir {places[0]}. To fix: pass "
                           f"--data-dir {what_dir} (with --data-dir no other place is searched). "
                           f"Formats: docs/own_data.md.")
    looked = "\n".join(f"  {p}" for p in places)
    raise DatasetError(f"{kind}: found no {what}. Looked in (${ENV_VAR}, then the cache):\n"
                       f"{looked}\nTo fix: pass --data-dir the folder holding them, or set "
                       f"{ENV_VAR}. Formats: docs/own_data.md.")


# -- checks shared by both formats ---------------------------------------------------------

def _check_shape(x, where):
    if x.ndim not in (3, 4):
        raise DatasetError(f"{where} has shape {x.shape}; expected (N, C, H, W), (N, H, W, C) "
                           f"or (N, H, W). To fix: reshape the images, e.g. "
                           f"x.reshape(len(x), 1, 28, 28) for flat 28 x 28 gray images.")


def _to_nchw(x, layout, where):
    """Images as (N, C, H, W); returns the array, the layout used and how it was read."""
    if x.ndim == 3:
        return x[:, None], layout, "(N, H, W) -> (N, 1, H, W)"
    if layout is None:
        first, last = x.shape[1] in (1, 3), x.shape[3] in (1, 3)
        if first == last:
            raise DatasetError(
                f"{where} has shape {x.shape}: its layout (channels first, NCHW, or last, "
                f"NHWC) cannot be told from 1 or 3 channels. To fix: add the key "
                f"layout='NCHW' or layout='NHWC' to the npz.")
        layout = "NCHW" if first else "NHWC"
        how = f"{layout} (inferred)"
    else:
        how = f"{layout} (given)"
    if layout == "NHWC":
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), layout, how + " -> NCHW"
    return x, layout, how


def _check_labels(y, where, n):
    if y.ndim != 1 or len(y) != n:
        raise DatasetError(f"{where} has shape {y.shape}; expected ({n},), one label per image: "
                           f"the image and label arrays have mismatched lengths. To fix: store "
                           f"one integer label per image.")
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{where} holds non-integer labels (dtype {y.dtype}); labels must be "
                           f"integers 0..K-1. To fix: store them as y.astype(np.int64) (after "
                           f"mapping each class to 0..K-1, e.g. with "
                           f"np.unique(y, return_inverse=True)).")


def _check_images(x, where):
    if x.dtype == np.uint8:
        return "uint8, divided by 255"
    if np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)):
            raise DatasetError(f"{where} holds NaN or infinite values. To fix: store finite "
                               f"pixel values.")
        return f"{x.dtype.name}, used as stored"
    raise DatasetError(f"{where} has dtype {x.dtype}; images must be uint8 (0..255, divided by "
                       f"255 here) or floating point (used as stored). To fix: store "
                       f"x.astype(np.uint8) for 0..255 pixels, or x.astype(np.float32).")


def _classes(splits, label_names, where):
    """The number of classes K, after checking every label is in 0..K-1."""
    train_y = splits["train"][1]
    if label_names is not None:
        k, told = len(label_names), f"{len(label_names)} label_names"
    else:
        k, told = int(train_y.max()) + 1, "inferred from the training labels"
        absent = np.setdiff1d(np.arange(max(k, 0)), train_y)
        if train_y.min() >= 0 and len(absent):
            shown = ", ".join(map(str, absent[:10])) + (", ..." if len(absent) > 10 else "")
            raise DatasetError(
                f"{where}: the training labels are not contiguous: {k} classes 0..{k - 1} "
                f"would be needed by the largest label {k - 1}, but class(es) {shown} never "
                f"occur ({len(np.unique(train_y))} distinct labels). Labels must be 0..K-1. "
                f"To fix: map them to 0..K-1 (np.unique(y, return_inverse=True)) and store "
                f"the arrays in an npz (docs/own_data.md).")
    for split, (_, y) in splits.items():
        if len(y) and (y.min() < 0 or y.max() >= k):
            bad = np.unique(y[(y < 0) | (y >= k)])
            shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
            raise DatasetError(
                f"{where}: {split} labels out of range: {shown} (must be 0..{k - 1}, {k} "
                f"classes {told}). To fix: map the classes to 0..K-1"
                + (", and give one label_names entry per class." if label_names is not None
                   else "; a class missing from training cannot be learned."))
    return k


def standardize(splits):
    """Per-channel standardisation with the training set's statistics (float64 sums)."""
    train = splits["train"][0]
    channels = train.shape[1]
    mean = np.array([train[:, c].mean(dtype=np.float64) for c in range(channels)])
    std = np.array([train[:, c].std(dtype=np.float64) for c in range(channels)])
    if np.any(std == 0):
        raise DatasetError("standardize: a channel of the training images is constant (standard "
                           "deviation 0). To fix: use --preprocess scale.")
    shift = mean.astype(np.float32).reshape(1, -1, 1, 1)
    scale = (1 / std).astype(np.float32).reshape(1, -1, 1, 1)
    out = {split: ((x - shift) * scale, y) for split, (x, y) in splits.items()}
    return out, mean, std


def check_preprocess(preprocess, kind):
    """Refuse a preprocessing ``kind`` does not offer."""
    if preprocess not in PREPROCESSINGS:
        raise DatasetValueError(
            f"{kind}: unknown preprocessing {preprocess!r}; choose one of "
            f"{', '.join(PREPROCESSINGS)}" + (" (zca is the authors' CIFAR-10 preprocessing: "
                                               "--dataset cifar10 only)" if preprocess == "zca"
                                               else ""))


def apply_preprocess(splits, preprocess, info):
    """Apply ``preprocess`` to float32 ``{split: (x, y)}`` (already scaled); record it in info."""
    info["preprocess"] = preprocess
    if preprocess == "standardize":
        splits, mean, std = standardize(splits)
        info.update(channel_mean=mean.tolist(), channel_std=std.tolist(),
                    note="per-channel mean/std of the scaled training images removed")
    return splits


def build_dataset(name, splits, info, preprocess="scale", layout=None, label_names=None,
                  where="data"):
    """Check raw ``{split: (x, y)}`` arrays and turn them into a Dataset.

    Checks: non-empty splits, matching lengths, integer labels in 0..K-1, uint8 or float
    images of one shape; images to (N, C, H, W) float32 (uint8 / 255), labels to int32,
    then ``preprocess``. Fills ``info`` with what was inferred.
    """
    check_preprocess(preprocess, name)
    scalings, layouts, ready = set(), [], {}
    for split, (x, y) in splits.items():  # train first: its layout is used for every split
        _check_shape(x, f"{where}: {split}_x")
        if len(x) == 0 or y.size == 0:
            raise DatasetError(f"{where}: the {split} split is empty ({split}_x {x.shape}, "
                               f"{split}_y {y.shape}). To fix: give it at least one sample"
                               + (" (or leave val_x/val_y out)." if split == "val" else "."))
        _check_labels(y, f"{where}: {split}_y", len(x))
        scalings.add(_check_images(x, f"{where}: {split}_x"))
        four_d = x.ndim == 4
        x, used, how = _to_nchw(x, layout, f"{where}: {split}_x")
        layout = used if four_d else layout
        layouts.append(how)
        ready[split] = (x, y)
    shapes = {split: x.shape[1:] for split, (x, _) in ready.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{s}_x {v}" for s, v in shapes.items())
        raise DatasetError(f"{where}: the images of every split must match in shape (C, H, W); "
                           f"they are {listed}. To fix: resize or crop them alike.")
    if len(scalings) > 1:
        raise DatasetError(f"{where}: the splits mix image dtypes ({'; '.join(sorted(scalings))}). "
                           f"To fix: store every split with the same dtype.")
    k = _classes(ready, label_names, where)
    out = {}
    for split, (x, y) in ready.items():
        x = x / np.float32(255) if x.dtype == np.uint8 else x
        out[split] = (x.astype(np.float32, copy=False), y.astype(np.int32))
    info.update(samples={split: len(y) for split, (_, y) in out.items()},
                input_shape=list(out["train"][0].shape[1:]), classes=k,
                class_counts={"train": np.bincount(out["train"][1], minlength=k).tolist()},
                scaling=scalings.pop(), layout=layouts[0])
    if label_names is not None:
        info["label_names"] = list(label_names)
    out = apply_preprocess(out, preprocess, info)
    val = out.get("val", (None, None))
    return Dataset(name, out["train"][0], out["train"][1], out["test"][0], out["test"][1],
                   val[0], val[1], None, info)


# -- the two formats -----------------------------------------------------------------------

def _label(path):
    path = os.path.normpath(path)
    base = os.path.basename(path)
    stem = base[:-4] if base.lower().endswith(".npz") else base
    if stem in ("data", "") and base != path:  # data.npz: name it by its folder
        stem = os.path.basename(os.path.dirname(path)) or stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "data"


def load_idx(data_dir=None, preprocess="scale"):
    """Load any dataset in MNIST's idx format (see the module docstring and docs/own_data.md)."""
    check_preprocess(preprocess, "idx")
    paths = locate_user_data("idx", data_dir)
    folder = os.path.dirname(paths["train_x"])
    splits, records = {}, {}
    for split in ("train", "test"):
        arrays = []
        for part in ("x", "y"):
            path = paths[f"{split}_{part}"]
            try:
                arrays.append(read_idx(path))
            except IdxError as err:
                raise DatasetError(f"idx: {err}. To fix: replace it with a complete idx "
                                   f"file.") from None
            records[f"{split}_{part}"] = file_record(path)
        splits[split] = tuple(arrays)
    for split in ("train", "test"):
        x, y = splits[split]
        if x.ndim not in (3, 4):
            raise DatasetError(f"idx: {paths[split + '_x']} holds an array of shape {x.shape}; "
                               f"images must be (N, H, W). To fix: write (N, H, W) images.")
    info = {"source": "idx files", "folder": folder, "files": records}
    return build_dataset(f"idx:{_label(folder)}", splits, info, preprocess,
                         where=f"idx ({folder})")


def load_npz(path=None, data_dir=None, preprocess="scale"):
    """Load the npz format (see the module docstring and docs/own_data.md).

    Args:
        path: the .npz file, or a folder holding it (else found as ``data_dir`` says).
        data_dir: as for every dataset; only there when given.
        preprocess: ``'scale'`` (default) or ``'standardize'``.
    """
    check_preprocess(preprocess, "npz")
    path = locate_user_data("npz", path or data_dir)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DatasetError(f"npz: {path} is not a readable .npz file ({err}). To fix: write it "
                           f"with np.savez(path, train_x=..., train_y=..., test_x=..., "
                           f"test_y=...).") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(f"npz: {path} holds a single array, not an .npz archive. To fix: "
                           f"write it with np.savez(path, train_x=..., train_y=..., ...).")
    with archive:
        keys = archive.files
        missing = [k for k in NPZ_KEYS if k not in keys]
        if ("val_x" in keys) != ("val_y" in keys):
            missing.append("val_y" if "val_x" in keys else "val_x")
        if missing:
            raise DatasetError(f"npz: {path}: missing key(s) {', '.join(missing)}; "
                               f"it holds {', '.join(keys) or 'nothing'}. To fix: save "
                               f"train_x, train_y, test_x, test_y (and val_x with val_y, or "
                               f"neither) with np.savez.")
        try:
            arrays = {k: archive[k] for k in keys if k in NPZ_KEYS + NPZ_OPTIONAL_KEYS}
        except ValueError as err:  # object arrays need pickle, which is never allowed
            raise DatasetError(f"npz: {path} holds an array that needs pickle ({err}). To fix: "
                               f"store plain numeric arrays (and strings as np.str_ "
                               f"arrays).") from None
        ignored = sorted(k for k in keys if k not in NPZ_KEYS + NPZ_OPTIONAL_KEYS)
    layout = arrays.pop("layout", None)
    if layout is not None:
        layout = str(layout.item() if layout.ndim == 0 else layout).upper()
        if layout not in ("NCHW", "NHWC"):
            raise DatasetError(f"npz: {path}: layout is {layout!r}; it must be 'NCHW' or 'NHWC'.")
    label_names = arrays.pop("label_names", None)
    if label_names is not None:
        label_names = [str(n) for n in np.ravel(label_names)]
    splits = {s: (arrays[f"{s}_x"], arrays[f"{s}_y"])
              for s in ("train", "test", "val") if f"{s}_x" in arrays}
    info = {"source": "npz file", "files": {"npz": file_record(path)}}
    if ignored:
        info["ignored_keys"] = ignored
    data = build_dataset(f"npz:{_label(path)}", splits, info, preprocess, layout, label_names,
                         where=f"npz {path}")
    return data
