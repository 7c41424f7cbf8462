#!/usr/bin/env python3
"""Carry CIFAR-10, MNIST, wheels and training state to a GPU machine 64 MiB at a time.

For a GPU machine without network that takes files in transfers of at most 64 MiB
(the working tree and the carried folders together) and keeps what it received in /tmp
between them. This script packs everything the GPU run needs into call folders
``.gpu-carry/call1``, ``call2``, ... each small enough for one transfer, and unpacks them
on the GPU machine, checking a
sha256 for every chunk and every reassembled file, and the official md5 of every
CIFAR-10 and MNIST file (the loaders check those again).

CIFAR-10 (the official ``cifar-10-batches-py`` folder, 184 MB of pickles) is stored
losslessly: each batch file's pixel block (30,720,000 bytes) is cut out and coded as
``G, R-G, B-G`` planes (mod 256) with the residual of the ``left + up - upper-left``
predictor (mod 256), then LZMA; the rest of the file (header, labels, file names) is
LZMA'd as is. Decoding is a 2-D cumulative sum and rebuilds every file byte for byte
(about 56% of the raw size: ~104 MB, against 170 MB for the official tar.gz).

    # here (where the data and PyPI are), after scripts/gpu_wheelhouse.sh:
    python scripts/gpu_pack_data.py pack [--data DIR] [--resume results/gpu-h200-*]
    # prints the transfers: each sends .gpu-carry/callK and runs, on the GPU machine,
    #   python3 scripts/gpu_pack_data.py receive K          (calls 1 .. N-1)
    # and the last one runs scripts/gpu_replicate.sh, which receives call N and assembles:
    python3 scripts/gpu_pack_data.py assemble --data /tmp/branchynet-data \\
        --wheels /tmp/branchynet-wheels --state /tmp/branchynet-results
    # here again, with the files the GPU run wrote to its OUT (state.tar.gz.part-*):
    python scripts/gpu_pack_data.py collect OUT

Exit status 2 with a message for bad input (missing data, a chunk missing or corrupt on
the GPU machine: the message says which part to send again).
"""
import argparse
import hashlib
import io
import json
import lzma
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CARRY = os.path.join(REPO, ".gpu-carry")
# Device side: chunks collected over the calls ($BRANCHYNET_CARRY_DIR for a rehearsal).
RECEIVED = os.environ.get("BRANCHYNET_CARRY_DIR", "/tmp/branchynet-carry")
MIB = 1 << 20
CALL_LIMIT_MIB = 64
MARGIN_MIB = 2  # for files the working tree gains before the call (logs, notes)
MIN_CALL_MIB = 8  # below this a tree too big for the transfers is refused
# The official md5s, as branchynet/datasets/cifar10.py holds them: copied, not imported,
# because this script runs on the device before Chainer (which branchynet imports) is there.
CIFAR_FILES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
MAGIC = b"BNCIFAR1"


class PackError(Exception):
    """Bad input or a failed check: the message says what and how to fix it."""


def _sha256(path_or_bytes):
    h = hashlib.sha256()
    if isinstance(path_or_bytes, bytes):
        h.update(path_or_bytes)
    else:
        with open(path_or_bytes, "rb") as f:
            for block in iter(lambda: f.read(MIB), b""):
                h.update(block)
    return h.hexdigest()


def _md5(data):
    return hashlib.md5(data).hexdigest()


def _write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# --- CIFAR-10 coding ------------------------------------------------------------------

def encode_pixels(x):
    """uint8 (N, 3, 32, 32) -> uint8 residuals of the same shape (see module docstring)."""
    x = x.astype(np.int16)
    planes = np.stack([x[:, 1], x[:, 0] - x[:, 1], x[:, 2] - x[:, 1]], axis=1) % 256
    p = np.pad(planes, ((0, 0), (0, 0), (1, 0), (1, 0)))
    return ((p[..., 1:, 1:] - p[..., 1:, :-1] - p[..., :-1, 1:] + p[..., :-1, :-1]) % 256
            ).astype(np.uint8)


def decode_pixels(r):
    """Inverse of ``encode_pixels``."""
    planes = np.cumsum(np.cumsum(r, axis=2, dtype=np.uint8), axis=3, dtype=np.uint8)
    g = planes[:, 0]
    return np.stack([planes[:, 1] + g, g, planes[:, 2] + g], axis=1)  # uint8 wraps


