"""Choosing thresholds honestly: on validation data, under budgets, without the full grid.

The paper screens a threshold grid on the test set and picks the knee by hand. Here every
selection works on ``Candidates``: threshold vectors with their exact accuracy and exit
counts on a set of cached exit outputs (``ExitOutputs`` of a validation split carved from
the training data) and their predicted runtime (exit fractions x measured latency of each
exit path, ``branchynet.sweep.predict_runtime``). Nothing here sees test data: the caller
passes the validation outputs, and reports the chosen thresholds on the test set after.

Searches (``SEARCHES``), each returning ``Candidates``:

* ``grid``: every vector of the product grid (the paper's screen), |values|^(N-1) points
  for N exits.
* ``coordinate``: coordinate descent over the same per-exit values. One step tries every
  value for one exit's threshold with the others fixed and keeps the best under the
  objective (a budget; for the knee, a ladder of latency budgets that traces the
  frontier); steps repeat over the exits until nothing improves. About
  rounds x (N-1) x |values| evaluations per objective instead of |values|^(N-1).
* ``quantile``: MSDNet-style (Huang et al., ICLR 2018). One parameter q in [0, 1]: at each
  exit but the last, the threshold is the score below which a fraction q of the samples
  that reach that exit lie, so exit fractions follow q, q(1-q), q(1-q)^2, ... A sweep
  over q gives a one-dimensional family of threshold vectors whatever N is. Thresholds
  are validation scores themselves (exactly representable in float32), so real routing
  and the cached evaluation agree.

Rules, applied to candidates:

* ``select_knee``: the knee of the inc-points frontier (Kneedle), as for the test sweep.
* ``LatencyBudget(ms)``: the most accurate candidate whose predicted runtime fits the
  budget (ties: the faster, then the first).
* ``AccuracyFloor(accuracy)``: the fastest candidate whose accuracy is at least the floor
  (a fraction in [0, 1]; ties: the more accurate, then the first).

A budget that no candidate meets raises ``InfeasibleBudget``, whose message names the
budget and the fastest predicted runtime (or the best accuracy) that can be had.
"""
import time
from dataclasses import dataclass, field

import numpy as np

from branchynet.frontier import inc_points, knee
from branchynet.sweep import evaluate_grid, predict_runtime, threshold_grid

# Relative slack when comparing against a budget, so that a budget computed as, e.g.,
# baseline accuracy minus a drop is not missed by one rounding error.
_SLACK = 1e-9


@dataclass
class Candidates:
    """Threshold vectors evaluated by a search, with their exact results.

    ``accuracy`` and ``exit_counts`` are exact on the outputs searched; ``runtime_ms`` is
    the predicted runtime. ``evaluations`` counts the distinct vectors evaluated and
    ``seconds`` the wall time of the search.
    """
    thresholds: np.ndarray   # (K, n_exits - 1)
    accuracy: np.ndarray     # (K,)
    exit_counts: np.ndarray  # (K, n_exits)
    runtime_ms: np.ndarray   # (K,)
    method: str = "grid"
    evaluations: int = 0
    seconds: float = 0.0

    def __len__(self):
        return len(self.accuracy)

    @property
    def exit_fractions(self):
        return self.exit_counts / self.exit_counts.sum(axis=1, keepdims=True)


def _as_candidates(outputs, thresholds, path_ms, method, seconds=0.0, evaluations=None):
    sweep = evaluate_grid(outputs, thresholds)
    return Candidates(sweep.thresholds, sweep.accuracy, sweep.exit_counts,
                      predict_runtime(sweep.exit_fractions, path_ms), method,
                      len(sweep.accuracy) if evaluations is None else evaluations, seconds)


def _check_path_ms(outputs, path_ms):
    path_ms = np.asarray(path_ms, np.float64)
    if path_ms.shape != (outputs.n_exits,):
        raise ValueError(f"{outputs.n_exits} exits need {outputs.n_exits} path latencies, "
                         f"got {path_ms.shape[0] if path_ms.ndim else path_ms}")
    return path_ms


# ----------------------------------------------------------------------------- budgets

