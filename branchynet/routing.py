"""Early-exit routing: exit scores, threshold checks, and the batched exit loop.

Exit criteria (``CRITERIA``) map a batch of logits to one score per sample, lower meaning
more confident: ``entropy`` (the paper's), ``max-prob`` (1 - top probability) and
``margin`` (1 - (top - second probability)). Whatever the criterion, a sample leaves at the
first exit whose score is strictly below that exit's threshold.

Everything here works on NumPy and CuPy arrays alike (``xp``), so on a GPU the scores,
masks and regrouping of samples stay on the device between exits.
"""
import math

import chainer
from chainer import backend


def entropy(logits):
    """Entropy (natural log) of ``softmax(logits)`` per row, with 0 * log 0 = 0.

    A row with a NaN or infinite logit gets a NaN entropy, which is never below a
    threshold: a broken sample goes on to the last exit instead of looking certain.
    """
    xp = backend.get_array_module(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    p = xp.exp(log_p)
    return -xp.where(p == 0, 0, p * log_p).sum(axis=1)


def _softmax(logits):
    xp = backend.get_array_module(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = xp.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def _top_two(p):
    """``(1 - p1, p2)`` per row: the mass outside the top class, and the second probability.

    ``1 - p1`` is summed over the other classes rather than subtracted from 1, so a very
    confident row keeps a small nonzero score instead of rounding to 0 in float32.
    """
    xp = backend.get_array_module(p)
    top = p.argmax(axis=1)
    is_top = xp.arange(p.shape[1])[None, :] == top[:, None]
    others = xp.where(is_top, 0, p)
    return others.sum(axis=1), others.max(axis=1)


def max_prob(logits):
    """Max-probability score per row: ``1 - max softmax probability`` (0 = certain).

    With threshold T a sample exits when ``1 - p1 < T``, i.e. when its top softmax
    probability exceeds ``1 - T`` (up to float rounding). Scores lie in [0, 1 - 1/classes].
    """
    rest, _ = _top_two(_softmax(logits))
    return rest


def margin(logits):
    """Margin score per row: ``1 - (p1 - p2)``, one minus the gap between the top two
    softmax probabilities (0 = certain, 1 = a tie for the top class).

    With threshold T a sample exits when ``1 - (p1 - p2) < T``, i.e. when the top class
    leads the runner-up by more than ``1 - T`` (up to float rounding). Scores lie in [0, 1].
    """
    rest, second = _top_two(_softmax(logits))
    return rest + second  # 1 - p1 + p2


# An exit criterion maps logits to a score, lower meaning more confident; a sample exits
# when its score is strictly below the exit's threshold (the paper's rule for entropy).
# A threshold of 0 keeps every sample (no score is negative); infinity releases all.
CRITERIA = {"entropy": entropy, "max-prob": max_prob, "margin": margin}


def get_criterion(name):
    """The score function of the exit criterion ``name`` (a key of ``CRITERIA``)."""
    try:
        return CRITERIA[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown exit criterion {name!r}; choose one of "
                         f"{', '.join(CRITERIA)}") from None


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


# Batch size 1 (latency-bound inference) takes a shorter path without index arrays and
# boolean masks; it makes the same decisions with the same arithmetic as the batched loop.
# Benchmarks set this to False to time the batched loop at batch size 1 as well.
SINGLE_SAMPLE_FAST_PATH = True


def _scaled(score, temperatures):
    """``score(logits, n)``: the criterion of exit n's logits, divided by ``temperatures[n]``
    when given (per-exit temperature scaling, ``branchynet.calibration``)."""
    if temperatures is None:
        return lambda logits, n: score(logits)
    return lambda logits, n: score(logits / logits.dtype.type(temperatures[n]))


def _early_exit_single(net, x, thresholds, score):
    """``early_exit`` for one sample: the same comparisons, no regrouping of samples."""
    xp = backend.get_array_module(x)
    h = x
    last = net.n_exits - 1
    for n, head in enumerate(net.heads):
        h = net.run_trunk(h, n)
        logits = chainer.as_array(head(h))
        # The array comparison, as in the batched loop (same dtype rules on NumPy 1 and 2).
        if n == last or (score(logits, n) < thresholds[n])[0]:
            return logits.argmax(axis=1).astype(xp.int32), xp.full(1, n, xp.int32)


def early_exit(net, x, thresholds, criterion="entropy", temperatures=None):
    """Route a batch through ``net`` exit by exit; return ``(labels, exits)`` on x's device.

    At each exit but the last, samples whose score is below the threshold take that exit's
    prediction and leave; only the rest run the next trunk segment. The caller sets
    inference mode (see ``BranchyNet.predict``). ``exits`` holds 0-based exit indices.
    ``criterion`` names the exit score (a key of ``CRITERIA``; default: entropy);
    ``temperatures`` (one per exit) scores ``logits / T_n`` instead of the logits.
    """
    score = _scaled(get_criterion(criterion), temperatures)
    if SINGLE_SAMPLE_FAST_PATH and len(x) == 1:
        return _early_exit_single(net, x, thresholds, score)
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
        # Every sample still here gets this exit's prediction; one that stays on is
        # overwritten at the exit it finally takes. No mask indexing, so no device sync.
        labels[remaining] = logits.argmax(axis=1)
        exits[remaining] = n
        if n == last:
            break
        # Indices of the samples that stay (not strictly below the threshold). Its length
        # is the one value per exit that the host reads back (it sizes the next batch);
        # regrouping by these indices happens on the device.
        stay = xp.flatnonzero(~(score(logits, n) < thresholds[n]))
        if len(stay) == 0:
            break
        if len(stay) < len(remaining):
            remaining = remaining[stay]
            h = chainer.as_array(h)[stay]
    return labels, exits
