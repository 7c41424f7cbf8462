"""The exact threshold sweep: run every exit once, then evaluate any threshold vector.

``collect_exit_outputs`` runs the whole B-net (all exits) over a dataset in batches and
keeps every exit's logits; per sample and exit, the exit score (entropy by default, or
another criterion of ``branchynet.routing.CRITERIA``) and the predicted label derive from
them (``ExitOutputs``). For a threshold vector T, a sample's exit is the first n with
score_n < T_n (else the last), so ``evaluate_grid`` computes the accuracy and exit counts
of every grid point exactly from those arrays, without running the network again.
"""
import dataclasses
import itertools
import json
import os
from dataclasses import dataclass

import numpy as np
from chainer import backend

from branchynet.routing import check_thresholds, get_criterion

# Default threshold values of the criteria other than entropy (entropy uses the network's
# own grid, the paper's). Max-prob and margin scores lie in [0, 1]; T means "exit when the
# top probability exceeds 1 - T" (max-prob) or "when the top two probabilities differ by
# more than 1 - T" (margin). Dense near 0 (confident), like the paper's entropy grids;
# 1.0 releases (nearly) every sample, as entropy's 10 does.
CRITERION_GRIDS = {
    "max-prob": (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15,
                 0.2, 0.3, 0.4, 0.5, 0.75, 1.0),
    "margin": (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15,
               0.2, 0.3, 0.4, 0.5, 0.75, 1.0),
}


def default_grid(criterion, network_grid):
    """Threshold values swept for ``criterion``: the network's (paper) grid for entropy,
    ``CRITERION_GRIDS[criterion]`` for the others."""
    get_criterion(criterion)
    return tuple(network_grid) if criterion == "entropy" else CRITERION_GRIDS[criterion]


@dataclass
class ExitOutputs:
    """Every exit's output on every sample of a split: ``scores`` and ``predictions`` are
    (samples, exits), ``logits`` (samples, exits, classes) what they come from.

    Made by ``from_logits`` (as ``collect_exit_outputs`` does), scores (``criterion`` of
    each exit's logits) and predictions (their argmax) are derived, and a file keeps the
    logits alone. Outputs made without logits (files written before December 2026,
    synthetic scores) keep their scores and predictions as stored; logits added to them
    later (``with_logits``) leave the stored scores as they are.
    """
    scores: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray
    criterion: str = "entropy"
    key: str = ""  # what made them (JSON: weights and inputs hashes), see branchynet.provenance
    logits: np.ndarray = None
    derived: bool = False  # scores and predictions computed from ``logits`` (not saved)

    @classmethod
    def from_logits(cls, logits, labels, criterion="entropy", key=""):
        """Outputs whose scores and predictions derive from ``logits`` (samples, exits,
        classes), each exit's scored by ``criterion`` on the host."""
        score = get_criterion(criterion)
        logits = np.asarray(logits)
        if logits.ndim != 3:
            raise ValueError(f"exit logits must be (samples, exits, classes), got shape "
                             f"{logits.shape}")
        scores = np.stack([score(np.ascontiguousarray(logits[:, n]))
                           for n in range(logits.shape[1])], axis=1)
        predictions = logits.argmax(axis=2).astype(np.int32)
        return cls(scores, predictions, np.asarray(labels, np.int32), criterion, key, logits,
                   derived=True)

    @property
    def n_exits(self):
        return self.scores.shape[1]

    def __len__(self):
        return len(self.labels)

    def take(self, index):
        """The outputs of the samples ``index`` (a slice, indices or a mask)."""
        return ExitOutputs(self.scores[index], self.predictions[index], self.labels[index],
                           self.criterion,
                           logits=None if self.logits is None else self.logits[index],
                           derived=self.derived)

    def with_logits(self, logits):
        """These outputs with the ``logits`` they were made from; their scores stay as they
        are. Refused unless the logits' argmax is every prediction."""
        logits = np.asarray(logits)
        if logits.shape[:2] != self.scores.shape:
            raise ValueError(f"logits of shape {logits.shape} do not match exit outputs of "
                             f"{self.scores.shape} (samples, exits)")
        if not np.array_equal(logits.argmax(axis=2), self.predictions):
            raise ValueError("the logits do not belong to these exit outputs (their argmax "
                             "differs from the predictions); compute both from the same "
                             "weights and inputs")
        return dataclasses.replace(self, logits=logits, derived=False)

    def exit_accuracies(self):
        """Accuracy of each exit if every sample took it."""
        return (self.predictions == self.labels[:, None]).mean(axis=0)

    def save(self, path):
        """Write the logits (scores and predictions derive from them), or where there are
        none or the scores were stored before them, the scores and predictions too."""
        from branchynet.io import atomic_path
        fields = {"labels": self.labels, "criterion": self.criterion, "key": self.key}
        if self.logits is not None:
            fields["logits"] = self.logits
        if not self.derived:
            fields.update(scores=self.scores, predictions=self.predictions)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **fields)

    @classmethod
    def load(cls, path):
        """Outputs saved by ``save``, or written before December 2026: scores and
        predictions alone, with the logits of a ``exit_logits[_val].npz`` beside them
        where that file's key names the same weights and inputs."""
        with np.load(path) as data:
            kept = {name: data[name] for name in data.files}
        criterion = str(kept.get("criterion", "entropy"))
        key = str(kept.get("key", ""))
        if "scores" not in kept:
            if "logits" not in kept:
                raise ValueError(f"{path} holds neither exit logits nor scores")
            return cls.from_logits(kept["logits"], kept["labels"], criterion, key)
        outputs = cls(kept["scores"], kept["predictions"], kept["labels"], criterion, key)
        logits = kept.get("logits")
        if logits is None:
            logits = _legacy_logits(path, key)
        return outputs if logits is None else outputs.with_logits(logits)

    @classmethod
    def cached(cls, path, key):
        """The outputs saved at ``path`` when that file exists and its key is ``key``
        (``branchynet.provenance.exit_outputs_key``: these weights on these samples),
        else None."""
        if not os.path.exists(path):
            return None
        outputs = cls.load(path)
        return outputs if outputs.key == key else None


