"""Multiply-adds and parameters of each exit's path from the input (trunk prefix + head).

Convention: one multiply-add (MAC) per weight use, per sample. A Convolution2D costs
``out_h * out_w * out_c * (in_c / groups) * kh * kw`` and a Linear ``in * out``; bias
additions are not counted, and neither are BatchNormalization, LRN, pooling, relu, dropout,
padding or residual additions (elementwise work, not multiply-adds). Parameters are the
learnable arrays of the links on the path (BatchNormalization's gamma and beta included,
its running mean and variance not).

The counts come from one forward of a zero sample in inference mode, with a link hook that
records every Convolution2D and Linear call, so links nested in chains (e.g. a ResBlock)
are counted with their actual input and output shapes.
"""
import math

import chainer
import chainer.links as L
import numpy as np


class _MacCounter(chainer.LinkHook):
    """Records ``(link, macs, output shape)`` for every Convolution2D and Linear call."""

    name = "MacCounter"

    def __init__(self):
        self.calls = []

    def forward_postprocess(self, args):
        link, out = args.link, args.out
        if isinstance(link, L.Convolution2D):
            x = args.args[0]
            kh, kw = link.W.shape[2:]
            per_output = (x.shape[1] // link.groups) * kh * kw
            macs = out.size // out.shape[0] * per_output
        elif isinstance(link, L.Linear):
            macs = link.W.shape[0] * link.W.shape[1]
        else:
            return
        self.calls.append((link, macs, tuple(out.shape[1:])))


def exit_path(net, n):
    """The Sequentials from the input to exit ``n`` (0-based): trunk segments, then head.

    ``BranchyNet.exit_path_links(k)`` lists only the trunk segments exit k adds to those of
    exit k - 1, so the full path is their union over k <= n.
    """
    segments = []
    for k in range(n + 1):
        segments += net.exit_path_links(k)[:-1]
    return segments + [net.heads[n]]


def count_exit_paths(net, input_shape):
    """Count the multiply-adds and parameters of every exit's full path.

    Args:
        net: a ``branchynet.net.BranchyNet``.
        input_shape: shape of one sample, e.g. ``(3, 32, 32)``.

    Returns:
        One dict per exit, in exit order: ``exit`` (1-based), ``macs`` (multiply-adds per
        sample), ``params`` (learnable values on the path), and ``layers``: a list of
        ``(link name, macs, output shape)`` for each counted call, in call order.
    """
    names = {id(link): name for name, link in net.namedlinks()}
    xp = net.xp
    results = []
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        for n in range(net.n_exits):
            path = exit_path(net, n)
            counter = _MacCounter()
            h = xp.zeros((1,) + tuple(input_shape), xp.float32)
            with counter:
                for sequential in path:
                    if len(sequential):  # a branch may leave before any trunk layer
                        h = sequential(h)
            params = sum(p.size for sequential in path for p in sequential.params())
            layers = [(names.get(id(link), type(link).__name__), macs, shape)
                      for link, macs, shape in counter.calls]
            results.append({"exit": n + 1, "macs": sum(m for _, m, _ in layers),
                            "params": int(params), "layers": layers})
    return results


def exit_path_costs(net, input_shape):
    """Per-exit cost summary of ``net``: what a sample leaving at each exit costs.

    Returns:
        A dict of per-exit lists (exit order): ``path_macs`` (trunk prefix + that exit's
        head), ``head_macs``, ``macs`` (``path_macs`` plus the heads of the earlier exits,
        which a sample leaving there also ran: the work early-exit inference really does)
        and ``params`` (learnable values on the path).
    """
    paths = count_exit_paths(net, input_shape)
    path_macs = [p["macs"] for p in paths]
    head_macs = [sum(m for name, m, _ in p["layers"] if name.startswith(f"/exit{p['exit']}/"))
                 for p in paths]
    earlier_heads = np.concatenate([[0], np.cumsum(head_macs)[:-1]]).astype(int)
    return {"path_macs": path_macs, "head_macs": head_macs,
            "macs": [int(m + h) for m, h in zip(path_macs, earlier_heads)],
            "params": [p["params"] for p in paths]}


def expected_macs(exit_fractions, macs):
    """Multiply-adds per sample for the given fractions of samples leaving at each exit.

    ``math.fsum`` of the products: the same last digit on every CPU, where a BLAS dot
    product's order of additions (and its use of FMA) depends on the CPU's kernels."""
    return math.fsum(float(f) * float(m) for f, m in zip(exit_fractions, macs, strict=True))
