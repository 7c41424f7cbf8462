"""Atomic writes: all or nothing, with the permissions of a plain write."""
import os
import stat
import subprocess
import sys

import pytest

from branchynet.io import FolderInUse, atomic_path, folder_lock, read_json, write_json, write_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_new_file_gets_the_mode_a_plain_write_gives(tmp_path, umask_022):
    """Before, every result file was mkstemp's 0o600: unreadable to the rest of a group."""
    write_json(tmp_path / "table.json", {"a": 1})
    assert stat.S_IMODE(os.stat(tmp_path / "table.json").st_mode) == 0o644
    os.umask(0o077)
    write_text(tmp_path / "private.txt", "x")
    assert stat.S_IMODE(os.stat(tmp_path / "private.txt").st_mode) == 0o600


def test_an_existing_file_keeps_its_mode(tmp_path, umask_022):
    path = tmp_path / "log"
    path.write_text("old")
    os.chmod(path, 0o640)
    write_text(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    write_json(tmp_path / "r.json", {"run": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "r.json") as tmp:
            with open(tmp, "w") as f:
                f.write('{"run": 2')
            raise RuntimeError("interrupted")
    assert read_json(tmp_path / "r.json") == {"run": 1}
    assert os.listdir(tmp_path) == ["r.json"]


def _holder(folder):
    """Another process holding ``folder`` until its standard input closes."""
    code = ("import sys; from branchynet.io import folder_lock\n"
            f"with folder_lock({str(folder)!r}):\n"
            "    print('held', flush=True); sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_folder_held_by_another_process_is_refused_until_it_ends(tmp_path):
    folder = tmp_path / "run"
    holder = _holder(folder)
    try:
        with pytest.raises(FolderInUse, match="is in use by another run"):
            with folder_lock(str(folder)):
                pass
        with folder_lock(str(tmp_path / "other")):  # another folder is free
            pass
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    with folder_lock(str(folder)):  # released with the process
        (folder / "log").write_text("x")
    assert (folder / "log").exists()


def test_a_folder_the_lock_made_and_left_empty_is_removed(tmp_path):
    with folder_lock(str(tmp_path / "unused")):
        assert (tmp_path / "unused").is_dir()
    assert not (tmp_path / "unused").exists()
    with pytest.raises(RuntimeError):
        with folder_lock(str(tmp_path / "failed")):
            raise RuntimeError("settings refused before anything was written")
    assert not (tmp_path / "failed").exists()


def test_the_runner_refuses_a_folder_another_run_holds(tmp_path, capsys):
    """Two runs in one folder would interleave snapshots and results: the second one stops
    before any work, with exit status 2, and the folder is as it was."""
    from experiments import run
    folder = tmp_path / "run"
    holder = _holder(folder)
    try:
        with pytest.raises(SystemExit) as refused:
            run.main(["--network", "lenet_mnist", "--dataset", "mnist-5k", "--train-limit",
                      "64", "--test-limit", "20", "--out", str(folder)])
        assert refused.value.code == 2
        assert f"{folder} is in use by another run" in capsys.readouterr().err
        assert os.listdir(folder) == []
        with pytest.raises(SystemExit) as refused:
            run.main(["--from-results", str(folder)])
        assert refused.value.code == 2
        assert f"{folder} is in use by another run" in capsys.readouterr().err
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
