"""Per-sample latency at batch size 1, end to end and in the authors' accounting.

End to end means: the sample is sent to the device, every trunk segment and branch head up
to its exit runs, softmax and entropy are computed and the exit decisions made, and the
predicted label is copied back to the host. On a GPU the device is synchronised before
each clock read, so the clock measures execution, not kernel launches.

The authors' accounting (`docs/paper.md` section 5) times only the trunk segments; it is
measured separately so the two can be set side by side.

Every reported figure comes from ``interleave``: R rounds, and within each round every
variant (baseline, each exit path, each measured threshold vector) runs on the same block
of samples before the next block, in a random order per block, each after one untimed
call that warms the caches, so a change in the machine's load hits all of them alike. A figure is the median over rounds of the
per-round mean; a ratio of two figures (a gain) is computed round by round, paired.
"""
import os
import time

import chainer
import numpy as np
from chainer import backend

from branchynet import net as net_module
from branchynet.threads import blas_info, timing_threads


def synchronize(device):
    """Wait until all work queued on ``device`` has finished (no-op on the CPU)."""
    if device.xp is not np:
        device.device.synchronize()


def loadavg():
    """The 1, 5 and 15 minute load averages (None where the system has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _samples(x, progress, desc):
    indices = range(len(x))
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc=desc, unit="sample", leave=False)
    return indices


def forced_exit_thresholds(n, n_exits):
    """Thresholds that send every sample out at exit ``n`` (0-based).

    Threshold 0 keeps every sample (no criterion's score is < 0); infinity lets every
    sample out.
    """
    return [0.0] * n + [np.inf] * (n_exits - 1 - n)


# ---------------------------------------------------------------------------------------
# Variants: one sample at batch size 1, returning its seconds


class EndToEnd:
    """Early-exit inference of sample ``i`` of ``x`` at batch size 1, end to end.

    Calling it returns the seconds from sending the input to having the label on the
    host (device synchronised); the sample's label and exit are kept in ``labels`` and
    ``exits``.
    """

    def __init__(self, net, x, thresholds, device=None, criterion="entropy"):
        self.net, self.x, self.thresholds, self.criterion = net, x, list(thresholds), criterion
        self.device = device or net.device
        self.cpu = backend.CpuDevice()
        self.labels = np.full(len(x), -1, np.int32)
        self.exits = np.full(len(x), -1, np.int32)

    def __call__(self, i):
        start = time.perf_counter()
        label, exit_ = self.net.predict(self.device.send(self.x[i:i + 1]), self.thresholds,
                                        self.criterion)
        label, exit_ = self.cpu.send(label), self.cpu.send(exit_)
        synchronize(self.device)
        seconds = time.perf_counter() - start
        self.labels[i], self.exits[i] = label[0], exit_[0]
        return seconds


class TrunkOnly:
    """The trunk segments up to exit ``n`` on sample ``i`` (input already on the device):
    the authors' accounting. Returns the summed seconds of the segments alone.

    Chainer's type checks run on the first call only, as ``BranchyNet.predict`` runs them
    on the first input of each shape (``branchynet.net.INFERENCE_TYPE_CHECK``: always), so
    that the trunk alone and the end-to-end path pay the same framework costs.
    """

    def __init__(self, net, x, n, device=None):
        self.net, self.n = net, n
        self.device = device or net.device
        self.inputs = [self.device.send(x[i:i + 1]) for i in range(len(x))]
        self.type_check = True

    def __call__(self, i):
        total, h = 0.0, self.inputs[i]
        with net_module.inference_config(self.type_check or net_module.INFERENCE_TYPE_CHECK):
            for m in range(self.n + 1):
                synchronize(self.device)
                start = time.perf_counter()
                h = self.net.run_trunk(h, m)
                synchronize(self.device)
                total += time.perf_counter() - start
        self.type_check = False
        return total


# ---------------------------------------------------------------------------------------
# Interleaved rounds


def interval_coverage(rounds):
    """Probability that [min, max] of ``rounds`` independent values covers their median."""
    return 1 - 2.0 ** (1 - rounds)


class Interleaved:
    """Per-round mean latencies (ms) of several variants timed in alternation.

    ``rounds_ms[name]`` holds one mean per round. ``stats`` summarises a variant; ``ratio``
    pairs two variants round by round (a gain). The interval of a ratio is the range of
    its per-round values, which covers the true median ratio with probability
    ``interval_coverage(rounds)`` (93.8% for 5 rounds, 98.4% for 7).
    """

    def __init__(self, rounds_ms, samples, load=None, seconds=None, blocks_ms=None, blas=None):
        self.rounds_ms = {k: np.asarray(v, np.float64) for k, v in rounds_ms.items()}
        self.samples, self.load, self.seconds = samples, load or {}, seconds
        # Per-block means (rounds x blocks) of each variant, for the paired checks; None in
        # records written before they were kept.
        self.blocks_ms = None if blocks_ms is None else {
            k: np.asarray(v, np.float64) for k, v in blocks_ms.items()}
        self.blas = blas  # the BLAS libraries and thread counts the rounds ran with

    @property
    def names(self):
        return list(self.rounds_ms)

    @property
    def rounds(self):
        return len(next(iter(self.rounds_ms.values())))

    def median(self, name):
        return float(np.median(self.rounds_ms[name]))

    def stats(self, name):
        """Median, quartiles, minimum and maximum (ms) over the rounds."""
        return {f"{k}_ms": v for k, v in spread(self.rounds_ms[name]).items()}

    def combine(self, weights, blocks=False):
        """Per-round ms of a weighted sum of variants, e.g. a prediction from exit paths
        (``blocks``: per-block ms, rounds x blocks)."""
        values = self.blocks_ms if blocks else self.rounds_ms
        return sum(w * values[name] for name, w in weights.items())

    def ratio(self, numerator, denominator):
        """Per-round ``numerator / denominator``: median and [min, max] interval; a ratio
        whose interval includes 1 is not significant. Either side may be a variant's name
        (any key of ``rounds_ms``, e.g. a grid index) or an array of per-round ms (e.g. from
        ``combine``); a name not measured raises ``KeyError``."""
        a, b = (np.asarray(side, np.float64) if isinstance(side, (np.ndarray, list, tuple))
                else self.rounds_ms[side] for side in (numerator, denominator))
        return ratio_summary(a / b)

    def to_json(self):
        doc = {"rounds": self.rounds, "samples": self.samples, "load": self.load,
               "interval_coverage": interval_coverage(self.rounds),
               "rounds_ms": {k: v.tolist() for k, v in self.rounds_ms.items()}}
        if self.blocks_ms is not None:
            doc["blocks_ms"] = {k: np.round(v, 6).tolist() for k, v in self.blocks_ms.items()}
        if self.blas is not None:
            doc["blas"] = self.blas
        return doc

    @classmethod
    def from_json(cls, doc):
        return cls(doc["rounds_ms"], doc["samples"], doc.get("load"),
                   blocks_ms=doc.get("blocks_ms"), blas=doc.get("blas"))


def rounds_vs_blocks(doc, block):
    """Where a stored measurement's per-round means (``rounds_ms``) differ from what its
    per-block means (``blocks_ms``, ``block`` samples each, the last one possibly shorter,
    stored to 1e-6 ms) give; None when they agree to that rounding or no blocks are kept."""
    blocks = doc.get("blocks_ms")
    if blocks is None:
        return None
    n = doc["samples"]
    sizes = np.array([min(block, n - start) for start in range(0, n, block)], np.float64)
    if set(blocks) != set(doc["rounds_ms"]):
        return (f"blocks_ms and rounds_ms name other variants "
                f"({sorted(set(blocks) ^ set(doc['rounds_ms']))})")
    for name, rounds in doc["rounds_ms"].items():
        per_block = np.asarray(blocks[name], np.float64)
        if per_block.shape != (len(rounds), len(sizes)):
            return (f"blocks_ms[{name!r}] has shape {per_block.shape}, not {len(rounds)} rounds "
                    f"x {len(sizes)} blocks of {block} of {n} samples")
        derived = per_block @ sizes / n
        off = np.abs(derived - np.asarray(rounds, np.float64))
        if off.max() > 1e-6:
            r = int(off.argmax())
            return (f"rounds_ms[{name!r}][{r}] is {rounds[r]!r} ms, the mean of its blocks_ms "
                    f"{derived[r]!r} ms")
    return None


def spread(values):
    """Median, quartiles, minimum and maximum of per-round values."""
    values = np.asarray(values, np.float64)
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3),
            "min": float(values.min()), "max": float(values.max())}


def ratio_summary(per_round):
    """Median and [min, max] of per-round ratios, and whether the interval excludes 1."""
    per_round = np.asarray(per_round, np.float64)
    low, high = float(per_round.min()), float(per_round.max())
    return {"median": float(np.median(per_round)), "low": low, "high": high,
            "significant": bool(low > 1 or high < 1)}


def interleave(variants, n_samples, rounds=5, block=10, warmup=2, progress=False,
               desc="timing", seed=0):
    """Time every variant on every sample, in alternation, for ``rounds`` rounds.

    Args:
        variants: dict name -> callable(i) -> seconds, running sample ``i`` at batch size 1
            (``EndToEnd``, ``TrunkOnly``, or any function timing itself).
        n_samples: samples 0 .. n_samples - 1 are timed.
        rounds: passes over the samples; each figure is a median over rounds.
        block: samples per block; every variant runs on a block before the next block, in
            a fresh random order per block (seeded), so no variant always follows the same
            one. Before its block is timed, each variant runs once untimed on the block's
            first sample: switching variants leaves the caches cold for the first call
            (up to several times slower), which would otherwise land on whichever variant
            comes next.
        warmup: untimed calls of every variant on the first samples, before round 1.
        seed: seeds the order of the variants within blocks.

    Returns an ``Interleaved`` with each variant's per-round mean in ms, the load average
    before and after, the per-sample seconds (``seconds[name]``, rounds x samples) and the
    BLAS libraries with the thread counts it ran with (``blas``; the caller sets them).

    Example::

        t = interleave({"a": EndToEnd(net, x, [0.5]), "b": EndToEnd(net, x, [0.0])}, len(x))
        t.stats("a")["median_ms"], t.ratio("b", "a")["median"]
    """
    if rounds < 1 or n_samples < 1 or block < 1:
        raise ValueError(f"interleave needs rounds, samples and block >= 1 "
                         f"(got {rounds}, {n_samples}, {block})")
    names = list(variants)
    for name in names:
        for i in range(min(warmup, n_samples)):
            variants[name](i)
    seconds = {name: np.empty((rounds, n_samples)) for name in names}
    starts = list(range(0, n_samples, block))
    order = np.random.RandomState(seed)
    load_before = loadavg()
    steps = [(r, b) for r in range(rounds) for b in starts]
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc=desc, unit="block", leave=False)
    for r, start in steps:
        for k in order.permutation(len(names)):
            run, out = variants[names[k]], seconds[names[k]][r]
            run(start)  # untimed: warms the caches for this variant
            for i in range(start, min(start + block, n_samples)):
                out[i] = run(i)
    load = {"before": load_before, "after": loadavg()}
    blocks_ms = {k: np.stack([1e3 * v[:, s:s + block].mean(axis=1) for s in starts], axis=1)
                 for k, v in seconds.items()}
    return Interleaved({k: 1e3 * v.mean(axis=1) for k, v in seconds.items()}, n_samples,
                       load, seconds, blocks_ms, blas_info())


# ---------------------------------------------------------------------------------------
# The measurement the runner, notebooks and benchmarks share


def path_name(n):
    return f"exit{n + 1}"


def latency_variants(branchy, baseline, x, device=None, criterion="entropy", points=None):
    """The variants of one measurement: ``baseline`` and ``baseline_trunk``, every exit path
    forced end to end (``exit1``, ...) and trunk only (``exit1_trunk``, ...), and one
    ``EndToEnd`` per entry of ``points`` (name -> threshold vector)."""
    device = device or branchy.device
    variants = {"baseline": EndToEnd(baseline, x, [], device),
                "baseline_trunk": TrunkOnly(baseline, x, 0, device)}
    for n in range(branchy.n_exits):
        variants[path_name(n)] = EndToEnd(
            branchy, x, forced_exit_thresholds(n, branchy.n_exits), device, criterion)
        variants[path_name(n) + "_trunk"] = TrunkOnly(branchy, x, n, device)
    for name, thresholds in (points or {}).items():
        variants[name] = EndToEnd(branchy, x, thresholds, device, criterion)
    return variants


def measure_latency(branchy, baseline, x, device=None, points=None, rounds=5, block=10,
                    criterion="entropy", progress=False):
    """Interleaved batch-size-1 latency of the baseline, every exit path (end to end and
    trunk only) and every threshold vector in ``points`` (name -> thresholds), on ``x``.

    Runs with one BLAS thread per library (``branchynet.threads.timing_threads``).
    Returns ``(Interleaved, variants)``; ``variants[name].labels``/``.exits`` hold what
    each point's early-exit inference decided for every sample.
    """
    variants = latency_variants(branchy, baseline, x, device, criterion, points)
    with timing_threads():
        return interleave(variants, len(x), rounds, block, progress=progress), variants


def path_summary(timings, n_exits):
    """Median ms per exit path, end to end and trunk only, and of the baseline."""
    return {"path_ms": [timings.median(path_name(n)) for n in range(n_exits)],
            "trunk_ms": [timings.median(path_name(n) + "_trunk") for n in range(n_exits)],
            "baseline_ms": timings.median("baseline"),
            "baseline_trunk_ms": timings.median("baseline_trunk")}


# ---------------------------------------------------------------------------------------
# Self-consistency of a measurement


# A measured point may differ from its prediction by this fraction before the whole
# per-round interval lies outside (model error: the prediction sums separate runs).
PREDICTION_TOLERANCE = 0.05
# A mixed point may be this much faster than the fastest exit path it uses, or slower
# than the slowest, and a trunk this much slower than its end-to-end path (timer noise).
BOUND_TOLERANCE = 0.02


# Where per-block means are kept, a difference is flagged only if it also exceeds this many
# standard errors of the paired per-block differences. The forced exit paths do exactly the
# work of a sample leaving there (the scores and decisions at every exit before it, and at
# it unless it is the last), so a point differs from its prediction only by timer noise;
# that noise is shared by every point compared with the same path, and a fixed tolerance
# flagged whole families of points whenever the path's own rounds were lucky. 4 standard
# errors keeps the chance of a false flag below 1e-4 per check (about 1% over 25 points).
SIGNIFICANCE_Z = 4.0


def paired_z(timings, measured, reference):
    """``(mean difference / its standard error)`` of two variants' per-block ms, paired
    block by block over all rounds (``measured``/``reference``: names or per-block
    arrays); None where the record keeps no per-block means or has under 2 blocks."""
    if timings.blocks_ms is None:
        return None
    a = timings.blocks_ms[measured] if isinstance(measured, str) else np.asarray(measured)
    b = timings.blocks_ms[reference] if isinstance(reference, str) else np.asarray(reference)
    d = (a - b).ravel()
    if len(d) < 2:
        return None
    se = d.std(ddof=1) / np.sqrt(len(d))
    return float(np.sign(d.mean()) * np.inf) if se == 0 else float(d.mean() / se)


def _significant(z, sign):
    """True where there is no per-block test (older records: the interval alone decides)
    or the paired difference lies beyond ``SIGNIFICANCE_Z`` in the direction ``sign``."""
    return z is None or sign * z > SIGNIFICANCE_Z


def check_point(timings, name, exit_fractions):
    """Self-consistency of the measured point ``name`` whose samples left at each exit in
    ``exit_fractions``; returns ``(checks, flags)``.

    Checks, each round by round (paired): measured / predicted from the exit paths
    (``off-prediction`` when the interval lies beyond ``PREDICTION_TOLERANCE``); measured
    against the fastest and slowest exit path it mixes (``faster-than-its-paths`` /
    ``slower-than-its-paths`` beyond ``BOUND_TOLERANCE``). Where the record keeps per-block
    means, a flag also needs the paired per-block difference to be significant
    (``SIGNIFICANCE_Z``; its z is in the checks).
    """
    fractions = np.asarray(exit_fractions, np.float64)
    used = [path_name(n) for n in np.flatnonzero(fractions > 0)]
    weights = {path_name(n): f for n, f in enumerate(fractions)}
    predicted = timings.combine(weights)
    measured = timings.rounds_ms[name]
    paths = np.stack([timings.rounds_ms[p] for p in used])
    checks = {"vs_prediction": ratio_summary(measured / predicted),
              "vs_fastest_path": ratio_summary(measured / paths.min(axis=0)),
              "vs_slowest_path": ratio_summary(measured / paths.max(axis=0))}
    z = {"vs_prediction": None, "vs_fastest_path": None, "vs_slowest_path": None}
    if timings.blocks_ms is not None:
        blocks = np.stack([timings.blocks_ms[p] for p in used])
        z = {"vs_prediction": paired_z(timings, name, timings.combine(weights, blocks=True)),
             "vs_fastest_path": paired_z(timings, name, blocks.min(axis=0)),
             "vs_slowest_path": paired_z(timings, name, blocks.max(axis=0))}
        for key, value in z.items():
            checks[key]["z"] = value
    flags = []
    pred = checks["vs_prediction"]
    if ((pred["low"] > 1 + PREDICTION_TOLERANCE and _significant(z["vs_prediction"], 1))
            or (pred["high"] < 1 - PREDICTION_TOLERANCE and _significant(z["vs_prediction"], -1))):
        flags.append("off-prediction")
    if (checks["vs_fastest_path"]["high"] < 1 - BOUND_TOLERANCE
            and _significant(z["vs_fastest_path"], -1)):
        flags.append("faster-than-its-paths")
    if (checks["vs_slowest_path"]["low"] > 1 + BOUND_TOLERANCE
            and _significant(z["vs_slowest_path"], 1)):
        flags.append("slower-than-its-paths")
    return checks, flags


def check_trunks(timings, n_exits):
    """Trunk-only must not take longer than end to end, for every exit path and the
    baseline; returns a list of flags like ``exit2: trunk-slower-than-end-to-end``."""
    flags = []
    for name in ["baseline"] + [path_name(n) for n in range(n_exits)]:
        if (timings.ratio(name + "_trunk", name)["low"] > 1 + BOUND_TOLERANCE
                and _significant(paired_z(timings, name + "_trunk", name), 1)):
            flags.append(f"{name}: trunk-slower-than-end-to-end")
    return flags


# ---------------------------------------------------------------------------------------
# Single measurements (tests, the notebooks' first look)


def time_early_exit(net, x, thresholds, device=None, warmup=10, progress=False, desc="timing",
                    criterion="entropy"):
    """Run early-exit inference one sample at a time, once; return per-sample seconds and
    results as host arrays ``(seconds, labels, exits)`` of length ``len(x)`` (one BLAS
    thread per library, as every batch-size-1 timing)."""
    run = EndToEnd(net, x, thresholds, device, criterion)
    with timing_threads():
        for i in range(min(warmup, len(x))):
            run(i)
        seconds = np.array([run(i) for i in _samples(x, progress, desc)])
    return seconds, run.labels, run.exits


def exit_path_latency(net, x, device=None, warmup=10, progress=False, criterion="entropy"):
    """Mean end-to-end seconds per sample of each exit path (samples forced out there), one
    pass each (``measure_latency`` gives repeated, interleaved figures)."""
    return np.array([
        time_early_exit(net, x, forced_exit_thresholds(n, net.n_exits), device, warmup,
                        progress, desc=f"exit {n + 1} path", criterion=criterion)[0].mean()
        for n in range(net.n_exits)])


def trunk_latency(net, x, device=None, warmup=10):
    """Mean seconds per sample of the trunk segments up to each exit (authors' accounting),
    one pass; heads, softmax, entropy, routing and host transfers are left out."""
    device = device or net.device
    result = []
    for n in range(net.n_exits):
        run = TrunkOnly(net, x, n, device)
        with timing_threads():
            for i in range(min(warmup, len(x))):
                run(i)
            result.append(np.mean([run(i) for i in range(len(x))]))
    return np.array(result)
