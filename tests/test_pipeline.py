"""The whole pipeline through real DVC: `dvc repro`, then `dvc exp run -S schedule=cosine`.

Runs in a temporary git repository holding a copy of the project's tracked files, with tiny
settings so that all four stages finish in about a minute on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

TINY = {
    "seed": 0,
    "schedule": "linear",
    "paths": {"tiles": "data/tiles", "models": "models", "samples": "data/samples",
              "metrics": "metrics"},  # dvc.yaml takes its paths from here
    "etl": {"source": "synthetic", "tile_size": 16, "stride": 16,
            "synthetic": {"scenes": 1, "width": 160, "height": 160}, "val_fraction": 0.2,
            "min_vegetation_fraction": 0.0},
    "model": {"dim": 8, "dim_mults": [1, 2]},
    "diffusion": {"timesteps": 50},
    "train": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "ema_warmup_steps": 1,
              "checkpoint_every": 2, "sample_every": 2, "preview_images": 4, "preview_steps": 2,
              "log_every": 1},
    "sample": {"n": 4, "batch_size": 4, "steps": 3, "grid_images": 4},
    "evaluate": {"fid": False, "swd_patches_per_image": 16, "swd_projections": 16,
                 "swd_repeats": 1},
}


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict]:
    return make_project(tmp_path)


def make_project(tmp_path: Path) -> tuple[Path, dict]:
    """A fresh git repository with the project's tracked files and the tiny params, and the
    environment to run git and dvc in it (no analytics, no update check: nothing goes out)."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    root = tmp_path / "repo"
    for name in files:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    (root / "params.yaml").write_text(yaml.safe_dump(TINY))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "Canopy Test",
           "GIT_AUTHOR_EMAIL": "test@example.invalid", "GIT_COMMITTER_NAME": "Canopy Test",
           "GIT_COMMITTER_EMAIL": "test@example.invalid", "PYTHONPATH": str(REPO_ROOT)}
    run(["git", "init", "-q", "-b", "main"], root, env)
    if not (root / ".dvc" / "config").exists():
        run(["dvc", "init", "-q"], root, env)
    run(["dvc", "config", "--local", "core.check_update", "false"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "project"], root, env)
    return root, env


@pytest.mark.slow
def test_repro_then_experiment(project):
    root, env = project
    first = run(["dvc", "repro"], root, env)
    for stage in ("etl", "train", "sample", "evaluate"):
        assert f"Running stage '{stage}'" in first
    assert "is empty" not in first  # DVC warns of every empty file among the deps
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert {"swd", "swd_floor", "memorised_fraction", "n_samples", "n_real"} <= set(metrics)
    assert metrics["n_samples"] == 4
    assert (root / "data" / "samples" / "grid.png").is_file()
    assert (root / "models" / "ema.safetensors").is_file()
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "baseline run"], root, env)

    again = run(["dvc", "repro"], root, env)
    assert "Running stage" not in again  # everything is up to date

    experiment = run(["dvc", "exp", "run", "-S", "schedule=cosine"], root, env)
    assert "Running stage 'etl'" not in experiment
    for stage in ("train", "sample", "evaluate"):
        assert f"Running stage '{stage}'" in experiment

    shown = json.loads(run(["dvc", "exp", "show", "--json"], root, env))
    text = json.dumps(shown)
    assert '"cosine"' in text and '"linear"' in text
    assert text.count('"swd"') >= 2  # both runs carry their metrics

    plots = run(["dvc", "plots", "show", "--json"], root, env)
    assert "loss" in plots and "grid.png" in plots


@pytest.mark.slow
def test_an_ema_std_experiment_reruns_only_sample_and_evaluate(tmp_path):
    """Post-hoc EMA: the std is chosen after training, so `-S sample.ema_std=...` leaves the
    trained model (and its snapshots) as they are."""
    root, env = make_project(tmp_path)
    params = json.loads(json.dumps(TINY))
    params["train"].update({"phema_stds": [0.05, 0.1], "phema_every": 2})
    params["sample"]["ema_std"] = None  # `dvc exp run -S` sets keys params.yaml has (the demo's has it)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "phema on"], root, env)
    run(["dvc", "repro"], root, env)
    assert sorted(p.name for p in (root / "models" / "phema").iterdir()) == [
        "snapshot-00000002.safetensors", "snapshot-00000004.safetensors"]
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "baseline run"], root, env)
    experiment = run(["dvc", "exp", "run", "-S", "sample.ema_std=0.08"], root, env)
    for stage in ("etl", "train"):
        assert f"Running stage '{stage}'" not in experiment
    for stage in ("sample", "evaluate"):
        assert f"Running stage '{stage}'" in experiment
    manifest = json.loads((root / "data" / "samples" / "manifest.json").read_text())
    assert manifest["checkpoint"]["file"] == "ema_std-0.08"
