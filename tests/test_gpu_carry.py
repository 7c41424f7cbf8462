"""scripts/gpu_pack_data.py: lossless CIFAR-10 coding, call planning, receive/assemble, state."""
import hashlib
import os
import pickle
import runpy
import tarfile

import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "gpu_pack_data.py")
G = runpy.run_path(SCRIPT)


def test_pixel_coding_is_lossless():
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, size=(50, 3, 32, 32)).astype(np.uint8)
    x[0] = 0
    x[1] = 255  # the wrap-around at both ends
    r = G["encode_pixels"](x)
    assert r.dtype == np.uint8 and r.shape == x.shape
    assert np.array_equal(G["decode_pixels"](r), x)
    # A smooth image whose channels move together codes to nearly all zeros.
    ramp = np.add.outer(np.arange(32), np.arange(32)).astype(np.uint8)
    smooth = np.stack([ramp + 7, ramp, ramp + 3])[None]
    assert np.count_nonzero(G["encode_pixels"](smooth)) <= 3 * 32 + 3


def test_batch_file_round_trip_and_md5(tmp_path):
    rng = np.random.RandomState(1)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": list(rng.randint(10, size=20)),
             b"data": rng.randint(0, 256, size=(20, 3072)).astype(np.uint8),
             b"filenames": [b"img_%d.png" % i for i in range(20)]}
    path = tmp_path / "data_batch_1"
    # Protocol 4 stores the pixel bytes raw, as the official Python 2 protocol-2 files do.
    path.write_bytes(pickle.dumps(batch, protocol=4))
    coded = G["encode_cifar_file"](str(path))
    name, raw = G["decode_cifar_file"](coded)
    assert name == "data_batch_1" and raw == path.read_bytes()
    broken = bytearray(coded)
    broken[-40] ^= 0xFF  # a flipped byte in the pixel stream is caught
    with pytest.raises(Exception):
        G["decode_cifar_file"](bytes(broken))


def test_plan_calls_fills_each_call_and_receive_assemble(tmp_path, monkeypatch):
    files = {}
    for name, size in (("a.bin", 2500), ("b.bin", 100), ("c.bin", 1700)):
        files[name] = tmp_path / name
        files[name].write_bytes(os.urandom(size))
    streams = [("state", n, str(p)) for n, p in files.items()]
    manifest = G["plan_calls"](streams, 1000)
    assert manifest["calls"] == 5  # 4,300 bytes in calls of 1,000
    per_call = {}
    for entry in manifest["streams"]:
        assert sum(c["size"] for c in entry["chunks"]) == entry["size"]
        for c in entry["chunks"]:
            per_call[c["call"]] = per_call.get(c["call"], 0) + c["size"]
    assert max(per_call.values()) <= 1000 and sorted(per_call) == [1, 2, 3, 4, 5]


def test_state_members_keep_only_snapshots_needed_to_resume(tmp_path):
    run = tmp_path / "gpu-h200-x"
    (run / "baseline").mkdir(parents=True)
    (run / "branchynet").mkdir()
    for name in ("config.json", "baseline.npz", "baseline/log", "baseline/snapshot_epoch_50",
                 "branchynet/log", "branchynet/snapshot_epoch_3"):
        (run / name).write_text("x")
    os.utime(run / "branchynet" / "snapshot_epoch_3", (1, 1))
    (run / "branchynet" / "snapshot_epoch_3_iter_999").write_text("newer")
    kept = sorted(G["state_members"](str(tmp_path)))
    assert kept == ["gpu-h200-x/baseline.npz", "gpu-h200-x/baseline/log",
                    "gpu-h200-x/branchynet/log", "gpu-h200-x/branchynet/snapshot_epoch_3_iter_999",
                    "gpu-h200-x/config.json"]