def _legacy_logits(path, key):
    """The logits that folders written before December 2026 kept apart, in
    ``exit_logits.npz`` (test) and ``exit_logits_val.npz`` beside the B-net's exit outputs,
    when their key names the weights and inputs of ``key``; else None."""
    name = os.path.basename(path)
    if not key or not name.startswith("exit_outputs") or name.endswith("_baseline.npz"):
        return None
    other = os.path.join(os.path.dirname(path), "exit_logits_val.npz"
                         if name.startswith("exit_outputs_val") else "exit_logits.npz")
    if not os.path.exists(other):
        return None
    made_from = json.loads(key)
    made_from.pop("criterion", None)
    with np.load(other) as data:
        if json.loads(str(data["key"])) != made_from:
            return None
        return data["logits"]


def collect_exit_outputs(net, x, y, batch_size=1000, device=None, criterion="entropy",
                         progress=False):
    """Run every exit of ``net`` over ``x`` (host arrays) and return their ``ExitOutputs``.

    Every exit's logits come to the host once per batch; scores and predictions derive
    from them there (``ExitOutputs.from_logits``).
    """
    device = device or net.device
    get_criterion(criterion)  # an unknown criterion fails before the network runs
    chunks = []
    starts = range(0, len(x), batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="exit outputs", unit="batch", leave=False)
    for start in starts:
        logits = net.predict_all_exits(device.send(x[start:start + batch_size]))
        xp = backend.get_array_module(logits[0])
        chunks.append(backend.CpuDevice().send(xp.stack(logits, axis=1)))
    return ExitOutputs.from_logits(np.concatenate(chunks), y, criterion)


def threshold_grid(values, n_exits):
    """All threshold vectors over ``values`` for the exits but the last, shape (G, n_exits-1).

    The order is that of ``itertools.product`` (the authors' ``generate_thresholds``).
    """
    if n_exits < 2:
        raise ValueError("a threshold grid needs a network with at least two exits")
    grid = np.array(list(itertools.product(values, repeat=n_exits - 1)), dtype=np.float64)
    for row in grid[:1]:
        check_thresholds(row, n_exits)
    if (grid < 0).any() or np.isnan(grid).any():
        raise ValueError("threshold grid values must be >= 0 and not NaN")
    return grid


