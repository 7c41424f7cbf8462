"""Synthetic exit outputs of an N-exit classifier, for exercising threshold searches at scale.

Threshold searches only see ``ExitOutputs`` (a score and a prediction per sample and exit),
so a many-exit case can be simulated without a trained network. The model:

* each sample has a label y (uniform over ``classes``) and an easiness m > 0 drawn once
  (log-normal), shared by all its exits: a sample easy at one exit is easy at all;
* exit n's logits are ``g_n * m * onehot(y) + noise``, the noise being a mix of a
  per-sample part shared by all exits (weight ``rho``: correlated mistakes) and a part
  drawn per exit;
* the strengths g_n are calibrated (bisection) so that exit n, taken alone, has accuracy
  ``accuracies[n]`` (rising with depth, as in a real B-net);
* scores come from the real criterion functions (``branchynet.routing.CRITERIA``) applied
  to these logits, predictions are their argmax;
* ``logit_scales`` multiplies exit n's logits after the strengths are calibrated: the same
  predictions with over- (> 1) or under-confident (< 1) scores, a badly calibrated exit.

Samples of a second call with another seed come from the same distribution (the g_n are
calibrated on a fixed draw), so one call gives "validation" outputs and another "test".
"""
import numpy as np

from branchynet.routing import get_criterion
from branchynet.sweep import ExitOutputs


def default_accuracies(n_exits, first=0.62, last=0.80):
    """Exit accuracies rising evenly from ``first`` to ``last`` (B-AlexNet-like)."""
    return tuple(np.linspace(first, last, n_exits))


def default_path_ms(n_exits, first=2.0, last=10.0):
    """Exit path latencies (ms) rising evenly from ``first`` to ``last``."""
    return np.linspace(first, last, n_exits)


def _draw(rng, samples, n_exits, classes, rho, sigma):
    y = rng.randint(classes, size=samples).astype(np.int32)
    easiness = np.exp(rng.normal(0.0, 0.6, size=samples))
    shared = rng.normal(size=(samples, classes))
    own = rng.normal(size=(n_exits, samples, classes))
    noise = sigma * (rho * shared[None] + np.sqrt(1 - rho ** 2) * own)
    return y, easiness, noise


def _logits(g, y, easiness, noise_n, classes):
    z = noise_n.copy()
    z[np.arange(len(y)), y] += g * easiness
    return z.astype(np.float32)


def _calibrate(target, y, easiness, noise_n, classes):
    lo, hi = 0.0, 50.0
    for _ in range(50):
        g = (lo + hi) / 2
        accuracy = (_logits(g, y, easiness, noise_n, classes).argmax(axis=1) == y).mean()
        lo, hi = (g, hi) if accuracy < target else (lo, g)
    return (lo + hi) / 2


def synthetic_exit_outputs(samples, n_exits, seed=0, criterion="entropy", accuracies=None,
                           classes=10, rho=0.5, sigma=6.0, logit_scales=None):
    """``ExitOutputs`` of ``samples`` synthetic samples at ``n_exits`` exits (see module),
    scores and predictions derived from their logits."""
    accuracies = default_accuracies(n_exits) if accuracies is None else tuple(accuracies)
    if len(accuracies) != n_exits:
        raise ValueError(f"{len(accuracies)} accuracies given for {n_exits} exits")
    get_criterion(criterion)
    # Strengths calibrated once on a fixed draw, so every seed samples one distribution.
    cal = _draw(np.random.RandomState(12345), 20000, n_exits, classes, rho, sigma)
    strengths = [_calibrate(a, cal[0], cal[1], cal[2][n], classes)
                 for n, a in enumerate(accuracies)]
    y, easiness, noise = _draw(np.random.RandomState(seed), samples, n_exits, classes, rho, sigma)
    scales = np.asarray(np.ones(n_exits) if logit_scales is None else logit_scales, np.float32)
    logits = [_logits(g, y, easiness, noise[n], classes) * scales[n]
              for n, g in enumerate(strengths)]
    return ExitOutputs.from_logits(np.stack(logits, axis=1), y, criterion)
