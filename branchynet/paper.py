"""Reference numbers from the paper: Table I (`docs/paper.md` section 4).

Times are ms per sample at batch size 1, measured by the authors on a 3.0 GHz CPU and an
NVIDIA GeForce GTX TITAN X (Maxwell), with their accounting: trunk segments only, and on
the GPU without synchronising the device (`docs/paper.md` section 5). Set them beside this
project's ``Trunk-only`` columns rather than its end-to-end times.
"""

# (device, network, accuracy %, time ms, gain, thresholds, exit %); the B-nets at the knee.
TABLE_I = [
    ("cpu", "LeNet", 99.20, 3.37, None, None, None),
    ("cpu", "B-LeNet", 99.25, 0.62, 5.4, (0.025,), (94.3, 5.63)),
    ("cpu", "AlexNet", 78.38, 9.56, None, None, None),
    ("cpu", "B-AlexNet", 79.19, 6.32, 1.5, (0.0001, 0.05), (65.6, 25.2, 9.2)),
    ("cpu", "ResNet-110", 80.70, 137.20, None, None, None),
    ("cpu", "B-ResNet-110", 79.17, 73.5, 1.9, (0.3, 0.2), (41.5, 13.8, 44.7)),
    ("gpu", "LeNet", 99.20, 1.58, None, None, None),
    ("gpu", "B-LeNet", 99.25, 0.34, 4.7, (0.025,), (94.3, 5.63)),
    ("gpu", "AlexNet", 78.38, 3.15, None, None, None),
    ("gpu", "B-AlexNet", 79.19, 1.30, 2.4, (0.0001, 0.05), (65.6, 25.2, 9.2)),
    ("gpu", "ResNet-110", 80.70, 70.9, None, None, None),
    ("gpu", "B-ResNet-110", 79.17, 37.2, 1.9, (0.3, 0.2), (41.5, 13.8, 44.7)),
]


# The selection of the row of Table I's thresholds in this project's tables (timed as the
# knee is; experiments.experiment).
PAPER_T = "paper's T (Table I)"

# The paper's networks as registered here (networks/), by their Table I names.
NETWORKS = {"lenet_mnist": "LeNet", "alexnet_cifar10": "AlexNet",
            "resnet110_cifar10": "ResNet-110"}


def paper_thresholds(network):
    """Table I's entropy thresholds (one per early exit; the same on CPU and GPU) for a
    registered network name such as ``'alexnet_cifar10'``, or None for other networks."""
    title = NETWORKS.get(network)
    return next((list(row[5]) for row in TABLE_I if row[1] == f"B-{title}"), None)


def paper_rows(title, device="cpu"):
    """Table I's baseline and B-net rows for the network ``title`` ('LeNet', 'AlexNet',
    'ResNet-110') on ``device`` ('cpu', or 'gpu'/'gpu0'/...), as report table rows.

    The rows carry ``selection`` = 'paper (<device>)' and the paper's figures in the same
    keys as the runner's rows (``accuracy``, ``time_ms``, ``gain``, ``thresholds``,
    ``exit_percent``), so ``branchynet.report.format_table`` can print them together.
    """
    kind = "gpu" if device.startswith("gpu") else "cpu"
    rows = [{"network": network, "selection": f"paper ({kind})", "accuracy": accuracy,
             "time_ms": time_ms, "gain": gain,
             "thresholds": list(thresholds) if thresholds else None,
             "exit_percent": list(exits) if exits else None}
            for dev, network, accuracy, time_ms, gain, thresholds, exits in TABLE_I
            if dev == kind and network in (title, "B-" + title)]
    if not rows:
        titles = sorted({row[1] for row in TABLE_I if not row[1].startswith("B-")})
        raise ValueError(f"Table I has no network {title!r}; it has {', '.join(titles)}")
    return rows
