"""How many BLAS threads the project's work runs with, chosen by the project, not the shell.

A process may load several BLAS libraries (NumPy's OpenBLAS, and SciPy's, which Chainer
imports); ``threadpoolctl`` sets the thread count of every one of them, whatever
``OPENBLAS_NUM_THREADS`` and friends say. The policy:

* batch-size-1 timing runs with ``TIMING_THREADS`` (1) thread per library
  (``timing_threads()``): at batch size 1 a second thread only adds hand-over costs, and
  one thread makes a figure independent of how many cores are idle;
* training and batched inference run with what measures fastest on this machine
  (``fastest_threads``: a few training steps at 1 thread and at every core), or with the
  count the user gives (``set_blas_threads``).

``blas_info()`` describes the libraries and their current thread counts, for records.
"""
import os
import time

import numpy as np

# Threads per BLAS library for every batch-size-1 timing.
TIMING_THREADS = 1
# A thread count other than 1 is kept only when its steps are at least this much faster.
MARGIN = 0.05


def _threadpoolctl():
    try:
        import threadpoolctl
    except ImportError:
        raise RuntimeError("the threadpoolctl package is missing: pip install threadpoolctl "
                           "(a dependency of this project; ./dev.sh setup installs it)") from None
    return threadpoolctl


def blas_info():
    """Every loaded BLAS library: its kind, version, the package that ships it and its
    current thread count (a list of dicts; empty when none is visible)."""
    found = []
    for pool in _threadpoolctl().threadpool_info():
        if pool.get("user_api") != "blas":
            continue
        folder = os.path.basename(os.path.dirname(pool.get("filepath") or ""))
        found.append({"internal_api": pool.get("internal_api"), "version": pool.get("version"),
                      "package": folder[:-len(".libs")] if folder.endswith(".libs") else folder,
                      "num_threads": pool.get("num_threads")})
    return found


def thread_count(info):
    """The thread counts of ``blas_info()``-style records as text: '1 BLAS thread' or
    '1/2 BLAS threads' when the libraries differ."""
    counts = sorted({p["num_threads"] for p in info})
    return f"{'/'.join(str(c) for c in counts)} BLAS thread{'s' if counts != [1] else ''}"


def describe(info):
    """One line for a log: 'openblas 0.3.31 (numpy), openblas 0.3.30 (scipy): 1 BLAS thread'."""
    if not info:
        return "no BLAS library visible to threadpoolctl"
    names = ", ".join(f"{p['internal_api']} {p['version']}"
                      + (f" ({p['package']})" if p.get("package") else "") for p in info)
    return f"{names}: {thread_count(info)}{' each' if len(info) > 1 else ''}"


def blas_threads(n):
    """A context manager: every loaded BLAS library runs with ``n`` threads inside it."""
    return _threadpoolctl().threadpool_limits(limits=int(n), user_api="blas")


def timing_threads():
    """The context every batch-size-1 timing runs in: ``TIMING_THREADS`` per library."""
    return blas_threads(TIMING_THREADS)


def set_blas_threads(n):
    """Set every loaded BLAS library to ``n`` threads for the rest of the process."""
    blas_threads(n)  # threadpool_limits applies at once; not used as a context, it stays


def timing_blas():
    """``blas_info()`` as batch-size-1 timing sees it (inside ``timing_threads()``)."""
    with timing_threads():
        return blas_info()


def cores():
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def fastest_threads(step, candidates, steps=3, budget_s=2.0, clock=time.perf_counter):
    """Time ``step()`` (one unit of the work, e.g. a training step) at each thread count of
    ``candidates`` and return ``(threads, record)``.

    After one untimed warm-up call per count, the counts take turns (in alternating order),
    one timed call each, until each has ``steps`` calls or ``budget_s`` seconds have passed
    (at least one timed call each). The first candidate (1 thread) is kept unless another's
    median is more than ``MARGIN`` faster. ``record`` holds the counts, the per-call
    milliseconds and the choice.
    """
    candidates = list(dict.fromkeys(int(c) for c in candidates))
    ms = {c: [] for c in candidates}
    for c in candidates:
        with blas_threads(c):
            step()
    start = clock()
    while min(len(v) for v in ms.values()) < steps:
        for c in candidates if len(ms[candidates[0]]) % 2 == 0 else candidates[::-1]:
            with blas_threads(c):
                t0 = clock()
                step()
                ms[c].append(1e3 * (clock() - t0))
        if clock() - start > budget_s:
            break
    medians = {c: float(np.median(v)) for c, v in ms.items()}
    best = min(medians, key=medians.get)
    chosen = best if medians[best] < (1 - MARGIN) * medians[candidates[0]] else candidates[0]
    return chosen, {"candidates": candidates, "step_ms": {str(c): v for c, v in ms.items()},
                    "median_ms": {str(c): medians[c] for c in candidates}, "threads": chosen}


def training_step(net, x, y, weights=None):
    """One forward and backward pass of ``net``'s joint loss on the batch ``x``, ``y`` (on
    ``net``'s device): the unit of work ``fastest_threads`` times for training."""
    import chainer

    from branchynet.net import JointLoss
    loss_fn = JointLoss(net, weights)
    device = net.device
    x, y = device.send(x), device.send(y)

    def step():
        with chainer.using_config("train", True), chainer.using_config("enable_backprop", True):
            net.cleargrads()
            loss_fn(x, y).backward()
    return step


def _same_libraries(a, b):
    return sorted((p["internal_api"], p["version"]) for p in a or []) == sorted(
        (p["internal_api"], p["version"]) for p in b or [])


def training_threads(setting, make_step=None, no_step="", previous=None, log=print):
    """Apply the BLAS thread count for training and batched work; return its record.

    ``setting`` is a count (used as given) or ``'auto'``: the faster of 1 thread and every
    core (``fastest_threads``) for the step ``make_step()`` returns (one training step, see
    ``training_step``); 1 thread on one core or without ``make_step`` (``no_step`` says
    why, e.g. training on a GPU). An earlier 'auto' record (``previous``, e.g. from the
    results folder a run resumes) made on the same cores and libraries is reused as it is.
    """
    if setting == "auto" and previous and previous.get("setting") == "auto" and \
            previous.get("cores") == cores() and \
            _same_libraries(previous.get("libraries"), blas_info()):
        set_blas_threads(previous["training_threads"])
        log(f"BLAS: {describe(blas_info())} for training and batched work ({previous['how']}; "
            f"as chosen before on this machine); {TIMING_THREADS} for batch-size-1 timing")
        return previous
    if setting != "auto":
        threads, how, measured = int(setting), "--blas-threads", None
    elif make_step is None or cores() == 1:
        threads, measured = 1, None
        how = f"auto: {'one core' if cores() == 1 else no_step or 'nothing to measure'}"
    else:
        log(f"BLAS threads: timing a training step at 1 and {cores()} threads")
        threads, measured = fastest_threads(make_step(), [1, cores()])
        how = "auto: the faster of " + ", ".join(
            f"{c} thread{'s' if c > 1 else ''} {measured['median_ms'][str(c)]:.1f} ms"
            for c in measured["candidates"]) + " per training step (median)"
    set_blas_threads(threads)
    record = {"setting": setting, "training_threads": threads, "how": how,
              "measurement": measured, "timing_threads": TIMING_THREADS,
              "libraries": blas_info(), "cores": cores()}
    log(f"BLAS: {describe(record['libraries'])} for training and batched work ({how}); "
        f"{TIMING_THREADS} for batch-size-1 timing")
    return record