def encode_cifar_file(path):
    """The bytes of the coded file ``path`` (a batch pickle or a small file)."""
    raw = open(path, "rb").read()
    meta = {"name": os.path.basename(path), "size": len(raw), "md5": _md5(raw)}
    offset, pixels = -1, b""
    if meta["name"].startswith(("data_batch", "test_batch")):
        x = pickle.loads(raw, encoding="bytes")[b"data"]
        block = x.tobytes()
        offset = raw.find(block)
        if offset < 0:
            raise PackError(f"{path}: the pixel block is not stored contiguously; not an "
                            f"official CIFAR-10 batch file")
        meta["images"] = x.shape[0]
        pixels = lzma.compress(encode_pixels(x.reshape(-1, 3, 32, 32)).tobytes(), preset=6)
        raw = raw[:offset] + raw[offset + len(block):]
    meta["offset"] = offset
    rest = lzma.compress(raw, preset=6)
    meta["rest_bytes"], meta["pixel_bytes"] = len(rest), len(pixels)
    head = json.dumps(meta).encode()
    return MAGIC + len(head).to_bytes(4, "little") + head + rest + pixels


def decode_cifar_file(coded):
    """``(name, bytes)`` of the original file; raises PackError unless its md5 matches."""
    if coded[:8] != MAGIC:
        raise PackError("not a coded CIFAR-10 file")
    n = int.from_bytes(coded[8:12], "little")
    meta = json.loads(coded[12:12 + n])
    start = 12 + n
    rest = lzma.decompress(coded[start:start + meta["rest_bytes"]])
    if meta["offset"] >= 0:
        r = np.frombuffer(lzma.decompress(coded[start + meta["rest_bytes"]:]), np.uint8)
        block = decode_pixels(r.reshape(meta["images"], 3, 32, 32)).tobytes()
        raw = rest[:meta["offset"]] + block + rest[meta["offset"]:]
    else:
        raw = rest
    if len(raw) != meta["size"] or _md5(raw) != meta["md5"]:
        raise PackError(f"{meta['name']}: decoded file does not match (md5 {_md5(raw)}, "
                        f"expected {meta['md5']})")
    return meta["name"], raw


def _encode_and_check(args):
    path, target = args
    coded = encode_cifar_file(path)
    name, raw = decode_cifar_file(coded)  # the round trip must give the file back
    _write_atomic(target, coded)
    return name, len(raw), len(coded)


# --- packing ------------------------------------------------------------------------------

def _find_cifar(data):
    for folder in (os.path.join(data, "cifar10", "cifar-10-batches-py"),
                   os.path.join(data, "cifar-10-batches-py")):
        if os.path.isdir(folder):
            return folder
    raise PackError(f"no cifar-10-batches-py/ under {data} (or {data}/cifar10/): give the "
                    f"folder holding it with --data (the official extracted release)")


