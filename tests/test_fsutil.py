"""Atomic writes: readers see the old content or the new, files get ordinary permissions."""

from __future__ import annotations

import os

import pytest

from canopy.fsutil import (
    OutputKind,
    atomic_write_bytes,
    recover_interrupted_swap,
    remove_stale_temp_files,
)
from canopy.fsutil import atomic_dir as _atomic_dir
from tests.conftest import output_locked_by_another_process

# The outputs these tests swap: a folder holding a file `x` is one (as a manifest says so
# for the stages' outputs).
TEST_OUTPUT = OutputKind("test output", "--out", lambda folder: (folder / "x").is_file())


def atomic_dir(target):
    return _atomic_dir(target, TEST_OUTPUT)


def test_atomic_write_replaces_and_respects_umask(tmp_path):
    path = tmp_path / "a" / "file.bin"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["file.bin"]


def test_atomic_dir_swaps_in_only_on_success(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as staging:
        (staging / "x").write_text("new")
    assert (target / "x").read_text() == "new"
    with pytest.raises(RuntimeError), atomic_dir(target) as staging:
        (staging / "x").write_text("half")
        raise RuntimeError("failed mid-way")
    assert (target / "x").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_staging_of_a_dead_process_is_removed(tmp_path):
    stale = tmp_path / ".out.staging-999999999-abc"
    stale.mkdir()
    with atomic_dir(tmp_path / "out"):
        pass
    assert not stale.exists()


def test_temp_files_of_a_dead_writer_are_removed_and_a_live_ones_kept(tmp_path):
    dead = tmp_path / ".ema.safetensors.999999999-abc123.tmp"  # pid 999999999: no such process
    live = tmp_path / f".ema.safetensors.{os.getpid()}-def456.tmp"
    other = tmp_path / ".notes.tmp"  # not one of ours (no pid): left alone
    for path in (dead, live, other):
        path.write_bytes(b"half")
    atomic_write_bytes(tmp_path / "metrics.json", b"{}")
    assert not dead.exists() and live.exists() and other.exists()
    live.unlink()
    remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp", "metrics.json"]


def test_the_temp_name_carries_the_writers_pid(tmp_path, monkeypatch):
    names = []
    real_replace = os.replace

    def spy(src, dst):
        names.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    atomic_write_bytes(tmp_path / "ema.safetensors", b"x")
    assert names[0].startswith(f".ema.safetensors.{os.getpid()}-") and names[0].endswith(".tmp")


_KILLED_SWAP = """
import os, signal, sys
from pathlib import Path
from canopy import fsutil

kill_after = int(sys.argv[2])
calls = [0]
real_replace = os.replace


def replace(src, dst):
    real_replace(src, dst)
    calls[0] += 1
    if calls[0] == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind runs


os.replace = replace
kind = fsutil.OutputKind("test output", "--out", lambda folder: True)  # the swap is tested
with fsutil.atomic_dir(Path(sys.argv[1]), kind) as staging:
    (staging / "x").write_text("new")
"""


@pytest.mark.parametrize("kill_after, survivor", [(1, "old"), (2, "new")])
def test_a_kill_at_either_rename_of_the_swap_is_undone_by_the_next_run(tmp_path, kill_after,
                                                                      survivor):
    import subprocess
    import sys

    target = tmp_path / "out"
    target.mkdir()
    (target / "x").write_text("old")
    script = tmp_path / "swap.py"
    script.write_text(_KILLED_SWAP)
    done = subprocess.run([sys.executable, str(script), str(target), str(kill_after)],
                          cwd=os.getcwd(), timeout=60)
    assert done.returncode == -9
    assert any(p.name.startswith(".out.old-") for p in tmp_path.iterdir())
    # The next run finds what the killed one left: the last complete output is back in place
    # even if this run fails, and no leftover stays.
    with pytest.raises(RuntimeError), atomic_dir(target):
        raise RuntimeError("this run fails too")
    assert (target / "x").read_text() == survivor
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "swap.py"]