@dataclass(frozen=True)
class LatencyBudget:
    """At most ``ms`` milliseconds per sample, predicted; ``note`` says where it came from."""
    ms: float
    note: str = ""

    def __post_init__(self):
        if not np.isfinite(self.ms) or self.ms <= 0:
            raise ValueError(f"a latency budget must be a positive number of ms, got {self.ms}")

    def describe(self):
        return f"latency <= {self.ms:.4g} ms" + (f" ({self.note})" if self.note else "")

    def feasible(self, accuracy, runtime_ms):
        return np.asarray(runtime_ms) <= self.ms * (1 + _SLACK)

    def rank(self, accuracy, runtime_ms):
        """Sort keys, larger is better: feasible first; then the most accurate (feasible)
        or the fastest (infeasible); then the fastest."""
        accuracy, runtime_ms = np.asarray(accuracy), np.asarray(runtime_ms)
        ok = self.feasible(accuracy, runtime_ms)
        return ok, np.where(ok, accuracy, -runtime_ms), -runtime_ms

    def infeasible(self, candidates):
        i = int(np.argmin(candidates.runtime_ms))
        return InfeasibleBudget(
            f"no threshold vector meets the budget {self.describe()}: the fastest of the "
            f"{len(candidates)} candidates ({candidates.method} search) is predicted at "
            f"{candidates.runtime_ms[i]:.4g} ms per sample (T = {_fmt_t(candidates.thresholds[i])}, "
            f"accuracy {100 * candidates.accuracy[i]:.2f}% on validation)", self,
            float(candidates.runtime_ms[i]))


@dataclass(frozen=True)
class AccuracyFloor:
    """Accuracy at least ``accuracy`` (a fraction: 0.99 is 99%); ``note`` says where it
    came from. A floor above 1 is allowed (and infeasible)."""
    accuracy: float
    note: str = ""

    def __post_init__(self):
        if not np.isfinite(self.accuracy):
            raise ValueError(f"an accuracy floor must be a number, got {self.accuracy}")

    def describe(self):
        return f"accuracy >= {100 * self.accuracy:.2f}%" + (f" ({self.note})" if self.note else "")

    def feasible(self, accuracy, runtime_ms):
        return np.asarray(accuracy) >= self.accuracy - _SLACK

    def rank(self, accuracy, runtime_ms):
        """Sort keys, larger is better: feasible first; then the fastest (feasible) or the
        most accurate (infeasible); then the most accurate."""
        accuracy, runtime_ms = np.asarray(accuracy), np.asarray(runtime_ms)
        ok = self.feasible(accuracy, runtime_ms)
        return ok, np.where(ok, -runtime_ms, accuracy), accuracy

    def infeasible(self, candidates):
        i = int(np.argmax(candidates.accuracy))
        return InfeasibleBudget(
            f"no threshold vector meets the floor {self.describe()} on validation: the most "
            f"accurate of the {len(candidates)} candidates ({candidates.method} search) reaches "
            f"{100 * candidates.accuracy[i]:.2f}% (T = {_fmt_t(candidates.thresholds[i])}, "
            f"predicted {candidates.runtime_ms[i]:.4g} ms per sample)", self,
            float(candidates.accuracy[i]))


class InfeasibleBudget(ValueError):
    """No candidate meets a budget. ``budget`` is the budget, ``achievable`` the fastest
    predicted runtime (latency budget) or the best accuracy (accuracy floor) there is."""

    def __init__(self, message, budget, achievable):
        super().__init__(message)
        self.budget = budget
        self.achievable = achievable


def _fmt_t(thresholds):
    return "(" + ", ".join(f"{t:g}" for t in thresholds) + ")"


def _best(keys):
    """Index of the largest key tuple (column-wise keys); ties go to the first index."""
    order = np.lexsort((-np.arange(len(keys[0])),) + tuple(k.astype(np.float64) for k in keys[::-1]))
    return int(order[-1])


def select(candidates, budget):
    """Index of the candidate ``budget`` picks (see the module docstring).

    Raises ``InfeasibleBudget`` when no candidate meets the budget.
    """
    keys = budget.rank(candidates.accuracy, candidates.runtime_ms)
    i = _best(keys)
    if not keys[0][i]:
        raise budget.infeasible(candidates)
    return i


