"""Where an exit path's time goes in Chainer at batch size 1: per layer, score and routing.

``PathProfile`` is a timing variant for ``branchynet.timing.interleave``: it runs exit
``n``'s path for one sample exactly as ``BranchyNet.predict`` does with every sample forced
out at that exit (``branchynet.routing``'s batch-size-1 path: trunk segment, head, the
exit's score and comparison at every exit reached, then the label), and clocks each part
apart: ``predict``'s set-up (threshold and criterion checks, inference settings), every
trunk and head layer, each exit's score (the criterion on the logits), its decision (the
comparison read back on the host) and the label (argmax and exit arrays). Every part keeps
its fastest time per sample over the calls (the project's statistic: each sample's fastest
round, mean over samples). ``path_parts`` lists the parts with their multiply-adds
(``branchynet.flops``).
"""
import time

import chainer
import numpy as np

from branchynet import net as net_module
from branchynet.flops import count_exit_paths
from branchynet.routing import _scaled, check_thresholds, get_criterion
from branchynet.timing import forced_exit_thresholds


def _layer_name(layer, names):
    """``Convolution2D /trunk/0/0`` for a link, ``max_pooling_2d(ksize=3, stride=2)`` for a
    function (a ``functools.partial`` shows its options)."""
    if isinstance(layer, chainer.Link):
        return f"{type(layer).__name__} {names.get(id(layer), '?')}"
    func = getattr(layer, "func", None)
    if func is not None:
        options = ", ".join(f"{k}={v}" for k, v in layer.keywords.items())
        return f"{func.__name__}({options})"
    return getattr(layer, "__name__", type(layer).__name__)


def path_parts(net, n, input_shape):
    """The parts of exit ``n``'s path (0-based) in the order ``predict`` runs them, as
    ``(kind, name, macs)``; kind is ``set-up``, ``trunk K``, ``head K``, ``score K``,
    ``decision K`` or ``label`` (K 1-based)."""
    names = {id(link): name for name, link in net.namedlinks()}
    counted = [p["layers"] for p in count_exit_paths(net, input_shape)]

    def macs(layer, m):
        """The layer's multiply-adds on exit m's path (an earlier head counted on its own)."""
        if not isinstance(layer, chainer.Link):
            return 0
        own = names.get(id(layer), "")
        return int(sum(c for name, c, _ in counted[m]
                       if name == own or name.startswith(own + "/")))

    parts = [("set-up", "predict: checks and inference settings", 0)]
    last = net.n_exits - 1
    for m in range(n + 1):
        for k in net._exit_segments[m]:
            parts += [(f"trunk {m + 1}", _layer_name(layer, names), macs(layer, m))
                      for layer in net.trunk[k]]
        parts += [(f"head {m + 1}", _layer_name(layer, names), macs(layer, m))
                  for layer in net.heads[m]]
        if m != last:
            parts += [(f"score {m + 1}", "criterion on the logits", 0),
                      (f"decision {m + 1}", "score < threshold, read on the host", 0)]
    parts.append(("label", "argmax and exit index", 0))
    return parts


class PathProfile:
    """Exit ``n``'s path of sample ``i`` at batch size 1, every part clocked (a variant for
    ``interleave``: calling it returns the seconds of the whole call). ``best`` holds each
    part's fastest seconds per sample (parts x samples); ``labels`` and ``exits`` the
    result, which must equal ``predict``'s at the forced thresholds."""

    def __init__(self, net, x, n, criterion="entropy"):
        self.net, self.x, self.n, self.criterion = net, x, n, criterion
        self.thresholds = forced_exit_thresholds(n, net.n_exits)
        self.parts = path_parts(net, n, x.shape[1:])
        self.best = np.full((len(self.parts), len(x)), np.inf)
        self.labels = np.full(len(x), -1, np.int32)
        self.exits = np.full(len(x), -1, np.int32)

    def _layers(self, seq, h, times):
        clock = time.perf_counter
        for layer in seq:
            start = clock()
            h = layer(h)
            times.append(clock() - start)
        return h

    def __call__(self, i):
        clock = time.perf_counter
        net, times = self.net, []
        start = clock()
        thresholds = check_thresholds(self.thresholds, net.n_exits)
        score = _scaled(get_criterion(self.criterion), None)
        h = self.x[i:i + 1]
        with net_module.inference_config(net.type_check_needed(h)):
            setup = clock() - start
            last = net.n_exits - 1
            for m in range(self.n + 1):
                for k in net._exit_segments[m]:
                    h = self._layers(net.trunk[k], h, times)
                logits = self._layers(net.heads[m], h, times)
                t0 = clock()
                logits = chainer.as_array(logits)
                if m == last:
                    times[-1] += clock() - t0
                    break
                s = score(logits, m)
                t1 = clock()
                leave = bool((s < thresholds[m])[0])
                t2 = clock()
                times += [t1 - t0, t2 - t1]
                if leave:
                    break
            t3 = clock()
            label = logits.argmax(axis=1).astype(np.int32)
            exit_ = np.full(1, m, np.int32)
            times.append(clock() - t3)
            t4 = clock()
        setup += clock() - t4
        total = clock() - start
        times.insert(0, setup)
        np.minimum(self.best[:, i], times, out=self.best[:, i])
        self.labels[i], self.exits[i] = label[0], exit_[0]
        return total

    def summary(self, samples=None):
        """Per part: kind, name, multiply-adds and the mean over samples of its fastest
        time (us); ``samples`` (a boolean mask) picks the samples averaged."""
        best = self.best if samples is None else self.best[:, samples]
        return [{"kind": kind, "name": name, "macs": macs, "us": 1e6 * float(best[j].mean())}
                for j, (kind, name, macs) in enumerate(self.parts)]
