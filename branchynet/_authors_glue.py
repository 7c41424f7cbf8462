# -*- coding: utf-8 -*-
"""Glue that runs under the authors' Python 2.7 environment (never imported by Python 3).

``python2 _authors_glue.py AUTHORS_REPO`` serves JSON commands, one per line on stdin, and
answers one JSON line each on its original stdout (everything the authors' code prints goes
to stderr). It imports the authors' modules from the user's checkout ``AUTHORS_REPO`` and
calls them; it contains none of their code. Arrays travel through .npz files.

Interchange weights (npz): ``<view>/<place>/<j>/<name>`` where view is ``branchy`` (what
their early-exit ``test()`` computes: trunk segment k and head k from ``models[k]``) or
``main`` (their ``main`` network, used for their baseline row), place is ``trunk<k>``
(trunk segment k, between branch k-1 and branch k) or ``exit<n>`` (head of exit n), j
counts the layers with parameters or persistent values inside the place, and name is a
parameter or persistent path inside the layer (``W``, ``b``, ``gamma``, ``avg_mean``,
``conv1/W``, ``bn1/avg_var``, ...).
"""
from __future__ import division, print_function

import sys

# sys.path[0] is this file's folder (Python 3 modules such as io.py): the authors' code
# must not see it.
del sys.path[0]

import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

PROTOCOL_OUT = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # anything printed by the authors' code (or libraries) goes to stderr
sys.stdout = sys.stderr

AUTHORS_REPO = os.path.abspath(sys.argv[1])
sys.path.insert(0, AUTHORS_REPO)

import numpy as np  # noqa: E402
import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402
from chainer import Variable, optimizers  # noqa: E402
from scipy.stats import entropy as scipy_entropy  # noqa: E402

NETWORK_MODULES = {"lenet_mnist": "lenet_mnist", "alexnet_cifar10": "alex_cifar10",
                   "resnet110_cifar10": "resnet_cifar10"}
STATE = {"net": None, "x": None, "y": None}


def _has_state(link):
    if any(True for _ in link.params()):
        return True
    return any(getattr(sub, "_persistent", None) for sub in link.links())


def _param_links(links):
    return [link for link in links if _has_state(link)]


def _link_arrays(link):
    """{relative name: array} of a layer's parameters and persistent values."""
    out = {}
    for name, param in link.namedparams():
        out[name.lstrip("/")] = np.asarray(param.data)
    for path, sub in link.namedlinks():
        for key in sorted(getattr(sub, "_persistent", ())):
            name = (path.lstrip("/") + "/" + key).lstrip("/")
            out[name] = np.asarray(getattr(sub, key))
    return out


def _set_link_arrays(link, arrays, prefix):
    used = set()
    for name, param in link.namedparams():
        key = prefix + name.lstrip("/")
        param.data[...] = arrays[key]
        used.add(key)
    for path, sub in link.namedlinks():
        for attr in sorted(getattr(sub, "_persistent", ())):
            key = prefix + (path.lstrip("/") + "/" + attr).lstrip("/")
            if key not in arrays:
                continue
            value = getattr(sub, attr)
            if isinstance(value, np.ndarray):
                value[...] = arrays[key]
            else:
                setattr(sub, attr, type(value)(arrays[key]))
            used.add(key)
    return used


def _places(net, view):
    """[(place, [links])] of a view, in definition order."""
    models = net.models
    places = []
    for k, model in enumerate(models):
        owner = model if view == "branchy" else net.main
        places.append(("trunk%d" % k, list(owner[model.starti:model.endi])))
        if view == "branchy" or k == len(models) - 1:
            places.append(("exit%d" % (k + 1), list((model if view == "branchy" else net.main)
                                                    [model.endi:])))
    return places


def _equal_params(a, b):
    pa, pb = [p.data for _, p in sorted(a.namedparams())], [p.data for _, p in sorted(b.namedparams())]
    return len(pa) == len(pb) and all(np.array_equal(x, y) for x, y in zip(pa, pb))


def describe(net):
    """Facts about the loaded object that tell their views apart."""
    main, models = net.main, net.models
    trunk_equal = all(_equal_params(main[j], model[j])
                      for model in models for j in range(model.endi))
    final = models[-1]
    final_equal = all(_equal_params(a, b) for a, b in zip(main[final.endi:], final[final.endi:]))
    layers = []
    for view in ("branchy", "main"):
        for place, links in _places(net, view):
            for j, link in enumerate(_param_links(links)):
                layers.append({"view": view, "place": place, "j": j,
                               "type": type(link).__name__,
                               "arrays": {k: list(v.shape) for k, v in
                                          sorted(_link_arrays(link).items())}})
    return {"chainer": chainer.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0],
            "trunk_copies_equal_main": bool(trunk_equal),
            "final_classifier_copy_equal": bool(final_equal),
            "optimizer_steps": {"main": int(getattr(net.optimizer, "t", 0)),
                                "models": [int(getattr(o, "t", 0)) for o in net.optimizers]},
            "layers": layers}


