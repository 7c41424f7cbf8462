"""The container every dataset loader returns, and the seeded validation split."""
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Dataset:
    """Arrays of one dataset, ready for a network: float32 images and int32 labels.

    ``val_x``/``val_y`` are None unless a validation split was requested; ``val_index``
    holds the positions (in the original training set) of the validation samples.
    ``info`` records what was read and how it was prepared: every file read (path, bytes,
    SHA-256), sample counts, classes, layout, scaling and preprocessing. It is the data's
    identity, the same for the same files and settings (no times, no cache hits);
    ``notes`` holds facts of this one load (e.g. ``cache_hit``) that are not.
    """
    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    val_x: np.ndarray = None
    val_y: np.ndarray = None
    val_index: np.ndarray = None
    info: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)

    def summary(self):
        """One line: sizes, input shape, and what was inferred (classes, layout, scaling)."""
        parts = [f"{self.name}: train {len(self.train_y)}"]
        if self.val_y is not None:
            parts.append(f"val {len(self.val_y)}")
        parts.append(f"test {len(self.test_y)}")
        parts.append(f"input {tuple(self.train_x.shape[1:])}")
        info = self.info
        if "classes" in info:
            parts.append(f"{info['classes']} classes")
        if "layout" in info:
            parts.append(f"layout {info['layout']}")
        if "scaling" in info:
            parts.append(f"pixels {info['scaling']}")
        if info.get("preprocess", "scale") != "scale":
            parts.append(f"preprocess {info['preprocess']}")
        where = info.get("folder") or next(
            (f["path"] for f in info.get("files", {}).values() if isinstance(f, dict)), None)
        line = ", ".join(parts)
        return line + f" (from {where})" if where and self.name.startswith(("idx", "npz")) else line


def split_validation(dataset, val_size, seed=0):
    """Carve a seeded validation set of ``val_size`` samples out of the training set.

    ``val_size`` is a count (int >= 1) or a fraction in (0, 1). Returns a new Dataset;
    the same seed always selects the same samples. A dataset that brings its own validation
    split (an npz with val_x/val_y) is refused: it would be silently replaced.
    """
    if dataset.val_y is not None:
        raise ValueError(f"{dataset.name} already has a validation split of {len(dataset.val_y)} "
                         f"samples (val_x/val_y); drop --val-size to use it, or remove "
                         f"val_x/val_y from the data to carve one from the training set")
    n = len(dataset.train_y)
    if isinstance(val_size, float) and 0 < val_size < 1:
        count = int(round(n * val_size))
    else:
        count = int(val_size)
    if not 0 < count < n:
        raise ValueError(f"validation size {val_size!r} must leave both parts non-empty "
                         f"(training set has {n} samples)")
    order = np.random.RandomState(seed).permutation(n)
    val_index = np.sort(order[:count])
    train_index = np.sort(order[count:])
    info = dict(dataset.info, val_size=count, val_seed=seed)
    return Dataset(dataset.name, dataset.train_x[train_index], dataset.train_y[train_index],
                   dataset.test_x, dataset.test_y, dataset.train_x[val_index],
                   dataset.train_y[val_index], val_index, info, dict(dataset.notes))
