"""The compatibility layer and the GPU plumbing, checked without a GPU.

What needs a real GPU is in test_gpu.py; here: the NumPy 2 and CuPy settings of
``branchynet._compat``, the reasons ``cuda_status`` gives (with stand-in CuPy modules), that
timing synchronises the device around every measured sample (with a stand-in device),
the runner's ``--device all``, and, where CuPy is installed (it need not see a GPU), that
every CuPy name Chainer 7.8.1 uses exists in it.
"""
import os
import re
import subprocess
import sys
import types

import branchynet  # noqa: F401  (compatibility fixes before chainer)
import chainer
import numpy as np
import pytest

from branchynet import _compat
from branchynet.net import Branch, BranchyNet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_chainer_imports_on_this_numpy():
    assert chainer.__version__ == "7.8.1"
    assert set(np.sctypes) >= {"int", "uint", "float", "complex"}
    x = np.arange(6, dtype=np.float32)
    y = chainer.functions.as_strided(x, (2, 2), (1, 2))  # reads numpy.sctypes
    np.testing.assert_array_equal(y.array, [[0, 2], [1, 3]])


@pytest.mark.parametrize("preset, cudnn", [(None, "0"), ("1", "1")])
def test_cudnn_is_off_by_default_and_a_user_setting_wins(preset, cudnn):
    env = {k: v for k, v in os.environ.items()
           if k not in ("CHAINER_CUDNN", "CHAINER_WARN_VERSION_MISMATCH")}
    if preset is not None:
        env["CHAINER_CUDNN"] = preset
    out = subprocess.run(
        [sys.executable, "-c", "import os, branchynet; print(os.environ['CHAINER_CUDNN'], "
         "os.environ['CHAINER_WARN_VERSION_MISMATCH'])"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == [cudnn, "0"]


# ----------------------------------------------------------------------- cuda_status

def fake_cupy(count=1, version="14.2.0"):
    """A stand-in ``cupy`` module whose runtime reports ``count`` devices (or raises it)."""
    def get_device_count():
        if isinstance(count, Exception):
            raise count
        return count
    module = types.ModuleType("cupy")
    module.__version__ = version
    module.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=get_device_count))
    return module


def test_cuda_status_without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail
    gpus, reason = _compat.cuda_status()
    assert gpus == 0 and reason.startswith("CuPy is not installed")


def test_cuda_status_when_chainer_cannot_use_cupy(monkeypatch):
    # CuPy 14 wheels without CUDA libraries: importing cupy works, Chainer's import of
    # cupyx.scipy.linalg does not, and Chainer only sets available = False.
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    monkeypatch.setattr(chainer.backends.cuda, "available", False)
    monkeypatch.setattr(chainer.backends.cuda, "_resolution_error",
                        ImportError('Failure finding "libcublasLt.so.13"'), raising=False)
    gpus, reason = _compat.cuda_status()
    assert gpus == 0
    assert "Chainer cannot use CuPy 14.2.0" in reason and "libcublasLt" in reason


@pytest.mark.parametrize("count, expected", [
    (RuntimeError("cudaErrorInsufficientDriver"), "no usable CUDA device (cudaErrorInsuff"),
    (0, "getDeviceCount() == 0"),
    (2, ""),
])
def test_cuda_status_asks_the_cuda_runtime(monkeypatch, count, expected):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(count))
    monkeypatch.setattr(chainer.backends.cuda, "available", True)
    gpus, reason = _compat.cuda_status()
    assert gpus == (count if isinstance(count, int) else 0)
    assert expected in reason and bool(reason) == (not gpus)


# --------------------------------------------------------------------------- timing

class StandInGpu:
    """A CPU device that says it is not NumPy, and logs its synchronisations."""

    xp = object()

    def __init__(self, events):
        self.device = types.SimpleNamespace(synchronize=lambda: events.append("sync"))

    def send(self, x):
        return x


def toy_net():
    return BranchyNet([Branch([lambda h: h[:, 0:3]]), lambda h: h, Branch([lambda h: h[:, 3:6]])])


def test_timing_synchronises_the_device_around_every_measured_sample(monkeypatch):
    import branchynet.timing as timing
    events = []
    ticks = iter(range(1000))

    def clock():
        events.append("clock")
        return float(next(ticks))
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=clock))
    x = np.random.RandomState(0).randn(5, 6).astype(np.float32)
    seconds, labels, exits = timing.time_early_exit(toy_net(), x, [0.5], StandInGpu(events),
                                                    warmup=2)
    # Every call, warm-up included: clock, inference, sync, clock.
    assert events == ["clock", "sync", "clock"] * (2 + len(x))
    assert (seconds == 1).all()  # one tick between the two clock reads of each sample
    events.clear()
    timing.trunk_latency(toy_net(), x, StandInGpu(events), warmup=0)
    # Every trunk segment is timed between two synchronisations: 1 segment up to exit 1,
    # 2 up to exit 2.
    assert events == ["sync", "clock", "sync", "clock"] * (3 * len(x))