def _atomic_npz(path, arrays):
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.rename(tmp, path)


def cmd_build(network, seed=0):
    """Build their network with their initialisation (NumPy seeded with ``seed``)."""
    module = __import__("networks." + NETWORK_MODULES[network], fromlist=["get_network"])
    np.random.seed(seed)
    STATE["net"] = module.get_network()
    STATE["net"].testing()
    return describe(STATE["net"])


def cmd_load_bn(path):
    import dill
    try:
        with open(path, "rb") as f:
            net = dill.load(f)
        net.to_cpu()
    except Exception as err:
        raise ValueError("%s is not a model saved by their code (dill.dump of their "
                         "BranchyNet, as their experiment scripts do): %s: %s"
                         % (path, type(err).__name__, err))
    net.testing()
    STATE["net"] = net
    return describe(net)


def cmd_save_bn(path):
    import dill
    net = STATE["net"]
    net.to_cpu()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        dill.dump(net, f)
    os.rename(tmp, path)
    return {"bytes": os.path.getsize(path)}


def cmd_export(path):
    net = STATE["net"]
    arrays = {}
    for view in ("branchy", "main"):
        for place, links in _places(net, view):
            for j, link in enumerate(_param_links(links)):
                for name, value in _link_arrays(link).items():
                    arrays["%s/%s/%d/%s" % (view, place, j, name)] = value
    _atomic_npz(path, arrays)
    return describe(net)


def cmd_import(path):
    """Load interchange weights into ``main`` and every copy in ``models``.

    The ``branchy`` view goes to every copy of each trunk segment and head; the ``main``
    view (or, if absent, the branchy view) goes to ``main``.
    """
    net = STATE["net"]
    with np.load(path) as data:
        arrays = dict(data.items())
    has_main = any(k.startswith("main/") for k in arrays)
    used = set()
    models = net.models
    for k, model in enumerate(models):
        for m in models[k:]:  # every model whose path runs trunk segment k
            links = _param_links(m[model.starti:model.endi])
            for j, link in enumerate(links):
                used |= _set_link_arrays(link, arrays, "branchy/trunk%d/%d/" % (k, j))
        for j, link in enumerate(_param_links(model[model.endi:])):
            used |= _set_link_arrays(link, arrays, "branchy/exit%d/%d/" % (k + 1, j))
    view = "main" if has_main else "branchy"
    for place, links in _places(net, "main"):
        for j, link in enumerate(_param_links(links)):
            used |= _set_link_arrays(link, arrays, "%s/%s/%d/" % (view, place, j))
    unused = sorted(set(arrays) - used)
    if unused:
        raise ValueError("arrays with no counterpart in their network: %s" % unused[:5])
    net.testing()
    return describe(net)


def _batches(x, batch):
    for i in range(0, len(x), batch):
        yield Variable(np.asarray(x[i:i + batch], np.float32), volatile=True)


def cmd_outputs(x, out, batch=100):
    """Per-exit logits (their models[k] path) and main logits; entropies as their test()."""
    net = STATE["net"]
    net.testing()
    with np.load(x) as data:
        xs = data["x"]
    logits = [[] for _ in net.models]
    main = []
    for xv in _batches(xs, batch):
        h = xv
        for k, model in enumerate(net.models):
            h = model.test(h, model.starti, model.endi)
            logits[k].append(model.test(h, model.endi).data.copy())
        main.append(net.main.test(xv).data.copy())
    arrays = {"main": np.concatenate(main)}
    for k, z in enumerate(logits):
        z = np.concatenate(z)
        arrays["logits%d" % (k + 1)] = z
        softmax = F.softmax(Variable(z, volatile=True)).data
        arrays["entropy%d" % (k + 1)] = np.array([scipy_entropy(s) for s in softmax])
    _atomic_npz(out, arrays)
    return {"n": int(len(xs))}


def cmd_route(x, out, thresholds):
    """Their test() one sample at a time (their screening batch size): per-sample exit
    and correctness for each threshold vector, and test_main() for the baseline."""
    net = STATE["net"]
    net.testing()
    with np.load(x) as data:
        xs, ys = data["x"], data["y"]
    arrays = {}
    for v, ts in enumerate(thresholds):
        net.thresholdExits = [float(t) for t in ts]
        exits = np.empty(len(xs), np.int32)
        correct = np.empty(len(xs), bool)
        for i in range(len(xs)):
            xv = Variable(np.asarray(xs[i:i + 1], np.float32), volatile=True)
            tv = Variable(np.asarray(ys[i:i + 1], np.int32), volatile=True)
            acc, _, numexits, _ = net.test(xv, tv)
            exits[i] = int(np.argmax(numexits))
            correct[i] = float(acc) > 0.5
        arrays["exits_%d" % v] = exits
        arrays["correct_%d" % v] = correct
    correct = np.empty(len(xs), bool)
    for i in range(len(xs)):
        xv = Variable(np.asarray(xs[i:i + 1], np.float32), volatile=True)
        tv = Variable(np.asarray(ys[i:i + 1], np.int32), volatile=True)
        acc, _ = net.test_main(xv, tv)
        correct[i] = float(acc) > 0.5
    arrays["correct_main"] = correct
    _atomic_npz(out, arrays)
    return {"n": int(len(xs))}


