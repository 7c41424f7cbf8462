"""Side by side with the authors' code (``kunglab/branchynet``, Chainer 1.17, Python 2.7).

The authors' code runs in its own Python 2.7 virtualenv, built from their
``requirements.txt``, in a separate process (``AuthorsProcess``) that serves commands
through ``branchynet/_authors_glue.py`` (our glue; it imports their modules from the
user's checkout and contains none of their code). Weights cross between the two through
an *interchange* npz:

    <view>/<place>/<j>/<name>

* ``view``: ``branchy`` (what their early-exit ``test()`` runs: trunk segment k and head
  k from their ``models[k]``) or ``main`` (their ``main`` network: their baseline row).
* ``place``: ``trunk<k>`` (trunk segment k: the layers between branch k-1 and branch k,
  our ``net.trunk[k]``) or ``exit<n>`` (the head of exit n, our ``net.exit<n>``).
* ``j``: index among the layers of that place that hold parameters or persistent values
  (convolutions, linears, BatchNorms, ResBlocks; functions are skipped on both sides).
* ``name``: path inside the layer: ``W``, ``b``, ``gamma``, ``beta``, ``avg_mean``,
  ``avg_var``, ``N``, ``conv1/W``, ``bn2/avg_var``, ... (``avg_var`` in their convention,
  which includes BatchNorm's eps: ours is stored minus eps, see ``_var_to_ours``).

So our parameter ``/trunk/1/2/W`` (segment 1, third parameterised layer) is
``branchy/trunk1/2/W``, and ``/exit2/0/b`` is ``branchy/exit2/0/b``. Their ``main`` holds
its own copy of the final classifier (``main/exit<N>``), which their joint training never
trains; their ``models[N-1]`` holds the one it does (``branchy/exit<N>``).
"""
import json
import os
import shutil
import subprocess
import sys

import chainer
import numpy as np

from branchynet.io import atomic_path
from branchynet.routing import entropy

GLUE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_authors_glue.py")
AUTHORS_URL = "https://github.com/kunglab/branchynet"
CHECKOUT_FILES = ("requirements.txt", "branchynet/net.py", "networks/lenet_mnist.py")


class AuthorsSetupError(RuntimeError):
    """The authors' checkout, Python 2.7 or their environment is missing or broken."""


class AuthorsError(RuntimeError):
    """A command failed inside the authors' process (their traceback is attached)."""


# ---------------------------------------------------------------------------------------
# Environment


