"""Table I rows, machine description and Fig. 3-style plots."""
import csv
import io
import os
import platform
import sys

import numpy as np

from branchynet.io import atomic_path, write_text

TABLE_COLUMNS = [
    ("network", "Network"), ("selection", "Selection"), ("accuracy", "Acc.(%)"),
    ("time_ms", "Time(ms)"), ("time_spread", "IQR(ms)"), ("timed_exit_percent", "Timed exits(%)"),
    ("gain", "Gain"),
    ("gain_range", "Gain range"), ("thresholds", "Thrshld.T"),
    ("exit_percent", "Exit(%)"), ("predicted_ms", "Pred.(ms)"), ("trunk_ms", "Trunk-only(ms)"),
    ("trunk_gain", "Trunk-only gain"), ("macs", "MACs(M)"), ("val_accuracy", "Val acc.(%)"),
    ("val_predicted_ms", "Val pred.(ms)"), ("checks", "Checks"),
]
# Columns printed only when some row has a value for them.
OPTIONAL_COLUMNS = ("selection", "val_accuracy", "val_predicted_ms", "checks", "time_spread",
                    "gain_range", "timed_exit_percent")


def device_label(device):
    """A short name for a Chainer device: 'cpu' for @numpy, 'gpu0' for @cupy:0."""
    name = str(device)
    if name.startswith("@cupy:"):
        return "gpu" + name.split(":")[1]
    if name in ("@numpy", "@intel64"):
        return "cpu"
    return name.strip("@").replace(":", "")


def machine_info(device):
    """Where a measurement was taken: CPU model and cores, GPU name, library versions."""
    import chainer
    info = {"device": str(device), "platform": platform.platform(),
            "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
            "chainer": chainer.__version__, "numpy": np.__version__}
    try:
        import cupy
        info["cupy"] = cupy.__version__
        if str(device).startswith("@cupy"):
            props = cupy.cuda.runtime.getDeviceProperties(device.device.id)
            name = props["name"]
            info["gpu"] = name.decode() if isinstance(name, bytes) else name
            info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    except ImportError:
        pass
    return info


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _fmt(key, value):
    if value is None or value == "":
        return "-"
    if key in ("accuracy", "val_accuracy"):
        return f"{value:.2f}"
    if key in ("time_ms", "predicted_ms", "trunk_ms", "val_predicted_ms"):
        return f"{value:.3f}"
    if key in ("gain", "trunk_gain"):
        return f"{value:.2f}x"
    if key == "macs":
        return f"{value / 1e6:.3g}"
    if key == "thresholds":
        return ", ".join(f"{t:g}" for t in value)
    if key in ("exit_percent", "timed_exit_percent"):
        return ", ".join(f"{p:.1f}" for p in value)
    return str(value)


def _display(row):
    """A row with the shown-only columns: the time's quartiles and the gain's range
    (marked n.s. when it includes 1)."""
    shown = dict(row)
    if row.get("time_q1_ms") is not None:
        shown["time_spread"] = f"{row['time_q1_ms']:.3f}-{row['time_q3_ms']:.3f}"
    if row.get("gain_low") is not None:
        shown["gain_range"] = (f"{row['gain_low']:.2f}-{row['gain_high']:.2f}"
                               + ("" if row.get("gain_significant") else " n.s."))
    return shown