def _fresh_optimizers(net):
    """New Adam states, as their constructor makes them (step 0)."""
    net.optimizer = optimizers.Adam(alpha=net.alpha)
    net.optimizer.setup(net.main)
    net.optimizers = []
    for model in net.models:
        optimizer = optimizers.Adam()
        optimizer.setup(model)
        net.optimizers.append(optimizer)


def cmd_train_steps(phase, batches, fresh_optimizers=True):
    """Their train_main() (phase 'main') or train() ('joint') on the given minibatches;
    returns the loss of every step (per exit for 'joint')."""
    net = STATE["net"]
    if fresh_optimizers:
        _fresh_optimizers(net)
    with np.load(batches) as data:
        xs, ys = data["x"], data["y"]
    net.training()
    losses = []
    for xb, yb in zip(xs, ys):
        x = Variable(np.asarray(xb, np.float32))
        t = Variable(np.asarray(yb, np.int32))
        if phase == "main":
            loss, _ = net.train_main(x, t)
            losses.append([float(loss)])
        else:
            loss, _ = net.train(x, t)
            losses.append([float(v) for v in loss])
    net.testing()
    return {"losses": losses}


def cmd_grads(phase, batches, out):
    """Gradients of their train_main() loss ('main') on the first minibatch, no update,
    as interchange arrays of the main view."""
    net = STATE["net"]
    with np.load(batches) as data:
        x = Variable(np.asarray(data["x"][0], np.float32))
        t = Variable(np.asarray(data["y"][0], np.int32))
    net.training()
    net.main.zerograds()
    loss = net.main.train(x, t)
    loss.backward()
    arrays = {}
    for place, links in _places(net, "main"):
        for j, link in enumerate(_param_links(links)):
            for name, param in link.namedparams():
                arrays["main/%s/%d/%s" % (place, j, name.lstrip("/"))] = np.asarray(param.grad)
    net.testing()
    _atomic_npz(out, arrays)
    return {"loss": float(loss.data)}


def cmd_load_timing_data(x):
    with np.load(x) as data:
        STATE["x"], STATE["y"] = data["x"].astype(np.float32), data["y"].astype(np.int32)
    return {"n": int(len(STATE["x"]))}


def cmd_time(variant, start, count, thresholds=None):
    """Their inference one sample at a time, as their utils.test does at batch size 1.

    variant 'main': test_main() (their baseline row); 'branchy': test() with
    ``thresholds``. Returns per-sample wall seconds (input arrays to result, as in their
    loop) and the seconds their code reports (the trunk segments only).
    """
    net = STATE["net"]
    net.testing()
    if variant == "branchy":
        net.thresholdExits = [float(t) for t in thresholds]
    xs, ys = STATE["x"], STATE["y"]
    wall, reported = [], []
    for i in range(start, start + count):
        t0 = time.time()
        xv = Variable(np.asarray(xs[i:i + 1], np.float32), volatile=True)
        tv = Variable(np.asarray(ys[i:i + 1], np.int32), volatile=True)
        if variant == "main":
            _, diff = net.test_main(xv, tv)
        else:
            _, _, _, diff = net.test(xv, tv)
        wall.append(time.time() - t0)
        reported.append(float(diff))
    return {"wall": wall, "reported": reported}


def cmd_epoch(phase, data, batchsize=512, seed=0):
    """One training epoch with their utils.train(); wall seconds and their own sum."""
    from branchynet import utils
    net = STATE["net"]
    with np.load(data) as arrays:
        x, y = arrays["x"], arrays["y"]
    np.random.seed(seed)
    net.training()
    t0 = time.time()
    losses, _, reported = utils.train(net, x, y, main=(phase == "main"),
                                      batchsize=batchsize, num_epoch=1)
    wall = time.time() - t0
    net.testing()
    return {"wall": wall, "reported": float(reported),
            "loss": np.asarray(losses[0]).ravel().tolist()}


COMMANDS = {name[4:]: fn for name, fn in globals().items() if name.startswith("cmd_")}


def main():
    PROTOCOL_OUT.write(json.dumps({"ok": True, "ready": True, "chainer": chainer.__version__})
                       + "\n")
    PROTOCOL_OUT.flush()
    for line in iter(sys.stdin.readline, ""):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            name = request.pop("cmd")
            if name == "quit":
                break
            reply = {"ok": True, "result": COMMANDS[name](**request)}
        except Exception as err:  # reported to the caller, who raises it
            reply = {"ok": False, "error": "%s: %s" % (type(err).__name__, err),
                     "traceback": traceback.format_exc()}
        PROTOCOL_OUT.write(json.dumps(reply) + "\n")
        PROTOCOL_OUT.flush()


if __name__ == "__main__":
    main()