def test_synchronize_waits_for_a_gpu_and_never_touches_a_cpu_device():
    from branchynet.timing import synchronize
    events = []
    synchronize(StandInGpu(events))
    assert events == ["sync"]
    cpu = chainer.get_device("@numpy")
    assert not hasattr(cpu, "device")  # a CpuDevice has nothing to synchronise ...
    synchronize(cpu)                   # ... and synchronize must not ask it for one


# --------------------------------------------------------------------------- runner

def test_device_all_is_the_cpu_plus_every_gpu(monkeypatch, capsys):
    import branchynet.devices
    import experiments.run as run

    def gpus(count, reason=""):
        for module in (run, branchynet.devices):
            monkeypatch.setattr(module, "cuda_status", lambda: (count, reason))

    gpus(0, "no driver here")
    assert [str(d) for d in run.resolve_devices(["all"])] == ["@numpy"]
    assert "--device all: no CUDA GPU (no driver here); running on the CPU only" in \
        capsys.readouterr().err
    # With two GPUs, 'all' names the CPU and both, once each, in order.
    gpus(2)
    real = chainer.get_device
    monkeypatch.setattr(run.chainer, "get_device",
                        lambda spec: StandInCupyDevice(spec) if spec.startswith("@cupy")
                        else real(spec))
    devices = run.resolve_devices(["all", "@cupy:1"])
    assert [str(d) for d in devices] == ["@numpy", "@cupy:0", "@cupy:1"]
    with pytest.raises(ValueError, match="there is no GPU 2: this machine has 2"):
        run.resolve_devices(["@cupy:2"])


class StandInCupyDevice:
    """What chainer.get_device('@cupy:N') gives, without CuPy: it asks no driver."""

    xp = object()

    def __init__(self, spec):
        self.spec = spec
        self.device = types.SimpleNamespace(id=int(spec.split(":")[1]))

    def __str__(self):
        return self.spec

    def __eq__(self, other):
        return str(other) == self.spec

    def __hash__(self):
        return hash(self.spec)


@pytest.mark.parametrize("cupy_installed", [False, True])
def test_an_unusable_gpu_says_why(monkeypatch, capsys, cupy_installed):
    import experiments.run as run
    monkeypatch.setattr(run, "cuda_status", lambda: (0, "no driver here"))
    if cupy_installed:  # Chainer then makes the device, and only its first use would fail
        monkeypatch.setattr(run.chainer, "get_device", StandInCupyDevice)
    else:
        def refuse(spec):
            raise RuntimeError("CUDA environment is not correctly set up")
        monkeypatch.setattr(run.chainer, "get_device", refuse)
    with pytest.raises(SystemExit):
        run.parse_args(["--device", "@cupy:0"])
    assert "'@cupy:0' is not a usable Chainer device (no driver here)" in capsys.readouterr().err


# --------------------------------------------- Chainer's use of CuPy against CuPy itself

# Names Chainer 7.8.1 uses that CuPy 14 no longer has, each harmless: cuDNN is gone (every
# use is behind cudnn_enabled, which Chainer sets False when `import cupy.cudnn` fails),
# cupy.util is only a fallback after cupy._util, cupy.dev and cupy.chainer appear in
# comments and documentation strings.
ALLOWED_MISSING = {"cupy.cudnn", "cupy.cuda.cudnn", "cupy.util", "cupy.dev", "cupy.chainer"}


def _chainer_sources():
    root = os.path.dirname(chainer.__file__)
    for folder, _, files in os.walk(root):
        if os.sep + "testing" in folder:
            continue
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    yield os.path.relpath(path, root), f.read()


def _resolve(module, dotted):
    import importlib
    obj = module
    for i, part in enumerate(dotted.split(".")[1:], 1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            try:
                obj = importlib.import_module(".".join(dotted.split(".")[:i + 1]))
            except ImportError:
                return ".".join(dotted.split(".")[:i + 1])
    return None


def test_every_cupy_name_chainer_uses_exists_in_this_cupy():
    if not chainer.backends.cuda.available:  # no GPU needed, but a working CuPy install
        pytest.skip(_compat.cuda_status()[1])
    import cupy
    import cupyx
    missing, xp_names = {}, set()
    dotted = re.compile(r"\b(cupyx?(?:\.[A-Za-z_]\w*)+)")
    for path, text in _chainer_sources():
        for line in text.splitlines():
            code = line.split("#")[0]
            for name in dotted.findall(code):
                bad = _resolve(cupyx if name.startswith("cupyx") else cupy, name)
                if bad and bad not in ALLOWED_MISSING:
                    missing.setdefault(bad, path)
            xp_names.update(re.findall(r"\bxp\.([A-Za-z_]\w*)", code))
    assert not missing, f"CuPy {cupy.__version__} lacks names Chainer uses: {missing}"
    # Code written against `xp` runs on NumPy and CuPy alike: CuPy must have each name.
    assert len(xp_names) > 50
    assert not sorted(n for n in xp_names if not hasattr(cupy, n))
