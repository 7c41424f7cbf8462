"""The container every dataset loader returns, and the seeded validation split."""
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Dataset:
    """Arrays of one dataset, ready for a network: float32 images and int32 labels.

    ``val_x``/``val_y`` are None unless a validation split was requested; ``val_index``
    holds the positions (in the original training set) of the validation samples.
    ``info`` records where the data came from and how it was prepared.
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

    def summary(self):
        parts = [f"{self.name}: train {len(self.train_y)}"]
        if self.val_y is not None:
            parts.append(f"val {len(self.val_y)}")
        parts.append(f"test {len(self.test_y)}")
        return ", ".join(parts) + f", input {tuple(self.train_x.shape[1:])}"


def split_validation(dataset, val_size, seed=0):
    """Carve a seeded validation set of ``val_size`` samples out of the training set.

    ``val_size`` is a count (int >= 1) or a fraction in (0, 1). Returns a new Dataset;
    the same seed always selects the same samples.
    """
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
                   dataset.train_y[val_index], val_index, info)
