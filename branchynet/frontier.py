"""Frontier and knee of the accuracy-versus-runtime trade-off."""
import numpy as np


def inc_points(accuracy, runtime, inc_amt=-0.0005):
    """The authors' frontier rule ("inc points"); returns indices sorted by runtime.

    Points are visited from fastest to slowest; the fastest is kept, and a later one is
    kept when its accuracy exceeds the last kept accuracy plus ``inc_amt`` (a small
    negative tolerance). Ties in runtime keep the grid order (a stable sort).
    """
    accuracy = np.asarray(accuracy, np.float64)
    order = np.argsort(np.asarray(runtime, np.float64), kind="stable")
    kept = [order[0]]
    for i in order[1:]:
        if accuracy[i] > accuracy[kept[-1]] + inc_amt:
            kept.append(i)
    return np.array(kept)


def knee(accuracy, runtime, frontier):
    """Pick the knee of a frontier: the point farthest above the chord between its ends.

    Runtime and accuracy are scaled to [0, 1] over the frontier; the knee maximises
    ``accuracy_scaled - runtime_scaled`` (the Kneedle rule for a rising, flattening
    curve). Returns an index into the original arrays.
    """
    frontier = np.asarray(frontier)
    if len(frontier) == 1:
        return int(frontier[0])
    acc = np.asarray(accuracy, np.float64)[frontier]
    rt = np.asarray(runtime, np.float64)[frontier]
    acc_span = acc.max() - acc.min()
    rt_span = rt.max() - rt.min()
    acc_scaled = (acc - acc.min()) / acc_span if acc_span > 0 else np.ones_like(acc)
    rt_scaled = (rt - rt.min()) / rt_span if rt_span > 0 else np.zeros_like(rt)
    return int(frontier[np.argmax(acc_scaled - rt_scaled)])


def pareto_points(accuracy, runtime, among=None):
    """The non-dominated points (no other is as fast and as accurate, and better in one),
    sorted by runtime; of identical points only the first in grid order is kept.
    ``among``: indices to choose from (default: all)."""
    accuracy = np.asarray(accuracy, np.float64)
    runtime = np.asarray(runtime, np.float64)
    among = np.arange(len(accuracy)) if among is None else np.asarray(among)
    order = among[np.lexsort((among, -accuracy[among], runtime[among]))]
    kept, best = [], -np.inf
    for i in order:
        if accuracy[i] > best:
            kept.append(int(i))
            best = accuracy[i]
    return np.array(kept, dtype=int)


def spread_over_runtime(points, runtime, cap, keep=()):
    """At most ``cap`` of ``points`` spread evenly over their runtime: the fastest, the
    slowest, every index in ``keep`` that is among them, and the point nearest to each of
    evenly spaced runtimes in between; returned sorted by runtime."""
    points = [int(i) for i in points]
    if len(points) <= cap:
        return np.array(points, dtype=int)
    runtime = np.asarray(runtime, np.float64)
    chosen = {points[0], points[-1]} | {int(k) for k in keep if int(k) in points}
    rest = [i for i in points if i not in chosen]
    for target in np.linspace(runtime[points[0]], runtime[points[-1]], max(cap, 2))[1:-1]:
        if len(chosen) >= cap or not rest:
            break
        nearest = min(rest, key=lambda i: abs(runtime[i] - target))
        chosen.add(nearest)
        rest.remove(nearest)
    return np.array(sorted(chosen, key=lambda i: (runtime[i], i)), dtype=int)
