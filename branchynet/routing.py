"""Early-exit routing: exit scores, threshold checks, and the batched exit loop.

Everything here works on NumPy and CuPy arrays alike (``xp``), so on a GPU the scores,
masks and regrouping of samples stay on the device between exits.
"""
import math

import chainer
from chainer import backend


def entropy(logits):
    """Entropy (natural log) of ``softmax(logits)`` per row, with 0 * log 0 = 0."""
    xp = backend.get_array_module(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    p = xp.exp(log_p)
    return -xp.where(p > 0, p * log_p, 0).sum(axis=1)


# An exit criterion maps logits to a score; a sample exits when its score is strictly
# below the exit's threshold (the paper's rule for entropy).
CRITERIA = {"entropy": entropy}


def check_thresholds(thresholds, n_exits):
    """Validate a threshold vector (one entry per exit but the last); return it as floats."""
    try:
        values = tuple(float(t) for t in thresholds)
    except (TypeError, ValueError):
        raise ValueError(f"thresholds must be a sequence of numbers, got {thresholds!r}") from None
    if len(values) != n_exits - 1:
        raise ValueError(f"this network has {n_exits} exits, so it needs {n_exits - 1} "
                         f"threshold(s) (none for the last exit); got {len(values)}: {values}")
    for n, t in enumerate(values, 1):
        if math.isnan(t) or t < 0:
            raise ValueError(f"threshold for exit {n} is {t}; thresholds must be >= 0 "
                             f"(0 means no sample exits there, inf means all do)")
    return values


def early_exit(net, x, thresholds, criterion="entropy"):
    """Route a batch through ``net`` exit by exit; return ``(labels, exits)`` on x's device.

    At each exit but the last, samples whose score is below the threshold take that exit's
    prediction and leave; only the rest run the next trunk segment. The caller sets
    inference mode (see ``BranchyNet.predict``). ``exits`` holds 0-based exit indices.
    """
    score = CRITERIA[criterion]
    xp = backend.get_array_module(x)
    n_samples = len(x)
    labels = xp.empty(n_samples, xp.int32)
    exits = xp.empty(n_samples, xp.int32)
    remaining = xp.arange(n_samples)
    h = x
    last = net.n_exits - 1
    for n, head in enumerate(net.heads):
        h = net.run_trunk(h, n)
        logits = chainer.as_array(head(h))
        if n == last:
            labels[remaining] = logits.argmax(axis=1)
            exits[remaining] = n
            break
        leave = score(logits) < thresholds[n]
        labels[remaining[leave]] = logits[leave].argmax(axis=1)
        exits[remaining[leave]] = n
        stay = ~leave
        remaining = remaining[stay]
        if len(remaining) == 0:
            break
        h = chainer.as_array(h)[stay]
    return labels, exits
