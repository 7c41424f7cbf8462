"""Atomic writes: all or nothing, with the permissions of a plain write."""
import os
import stat

import pytest

from branchynet.io import atomic_path, read_json, write_json, write_text


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
