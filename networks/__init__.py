"""The registry of networks: one ``NetworkSpec`` per network module.

``get_network('lenet_mnist')`` returns the spec; ``spec.build()`` returns a fresh layer
list for ``branchynet.BranchyNet``. The runner, notebooks and benchmarks only go through
this registry, so adding a network means adding a module and one ``register`` call.
"""
from dataclasses import dataclass, field

import branchynet  # noqa: F401  (Chainer compatibility fixes before any network imports chainer)

REGISTRY = {}


@dataclass(frozen=True)
class NetworkSpec:
    """Everything the runner needs to know about one network and its experiment.

    Attributes:
        name: registry key, e.g. ``'lenet_mnist'``.
        title: the baseline's name in tables (``'LeNet'``); the B-net is ``'B-' + title``.
        build: zero-argument function returning a fresh layer list with Branch markers.
        dataset: the paper's dataset name; ``quick_dataset`` is the quick default.
        grid: the paper's threshold values; the swept grid is their product over all exits
            but the last.
        inc_amt: tolerance of the authors' frontier rule (inc points) for this network.
        paper: the authors' training settings (batch_size, baseline_epochs, branchy_epochs).
        quick: quick defaults of the same keys, for a run of minutes on a CPU, optionally
            with ``train_limit``/``test_limit`` (the first N samples only).
        dataset_options: options passed to the dataset loader (e.g. preprocessing).
        fast: the preset of ``--recipe fast`` (same keys as ``paper``, on the paper's
            dataset), empty for networks without one.
    """
    name: str
    title: str
    build: callable
    dataset: str
    quick_dataset: str
    grid: tuple
    inc_amt: float
    paper: dict
    quick: dict
    dataset_options: dict = field(default_factory=dict)
    fast: dict = field(default_factory=dict)


def register(spec):
    REGISTRY[spec.name] = spec
    return spec


def get_network(name):
    """Return the registered ``NetworkSpec`` called ``name``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown network {name!r}; choose one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


from networks import alexnet_cifar10, lenet_mnist, resnet110_cifar10  # noqa: E402,F401  (register themselves)
