"""BranchyNet: a trunk with side-branch classifiers, compiled from one flat layer list.

A network is written as in the authors' code: a list of Chainer Links and plain callables,
with ``Branch([...])`` markers where side branches attach; the last ``Branch`` is the final
classifier. For example (B-LeNet, abridged)::

    layers = [L.Convolution2D(1, 5, 5, pad=3),
              Branch([pool, F.relu, L.Convolution2D(5, 10, 3, pad=1), ..., L.Linear(640, 10)]),
              pool, F.relu, ..., L.Linear(720, 84),
              Branch([L.Linear(84, 10)])]
    net = BranchyNet(layers)

``BranchyNet`` splits the list into trunk segments (the layers between branch points) and
one head per exit. Exit n runs trunk segments 1..n, then head n. There is one set of
parameters: every exit shares the trunk; nothing is copied between exits.
"""
import contextlib

import chainer
import chainer.functions as F
from chainer import backend

from branchynet.routing import check_thresholds, early_exit, get_criterion

# ``predict`` runs Chainer's type checks on the first batch of each input shape and dtype
# (a wrong input gets Chainer's clear error) and skips them afterwards: they check shapes
# and dtypes that cannot change between calls with the same input, and cost 7-11% of a
# B-AlexNet exit path at batch size 1 (docs/benchmarks.md). True checks every call.
INFERENCE_TYPE_CHECK = False


@contextlib.contextmanager
def inference_config(type_check=True):
    """Chainer's inference settings: no training mode, no graph, type checks on or off."""
    with chainer.using_config("train", False), chainer.no_backprop_mode(), \
            chainer.using_config("type_check", type_check):
        yield


class Branch:
    """Marks where a side branch leaves the trunk: ``layers`` is a list of Links and
    callables, or a single one (``Branch(L.Linear(None, 10))``)."""

    def __init__(self, layers):
        self.layers = list(layers) if isinstance(layers, (list, tuple)) else [layers]
        if not self.layers or not all(callable(layer) for layer in self.layers):
            raise ValueError(f"a Branch needs one or more Links or callables, got {layers!r}")

    def __repr__(self):
        return f"Branch({self.layers!r})"