def select_knee(candidates, inc_amt=-0.0005):
    """Index of the knee of the candidates' inc-points frontier (``branchynet.frontier``)."""
    frontier = inc_points(candidates.accuracy, candidates.runtime_ms, inc_amt)
    return knee(candidates.accuracy, candidates.runtime_ms, frontier)


# ---------------------------------------------------------------------------- searches

def grid_search(outputs, path_ms, values, budget=None):
    """Every vector of the product grid over ``values`` (``budget`` is not needed)."""
    path_ms = _check_path_ms(outputs, path_ms)
    start = time.perf_counter()
    grid = threshold_grid(values, outputs.n_exits)
    result = _as_candidates(outputs, grid, path_ms, "grid")
    result.seconds = time.perf_counter() - start
    return result


def quantile_thresholds(outputs, q):
    """MSDNet-style thresholds: a fraction ``q`` of the samples reaching each exit leave.

    At exit n (all but the last) the threshold is the k-th smallest score (k = round(q m))
    of the m samples of ``outputs`` that reach it, so exactly the k with lower scores leave
    (fewer when scores tie). q = 0 gives 0 (nobody leaves); q = 1 gives infinity.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"q is a fraction in [0, 1], got {q}")
    reach = np.ones(len(outputs.labels), bool)
    thresholds = []
    for n in range(outputs.n_exits - 1):
        column = outputs.scores[:, n]
        scores = np.sort(column[reach])
        k = int(round(q * len(scores)))
        t = np.inf if k >= len(scores) else float(scores[k]) if k > 0 else 0.0
        thresholds.append(t)
        reach &= ~(column < t)
    return thresholds


def quantile_search(outputs, path_ms, values=None, budget=None, steps=201):
    """The MSDNet-style family over ``steps`` values of q evenly spaced in [0, 1]."""
    path_ms = _check_path_ms(outputs, path_ms)
    start = time.perf_counter()
    rows = np.unique(np.array([quantile_thresholds(outputs, q)
                               for q in np.linspace(0, 1, steps)], np.float64), axis=0)
    result = _as_candidates(outputs, rows, path_ms, "quantile")
    result.seconds = time.perf_counter() - start
    return result


class _Cache:
    """Exact evaluation of threshold vectors, each evaluated once."""

    def __init__(self, outputs, path_ms):
        self.outputs, self.path_ms = outputs, path_ms
        self.results = {}  # tuple(T) -> (accuracy, exit counts)

    def __call__(self, rows):
        todo = [r for r in dict.fromkeys(map(tuple, rows)) if r not in self.results]
        if todo:
            sweep = evaluate_grid(self.outputs, np.array(todo, np.float64))
            for r, a, c in zip(todo, sweep.accuracy, sweep.exit_counts):
                self.results[r] = (a, c)
        accuracy = np.array([self.results[tuple(r)][0] for r in rows])
        counts = np.array([self.results[tuple(r)][1] for r in rows])
        return accuracy, predict_runtime(counts / counts.sum(axis=1, keepdims=True), self.path_ms)

    def candidates(self, method, seconds):
        rows = np.array(list(self.results), np.float64)
        accuracy = np.array([a for a, _ in self.results.values()])
        counts = np.array([c for _, c in self.results.values()])
        return Candidates(rows, accuracy, counts,
                          predict_runtime(counts / counts.sum(axis=1, keepdims=True), self.path_ms),
                          method, len(rows), seconds)


def _descend(cache, start, values, budget, max_rounds):
    """Coordinate descent from ``start`` under ``budget``; returns the final vector."""
    current = np.array(start, np.float64)
    accuracy, runtime = cache(current[None])
    best = tuple(k[0] for k in budget.rank(accuracy, runtime))
    for _ in range(max_rounds):
        moved = False
        for n in range(len(current)):
            rows = np.repeat(current[None], len(values), axis=0)
            rows[:, n] = values
            keys = budget.rank(*cache(rows))
            j = _best(keys)
            key = tuple(k[j] for k in keys)
            if key > best:
                current, best, moved = rows[j], key, True
        if not moved:
            break
    return current


def coordinate_search(outputs, path_ms, values, budget=None, levels=16, max_rounds=20,
                      warm=None):
    """Coordinate descent over the per-exit ``values`` (see the module docstring).

    First the frontier is traced with a ladder of ``levels`` latency budgets from the
    fastest to the slowest exit path; each level descends from two starts (every
    threshold at the smallest value, and at the largest) and from the previous level's
    answer (continuation: one-exit-at-a-time moves get stuck less often when started
    near the answer). With a ``budget``, one more descent optimises it, started from the
    best vector found so far for it. Returns every distinct vector evaluated on the way,
    so a rule (knee, budget) can be applied to them afterwards.

    ``warm``: the ``Candidates`` of an earlier coordinate search of the same outputs and
    values; its vectors are reused and the ladder is not traced again (several budgets:
    trace the frontier once, then refine per budget). ``evaluations`` counts only the
    vectors this call evaluated.
    """
    path_ms = _check_path_ms(outputs, path_ms)
    values = np.unique(np.asarray(values, np.float64))
    threshold_grid(values, 2)  # same validation as the grid
    start = time.perf_counter()
    cache = _Cache(outputs, path_ms)
    n = outputs.n_exits - 1
    starts = [np.full(n, values[0]), np.full(n, values[-1])]
    if warm is not None:
        if warm.thresholds.shape[1] != n:
            raise ValueError("warm candidates are for another number of exits")
        for row, a, c in zip(warm.thresholds, warm.accuracy, warm.exit_counts):
            cache.results[tuple(row)] = (a, c)
    known = len(cache.results)
    previous = None
    for ms in np.linspace(path_ms.min(), path_ms.max(), levels) if warm is None else ():
        step = LatencyBudget(ms)
        answers = [_descend(cache, s, values, step, max_rounds)
                   for s in starts + ([previous] if previous is not None else [])]
        previous = answers[_best(step.rank(*cache(np.array(answers))))]
    if budget is not None:
        found = cache.candidates("coordinate", 0.0)
        best = found.thresholds[_best(budget.rank(found.accuracy, found.runtime_ms))]
        _descend(cache, best, values, budget, max_rounds)
    result = cache.candidates("coordinate", time.perf_counter() - start)
    result.evaluations = len(result) - known
    return result


SEARCHES = {"grid": grid_search, "coordinate": coordinate_search, "quantile": quantile_search}


def search(method, outputs, path_ms, values=None, budget=None, **options):
    """Run the search ``method`` (a key of ``SEARCHES``) and return its ``Candidates``.

    ``values`` are the per-exit threshold values (grid and coordinate); ``budget`` lets
    the coordinate search aim at one objective (the others ignore it).
    """
    if method not in SEARCHES:
        raise ValueError(f"unknown search {method!r}; choose one of {', '.join(SEARCHES)}")
    if method != "quantile" and values is None:
        raise ValueError(f"the {method} search needs threshold values")
    return SEARCHES[method](outputs, path_ms, values, budget=budget, **options)


@dataclass
class Selection:
    """Thresholds chosen by ``rule`` among ``candidates``, with their results there."""
    rule: str
    index: int
    thresholds: tuple
    accuracy: float
    runtime_ms: float
    exit_fractions: np.ndarray
    candidates: Candidates = field(repr=False)


def choose(outputs, path_ms, rule="knee", method="grid", values=None, inc_amt=-0.0005,
           **options):
    """Search ``outputs`` (validation) and pick thresholds by ``rule``.

    ``rule`` is ``'knee'``, a ``LatencyBudget`` or an ``AccuracyFloor``. Raises
    ``InfeasibleBudget`` when no candidate meets the budget.
    """
    budget = None if rule == "knee" else rule
    candidates = search(method, outputs, path_ms, values, budget=budget, **options)
    if budget is None:
        i, name = select_knee(candidates, inc_amt), "knee"
    else:
        i, name = select(candidates, budget), budget.describe()
    return Selection(name, i, tuple(float(t) for t in candidates.thresholds[i]),
                     float(candidates.accuracy[i]), float(candidates.runtime_ms[i]),
                     candidates.exit_fractions[i], candidates)
