"""Per-sample latency at batch size 1, end to end and in the authors' accounting.

End to end means: the sample is sent to the device, every trunk segment and branch head up
to its exit runs, softmax and entropy are computed and the exit decisions made, and the
predicted label is copied back to the host. On a GPU the device is synchronised before
each clock read, so the clock measures execution, not kernel launches.

The authors' accounting (PAPER.md section 5) times only the trunk segments; it is
measured separately so the two can be set side by side.
"""
import time

import chainer
import numpy as np
from chainer import backend


def synchronize(device):
    """Wait until all work queued on ``device`` has finished (no-op on the CPU)."""
    if device.xp is not np:
        device.device.synchronize()


def _samples(x, progress, desc):
    indices = range(len(x))
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc=desc, unit="sample", leave=False)
    return indices


def time_early_exit(net, x, thresholds, device=None, warmup=10, progress=False, desc="timing",
                    criterion="entropy"):
    """Run early-exit inference one sample at a time; return per-sample seconds and results.

    ``criterion`` is the exit score (see ``branchynet.routing.CRITERIA``). Returns
    ``(seconds, labels, exits)`` as host arrays of length ``len(x)``.
    """
    device = device or net.device
    cpu = backend.CpuDevice()
    for i in range(min(warmup, len(x))):
        net.predict(device.send(x[i:i + 1]), thresholds, criterion)
    synchronize(device)
    seconds = np.empty(len(x))
    labels = np.empty(len(x), np.int32)
    exits = np.empty(len(x), np.int32)
    for i in _samples(x, progress, desc):
        start = time.perf_counter()
        label, exit_ = net.predict(device.send(x[i:i + 1]), thresholds, criterion)
        label, exit_ = cpu.send(label), cpu.send(exit_)
        synchronize(device)
        seconds[i] = time.perf_counter() - start
        labels[i], exits[i] = label[0], exit_[0]
    return seconds, labels, exits


def forced_exit_thresholds(n, n_exits):
    """Thresholds that send every sample out at exit ``n`` (0-based).

    Threshold 0 keeps every sample (no criterion's score is < 0); infinity lets every
    sample out.
    """
    return [0.0] * n + [np.inf] * (n_exits - 1 - n)


def exit_path_latency(net, x, device=None, warmup=10, progress=False, criterion="entropy"):
    """Mean end-to-end seconds per sample of each exit path (samples forced out there).

    Each path includes the exit decisions (softmax, the ``criterion``'s score,
    comparison) made at the exits before it, as real early-exit inference does.
    """
    return np.array([
        time_early_exit(net, x, forced_exit_thresholds(n, net.n_exits), device, warmup,
                        progress, desc=f"exit {n + 1} path", criterion=criterion)[0].mean()
        for n in range(net.n_exits)])


def trunk_latency(net, x, device=None, warmup=10):
    """Mean seconds per sample of the trunk segments up to each exit (authors' accounting).

    Heads, softmax, entropy, routing and host transfers are left out, as in the authors'
    code; the input is already on the device.
    """
    device = device or net.device
    inputs = [device.send(x[i:i + 1]) for i in range(len(x))]
    per_segment = np.zeros(net.n_exits)
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        for i, xi in enumerate(inputs[:warmup] + inputs):
            h = xi
            for n in range(net.n_exits):
                synchronize(device)
                start = time.perf_counter()
                h = net.run_trunk(h, n)
                synchronize(device)
                if i >= min(warmup, len(inputs)):
                    per_segment[n] += time.perf_counter() - start
    return np.cumsum(per_segment / len(inputs))


def latency_profile(branchy, baseline, x, device=None, progress=False, criterion="entropy"):
    """Batch-size-1 latency in ms of every exit path of ``branchy`` and of ``baseline``, end
    to end (``exit_path_latency``) and trunk only (``trunk_latency``), timed on ``x``.

    Returns a dict of ``path_ms`` and ``trunk_ms`` (lists, one per exit), ``baseline_ms``
    and ``baseline_trunk_ms``.
    """
    return {
        "path_ms": (1e3 * exit_path_latency(branchy, x, device, progress=progress,
                                            criterion=criterion)).tolist(),
        "trunk_ms": (1e3 * trunk_latency(branchy, x, device)).tolist(),
        "baseline_ms": float(1e3 * exit_path_latency(baseline, x, device, progress=progress)[0]),
        "baseline_trunk_ms": float(1e3 * trunk_latency(baseline, x, device)[0])}
