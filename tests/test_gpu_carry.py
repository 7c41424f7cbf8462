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