class BranchyNet(chainer.Chain):
    """A trunk with one classifier head per exit.

    Args:
        layers: flat list of Links and callables with ``Branch`` markers; it must end with
            a ``Branch`` (the final classifier) and contain at least one.
        main_only: build only the main network (the baseline: trunk + final exit). Side
            branches are dropped, parameter names stay those of the B-net, so a B-net can
            be initialised from it with ``init_from_baseline``.

    Attributes:
        trunk: ChainList of ``chainer.Sequential`` segments; segment k ends at branch k.
        n_exits: exits this network evaluates (1 for ``main_only``).
    """

    def __init__(self, layers, main_only=False):
        super().__init__()
        layers = list(layers)
        if not layers or not isinstance(layers[-1], Branch):
            raise ValueError("the layer list must end with a Branch (the final classifier)")
        segments, heads, current = [], [], []
        for layer in layers:
            if isinstance(layer, Branch):
                segments.append(current)
                heads.append(layer.layers)
                current = []
            else:
                current.append(layer)
        self.n_branch_points = len(heads)
        self._checked_inputs = set()  # (shape without the batch axis, dtype) type-checked
        self.main_only = main_only
        # Exit n (0-based) runs these trunk segments before its head.
        if main_only:
            self._exit_segments = [list(range(len(segments)))]
            self._exit_names = [f"exit{len(heads)}"]
        else:
            self._exit_segments = [[k] for k in range(len(segments))]
            self._exit_names = [f"exit{k + 1}" for k in range(len(heads))]
        with self.init_scope():
            self.trunk = chainer.ChainList(*[chainer.Sequential(*s) for s in segments])
            for name in self._exit_names:
                setattr(self, name, chainer.Sequential(*heads[int(name[4:]) - 1]))

    @property
    def n_exits(self):
        return len(self._exit_names)

    @property
    def heads(self):
        """The exit heads, in exit order."""
        return [getattr(self, name) for name in self._exit_names]

    def exit_path_links(self, n):
        """The Sequentials that exit ``n`` (0-based) runs: its trunk segments, then its head."""
        return [self.trunk[k] for k in self._exit_segments[n]] + [self.heads[n]]

    def run_trunk(self, h, n):
        """Run the trunk segments that lead from exit ``n - 1`` to exit ``n``."""
        for k in self._exit_segments[n]:
            if len(self.trunk[k]):  # a branch may leave before any trunk layer
                h = self.trunk[k](h)
        return h

    def forward(self, x):
        """Logits of every exit, in exit order (the training forward)."""
        outputs, h = [], x
        for n, head in enumerate(self.heads):
            h = self.run_trunk(h, n)
            outputs.append(head(h))
        return outputs

    def predict_all_exits(self, x):
        """Inference-mode logits of every exit for a batch (arrays, no graph)."""
        with chainer.using_config("train", False), chainer.no_backprop_mode():
            return [chainer.as_array(y) for y in self.forward(x)]

    def predict(self, x, thresholds=(), criterion="entropy", temperatures=None):
        """Early-exit inference on a batch; returns ``(labels, exits)`` arrays on the device.

        ``thresholds`` holds one threshold per exit but the last; a sample leaves at the
        first exit whose score is strictly below its threshold. The score is the entropy
        of the exit's softmax by default; ``criterion`` picks another from
        ``branchynet.routing.CRITERIA`` (``'max-prob'``, ``'margin'``). Only the samples
        still undecided run the next trunk segment. ``temperatures`` (one per exit, > 0)
        scores each exit's ``logits / T_n`` (``branchynet.calibration``).
        """
        thresholds = check_thresholds(thresholds, self.n_exits)
        get_criterion(criterion)  # an unknown name fails before any work
        if temperatures is not None and (len(temperatures) != self.n_exits
                                         or not all(t > 0 for t in temperatures)):
            raise ValueError(f"give one temperature > 0 per exit ({self.n_exits}), got "
                             f"{temperatures!r}")
        with inference_config(self.type_check_needed(x)):
            result = early_exit(self, x, thresholds, criterion, temperatures)
        self._checked_inputs.add(self._input_key(x))
        return result

    @staticmethod
    def _input_key(x):
        return tuple(x.shape[1:]), str(x.dtype)

    def type_check_needed(self, x):
        """Whether ``predict`` runs Chainer's type checks on ``x``: on the first input of
        each shape and dtype, or always with ``INFERENCE_TYPE_CHECK``."""
        return INFERENCE_TYPE_CHECK or self._input_key(x) not in self._checked_inputs

    def init_from_baseline(self, baseline):
        """Copy the trunk and final classifier from a trained baseline (``main_only``) net.

        Side-branch heads keep their own initialisation, as in the paper.
        """
        mine = dict(self.namedparams())
        for name, param in baseline.namedparams():
            if name not in mine:
                raise ValueError(f"baseline parameter {name} has no counterpart in this network: "
                                 f"was the baseline built from the same network definition?")
            if param.array is None:
                raise ValueError(f"baseline parameter {name} is not initialised (a lazy layer "
                                 f"that never ran): train or run the baseline first")
            if mine[name].array is None:  # a lazy layer (input size None): take its shape
                mine[name].initialize(param.shape)
            if mine[name].shape != param.shape:
                raise ValueError(f"baseline parameter {name} has shape {param.shape}, "
                                 f"this network's has {mine[name].shape}")
            mine[name].copydata(param)
        # Statistics of BatchNormalization are persistent values, not parameters.
        own_links = dict(self.namedlinks())
        for name, link in baseline.namedlinks():
            for key in getattr(link, "_persistent", ()):
                value = getattr(link, key)
                target = getattr(own_links[name], key)
                if hasattr(value, "shape") and target is not None:
                    target[...] = backend.get_device_from_array(target).send(value)
                elif hasattr(value, "shape"):  # a lazy BatchNormalization that never ran
                    setattr(own_links[name], key, value.copy())
                else:
                    setattr(own_links[name], key, value)


class JointLoss(chainer.Chain):
    """Training objective: sum over exits of ``weight[n] * softmax_cross_entropy(exit n)``.

    Reports ``loss``, and ``loss/exitN`` and ``accuracy/exitN`` per exit, to the reporter.
    """

    def __init__(self, net, weights=None):
        super().__init__()
        weights = [1.0] * net.n_exits if weights is None else [float(w) for w in weights]
        if len(weights) != net.n_exits:
            raise ValueError(f"{len(weights)} loss weights given for {net.n_exits} exits")
        self.weights = weights
        with self.init_scope():
            self.net = net

    def forward(self, x, t):
        loss = 0
        for name, weight, y in zip(self.net._exit_names, self.weights, self.net(x)):
            exit_loss = F.softmax_cross_entropy(y, t)
            loss += weight * exit_loss
            chainer.report({f"loss/{name}": exit_loss, f"accuracy/{name}": F.accuracy(y, t)}, self)
        chainer.report({"loss": loss}, self)
        return loss
