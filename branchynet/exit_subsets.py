"""B-nets with a subset of their exits: an exit whose head costs more than its samples save
slows the network down at every threshold, and dropping it may win.

A subset keeps some of the early exits and always the last one; a dropped exit's head never
runs (``subset_network`` builds the B-net without it: the trunk segments around it are
joined). On the cached exit outputs a dropped exit is one nobody leaves at (threshold 0:
no score is below it), so every point of the subset's sweep comes from ``evaluate_grid``
on the full B-net's outputs, exactly. ``fastest_candidates`` ranks a subset's threshold
vectors that reach an accuracy by their time predicted from the subset's measured exit
paths; ``choose`` keeps, per subset, the fastest measured of them.
"""
import copy
import itertools

import numpy as np

from branchynet.net import Branch, BranchyNet
from branchynet.sweep import evaluate_grid


def all_subsets(n_exits):
    """Every subset of the exits that keeps the last (0-based tuples), the full set first."""
    early = range(n_exits - 1)
    out = [tuple(c) + (n_exits - 1,) for r in range(n_exits - 1, -1, -1)
           for c in itertools.combinations(early, r)]
    return out


def check_subset(keep, n_exits):
    """``keep`` as a sorted tuple of 0-based exits; it must name valid exits and the last."""
    keep = tuple(sorted(set(int(k) for k in keep)))
    if not keep or keep[-1] != n_exits - 1 or keep[0] < 0:
        raise ValueError(f"an exit subset keeps the last exit ({n_exits}) and exits among "
                         f"1..{n_exits}; got {[k + 1 for k in keep]}")
    return keep


def subset_name(keep):
    """``exits 1+3`` (1-based)."""
    return "exits " + "+".join(str(k + 1) for k in keep)


def full_thresholds(keep, thresholds, n_exits):
    """The full B-net's threshold vector for a subset's (one per kept exit but the last):
    0 at a dropped exit (nobody leaves there)."""
    keep = check_subset(keep, n_exits)
    if len(thresholds) != len(keep) - 1:
        raise ValueError(f"{subset_name(keep)} takes {len(keep) - 1} threshold(s), got "
                         f"{len(thresholds)}")
    full = [0.0] * (n_exits - 1)
    for k, t in zip(keep[:-1], thresholds):
        full[k] = float(t)
    return full


def subset_network(branchy, keep):
    """A B-net with only the exits in ``keep`` (a deep copy of ``branchy``'s layers: the
    same weights, the dropped heads left out, the trunk segments between kept exits
    joined). Its exit j is ``branchy``'s exit ``keep[j]``."""
    keep = check_subset(keep, branchy.n_exits)
    net = copy.deepcopy(branchy)
    layers = []
    for n in range(net.n_exits):
        for k in net._exit_segments[n]:
            layers += list(net.trunk[k])
        if n in keep:
            layers.append(Branch(list(net.heads[n])))
    return BranchyNet(layers)


def subset_macs(costs, keep):
    """Multiply-adds of a sample leaving at each kept exit of the subset B-net: its trunk
    and head (``costs['path_macs']``) plus the heads of the kept exits before it."""
    keep = check_subset(keep, len(costs["path_macs"]))
    return [int(costs["path_macs"][k] + sum(costs["head_macs"][m] for m in keep if m < k))
            for k in keep]


def subset_sweep(outputs, keep, grid):
    """Every threshold vector of the subset on ``grid`` (values per kept early exit):
    ``(subset thresholds (points x kept-1), SweepResult of the full thresholds)``."""
    keep = check_subset(keep, outputs.n_exits)
    values = np.asarray(list(itertools.product(grid, repeat=len(keep) - 1)), np.float64)
    if len(keep) == 1:
        values = np.zeros((1, 0))
    full = np.asarray([full_thresholds(keep, t, outputs.n_exits) for t in values])
    return values, evaluate_grid(outputs, full)


def fastest_candidates(outputs, keep, grid, path_ms, min_correct, count=3):
    """Up to ``count`` threshold vectors of the subset whose correct samples reach
    ``min_correct``, fastest first by the time predicted from ``path_ms`` (the subset's
    measured exit paths, one per kept exit). Returns dicts with ``thresholds`` (the
    subset's), ``full_thresholds``, ``accuracy``, ``exit_fractions`` (per original exit)
    and ``predicted_ms``; empty if no point reaches the accuracy."""
    keep = check_subset(keep, outputs.n_exits)
    values, sweep = subset_sweep(outputs, keep, grid)
    fractions = sweep.exit_fractions
    if np.abs(fractions[:, [n for n in range(outputs.n_exits) if n not in keep]]).sum():
        raise AssertionError("a dropped exit took samples")
    predicted = fractions[:, list(keep)] @ np.asarray(path_ms, np.float64)
    correct = np.rint(sweep.accuracy * len(outputs)).astype(int)
    ok = np.flatnonzero(correct >= min_correct)
    order = ok[np.lexsort((-correct[ok], predicted[ok]))]
    out, seen = [], set()
    for i in order:
        key = tuple(np.round(fractions[i] * len(outputs)).astype(int)) + (correct[i],)
        if key in seen:  # the same exits and accuracy: the same point
            continue
        seen.add(key)
        out.append({"thresholds": values[i].tolist(),
                    "full_thresholds": full_thresholds(keep, values[i], outputs.n_exits),
                    "accuracy": float(sweep.accuracy[i]),
                    "exit_fractions": fractions[i].tolist(), "predicted_ms": float(predicted[i])})
        if len(out) == count:
            break
    return out


def choose(candidates, measured_ms):
    """The fastest measured candidate (``measured_ms`` aligned with ``candidates``), or
    None where there is none."""
    if not candidates:
        return None
    best = int(np.argmin(measured_ms))
    return {**candidates[best], "measured_ms": float(measured_ms[best])}
