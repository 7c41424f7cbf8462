"""The registry of networks: one ``NetworkSpec`` per network.

``get_network(name)`` returns the spec; ``spec.build()`` returns a fresh layer list for
``branchynet.BranchyNet``. The runner, notebooks and benchmarks only go through
``get_network``, which finds, in this order:

* a network registered here (``lenet_mnist``, ``alexnet_cifar10``, ``resnet110_cifar10``);
* ``FILE.py:NAME`` or ``package.module:NAME``: ``NAME`` in that file or module, either a
  ``NetworkSpec`` or a zero-argument function returning the layer list (then the run needs
  ``--dataset``, and uses ``USER_DEFAULTS``: the LeNet threshold grid, batch 64, 5 + 5
  epochs);
* a network an installed package declares in the entry-point group ``branchynet.networks``
  (``name = "package.module:NAME"``, same two kinds of object).
"""
import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field

import branchynet  # noqa: F401  (Chainer compatibility fixes before any network imports chainer)

REGISTRY = {}
ENTRY_POINT_GROUP = "branchynet.networks"


@dataclass(frozen=True)
class NetworkSpec:
    """Everything the runner needs to know about one network and its experiment.

    Attributes:
        name: registry key, e.g. ``'lenet_mnist'``.
        title: the baseline's name in tables (``'LeNet'``); the B-net is ``'B-' + title``.
        build: zero-argument function returning a fresh layer list with Branch markers.
        dataset: the paper's dataset name (None: the run must name one with --dataset);
            ``quick_dataset`` is the quick default.
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
    dataset: str = None
    quick_dataset: str = None
    grid: tuple = None
    inc_amt: float = -0.0005
    paper: dict = None
    quick: dict = None
    dataset_options: dict = field(default_factory=dict)
    fast: dict = field(default_factory=dict)

    @property
    def slug(self):
        """The name made safe for a folder name (``my_net.py:build`` -> ``my_net-build``)."""
        stem = re.sub(r"\.py(?=:|$)", "", os.path.basename(self.name.replace(":", "-")))
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-")


# The settings of a network given only as a layer list: the LeNet grid (entropy thresholds
# from 1e-4 to 10), the authors' frontier tolerance, short training on a CPU.
USER_DEFAULTS = {
    "grid": (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
             1.0, 2.0, 3.0, 5.0, 10.0),
    "inc_amt": -0.0005,
    "quick": {"batch_size": 64, "baseline_epochs": 5, "branchy_epochs": 5},
    "paper": {"batch_size": 64, "baseline_epochs": 5, "branchy_epochs": 5},
}


def register(spec):
    REGISTRY[spec.name] = spec
    return spec


def get_network(name):
    """Return the ``NetworkSpec`` for a registered name, ``FILE.py:NAME``,
    ``package.module:NAME`` or an entry point; a ``ValueError`` says what is wrong."""
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" in name:  # read again on every call: the file may have changed
        return _as_spec(_load_reference(name), name)
    found = entry_points()
    if name in found:
        try:
            obj = found[name].load()
        except Exception as err:
            raise ValueError(f"the network {name!r} (entry point {found[name].value!r} of "
                             f"{ENTRY_POINT_GROUP}) fails to load: {type(err).__name__}: "
                             f"{err}") from None
        return register(_as_spec(obj, name))
    raise ValueError(
        f"unknown network {name!r}; choose one of {', '.join(sorted(all_names()))}, or name "
        f"your own as FILE.py:NAME or package.module:NAME (NAME: a NetworkSpec or a function "
        f"returning the layer list; see docs/own_network.md)")


def entry_points():
    """Networks declared by installed packages: name -> entry point."""
    from importlib.metadata import entry_points as found
    return {ep.name: ep for ep in found(group=ENTRY_POINT_GROUP)}


def all_names():
    """Every registered and installed network name."""
    return sorted(set(REGISTRY) | set(entry_points()))


def _load_reference(reference):
    """The object ``NAME`` of ``FILE.py:NAME`` or ``package.module:NAME``."""
    where, _, attr = reference.rpartition(":")
    if not where or not attr:
        raise ValueError(f"--network {reference!r}: expected FILE.py:NAME or package.module:NAME")
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = os.path.abspath(where)
        if not os.path.isfile(path):
            raise ValueError(f"--network {reference!r}: there is no file {where}")
        module_name = "branchynet_user_" + re.sub(r"\W", "_", path)
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        sys.path.insert(0, os.path.dirname(path))  # its own helper modules import too
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            sys.modules.pop(module_name, None)
            raise ValueError(f"--network {reference!r}: {where} fails to import: "
                             f"{type(err).__name__}: {err}") from None
        finally:
            sys.path.remove(os.path.dirname(path))
    else:
        try:
            module = importlib.import_module(where)
        except Exception as err:
            raise ValueError(f"--network {reference!r}: cannot import {where} "
                             f"({type(err).__name__}: {err}); is it installed or on "
                             f"PYTHONPATH?") from None
    if not hasattr(module, attr):
        public = [n for n in vars(module) if not n.startswith("_")]
        raise ValueError(f"--network {reference!r}: {where} has no {attr!r} (it defines "
                         f"{', '.join(public[:12])}{' ...' if len(public) > 12 else ''})")
    return getattr(module, attr)


def _readable_title(reference):
    """A table name for ``FILE.py:NAME`` or ``package.module:NAME``: the file's stem or the
    module's last part (``my_net.py:build`` -> ``my_net``; ``--name`` sets another)."""
    where, _, attr = reference.rpartition(":")
    stem = re.sub(r"\.py$", "", os.path.basename(where)) if where.endswith(".py") \
        else where.rpartition(".")[2]
    return stem or attr or reference


def _as_spec(obj, name):
    """A ``NetworkSpec`` from a spec or a zero-argument layer-list function; checked."""
    if isinstance(obj, NetworkSpec):
        spec = obj
    elif callable(obj):
        title = _readable_title(name)
        spec = NetworkSpec(name=name, title=title, build=obj, grid=USER_DEFAULTS["grid"],
                           inc_amt=USER_DEFAULTS["inc_amt"], paper=dict(USER_DEFAULTS["paper"]),
                           quick=dict(USER_DEFAULTS["quick"]))
    else:
        raise ValueError(f"--network {name!r} is a {type(obj).__name__}, neither a NetworkSpec "
                         f"nor a function returning a layer list")
    from branchynet.net import BranchyNet
    try:
        BranchyNet(spec.build())
    except Exception as err:
        raise ValueError(f"--network {name!r}: its layer list does not make a BranchyNet: "
                         f"{type(err).__name__}: {err}") from None
    return spec


from networks import alexnet_cifar10, lenet_mnist, resnet110_cifar10  # noqa: E402,F401  (register themselves)
