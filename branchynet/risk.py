"""Thresholds with a guarantee: Learn-then-Test with fixed-sequence testing.

Angelopoulos, Bates, Candès, Jordan, Lei, "Learn then Test: Calibrating predictive
algorithms to achieve risk control" (arXiv:2110.01052, 2021); the binomial tail p-value is
theirs and Bates, Angelopoulos, Lei, Malik, Jordan, "Distribution-free, risk-controlling
prediction sets" (J. ACM 2021).

**Claim.** Given n calibration samples exchangeable with (here: drawn i.i.d. like) the new
data, ``ltt_select`` returns thresholds T such that, with probability at least 1 - delta
over the draw of the n samples, the expected loss of T on new data is at most epsilon.

**Loss** (per sample, 0 or 1; ``LOSSES``):

* ``accuracy`` (default): the exit taken under T is wrong where the last exit is right.
  The accuracy lost against sending every sample to the last exit is
  P(early wrong, last right) - P(early right, last wrong) <= E[loss], so a bound on this
  loss bounds the accuracy lost. The accuracy difference itself is not a loss in [0, 1]
  (a sample can gain), so no binomial p-value applies to it directly; this is the
  tightest 0/1 loss that bounds it.
* ``disagreement``: the exit taken predicts another class than the last exit. Needs no
  labels and bounds the accuracy lost as well, but also counts samples on which both
  exits are wrong, so it certifies less speed.
* ``signed``: the accuracy lost itself, per sample (early wrong) - (last wrong) in
  {-1, 0, 1}, rescaled to [0, 1] as (loss + 1) / 2 with level (1 + epsilon) / 2 and tested
  with the Hoeffding-Bentkus p-value (Bates et al. 2021, Prop. 3), valid for any loss in
  [0, 1]. Exact in what it bounds (a sample an early exit gets right offsets one it gets
  wrong) but blind to variance: about 1.3 / sqrt(n) of slack at delta = 0.1, so it pays
  where early exits disagree with the last one often (an undertrained net), and the
  0/1 losses pay where they rarely do.

**Family.** Threshold vectors ordered from the most conservative (row 0: every sample to
the last exit, loss 0) to the most aggressive. The family must not depend on the
calibration samples. ``common_family``: one threshold lambda at every exit, over a fixed
grid of the criterion's range (after per-exit temperature scaling a common threshold means
the same confidence at every exit); fixed-sequence testing pays nothing for a fine grid.

**Test.** For each candidate j >= 1 in order, H_j: risk(T_j) > epsilon, with the exact
binomial p-value P(Binomial(n, epsilon) <= k_j) (k_j: losses among the n samples; the
Hoeffding-Bentkus p-value for ``signed``). H_j is
rejected while p_j <= delta; the first p_j > delta stops the sequence. Fixed-sequence
testing controls the family-wise error at delta, so every rejected candidate holds
simultaneously; the fastest of them (predicted runtime) is returned. None rejected: only
"everything to the last exit" is certified (``Guarantee.feasible`` False), with the number
of calibration samples at which the first candidate's observed loss rate would pass.
"""
import math
from dataclasses import dataclass, field

import numpy as np

from branchynet.selection import AccuracyFloor, Candidates, select
from branchynet.sweep import evaluate_grid, exit_indices, predict_runtime

LOSSES = ("accuracy", "disagreement", "signed")
# Upper end of each criterion's scores (C classes); a threshold above it releases every
# sample, as infinity does.
SCORE_RANGE = {"entropy": lambda c: math.log(c), "max-prob": lambda c: 1 - 1 / c,
               "margin": lambda c: 1.0}


def binomial_cdf(k, n, p):
    """P(Binomial(n, p) <= k), exact (log-space sum of the probabilities), for integer
    arrays or scalars ``k``."""
    k = np.asarray(k)
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    i = np.arange(n + 1)
    lgamma = np.vectorize(math.lgamma, otypes=[np.float64])
    log_pmf = (math.lgamma(n + 1) - lgamma(i + 1) - lgamma(n - i + 1)
               + i * math.log(p) + (n - i) * math.log1p(-p))
    cdf = np.minimum(np.cumsum(np.exp(log_pmf)), 1.0)
    return cdf[np.clip(k, 0, n)]


