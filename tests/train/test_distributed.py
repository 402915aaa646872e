"""`canopy train` as several torch.distributed ranks (gloo on 127.0.0.1): the same math as one
process, exact resume, rank 0 alone writes, any rank's signal stops all, a dead rank hangs
nobody, bad world sizes refused."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from canopy.cli import app
from canopy.distributed import Dist, check_devices
from canopy.errors import UserError
from canopy.train import checkpoint
from canopy.train.loop import train
from tests import distributed

from .conftest import tiny_params

# Max abs difference of the final EMA weights, 2 ranks against 1 process, 8 steps of the tiny
# network (weights up to about 1): 1.5e-5 measured. The ranks convolve 2 images where one
# process convolves 4 and DDP sums the gradients in another order; Adam's normalised update
# carries such rounding into the weights at about the learning rate's scale times 1e-2.
EMA_ATOL = 1e-4


def _params_file(folder, params):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    return path


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _ema(folder):
    return load_file(folder / "ema.safetensors")


def _state(folder):
    state = checkpoint.state_dirs(folder / "state")[0]
    return {name: load_file(state / f"{name}.safetensors") for name in ("model", "ema", "optimizer")}


def _step_of(folder):
    return int(checkpoint.state_dirs(folder / "state")[0].name.split("-")[1])


def _torchrun(params_file, world=2, timeout=180):
    """A real `torchrun --standalone` launch, as the README says to run it."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={world}", "--no-python", "canopy", "train", "-p", str(params_file),
           "-q"]
    env = distributed.rank_env(0, 1, 0)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT"):
        env.pop(key)
    env["PATH"] = f"{sys.prefix}/bin:{env.get('PATH', '')}"
    return subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """8 steps as one process (in this one) and as 2 ranks under torchrun, same params."""
    from .conftest import write_tiles

    root = tmp_path_factory.mktemp("ddp")
    tiles = write_tiles(root / "tiles")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks (OMP_NUM_THREADS=1)
    try:
        train(tiny_params(tiles, root / "one" / "models", steps=8), quiet=True)
    finally:
        torch.set_num_threads(threads)
    two = tiny_params(tiles, root / "two" / "models", steps=8)
    done = _torchrun(_params_file(root / "two", two))
    assert done.returncode == 0, done.stderr
    return {"root": root, "tiles": tiles, "one": root / "one" / "models",
            "two": root / "two" / "models"}


@pytest.mark.slow
def test_two_ranks_follow_one_process_within_rounding(runs):
    one, two = _ema(runs["one"]), _ema(runs["two"])
    assert one.keys() == two.keys()  # the bare network's keys: no DDP "module." prefix
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    assert worst < EMA_ATOL
    assert _files(runs["one"]) == _files(runs["two"])  # rank 0 writes what one process does
    state = json.loads((checkpoint.state_dirs(runs["two"] / "state")[0] / "state.json").read_text())
    single = json.loads((checkpoint.state_dirs(runs["one"] / "state")[0] / "state.json").read_text())
    assert state["world_size"] == 2 and "world_size" not in single
    assert state["params_hash"] == single["params_hash"]  # the world size is not in the hash


@pytest.mark.slow
def test_two_ranks_resumed_equal_two_ranks_straight_and_rank_1_writes_nothing(runs):
    root = runs["root"]
    params_file = _params_file(root / "halves", tiny_params(runs["tiles"], root / "halves" / "models",
                                                              steps=8))
    cwds = [root / "cwd0", root / "cwd1"]
    for cwd in cwds:
        cwd.mkdir()
    before = _files(root)
    first = distributed.run(["train", "-p", str(params_file), "-q", "--steps", "4"], 2, cwds)
    assert [r.code for r in first] == [0, 0], first[0].err
    assert all(not r.err for r in first[1:])  # rank 1 says nothing either
    second = distributed.run(["train", "-p", str(params_file), "-q"], 2, cwds)
    assert [r.code for r in second] == [0, 0], second[0].err
    straight, halves = _state(runs["two"]), _state(root / "halves" / "models")
    for part in straight:
        assert straight[part].keys() == halves[part].keys()
        for key in straight[part]:
            assert torch.equal(straight[part][key], halves[part][key]), f"{part}/{key}"
    # Nothing appeared anywhere but rank 0's models folder: not in rank 1's working folder,
    # not beside the models folder (no second lock, no staging leftovers).
    new = [f for f in _files(root) if f not in before]
    assert new and all(f.split("/")[:2] == ["halves", "models"] for f in new)
    assert _files(root / "halves" / "models") == _files(runs["two"])
    assert not list(cwds[1].iterdir())