def default_env_dir():
    """Where the authors' virtualenv lives by default (the user cache)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "branchynet", "authors-env")


def check_checkout(path):
    """Return the absolute path of an authors' checkout, or raise with the fix."""
    if not path:
        raise AuthorsSetupError(f"no checkout of the authors' code given: clone it with "
                                f"`git clone {AUTHORS_URL}` and pass --authors-repo PATH")
    path = os.path.abspath(os.path.expanduser(path))
    missing = [f for f in CHECKOUT_FILES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise AuthorsSetupError(
            f"{path} is not a checkout of the authors' code (missing {', '.join(missing)}): "
            f"clone it with `git clone {AUTHORS_URL}` and pass its folder as --authors-repo")
    return path


def _python_version(python):
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def find_python2(explicit=None):
    """A Python 2.7 interpreter: ``explicit``, else ``python2.7``/``python2`` on PATH, else
    pyenv's 2.7 versions. Raises ``AuthorsSetupError`` naming the fix."""
    if explicit:
        version = _python_version(explicit)
        if version != "2.7":
            raise AuthorsSetupError(
                f"--python2 {explicit} is {'not runnable' if version is None else 'Python ' + version}"
                f"; the authors' code needs Python 2.7 (e.g. `pyenv install 2.7.18`, then "
                f"--python2 $(pyenv root)/versions/2.7.18/bin/python)")
        return explicit
    candidates = [shutil.which(n) for n in ("python2.7", "python2")]
    roots = [os.environ.get("PYENV_ROOT"), os.path.join(os.path.expanduser("~"), ".pyenv")]
    for root in filter(None, roots):
        versions = os.path.join(root, "versions")
        if os.path.isdir(versions):
            candidates += [os.path.join(versions, v, "bin", "python")
                           for v in sorted(os.listdir(versions), reverse=True) if v.startswith("2.7")]
    for python in filter(None, candidates):
        if os.path.exists(python) and _python_version(python) == "2.7":
            return python
    raise AuthorsSetupError(
        "no Python 2.7 found (looked for python2.7/python2 on PATH and under pyenv): the "
        "authors' code needs it. Install one (e.g. `pyenv install 2.7.18`) and pass "
        "--python2 PATH")


def _env_python(env_dir):
    return os.path.join(env_dir, "bin", "python")


PROBE = "import chainer, dill, scipy, numpy; assert chainer.__version__ == '1.17.0'"


def env_ready(env_dir):
    """True if ``env_dir`` is a working authors' environment (chainer 1.17, dill, scipy)."""
    python = _env_python(env_dir)
    return os.path.exists(python) and subprocess.run(
        [python, "-c", PROBE], capture_output=True).returncode == 0


def ensure_env(checkout, python2=None, env_dir=None, log=print):
    """Create (or reuse) the authors' virtualenv from their ``requirements.txt``; return
    its Python. Creation takes about two minutes and needs the package index."""
    env_dir = os.path.abspath(os.path.expanduser(env_dir or default_env_dir()))
    if env_ready(env_dir):
        return _env_python(env_dir)
    python2 = find_python2(python2)
    log(f"[authors] creating their environment in {env_dir} (Python 2.7, their "
        f"requirements.txt; about two minutes)")

    def run(args, what):
        out = subprocess.run(args, capture_output=True, text=True)
        if out.returncode != 0:
            tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-15:])
            raise AuthorsSetupError(f"{what} failed ({' '.join(args)}):\n{tail}\nFix the cause "
                                    f"above, or remove {env_dir} and try again")

    if subprocess.run([python2, "-m", "virtualenv", "--version"], capture_output=True).returncode:
        run([python2, "-m", "pip", "install", "--user", "virtualenv==20.0.18"],
            "installing virtualenv for Python 2.7")
    run([python2, "-m", "virtualenv", env_dir], "creating the virtualenv")
    run([_env_python(env_dir), "-m", "pip", "install", "-r",
         os.path.join(checkout, "requirements.txt")], "installing their requirements.txt")
    if not env_ready(env_dir):
        raise AuthorsSetupError(f"{env_dir} was built but cannot import chainer 1.17, dill "
                                f"and scipy; remove it and try again")
    return _env_python(env_dir)


# ---------------------------------------------------------------------------------------
# Their process