def test_a_swap_still_under_way_is_left_alone(tmp_path):
    target = tmp_path / "out"
    moving = tmp_path / f".out.old-{os.getpid()}-abc"  # a live process between its renames
    moving.mkdir()
    recover_interrupted_swap(target)
    assert moving.exists() and not target.exists()


def test_an_output_being_written_is_refused_naming_its_writer(tmp_path):
    from canopy.errors import UserError
    from canopy.fsutil import output_lock

    with output_locked_by_another_process(tmp_path / "models", "canopy train") as holder:
        with pytest.raises(UserError, match=rf"models is being written by canopy train \(pid {holder.pid}\)"):
            with output_lock(tmp_path / "models", "canopy train"):
                pass


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    from canopy.fsutil import output_lock

    with output_locked_by_another_process(tmp_path / "tiles", "canopy etl") as holder:
        holder.kill()  # kill -9: no cleanup runs
        holder.wait(timeout=10)
        with output_lock(tmp_path / "tiles", "canopy etl"):
            pass


def test_forked_children_do_not_keep_the_lock(tmp_path):
    """DataLoader workers are forked from train: orphaned by a kill -9 of train, they must not
    hold its models folder locked."""
    from canopy.fsutil import output_lock

    script = ("import os, sys, time\nfrom canopy.fsutil import output_lock\n"
              f"with output_lock({str(tmp_path / 'models')!r}, 'canopy train'):\n"
              "    if os.fork() == 0:\n        time.sleep(30); os._exit(0)\n"
              "    print('held', flush=True); time.sleep(60)")
    import signal
    import subprocess
    import sys
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    with output_lock(tmp_path / "models", "canopy train"):  # the forked child still lives
        pass


def test_the_lock_file_goes_with_its_holder(tmp_path):
    from canopy.fsutil import output_lock

    with output_lock(tmp_path / "samples", "canopy sample"):
        assert (tmp_path / ".samples.lock").read_text().startswith("canopy sample (pid ")
    assert list(tmp_path.iterdir()) == []


def _kill_mid_swap(target, tmp_path, kill_after=1):
    """Run the real swap of atomic_dir on `target` in another process, SIGKILLed after its
    `kill_after`-th rename: after the first, `target` is missing and the old output lies
    beside it as `.<name>.old-<pid>-*`."""
    import subprocess
    import sys

    script = tmp_path / "swap.py"
    script.write_text(_KILLED_SWAP)
    done = subprocess.run([sys.executable, str(script), str(target), str(kill_after)],
                          cwd=os.getcwd(), timeout=60)
    assert done.returncode == -9
    (leftover,) = target.parent.glob(f".{target.name}.old-*")
    assert not target.exists()
    return leftover


def _half_swapped_line(target, leftover, command):
    return (f"{target} is missing but {leftover.name} is beside it: a `{command}` was killed "
            f"mid-swap; re-run `{command}` (it restores or replaces the output)")