def _module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("gpu_pack_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pack_receive_assemble_end_to_end(tmp_path, monkeypatch, capsys):
    """CIFAR-like batches, MNIST files, wheels and a state folder cut into calls of 0.2 MiB,
    received call by call and rebuilt byte for byte; a missing call is named."""
    m = _module()
    rng = np.random.RandomState(2)
    data = tmp_path / "data"
    cifar = data / "cifar10" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    official = {}
    for name in m.CIFAR_FILES:
        if name == "batches.meta":
            raw = pickle.dumps({b"label_names": [b"a", b"b"]}, protocol=4)
        else:
            raw = pickle.dumps({b"labels": list(range(30)), b"data": rng.randint(
                0, 256, size=(30, 3072)).astype(np.uint8), b"filenames": [b"x.png"] * 30}, protocol=4)
        (cifar / name).write_bytes(raw)
        official[name] = hashlib.md5(raw).hexdigest()
    (data / "mnist").mkdir()
    (data / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(os.urandom(300_000))
    carry = tmp_path / "carry"
    (carry / "wheels").mkdir(parents=True)
    (carry / "wheels" / "pkg-1.0-py3-none-any.whl").write_bytes(os.urandom(1000))
    run = tmp_path / "results" / "gpu-x"
    (run / "baseline").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "baseline" / "snapshot_epoch_2_iter_9").write_bytes(os.urandom(50_000))
    monkeypatch.setattr(m, "CIFAR_FILES", official)
    monkeypatch.setattr(m, "CARRY", str(carry))
    monkeypatch.setattr(m, "RECEIVED", str(tmp_path / "device"))
    assert m.main(["pack", "--data", str(data), "--limit-mib", "0.2", "--jobs", "1",
                   "--resume", str(run)]) == 0
    calls = sorted(p.name for p in carry.iterdir() if p.name.startswith("call"))
    assert len(calls) >= 4
    for name in calls:
        assert sum(f.stat().st_size for f in (carry / name).iterdir()
                   if f.name != "manifest.json") <= 0.2 * 2 ** 20
    assert m.main(["receive", "1"]) == 0
    out = tmp_path / "out"
    args = ["assemble", "--data", str(out / "data"), "--wheels", str(out / "wheels"),
            "--state", str(out / "results"), "--jobs", "1"]
    assert m.main(args) == 2
    assert "repeat those calls" in capsys.readouterr().err
    for k in range(2, len(calls) + 1):
        assert m.main(["receive", str(k)]) == 0
    assert m.main(args) == 0
    for name in official:
        assert (out / "data" / "cifar10" / "cifar-10-batches-py" / name).read_bytes() == (cifar / name).read_bytes()
    assert (out / "wheels" / "pkg-1.0-py3-none-any.whl").read_bytes() == (carry / "wheels" / "pkg-1.0-py3-none-any.whl").read_bytes()
    assert (out / "results" / "gpu-x" / "baseline" / "snapshot_epoch_2_iter_9").read_bytes() == (run / "baseline" / "snapshot_epoch_2_iter_9").read_bytes()
    # A chunk damaged in transit is caught when its call is received.
    chunk = next(f for f in (carry / "call1").iterdir() if f.name != "manifest.json")
    chunk.write_bytes(b"x" + chunk.read_bytes()[1:])
    assert m.main(["receive", "1"]) == 2
    assert "repeat call 1" in capsys.readouterr().err


def test_pack_refuses_a_working_tree_that_leaves_no_room(tmp_path, monkeypatch, capsys):
    """A tree as big as a transfer is refused before any coding, with the way out; the state
    to resume is kept so that 'pack --state' continues from it (it looped forever before)."""
    m = _module()
    run = tmp_path / "results" / "gpu-x"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "baseline.npz").write_bytes(os.urandom(1000))
    carry = tmp_path / "carry"
    monkeypatch.setattr(m, "CARRY", str(carry))
    monkeypatch.setattr(m, "tree_mib", lambda: 110.8)
    coded = []
    monkeypatch.setattr(m, "build_streams",
                        lambda *a: coded.append(a) or [("state", "state.tar.gz", a[1])])
    assert m.main(["pack", "--data", str(tmp_path / "data"), "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "110.8 MiB" in err and "git checkout -- results notebooks docs" in err
    assert "pack --state" in err and "state.tar.gz" in err
    assert coded == [] and not any(p.name.startswith("call") for p in carry.iterdir())
    assert (carry / "streams" / "state.tar.gz").is_file()
    monkeypatch.setattr(m, "tree_mib", lambda: 2.9)
    assert m.main(["pack", "--data", str(tmp_path / "data"), "--state",
                   str(carry / "streams" / "state.tar.gz")]) == 0
    assert coded and coded[0][1] == str(carry / "streams" / "state.tar.gz")
    assert m.main(["pack", "--data", "x", "--limit-mib", "0"]) == 2
    assert "positive number" in capsys.readouterr().err