@pytest.mark.slow
def test_a_state_of_one_process_resumes_on_two_ranks_and_says_so(runs):
    models = runs["root"] / "other-world" / "models"
    shutil.copytree(runs["one"], models)
    params_file = _params_file(models.parent, tiny_params(runs["tiles"], models, steps=9))
    done = distributed.run(["train", "-p", str(params_file)], 2)
    assert [r.code for r in done] == [0, 0], done[0].err
    assert "resuming a state trained by 1 process(es) with 2" in done[0].err
    assert "resuming at step 8 of 9" in done[0].err and "starting fresh" not in done[0].err
    assert _step_of(models) == 9


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_after_one_checkpoint(tiles, tmp_path):
    out = tmp_path / "models"
    params = tiny_params(tiles, out, steps=100_000, checkpoint_every=3, log_every=1,
                         preview_images=0)
    procs = distributed.start(["train", "-p", str(_params_file(tmp_path, params)), "-q"], 2)
    _wait_for_checkpoint(out, procs)
    procs[1].send_signal(signal.SIGTERM)  # not rank 0: the writer must still hear of it
    done = distributed.finish(procs)
    assert [r.code for r in done] == [128 + signal.SIGTERM] * 2, done[0].err
    assert "stopped at step" in done[0].err and not done[1].err
    assert len(checkpoint.state_dirs(out / "state")) == 1
    step = _step_of(out)
    assert step >= 3 and json.loads((checkpoint.state_dirs(out / "state")[0]
                                     / "state.json").read_text())["step"] == step


@pytest.mark.slow
def test_a_killed_rank_makes_the_other_exit_with_a_clear_line(tiles, tmp_path):
    out = tmp_path / "models"
    params = tiny_params(tiles, out, steps=100_000, checkpoint_every=3, log_every=1,
                         preview_images=0, dist_timeout_s=30)
    procs = distributed.start(["train", "-p", str(_params_file(tmp_path, params)), "-q"], 2)
    _wait_for_checkpoint(out, procs)
    procs[1].kill()
    done = distributed.finish(procs, timeout=90)  # bounded: gloo sees the closed socket
    assert done[0].code == 1
    lines = done[0].err.strip().splitlines()
    assert len(lines) == 1 and "another rank stopped" in lines[0], done[0].err
    assert checkpoint.state_dirs(out / "state")  # the last complete checkpoint is intact


@pytest.mark.slow
def test_ranks_that_cannot_meet_stop_with_a_clear_line(tiles, tmp_path):
    params = tiny_params(tiles, tmp_path / "models", dist_timeout_s=3)
    procs = distributed.start(["train", "-p", str(_params_file(tmp_path, params)), "-q"], 2)
    procs[1].kill()  # rank 0 waits for a rank that never comes
    done = distributed.finish(procs, timeout=90)
    assert done[0].code == 2
    assert done[0].err.startswith("canopy train: error: could not join the 2 ranks")
    assert len(done[0].err.strip().splitlines()) == 1
    assert not (tmp_path / "models").exists()


def _wait_for_checkpoint(out, procs, timeout=90):
    deadline = time.time() + timeout
    while not checkpoint.state_dirs(out / "state"):
        assert all(p.poll() is None for p in procs), procs[0].communicate()[1]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("world, reason", [(3, "does not split"), (5, "ranks (torchrun) for")])
def test_a_world_that_does_not_split_the_batch_is_refused(tiles, tmp_path, monkeypatch, rank,
                                                        world, reason):
    # Checked before any rank connects: one process stands for each rank.
    params_file = _params_file(tmp_path, tiny_params(tiles, tmp_path / "models", batch_size=4))
    for key, value in {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": world,
                       "LOCAL_WORLD_SIZE": world}.items():
        monkeypatch.setenv(key, str(value))
    result = CliRunner().invoke(app, ["train", "-p", str(params_file), "-q"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    if rank == 0:
        assert len(lines) == 1 and reason in lines[0] and "train.batch_size" in lines[0]
    else:
        assert lines == []  # rank 0 speaks for all
    assert not (tmp_path / "models").exists() and not (tmp_path / ".models.lock").exists()


def test_more_ranks_on_a_node_than_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="--nproc-per-node 1 or fewer"):
        check_devices(Dist(rank=1, local_rank=1, world=2, local_world=2),
                      torch.device("cuda"), "train.device")
    check_devices(Dist(rank=0, world=1), torch.device("cuda"), "train.device")  # one process


def test_evaluate_refuses_to_run_under_torchrun(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(app, ["evaluate", "-p", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "runs as one process" in result.output
