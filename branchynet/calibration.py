"""Per-exit temperature scaling: one scalar T_n per exit, so that softmax(z / T_n) is
calibrated (Guo, Pleiss, Sun, Weinberger, "On calibration of modern neural networks",
ICML 2017).

Each exit's T is fitted on held-out logits by minimising the negative log-likelihood
``mean(logsumexp(z / T) - z_y / T)``. The NLL is convex in 1/T (its second derivative is
the mean variance of z under softmax(z / T)), hence unimodal in log T, so a golden-section
search over log T in [``T_MIN``, ``T_MAX``] finds the minimum. Dividing logits by T > 0 keeps
every prediction (the argmax) and changes only the scores: the exit criteria of
``branchynet.routing`` are then computed from ``logits / T_n`` (``rescore``).

Reported per exit: the expected calibration error (ECE, ``ECE_BINS`` = 15 equal-width bins
of the top softmax probability, weighted by their sample counts), the NLL before and after,
and the reliability diagram's data (per bin: count, mean confidence, accuracy).

Everything here reads the logits that ``branchynet.sweep.ExitOutputs`` keeps beside the
scores it derives from them.
"""
import math

import numpy as np

from branchynet.routing import get_criterion
from branchynet.sweep import ExitOutputs

ECE_BINS = 15
T_MIN, T_MAX = 0.01, 100.0


def logits_of(outputs):
    """The logits of ``outputs`` (an ``ExitOutputs``); a clear error when it has none."""
    if outputs.logits is None:
        raise ValueError("these exit outputs hold no logits (scores alone, as files written "
                         "before December 2026 kept them): calibration needs every exit's "
                         "logits; compute the outputs again from the weights")
    return outputs.logits


def _log_softmax(z):
    z = np.asarray(z, np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def nll(logits, labels, temperature=1.0):
    """Mean negative log-likelihood of ``labels`` under softmax(logits / temperature)."""
    log_p = _log_softmax(np.asarray(logits, np.float64) / temperature)
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits, labels, iterations=100):
    """The T in [T_MIN, T_MAX] minimising ``nll(logits, labels, T)`` (golden section on
    log T; the NLL is convex in 1/T). A minimum at a bound returns that bound."""
    logits = np.asarray(logits, np.float64)
    if len(labels) == 0:
        raise ValueError("fitting a temperature needs at least one sample")
    f = lambda u: nll(logits, labels, math.exp(u))  # noqa: E731
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    candidates = [(f(lo), lo), (fa, a), (fb, b), (f(hi), hi)]
    return math.exp(min(candidates)[1])


def fit_temperatures(outputs):
    """One temperature per exit, fitted on the logits of ``outputs`` (an ``ExitOutputs``)."""
    logits = logits_of(outputs)
    return [fit_temperature(logits[:, n], outputs.labels) for n in range(outputs.n_exits)]


def confidence(logits, temperature=1.0):
    """Top softmax probability of each row of ``logits / temperature``."""
    return np.exp(_log_softmax(np.asarray(logits, np.float64) / temperature).max(axis=1))


def _bins(confidences, correct, bins):
    confidences = np.asarray(confidences, np.float64)
    correct = np.asarray(correct, np.float64)
    index = np.clip(np.ceil(confidences * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    safe = np.maximum(count, 1)
    return (count, np.bincount(index, confidences, bins) / safe,
            np.bincount(index, correct, bins) / safe)


def reliability(confidences, correct, bins=ECE_BINS):
    """Per equal-width confidence bin ((b/B, (b+1)/B]; 0 goes to the first): sample count,
    mean confidence and accuracy (None for an empty bin)."""
    count, mean_conf, accuracy = _bins(confidences, correct, bins)
    def listed(values):
        return [float(v) if c else None for v, c in zip(values, count)]
    return {"bins": bins, "edges": np.linspace(0, 1, bins + 1).tolist(),
            "count": count.tolist(), "confidence": listed(mean_conf),
            "accuracy": listed(accuracy)}


def ece(confidences, correct, bins=ECE_BINS):
    """Expected calibration error: sum over bins of (count / n) |accuracy - confidence|."""
    count, mean_conf, accuracy = _bins(confidences, correct, bins)
    return float((count * np.abs(accuracy - mean_conf)).sum() / count.sum())


def exit_report(logits, labels, temperature, bins=ECE_BINS):
    """ECE, NLL and reliability data of one exit's logits, before and after scaling."""
    correct = np.asarray(logits).argmax(axis=1) == labels
    out = {}
    for when, t in (("before", 1.0), ("after", temperature)):
        conf = confidence(logits, t)
        out[when] = {"ece": ece(conf, correct, bins), "nll": nll(logits, labels, t),
                     "mean_confidence": float(conf.mean()), "accuracy": float(correct.mean()),
                     "reliability": reliability(conf, correct, bins)}
    return out


def calibration_report(temperatures, sets, bins=ECE_BINS):
    """Per exit: its temperature and, for each named ``ExitOutputs`` in ``sets`` (e.g.
    ``{"fit": ..., "held_out": ...}``), the ECE, NLL and reliability before and after."""
    exits = []
    for n, t in enumerate(temperatures):
        exits.append({"exit": n + 1, "temperature": float(t),
                      **{name: {"samples": len(s), **exit_report(logits_of(s)[:, n], s.labels, t, bins)}
                         for name, s in sets.items()}})
    return {"method": "temperature scaling per exit, NLL minimised by golden-section search "
                      f"on log T in [{T_MIN:g}, {T_MAX:g}]",
            "ece_bins": f"{bins} equal-width bins of the top softmax probability",
            "exits": exits}


def rescore(outputs, temperatures):
    """``outputs`` (an ``ExitOutputs`` with logits) with every exit's score recomputed by its
    criterion from ``logits / T_n``; predictions are kept (T > 0 keeps the argmax)."""
    logits = logits_of(outputs)
    if len(temperatures) != outputs.n_exits:
        raise ValueError(f"{outputs.n_exits} exits need {outputs.n_exits} temperatures, got "
                         f"{len(temperatures)}")
    score = get_criterion(outputs.criterion)
    scores = np.stack([score(logits[:, n] / np.float32(t))
                       for n, t in enumerate(temperatures)], axis=1).astype(outputs.scores.dtype)
    return ExitOutputs(scores, outputs.predictions, outputs.labels, outputs.criterion)