@dataclass
class SweepResult:
    """Accuracy and exit counts of every threshold vector of a grid."""
    thresholds: np.ndarray   # (G, n_exits - 1)
    accuracy: np.ndarray     # (G,)
    exit_counts: np.ndarray  # (G, n_exits)

    @property
    def exit_fractions(self):
        return self.exit_counts / self.exit_counts.sum(axis=1, keepdims=True)


def exit_indices(outputs, thresholds):
    """Exit taken by every sample under each threshold vector, shape (G, samples)."""
    thresholds = np.atleast_2d(np.asarray(thresholds, np.float64))
    n_exits = outputs.n_exits
    if thresholds.shape[1] != n_exits - 1:
        raise ValueError(f"{n_exits} exits need {n_exits - 1} thresholds per vector, "
                         f"got {thresholds.shape[1]}")
    chosen = np.full((len(thresholds), len(outputs.labels)), n_exits - 1, np.int32)
    decided = np.zeros(chosen.shape, bool)
    for n in range(n_exits - 1):
        # Same comparison as the routing: float32 score against the threshold, strict.
        leave = ~decided & (outputs.scores[None, :, n] < thresholds[:, n, None].astype(outputs.scores.dtype))
        chosen[leave] = n
        decided |= leave
    return chosen


def evaluate_grid(outputs, thresholds, chunk=256):
    """Exact accuracy and exit counts for each threshold vector (rows of ``thresholds``)."""
    thresholds = np.atleast_2d(np.asarray(thresholds, np.float64))
    correct = outputs.predictions == outputs.labels[:, None]  # (samples, exits)
    accuracy = np.empty(len(thresholds))
    counts = np.empty((len(thresholds), outputs.n_exits), np.int64)
    columns = np.arange(len(outputs.labels))
    for start in range(0, len(thresholds), chunk):
        chosen = exit_indices(outputs, thresholds[start:start + chunk])
        accuracy[start:start + chunk] = correct[columns[None, :], chosen].mean(axis=1)
        for n in range(outputs.n_exits):
            counts[start:start + chunk, n] = (chosen == n).sum(axis=1)
    return SweepResult(thresholds, accuracy, counts)


def predict_runtime(exit_fractions, path_latency):
    """Expected per-sample runtime: sum over exits of fraction exiting there x path latency."""
    return np.asarray(exit_fractions) @ np.asarray(path_latency)


def first_exit_curve(outputs, later_thresholds=None):
    """How the first exit's threshold trades accuracy for early exits (the paper's Fig. 4).

    For every k = 0..N (the k samples with the lowest first-exit scores leave there; where
    scores tie, only some of these cuts are reachable by a threshold), returns the fraction that leaves at exit 1, the overall
    accuracy, and the largest score among the samples that left (the entropy a threshold
    must exceed to let them out). The other samples go on with ``later_thresholds`` (one
    per exit after the first but the last; default: none leave early, all reach the last
    exit).

    Returns ``(exited_fraction, accuracy, max_score)``, arrays of length N + 1, sorted by
    exited fraction; ``max_score[0]`` is 0.
    """
    n_later = outputs.n_exits - 2
    later = np.zeros(n_later) if later_thresholds is None else np.asarray(later_thresholds, float)
    if later.shape != (n_later,):
        raise ValueError(f"{outputs.n_exits} exits need {n_later} later thresholds, "
                         f"got {later.size}")
    correct = outputs.predictions == outputs.labels[:, None]
    # Where each sample ends up when it does not leave at exit 1.
    otherwise = exit_indices(outputs, np.concatenate([[0.0], later]))[0]  # T1 = 0: none leave
    correct_later = correct[np.arange(len(outputs)), otherwise]
    order = np.argsort(outputs.scores[:, 0], kind="stable")
    # The first k samples of ``order`` leave at exit 1, the rest are decided later.
    gained = np.concatenate([[0], np.cumsum(correct[order, 0])])
    lost = np.concatenate([[0], np.cumsum(correct_later[order])])
    accuracy = (gained + correct_later.sum() - lost) / len(outputs)
    exited = np.arange(len(outputs) + 1) / len(outputs)
    max_score = np.concatenate([[0.0], outputs.scores[order, 0]]).astype(np.float64)
    return exited, accuracy, max_score