def tree_mib():
    """MiB of the working tree that travels with every part (tracked + untracked, not ignored)."""
    out = subprocess.run(["git", "-C", REPO, "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, check=True).stdout
    paths = {os.path.join(REPO, os.fsdecode(n)) for n in filter(None, out.split(b"\0"))}
    for folder, _, files in os.walk(os.path.join(REPO, "shared")):  # travels, ignored or not
        paths.update(os.path.join(folder, f) for f in files)
    return sum(os.path.getsize(p) for p in paths if os.path.isfile(p)) / MIB


def build_streams(data, state, jobs):
    """The files to carry: [(kind, name, path)], coding CIFAR-10 into .gpu-carry/streams."""
    streams_dir = os.path.join(CARRY, "streams")
    os.makedirs(streams_dir, exist_ok=True)
    folder = _find_cifar(data)
    todo, streams = [], []
    for name, md5 in CIFAR_FILES.items():
        source = os.path.join(folder, name)
        if not os.path.isfile(source):
            raise PackError(f"{source} is missing: the CIFAR-10 folder is incomplete")
        target = os.path.join(streams_dir, f"cifar10-{name}.bnc")
        if not (os.path.isfile(target) and _coded_md5(target) == md5):
            todo.append((source, target))
        streams.append(("cifar10", name, target))
    if todo:
        print(f"coding {len(todo)} CIFAR-10 file(s) with {jobs} process(es) ...", flush=True)
        for name, size, coded in _map(_encode_and_check, todo, jobs):
            print(f"  {name}: {size:,} -> {coded:,} bytes ({coded / size:.1%}), "
                  f"round trip checked", flush=True)
    for name, md5 in CIFAR_FILES.items():  # every coded file must be the official one
        if _coded_md5(os.path.join(streams_dir, f"cifar10-{name}.bnc")) != md5:
            raise PackError(f"{name}: md5 differs from the official release; is {folder} "
                            f"the official CIFAR-10?")
    mnist = os.path.join(data, "mnist")
    if not os.path.isdir(mnist):
        raise PackError(f"no mnist/ under {data}: give the folder holding mnist/ with --data")
    for name in sorted(os.listdir(mnist)):
        if name.endswith(".gz"):
            streams.append(("mnist", name, os.path.join(mnist, name)))
    wheels = os.path.join(CARRY, "wheels")
    found = sorted(n for n in os.listdir(wheels) if n.endswith(".whl")) if os.path.isdir(wheels) else []
    if not found:
        raise PackError(f"no wheels in {wheels}: run scripts/gpu_wheelhouse.sh first")
    streams += [("wheels", n, os.path.join(wheels, n)) for n in found]
    if state:
        streams.append(("state", "state.tar.gz", state))
    return streams


def write_resume_state(resume):
    """The results folders to continue, as .gpu-carry/streams/state.tar.gz; returns its path."""
    members = []
    for folder in resume:
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise PackError(f"--resume {folder}: not a results folder (no config.json)")
        name = os.path.basename(os.path.normpath(folder))
        members += [(os.path.join(folder, m), os.path.join(name, m))
                    for m in state_members(folder)]
    os.makedirs(os.path.join(CARRY, "streams"), exist_ok=True)
    path = os.path.join(CARRY, "streams", "state.tar.gz")
    _write_atomic(path, _tar_gz(members))
    print(f"state to resume: {len(members)} files of {len(resume)} folder(s), "
          f"{os.path.getsize(path) / MIB:.1f} MiB, in {os.path.relpath(path)}")
    return path


def _map(fn, items, jobs):
    """``list(map(fn, items))``, in ``jobs`` processes when more than one."""
    if jobs <= 1 or len(items) <= 1:
        return list(map(fn, items))
    with ProcessPoolExecutor(min(jobs, len(items))) as pool:
        return list(pool.map(fn, items))


def _coded_md5(path):
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:8] != MAGIC:
            return None
        return json.loads(f.read(int.from_bytes(head[8:12], "little")))["md5"]


def plan_calls(streams, capacity):
    """Split the streams into chunks and chunks into calls of at most ``capacity`` bytes.

    Returns the manifest: every stream with its sha256 and its chunks, each chunk with
    its call (1-based), file name and sha256. Streams are cut to fill each call.
    """
    if capacity <= 0:
        raise PackError(f"no room for data in a transfer ({capacity} bytes)")
    manifest, call, room = {"streams": [], "calls": 1}, 1, capacity
    for kind, name, path in streams:
        size = os.path.getsize(path)
        entry = {"kind": kind, "name": name, "size": size, "sha256": _sha256(path), "chunks": []}
        done = 0
        while done < size or size == 0:
            if room <= 0:
                call, room = call + 1, capacity
            take = min(room, size - done)
            entry["chunks"].append({"call": call, "offset": done, "size": take,
                                    "file": f"{kind}-{name}.{len(entry['chunks']):02d}"})
            done += take
            room -= take
            if size == 0:
                break
        manifest["streams"].append(entry)
        manifest["calls"] = call
    return manifest


def pack(args):
    if args.state and args.resume:
        raise PackError("give --state or --resume, not both")
    if args.limit_mib is not None and args.limit_mib <= 0:
        raise PackError(f"--limit-mib {args.limit_mib}: give a positive number of MiB")
    if args.state and not os.path.isfile(args.state):
        raise PackError(f"--state {args.state}: no such file (the state.tar.gz that "
                        f"'collect' rebuilt from a device run's parts)")
    state = write_resume_state(args.resume) if args.resume else args.state
    if args.limit_mib:
        capacity_mib = args.limit_mib
    else:
        tree = tree_mib()
        capacity_mib = CALL_LIMIT_MIB - tree - MARGIN_MIB
        if capacity_mib < MIN_CALL_MIB:
            again = f"'pack --state {os.path.relpath(state)}' (the state to resume is kept " \
                    f"there)" if state else "'pack'"
            raise PackError(
                f"the working tree is {tree:.1f} MiB and travels with every transfer: it "
                f"leaves {max(capacity_mib, 0):.1f} of the {CALL_LIMIT_MIB} MiB for the data. "
                f"Leave the committed results, notebooks and docs out of the copy sent "
                f"('git ls-files -z results notebooks docs | xargs -0 rm -f'), run {again}, "
                f"and after the transfers put them back ('git checkout -- results notebooks "
                f"docs')")
    streams = build_streams(args.data, state, args.jobs)
    manifest = plan_calls(streams, int(capacity_mib * MIB))
    for name in os.listdir(CARRY):
        if name.startswith("call"):
            shutil.rmtree(os.path.join(CARRY, name))
    paths = {(k, n): p for k, n, p in streams}
    for entry in manifest["streams"]:
        with open(paths[entry["kind"], entry["name"]], "rb") as f:
            for chunk in entry["chunks"]:
                f.seek(chunk["offset"])
                data = f.read(chunk["size"])
                chunk["sha256"] = _sha256(data)
                folder = os.path.join(CARRY, f"call{chunk['call']}")
                os.makedirs(folder, exist_ok=True)
                _write_atomic(os.path.join(folder, chunk["file"]), data)
    for k in range(1, manifest["calls"] + 1):
        with open(os.path.join(CARRY, f"call{k}", "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
    print(f"\n{manifest['calls']} transfer(s), at most {capacity_mib:.1f} MiB carried each "
          f"(64 MiB less the working tree and {MARGIN_MIB} MiB):")
    for k in range(1, manifest["calls"] + 1):
        folder = os.path.join(CARRY, f"call{k}")
        size = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
        kinds = sorted({e["kind"] for e in manifest["streams"] for c in e["chunks"] if c["call"] == k})
        print(f"  call {k}: .gpu-carry/call{k} ({size / MIB:.1f} MiB: {', '.join(kinds)})")
    return manifest


# --- device side ----------------------------------------------------------------------------

def _manifest(folder):
    path = os.path.join(folder, "manifest.json")
    if not os.path.isfile(path):
        raise PackError(f"no {path}: carry the call folder made by 'gpu_pack_data.py pack' "
                        f"(run(..., carry=[\".gpu-carry/callK\"]))")
    with open(path) as f:
        return json.load(f)


def receive(k):
    """Move call ``k``'s chunks to RECEIVED, checking each one's sha256."""
    folder = os.path.join(CARRY, f"call{k}")
    manifest = _manifest(folder)
    os.makedirs(RECEIVED, exist_ok=True)
    count = 0
    for entry in manifest["streams"]:
        for chunk in entry["chunks"]:
            if chunk["call"] != k:
                continue
            source = os.path.join(folder, chunk["file"])
            if not os.path.isfile(source) or _sha256(source) != chunk["sha256"]:
                raise PackError(f"chunk {chunk['file']} of call {k} is missing or corrupt: "
                                f"repeat call {k} with carry [\".gpu-carry/call{k}\"]")
            shutil.copyfile(source, os.path.join(RECEIVED, chunk["file"]))
            count += 1
    shutil.copyfile(os.path.join(folder, "manifest.json"), os.path.join(RECEIVED, "manifest.json"))
    print(f"call {k} of {manifest['calls']}: {count} chunk(s) received and checked in {RECEIVED}")


def _decode_cifar_stream(args):
    path, target = args
    name, raw = decode_cifar_file(open(path, "rb").read())
    if _md5(raw) != CIFAR_FILES[name]:
        raise PackError(f"{name}: md5 {_md5(raw)} is not the official {CIFAR_FILES[name]}")
    _write_atomic(os.path.join(target, name), raw)
    return name


def assemble(args):
    """Rebuild every stream from RECEIVED (all calls), check it, unpack it."""
    manifest = _manifest(RECEIVED)
    missing = sorted({c["call"] for e in manifest["streams"] for c in e["chunks"]
                      if not os.path.isfile(os.path.join(RECEIVED, c["file"]))})
    if missing:
        raise PackError(
            f"chunks of call(s) {', '.join(map(str, missing))} are not on this machine (a fresh "
            f"machine, or a call skipped): repeat those calls (each carries .gpu-carry/callK "
            f"and runs 'python3 scripts/gpu_pack_data.py receive K'), back to back, then this")
    whole = os.path.join(RECEIVED, "streams")
    os.makedirs(whole, exist_ok=True)
    cifar, done = [], []
    for entry in manifest["streams"]:
        path = os.path.join(whole, f"{entry['kind']}-{entry['name']}")
        with open(path + ".tmp", "wb") as out:
            for chunk in entry["chunks"]:
                with open(os.path.join(RECEIVED, chunk["file"]), "rb") as f:
                    out.write(f.read())
        os.replace(path + ".tmp", path)
        if _sha256(path) != entry["sha256"]:
            raise PackError(f"{entry['name']}: reassembled file fails its sha256; repeat all calls")
        if entry["kind"] == "cifar10":
            cifar.append(path)
        elif entry["kind"] == "mnist":
            target = os.path.join(args.data, "mnist")
            os.makedirs(target, exist_ok=True)
            shutil.copyfile(path, os.path.join(target, entry["name"]))
        elif entry["kind"] == "wheels":
            os.makedirs(args.wheels, exist_ok=True)
            shutil.copyfile(path, os.path.join(args.wheels, entry["name"]))
        elif entry["kind"] == "state":
            os.makedirs(args.state, exist_ok=True)
            with tarfile.open(path) as tar:
                tar.extractall(args.state, filter="data")
        done.append(entry["name"])
    if cifar:
        target = os.path.join(args.data, "cifar10", "cifar-10-batches-py")
        os.makedirs(target, exist_ok=True)
        _map(_decode_cifar_stream, [(p, target) for p in cifar], args.jobs)
    print(f"assembled {len(done)} file(s): CIFAR-10 ({len(cifar)} files, md5 = official) "
          f"-> {args.data}/cifar10, MNIST -> {args.data}/mnist, wheels -> {args.wheels}"
          + (f", state -> {args.state}" if any(e['kind'] == 'state' for e in manifest['streams'])
             else ""))


def state_members(root):
    """Files of the results folders under ``root`` worth returning: everything except
    snapshots no longer needed (of a stage whose weights ``<stage>.npz`` exist, and all
    but the newest snapshot of an unfinished stage)."""
    keep = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        snaps = [f for f in files if f.startswith("snapshot_epoch_")]
        finished = os.path.isfile(folder.rstrip("/") + ".npz")
        newest = max(snaps, key=lambda f: os.path.getmtime(os.path.join(folder, f)), default=None)
        for name in sorted(files):
            if name.startswith("snapshot_epoch_") and (finished or name != newest):
                continue
            if name.startswith(".") and name.endswith(".tmp"):
                continue  # an atomic write cut short
            keep.append(os.path.relpath(os.path.join(folder, name), root))
    return keep


def _tar_gz(members):
    """A tar.gz (bytes) of ``(path, name in the archive)`` pairs."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for path, name in members:
            tar.add(path, arcname=name, recursive=False)
    return buffer.getvalue()


def pack_state(args):
    """Device side: the results folders as state.tar.gz in parts of at most --part-mib,
    plus state.sha256, into --out (what comes back from the GPU machine)."""
    members = state_members(args.root)
    if not members:
        raise PackError(f"nothing to return under {args.root}")
    data = _tar_gz([(os.path.join(args.root, m), m) for m in members])
    part = int(args.part_mib * MIB)
    count = (len(data) + part - 1) // part
    if count > args.max_parts:
        raise PackError(f"the state is {len(data) / MIB:.1f} MiB: more than {args.max_parts} "
                        f"parts of {args.part_mib} MiB; return fewer folders")
    os.makedirs(args.out, exist_ok=True)
    for i in range(count):
        _write_atomic(os.path.join(args.out, f"state.tar.gz.part-{i:02d}"),
                      data[i * part:(i + 1) * part])
    with open(os.path.join(args.out, "state.sha256"), "w") as f:
        f.write(f"{_sha256(data)}  state.tar.gz\n")
    big = [m for m in members if os.path.getsize(os.path.join(args.root, m)) > 16_000_000]
    print(f"state: {len(members)} files, {len(data) / MIB:.1f} MiB in {count} part(s) in "
          f"{args.out}" + (f"; over 16 MB: {', '.join(big)}" if big else ""))


# --- back here ----------------------------------------------------------------------------

def collect(args):
    """Rebuild state.tar.gz from a device run's parts, check it, unpack the results."""
    parts = sorted(n for n in os.listdir(args.files_at) if n.startswith("state.tar.gz.part-"))
    sums = os.path.join(args.files_at, "state.sha256")
    if not parts or not os.path.isfile(sums):
        raise PackError(f"no state.tar.gz.part-* and state.sha256 in {args.files_at}: give "
                        f"the folder holding what scripts/gpu_replicate.sh wrote to its OUT")
    os.makedirs(CARRY, exist_ok=True)
    target = os.path.join(CARRY, "state.tar.gz")
    with open(target + ".tmp", "wb") as out:
        for name in parts:
            with open(os.path.join(args.files_at, name), "rb") as f:
                out.write(f.read())
    expected = open(sums).read().split()[0]
    if _sha256(target + ".tmp") != expected:
        raise PackError(f"the parts in {args.files_at} do not give state.tar.gz back (sha256 "
                        f"differs): a part is missing or truncated")
    os.replace(target + ".tmp", target)
    os.makedirs(args.results, exist_ok=True)
    with tarfile.open(target) as tar:
        names = sorted({m.name.split("/")[0] for m in tar.getmembers()})
        tar.extractall(args.results, filter="data")
    print(f"{target} checked; results unpacked into {args.results}/: {', '.join(names)}")
    folders = " ".join(os.path.relpath(os.path.join(args.results, n)) for n in names)
    print(f"to continue on a GPU: python scripts/gpu_pack_data.py pack --resume {folders}\n"
          f"(or --state {os.path.relpath(target)}; snapshots of unfinished trainings are in "
          f"those folders' baseline/ and branchynet/, which .gitignore leaves out)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="here: make .gpu-carry/call1, call2, ...")
    p.add_argument("--data", default=os.environ.get("BRANCHYNET_DATA") or
                   os.path.join(REPO, "..", "shared", "data"),
                   help="folder holding cifar10/cifar-10-batches-py/ and mnist/ "
                   "(default: $BRANCHYNET_DATA, else ../shared/data)")
    p.add_argument("--state", help="state.tar.gz of an earlier device run to resume "
                   "(made by 'collect')")
    p.add_argument("--resume", nargs="+", metavar="DIR",
                   help="results folders to continue on the GPU (weights, logs and the "
                   "newest snapshot of each unfinished training go along)")
    p.add_argument("--limit-mib", type=float,
                   help="MiB carried per call (default: 64 less the working tree and 2)")
    p.add_argument("--jobs", type=int, default=min(6, os.cpu_count() or 1),
                   help="processes coding CIFAR-10 (default: %(default)s)")
    r = sub.add_parser("receive", help="device: take in call K's chunks")
    r.add_argument("k", type=int)
    a = sub.add_parser("assemble", help="device: rebuild and unpack everything received")
    a.add_argument("--data", required=True, help="data folder to fill (cifar10/, mnist/)")
    a.add_argument("--wheels", required=True, help="folder for the wheels")
    a.add_argument("--state", required=True, help="folder for the results/state to resume")
    a.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="processes decoding CIFAR-10 (default: %(default)s)")
    s = sub.add_parser("pack-state", help="device: results folders -> state.tar.gz parts")
    s.add_argument("root", help="the folder holding the results folders")
    s.add_argument("--out", required=True, help="where the parts go ($OUT)")
    s.add_argument("--part-mib", type=float, default=9.5,
                   help="part size (default: %(default)s, under the 10 MB a committed file may have)")
    s.add_argument("--max-parts", type=int, default=5,
                   help="at most this many parts (default: %(default)s: 8 files come back)")
    c = sub.add_parser("collect", help="here: unpack a device run's returned state")
    c.add_argument("files_at", help="the folder holding the files the GPU run wrote to its OUT")
    c.add_argument("--results", default=os.path.join(REPO, "results"),
                   help="where the results folders go (default: results/)")
    args = parser.parse_args(argv)
    try:
        {"pack": pack, "receive": lambda a: receive(a.k), "assemble": assemble,
         "pack-state": pack_state, "collect": collect}[args.command](args)
    except PackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