def format_table(rows, title=""):
    """Render Table I rows as an aligned text table."""
    rows = [_display(row) for row in rows]
    columns = [(key, label) for key, label in TABLE_COLUMNS
               if key not in OPTIONAL_COLUMNS or any(row.get(key) not in (None, "") for row in rows)]
    header = [label for _, label in columns]
    body = [[_fmt(key, row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = [title] if title else []
    for r in [header] + body:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        if r is header:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_csv(path, rows, columns=None):
    """Write dict rows as CSV atomically; list values are joined with ';'."""
    columns = columns or list(rows[0].keys())
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([";".join(f"{v:g}" for v in row[c]) if isinstance(row.get(c), (list, tuple))
                         else row.get(c, "") for c in columns])
    write_text(path, buffer.getvalue())


def tradeoff_figure(title, grid_runtime, grid_accuracy, frontier_runtime, frontier_accuracy,
                    baseline, knee, labels=("B-net", "baseline"), marks=(), ax=None,
                    frontier_err=None, baseline_err=None, predicted_frontier=None):
    """Draw a Fig. 3-style plot: grid points, frontier line, baseline diamond, knee star.

    ``baseline`` and ``knee`` are ``(runtime_ms, accuracy_percent)``; ``marks`` are more
    ``(label, runtime_ms, accuracy_percent)`` points (e.g. thresholds chosen on
    validation). ``frontier_err`` and ``baseline_err`` are ``(below, above)`` runtime
    spreads (ms) drawn as horizontal error bars. ``predicted_frontier`` is ``(runtimes,
    accuracies)`` of the whole frontier as predicted from the exit paths (a dashed line;
    the measured points are those timed). Draws on ``ax`` (a new figure if None) and
    returns the figure.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.scatter(grid_runtime, grid_accuracy, s=8, color="0.75", label="grid (predicted)", zorder=1)
    if predicted_frontier is not None:
        ax.plot(*predicted_frontier, "--", lw=1, color="C0", alpha=0.6,
                label=f"{labels[0]} frontier (predicted)", zorder=1.5)
    ax.errorbar(frontier_runtime, frontier_accuracy,
                xerr=None if frontier_err is None else np.transpose(frontier_err),
                fmt="-o" if predicted_frontier is None else "o", ms=3, color="C0", capsize=2,
                label=f"{labels[0]} frontier (measured)", zorder=2)
    ax.errorbar(*baseline, xerr=None if baseline_err is None else [[baseline_err[0]], [baseline_err[1]]],
                fmt="D", ms=8, color="C3", capsize=2, label=labels[1], zorder=3)
    ax.plot(*knee, "*", ms=14, color="C1", zorder=4,
            label=f"{labels[0]} knee" + (" (test set, as paper)" if marks else ""))
    for k, (label, runtime, accuracy) in enumerate(marks):
        ax.plot(runtime, accuracy, "sv^<>ph"[k % 7], ms=7, mfc="none", mew=1.5,
                color=f"C{(k + 4) % 10}", label=label, zorder=5)
    ax.set_xlabel("Runtime (ms per sample, batch size 1)")
    ax.set_ylabel("Accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.figure.tight_layout()
    return ax.figure


LOG_GAIN_SPAN = 20  # largest / smallest gain drawn beyond which the gain axis is logarithmic


def gain_figure(ax, title, frontiers, baseline_accuracy, knee=None, marks=(), paper=(),
                labels=("B-net", "baseline")):
    """Accuracy against the gain over the baseline: the frontier in the paper's terms.

    ``frontiers`` maps a line's label to ``(gains, accuracies)``, drawn in order with
    solid, dotted, dashed lines (e.g. end to end, then trunk-only); ``knee`` is ``(gain,
    accuracy)``; ``marks`` are more ``(label, gain, accuracy)`` points of this run;
    ``paper`` are the paper's own ``(label, gain, accuracy)`` points, drawn in black.
    The baseline sits at gain 1. When the gains drawn span more than ``LOG_GAIN_SPAN``
    (e.g. the trunk-only gain of a cheap first exit), the gain axis is logarithmic, so
    the points near 1 stay apart. Returns the figure.
    """
    from matplotlib.ticker import FuncFormatter

    styles = ("-o", ":s", "--^")
    for k, (label, (gains, accuracies)) in enumerate(frontiers.items()):
        order = np.argsort(gains)
        ax.plot(np.asarray(gains)[order], np.asarray(accuracies)[order], styles[k % 3], ms=3,
                color=f"C{(0, 2, 9)[k % 3]}", label=label, zorder=2)
    ax.plot(1, baseline_accuracy, "D", ms=8, color="C3", label=labels[1], zorder=3)
    if knee is not None:
        ax.plot(*knee, "*", ms=14, color="C1", label=f"{labels[0]} knee, end to end", zorder=4)
    for k, (label, gain, accuracy) in enumerate(marks):
        ax.plot(gain, accuracy, "sv^<>ph"[k % 7], ms=7, mfc="none", mew=1.5,
                color=f"C{(k + 4) % 10}", label=label, zorder=5)
    for k, (label, gain, accuracy) in enumerate(paper):
        ax.plot(gain, accuracy, "XPd"[k % 3], ms=8, color="k", mfc="none" if k else "k",
                label=label, zorder=6)
    ax.axvline(1, color="0.6", lw=0.8, zorder=0)
    drawn = np.array([1.0, *(g for gains, _ in frontiers.values() for g in gains),
                      *(g for _, g, _ in (*marks, *paper)), *(knee or ())[:1]], dtype=float)
    drawn = drawn[np.isfinite(drawn) & (drawn > 0)]
    if drawn.max() / drawn.min() > LOG_GAIN_SPAN:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlabel("Gain over the baseline (x, batch size 1)")
    ax.set_ylabel("Accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    ax.figure.tight_layout()
    return ax.figure


def first_exit_figure(exited, accuracy, max_entropy, knee_exited=None, title="", ax=None):
    """Fig. 4 of the paper: overall accuracy (left axis) and the largest entropy among
    the samples that left at exit 1 (right axis) against the percentage that left there.
    The arguments are fractions and entropies as ``branchynet.sweep.first_exit_curve``
    returns them; ``knee_exited`` (a fraction) marks the knee. Returns the figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(100 * np.asarray(exited), 100 * np.asarray(accuracy), color="C0")
    ax.set_xlabel("samples exited at exit 1 (%)")
    ax.set_ylabel("overall accuracy (%)", color="C0")
    right = ax.twinx()
    right.plot(100 * np.asarray(exited), max_entropy, color="C1")
    right.set_ylabel("max entropy of exited samples", color="C1")
    if knee_exited is not None:
        ax.axvline(100 * knee_exited, color="k", ls="--", lw=1, label="knee")
        ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.figure.tight_layout()
    return ax.figure


def save_figure(fig, path_stem, formats=("png", "pdf")):
    """Write ``fig`` to ``path_stem``.<format> for each format, atomically, and close it."""
    import matplotlib.pyplot as plt

    for ext in formats:
        with atomic_path(f"{path_stem}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150,  # no date: the same figure, the same file
                        metadata={"CreationDate": None} if ext == "pdf" else None)
    plt.close(fig)


def plot_tradeoff(path_stem, *args, gain_panel=None, **kwargs):
    """``tradeoff_figure(*args, **kwargs)`` written to ``path_stem``.png and .pdf,
    atomically; with ``gain_panel`` (``gain_figure``'s keyword arguments) the gain figure
    is drawn beside it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if gain_panel is None:
        fig = tradeoff_figure(*args, **kwargs)
    else:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
        tradeoff_figure(*args, ax=left, **kwargs)
        gain_figure(right, **gain_panel)
    save_figure(fig, path_stem)


def reliability_figure(report, data="held_out", title=""):
    """Reliability diagrams of a ``branchynet.calibration.calibration_report``: one panel
    per exit, accuracy against mean confidence per bin, before and after scaling, on the
    report's set ``data``; each panel names T and the ECE before -> after."""
    import matplotlib.pyplot as plt

    exits = report["exits"]
    fig, axes = plt.subplots(1, len(exits), figsize=(3.2 * len(exits), 3.4), squeeze=False)
    for ax, e in zip(axes[0], exits):
        part = e[data]
        ax.plot([0, 1], [0, 1], ":", color="0.5", lw=1)
        for when, style in (("before", "o--"), ("after", "s-")):
            r = part[when]["reliability"]
            keep = np.asarray(r["count"]) > 0
            confidence = np.asarray(r["confidence"], float)[keep]
            ax.plot(confidence, np.asarray(r["accuracy"], float)[keep], style,
                    ms=3, label=f"{when}: ECE {100 * part[when]['ece']:.2f}%")
        ax.set_title(f"exit {e['exit']}: T = {e['temperature']:.3g}", fontsize=9)
        ax.set_xlabel("mean confidence in bin")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy in bin")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_reliability(path, report, data="held_out", title=""):
    """``reliability_figure`` written to ``path`` (PNG), atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = reliability_figure(report, data, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