def binomial_pvalue(losses, n, epsilon):
    """p-value of H0 "risk > epsilon" given ``losses`` 0/1 losses out of n samples:
    P(Binomial(n, epsilon) <= losses)."""
    return binomial_cdf(losses, n, epsilon)


def hoeffding_bentkus_pvalue(mean, n, alpha):
    """p-value of H0 "mean of a [0, 1] loss > alpha" given its sample mean over n samples:
    min(exp(-n h(min(mean, alpha), alpha)), e P(Binomial(n, alpha) <= ceil(n mean))),
    h(a, b) = a log(a / b) + (1 - a) log((1 - a) / (1 - b))."""
    mean = np.minimum(np.asarray(mean, np.float64), alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = (np.where(mean > 0, mean * np.log(mean / alpha), 0.0)
             + (1 - mean) * np.log((1 - mean) / (1 - alpha)))
    bentkus = math.e * binomial_cdf(np.ceil(n * mean - 1e-9).astype(int), n, alpha)
    return np.minimum(np.minimum(np.exp(-n * h), bentkus), 1.0)


def loss_pvalues(loss_sums, n, epsilon, loss):
    """p-values of H0 "risk > epsilon" from each candidate's summed losses over n samples:
    exact binomial for the 0/1 losses, Hoeffding-Bentkus for ``signed``."""
    loss_sums = np.asarray(loss_sums)
    if loss == "signed":
        return hoeffding_bentkus_pvalue((loss_sums / n + 1) / 2, n, (1 + epsilon) / 2)
    return binomial_pvalue(loss_sums, n, epsilon)


def common_family(criterion, classes, steps=400, smallest=1e-6):
    """Threshold values lambda for a common threshold at every exit: 0 (every sample to the
    last exit), ``steps`` values spaced geometrically from ``smallest`` to the top of the
    criterion's range, then infinity. Depends only on the criterion and the class count."""
    top = SCORE_RANGE[criterion](classes)
    return np.concatenate([[0.0], np.geomspace(smallest, top, steps), [np.inf]])


def family_vectors(values, n_exits):
    """The threshold vectors (lambda, ..., lambda) for each value, shape (K, n_exits - 1)."""
    return np.repeat(np.asarray(values, np.float64)[:, None], n_exits - 1, axis=1)


def sample_losses(outputs, family, loss="accuracy"):
    """Loss of every sample under every threshold vector, shape (samples, K): bool for the
    0/1 losses, int8 in {-1, 0, 1} for ``signed``."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    chosen = exit_indices(outputs, family).T  # (samples, K)
    rows = np.arange(len(outputs))[:, None]
    early = outputs.predictions[rows, chosen]
    last = outputs.predictions[:, -1][:, None]
    if loss == "disagreement":
        return early != last
    labels = outputs.labels[:, None]
    if loss == "signed":
        return (early != labels).astype(np.int8) - (last != labels).astype(np.int8)
    return (early != labels) & (last == labels)


def fixed_sequence(pvalues, delta):
    """Number of leading p-values <= delta (hypotheses 1..m rejected, in order)."""
    failed = np.flatnonzero(np.asarray(pvalues) > delta)
    return int(failed[0]) if len(failed) else len(pvalues)


def samples_needed(risk, epsilon, delta, loss="accuracy", limit=10 ** 8):
    """Smallest n at which an observed mean loss ``risk`` (ceil(risk n) losses) passes the
    test at ``delta``; None when risk >= epsilon (no n suffices)."""
    if risk >= epsilon:
        return None
    passes = lambda n: loss_pvalues(math.ceil(risk * n), n, epsilon, loss) <= delta  # noqa: E731
    if risk == 0 and loss != "signed":  # p = (1 - epsilon)^n
        return math.ceil(math.log(delta) / math.log1p(-epsilon))
    hi = 1
    while not passes(hi):
        hi *= 2
        if hi > limit:
            return None
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if passes(mid) else (mid, hi)
    return hi


@dataclass
class Guarantee:
    """What ``ltt_select`` certified: thresholds and the statement they carry."""
    thresholds: tuple
    index: int                # row of the family (0: every sample to the last exit)
    epsilon: float
    delta: float
    loss: str
    samples: int
    losses: int               # calibration losses of the chosen thresholds
    pvalue: float
    accuracy: float           # calibration accuracy of the chosen thresholds
    last_accuracy: float      # calibration accuracy of the last exit
    runtime_ms: float
    exit_fractions: np.ndarray
    rejected: int             # candidates certified (fixed sequence)
    feasible: bool
    samples_needed: int = None  # infeasible: n at which the first candidate would pass
    first_risk: float = None    # infeasible: the first candidate's observed loss rate
    candidates: Candidates = field(default=None, repr=False)
    pvalues: np.ndarray = field(default=None, repr=False)

    @property
    def risk(self):
        return self.losses / self.samples

    def statement(self):
        loss = ("disagreement with the last exit" if self.loss == "disagreement"
                else "accuracy lost vs the last exit")
        test = "Hoeffding-Bentkus" if self.loss == "signed" else "binomial"
        return (f"P({loss} > {100 * self.epsilon:g} pp) <= {self.delta:g} over the draw of "
                f"the {self.samples} validation samples (Learn-then-Test, fixed sequence, "
                f"{test} p-value, {self.loss} loss)")

    def infeasible_message(self):
        need = (f"about {self.samples_needed} validation samples would be needed for the "
                f"first candidate (its loss rate {100 * self.first_risk:.3g}% here) to pass"
                if self.samples_needed else
                f"the first candidate's loss rate here ({100 * self.first_risk:.3g}%) is not "
                f"below epsilon, so no number of samples would do: raise epsilon")
        return (f"no threshold but 'everything to the last exit' meets "
                f"{self.statement()}: {need}")


def ltt_select(outputs, path_ms, epsilon, delta, family, loss="accuracy"):
    """Learn-then-Test on ``outputs`` (the calibration samples) over ``family`` (K threshold
    vectors, row 0 sending every sample to the last exit); returns a ``Guarantee``."""
    if not 0 < epsilon < 1 or not 0 < delta < 1:
        raise ValueError(f"epsilon and delta must lie in (0, 1), got {epsilon}, {delta}")
    family = np.atleast_2d(np.asarray(family, np.float64))
    if (family[0] != 0).any():
        raise ValueError("the family's first row must send every sample to the last exit "
                         "(all thresholds 0)")
    n = len(outputs)
    losses = sample_losses(outputs, family, loss).sum(axis=0, dtype=np.int64)
    pvalues = loss_pvalues(losses, n, epsilon, loss)
    pvalues[0] = 0.0  # every sample to the last exit: loss 0 by construction
    rejected = fixed_sequence(pvalues[1:], delta)
    sweep = evaluate_grid(outputs, family)
    runtime = predict_runtime(sweep.exit_fractions, path_ms)
    candidates = Candidates(family, sweep.accuracy, sweep.exit_counts, runtime, "ltt", len(family))
    certified = np.arange(rejected + 1)
    j = int(certified[np.argmin(runtime[certified])])
    guarantee = Guarantee(tuple(float(t) for t in family[j]), j, epsilon, delta, loss, n,
                          int(losses[j]), float(pvalues[j]), float(sweep.accuracy[j]),
                          float(sweep.accuracy[0]), float(runtime[j]),
                          sweep.exit_fractions[j], rejected, rejected > 0,
                          candidates=candidates, pvalues=pvalues)
    if not guarantee.feasible and len(family) > 1:
        guarantee.first_risk = float(losses[1] / n)
        guarantee.samples_needed = samples_needed(guarantee.first_risk, epsilon, delta, loss)
    return guarantee


def plain_select(outputs, path_ms, epsilon, family):
    """The rule without a guarantee (``--accuracy-drop`` against the last exit): the fastest
    vector of ``family`` whose accuracy on ``outputs`` is at most ``epsilon`` below the
    last exit's. Returns the row index."""
    sweep = evaluate_grid(outputs, family)
    candidates = Candidates(np.asarray(family), sweep.accuracy, sweep.exit_counts,
                            predict_runtime(sweep.exit_fractions, path_ms), "plain")
    return select(candidates, AccuracyFloor(sweep.accuracy[0] - epsilon))