def _one_line(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def stage_folders(tmp_path):
    """A tiles folder and a samples folder as etl and sample write them, and params."""
    import numpy as np

    from tests.evaluate.synthetic import forest_images, write_samples
    from tests.tiles import write_tiles

    write_tiles(tmp_path / "data" / "tiles", forest_images(4, 16), forest_images(2, 16, seed=1))
    write_samples(tmp_path / "data" / "samples", forest_images(2, 16, seed=2).astype(np.uint8))
    (tmp_path / "params.yaml").write_text(
        "etl: {tile_size: 16, stride: 16}\nmodel: {dim: 8, dim_mults: [1, 2]}\n"
        "evaluate: {fid: false}\n")
    return tmp_path


def _cli(root, *args):
    from typer.testing import CliRunner

    from canopy.cli import app

    paths = {"train": ["--tiles", str(root / "data" / "tiles"), "--models", str(root / "models")],
             "evaluate": ["--tiles", str(root / "data" / "tiles"),
                          "--samples", str(root / "data" / "samples"),
                          "--metrics", str(root / "metrics")]}
    return CliRunner().invoke(app, [args[0], "-q", "--params", str(root / "params.yaml"),
                                    *paths[args[0]], *args[1:]])


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_a_reader_of_tiles_killed_mid_swap_says_to_rerun_etl(stage_folders, stage):
    tiles = stage_folders / "data" / "tiles"
    leftover = _kill_mid_swap(tiles, stage_folders)
    result = _cli(stage_folders, stage)
    assert result.exit_code == 2
    assert _one_line(result) == (f"canopy {stage}: error: "
                                 + _half_swapped_line(tiles, leftover, "canopy etl"))
    assert not (stage_folders / "models").exists() and not (stage_folders / "metrics").exists()


def test_evaluate_on_samples_killed_mid_swap_says_to_rerun_sample(stage_folders):
    samples = stage_folders / "data" / "samples"
    leftover = _kill_mid_swap(samples, stage_folders)
    result = _cli(stage_folders, "evaluate")
    assert result.exit_code == 2
    assert _one_line(result) == ("canopy evaluate: error: "
                                 + _half_swapped_line(samples, leftover, "canopy sample"))
    assert not (stage_folders / "metrics").exists()


def test_a_killed_first_run_and_a_running_writer_are_told_apart(tmp_path):
    from canopy.errors import UserError
    from canopy.fsutil import refuse_half_swapped

    target = tmp_path / "tiles"
    refuse_half_swapped(target, "canopy etl")  # nothing beside it: the reader's own message
    dead = tmp_path / ".tiles.staging-999999999-abc"  # pid 999999999: no such process
    dead.mkdir()
    with pytest.raises(UserError, match=r"tiles is missing but \.tiles\.staging-999999999-abc "
                                        r"is beside it: a `canopy etl` was killed before its "
                                        r"output was in place; re-run `canopy etl`"):
        refuse_half_swapped(target, "canopy etl")
    dead.rmdir()
    (tmp_path / f".tiles.staging-{os.getpid()}-def").mkdir()  # this process: a live writer
    with pytest.raises(UserError, match=rf"while `canopy etl` \(pid {os.getpid()}\) writes it"):
        refuse_half_swapped(target, "canopy etl")
    target.mkdir()
    refuse_half_swapped(target, "canopy etl")  # the output is there: nothing to say


def test_a_file_output_never_replaces_a_folder_or_a_fifo(tmp_path):
    from canopy.errors import UserError

    (tmp_path / "metrics.json").mkdir()
    (tmp_path / "metrics.json" / "mine.txt").write_text("kept")
    os.mkfifo(tmp_path / "pipe.json")
    with pytest.raises(UserError, match=r"metrics.json is a folder, not a file: refusing"):
        atomic_write_bytes(tmp_path / "metrics.json", b"{}")
    with pytest.raises(UserError, match=r"pipe.json is a FIFO \(named pipe\), not a file"):
        atomic_write_bytes(tmp_path / "pipe.json", b"{}")
    assert (tmp_path / "metrics.json" / "mine.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "pipe.json"]


def test_the_guard_names_what_a_wrong_output_path_is(tmp_path):
    from canopy.errors import UserError
    from canopy.fsutil import check_replaceable

    (tmp_path / "broken").symlink_to(tmp_path / "nowhere")
    (tmp_path / "many").mkdir()
    for name in "abcdef":
        (tmp_path / "many" / name).write_text(name)
    (tmp_path / "many" / "sub").mkdir()
    expected = {"broken": f"it is a broken symbolic link to {tmp_path / 'nowhere'}",
                "many": "it holds a, b, c, d and 3 more",
                "/": "it is a top-level system folder", "/usr": "it is a top-level system folder"}
    for name, what in expected.items():
        with pytest.raises(UserError) as refused:
            check_replaceable(tmp_path / name, TEST_OUTPUT)
        assert f"is not a test output that Canopy wrote ({what}" in str(refused.value)
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", TEST_OUTPUT)  # an empty folder may be replaced
    check_replaceable(tmp_path / "absent", TEST_OUTPUT)
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "x").write_text("an earlier output")
    check_replaceable(tmp_path / "ours", TEST_OUTPUT)