class AuthorsProcess:
    """The authors' code in a Python 2.7 process, driven by JSON commands.

    ``call('build', network='lenet_mnist')`` and so on (see ``_authors_glue.py``); use as a
    context manager so the process ends with the block.
    """

    def __init__(self, python, checkout):
        self.proc = subprocess.Popen([python, GLUE, checkout], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        hello = self.proc.stdout.readline()
        if not hello:
            err = self.proc.stderr.read()
            raise AuthorsSetupError(f"the authors' code did not start:\n{err[-2000:]}")
        self.info = json.loads(hello)
        # Their warnings must not fill the pipe: drain stderr in the background.
        import threading
        self.stderr_tail = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.stderr_tail = (self.stderr_tail + [line])[-50:]

    def call(self, cmd, **args):
        self.proc.stdin.write(json.dumps(dict(args, cmd=cmd)) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AuthorsError(f"the authors' process ended during {cmd!r}:\n"
                               f"{''.join(self.stderr_tail)}")
        reply = json.loads(line)
        if not reply["ok"]:
            err = AuthorsError(f"{cmd!r} failed in the authors' code: {reply['error']}")
            err.their_traceback = reply["traceback"]
            raise err
        return reply["result"]

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------------
# Weights: ours <-> interchange


def _has_state(link):
    if any(True for _ in link.params()):
        return True
    return any(getattr(sub, "_persistent", None) for sub in link.links())


def _places(net):
    """[(place, Sequential)] of our net in definition order (trunk0, exit1, trunk1, ...)."""
    places = []
    for n, name in enumerate(net._exit_names):
        for k in net._exit_segments[n]:
            places.append((f"trunk{k}", net.trunk[k]))
        places.append((name, getattr(net, name)))
    return places


def _state_layers(seq):
    return [layer for layer in seq._layers if isinstance(layer, chainer.Link) and _has_state(layer)]


# BatchNorm variance conventions. Chainer 1.17's BatchNormalization (on the CPU) adds eps
# to the batch variance *before* averaging it into ``avg_var`` and divides by
# sqrt(avg_var) at inference; Chainer 7 averages the variance without eps and divides by
# sqrt(avg_var + eps). The interchange holds their convention; ours differs by eps.
def _var_to_theirs(value, eps):
    return (np.asarray(value, np.float64) + eps).astype(np.asarray(value).dtype)


def _var_to_ours(value, eps):
    return (np.asarray(value, np.float64) - eps).astype(np.asarray(value).dtype)


def _is_bn_var(sub, key):
    return key == "avg_var" and isinstance(sub, chainer.links.BatchNormalization)


def _layer_arrays(link):
    out = {name.lstrip("/"): np.asarray(p.array) for name, p in link.namedparams()}
    for path, sub in link.namedlinks():
        for key in sorted(getattr(sub, "_persistent", ())):
            value = np.asarray(getattr(sub, key))
            if _is_bn_var(sub, key):
                value = _var_to_theirs(value, sub.eps)
            out[(path.lstrip("/") + "/" + key).lstrip("/")] = value
    return out


def to_interchange(net, view="branchy"):
    """Our ``BranchyNet`` (on the CPU) as interchange arrays of ``view``."""
    arrays = {}
    for place, seq in _places(net):
        for j, layer in enumerate(_state_layers(seq)):
            for name, value in _layer_arrays(layer).items():
                arrays[f"{view}/{place}/{j}/{name}"] = value
    return arrays


def interchange_grads(net, view="branchy"):
    """The gradients held by our ``net``'s parameters, named as in the interchange."""
    arrays = {}
    for place, seq in _places(net):
        for j, layer in enumerate(_state_layers(seq)):
            for name, param in layer.namedparams():
                arrays[f"{view}/{place}/{j}/{name.lstrip('/')}"] = np.asarray(param.grad)
    return arrays


def from_interchange(net, arrays, view="branchy"):
    """Load interchange arrays of ``view`` into our ``BranchyNet``; every parameter and
    persistent value must be present with its shape, and every array of the view used."""
    used = set()
    for place, seq in _places(net):
        for j, layer in enumerate(_state_layers(seq)):
            prefix = f"{view}/{place}/{j}/"
            for name, param in layer.namedparams():
                key = prefix + name.lstrip("/")
                if key not in arrays:
                    raise ValueError(f"interchange weights lack {key} (our {place} layer {j}, "
                                     f"{type(layer).__name__}): made for another network?")
                if tuple(arrays[key].shape) != param.shape:
                    raise ValueError(f"{key} has shape {tuple(arrays[key].shape)}, our "
                                     f"parameter {param.shape}: made for another network?")
                param.array[...] = arrays[key]
                used.add(key)
            for path, sub in layer.namedlinks():
                for attr in sorted(getattr(sub, "_persistent", ())):
                    key = prefix + (path.lstrip("/") + "/" + attr).lstrip("/")
                    if key not in arrays:
                        raise ValueError(f"interchange weights lack {key}")
                    value = getattr(sub, attr)
                    if _is_bn_var(sub, attr):
                        value[...] = _var_to_ours(arrays[key], sub.eps)
                    elif isinstance(value, np.ndarray):
                        value[...] = arrays[key]
                    else:
                        setattr(sub, attr, type(value)(arrays[key]))
                    used.add(key)
    unused = sorted(k for k in arrays if k.startswith(view + "/") and k not in used)
    if unused:
        raise ValueError(f"interchange arrays with no counterpart in our network: {unused[:5]}")
    return net


def float64_copy(net):
    """A float64 copy of ``net`` (parameters and persistent arrays): a reference that shows
    how far float32 rounding alone moves the outputs of the given weights."""
    import copy
    ref = copy.deepcopy(net)
    for link in ref.links():
        for name in link._params:
            param = getattr(link, name)
            if param.array is not None:
                param.array = param.array.astype(np.float64)
        for name in getattr(link, "_persistent", ()):
            value = getattr(link, name)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                setattr(link, name, value.astype(np.float64))
    return ref


def same_arrays(a, b):
    """True if two interchange dicts hold the same arrays: bit for bit, except BatchNorm
    variances, which the eps shift between conventions may move by an ulp (of the value,
    or of a value near eps)."""
    if set(a) != set(b):
        return False
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        if key.endswith("avg_var"):
            # one ulp of the value or of eps, whichever is larger (0 - eps + eps != 0)
            ulp = np.spacing(np.maximum(np.abs(y), np.float32(1e-4)).astype(y.dtype))
            if x.shape != y.shape or not np.all(np.abs(x - y) <= 2 * ulp):
                return False
        elif not np.array_equal(x, y):
            return False
    return True


def load_interchange(path):
    with np.load(path) as data:
        return dict(data.items())


def save_interchange(path, arrays, compressed=False):
    """Write interchange arrays atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            (np.savez_compressed if compressed else np.savez)(f, **arrays)


# ---------------------------------------------------------------------------------------
# Comparisons


def compare_logits(ours, theirs):
    """Largest absolute difference, and relative to the largest |logit| of theirs."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    diff = float(np.abs(ours - theirs).max()) if ours.size else 0.0
    scale = float(np.abs(theirs).max()) if theirs.size else 0.0
    return {"max_abs": diff, "max_rel": diff / scale if scale else diff,
            "argmax_equal": float((ours.argmax(1) == theirs.argmax(1)).mean()),
            "nonfinite_ours": int((~np.isfinite(ours)).any(axis=1).sum()),
            "nonfinite_theirs": int((~np.isfinite(theirs)).any(axis=1).sum())}


def our_entropies(logits):
    return entropy(np.asarray(logits, np.float32)).astype(np.float64)


def our_thresholds(theirs):
    """Their threshold vector for our ``predict``: the negative values their side uses to
    keep every sample (an entropy can round below 0 there) become 0, which keeps every
    sample here."""
    return [max(float(t), 0.0) for t in theirs]


def compare_decisions(ours_exits, theirs_exits, entropies, thresholds, near=1e-6):
    """Count samples whose exits differ, separating those whose entropy at the exit where
    the paths part lies within ``near`` of that exit's threshold (float rounding)."""
    ours_exits, theirs_exits = np.asarray(ours_exits), np.asarray(theirs_exits)
    differ = np.flatnonzero(ours_exits != theirs_exits)
    near_count = 0
    for i in differ:
        n = int(min(ours_exits[i], theirs_exits[i]))  # the first exit where they part
        if n < len(thresholds) and abs(entropies[n][i] - thresholds[n]) <= near:
            near_count += 1
    return {"samples": int(len(ours_exits)), "differ": int(len(differ)),
            "differ_near_threshold": near_count, "differ_far": int(len(differ) - near_count)}


def run_train_steps(net, batches_x, batches_y, lr=0.001):
    """Adam steps (Chainer's defaults, step ``lr``) of our joint loss on the given
    minibatches, from a fresh optimizer; returns the per-exit loss of every step."""
    optimizer = chainer.optimizers.Adam(alpha=lr)
    optimizer.setup(net)
    losses = []
    dtype = next(net.params()).dtype  # float64 for a ``float64_copy``
    with chainer.using_config("train", True):
        for x, y in zip(batches_x, batches_y):
            net.cleargrads()
            outputs = net(np.asarray(x, dtype))
            exit_losses = [chainer.functions.softmax_cross_entropy(o, np.asarray(y, np.int32))
                           for o in outputs]
            loss = sum(exit_losses[1:], exit_losses[0])
            loss.backward()
            optimizer.update()
            losses.append([float(v.array) for v in exit_losses])
    return np.array(losses)


def python_info():
    return {"python": sys.version.split()[0], "chainer": chainer.__version__,
            "numpy": np.__version__}
