"""Fast DDS shared-memory files a killed process left are found and removed; live ones are kept."""

import fcntl
import os

from dysta_ros.nodes.transport import remove_stale_shared_memory, stale_shared_memory


def make(directory, *names):
    for name in names:
        (directory / name).write_bytes(b"")


def test_only_files_whose_lock_nobody_holds_are_removed(tmp_path):
    # a dead participant's segment and port, a live one's, and files that are not Fast DDS's
    make(tmp_path, "fastdds_0123456789abcdef", "fastdds_0123456789abcdef_el",
         "fastdds_port7411", "fastdds_port7411_el", "fastdds_port7411_sl", "sem.fastdds_port7411_mutex",
         "fastdds_fedcba9876543210", "fastdds_fedcba9876543210_el",
         "fastdds_port7413", "fastdds_port7413_el", "sem.fastdds_port7413_mutex",
         "fastdds_port7415", "lttng-ust-wait-6", "someone_else_el")
    held = [open(tmp_path / name, "rb") for name in ("fastdds_fedcba9876543210_el", "fastdds_port7413_el")]
    try:
        for file in held:  # as a live Fast DDS process holds its lock files
            fcntl.flock(file, fcntl.LOCK_SH)
        dead = {"fastdds_0123456789abcdef", "fastdds_0123456789abcdef_el", "fastdds_port7411",
                "fastdds_port7411_el", "fastdds_port7411_sl", "sem.fastdds_port7411_mutex"}
        assert set(stale_shared_memory(str(tmp_path))) == dead
        # limited to the names given (what a test session created), the others stay
        assert stale_shared_memory(str(tmp_path), among={"fastdds_port7411_el"}) == [
            "fastdds_port7411_el", "fastdds_port7411", "sem.fastdds_port7411_mutex"]
        assert set(remove_stale_shared_memory(str(tmp_path))) == dead
        left = set(os.listdir(tmp_path))
        assert not left & dead
        assert {"fastdds_fedcba9876543210", "fastdds_port7413", "sem.fastdds_port7413_mutex",
                "fastdds_port7415", "lttng-ust-wait-6", "someone_else_el"} <= left
    finally:
        for file in held:
            file.close()


def test_a_missing_directory_has_nothing_stale(tmp_path):
    assert stale_shared_memory(str(tmp_path / "none")) == []
