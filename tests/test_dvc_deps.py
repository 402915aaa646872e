"""dvc.yaml lists as a stage's deps exactly the project files its command runs: a file missing
from a stage's deps is a stale-output bug (DVC calls the stage up to date while its code
changed), and a dep the stage does not run re-runs it, and invalidates its cache, for nothing.

The files a stage runs are found as Python finds them, in a fresh interpreter: the CLI root,
every module of the stage's package (so imports made inside functions are loaded too), the
schemas of the params sections it checks, and, when it loads any of the model package, all of
it (which network and sampler run depends on the export's config, read at run time).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO_ROOT

STAGES = ("etl", "train", "sample", "evaluate")

# Imports what one stage runs (see the module docstring), then prints the repository files of
# every loaded module.
PROBE = """
import importlib, json, pkgutil, sys
from pathlib import Path
root = Path(sys.argv[1]).resolve()
stage = sys.argv[2]

def import_all(package):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)

importlib.import_module("canopy.cli")
import_all(importlib.import_module("canopy." + stage))
from canopy.params import schema_for
cli = importlib.import_module("canopy." + stage + ".cli")
for name in dir(cli):
    if name.endswith("PARAMS_SECTIONS"):
        schema_for(frozenset(getattr(cli, name)))
if any(name.startswith("canopy.model.") for name in sys.modules):
    import_all(importlib.import_module("canopy.model"))
files = set()
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None)
    if path and "site-packages" not in path and Path(path).resolve().is_relative_to(root):
        files.add(Path(path).resolve().relative_to(root).as_posix())
print(json.dumps(sorted(files)))
"""


def loaded_files(stage: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", PROBE, str(REPO_ROOT), stage],
                            capture_output=True, text=True, check=True, cwd=REPO_ROOT.parent)
    return json.loads(result.stdout)


def stage_deps(stage: str) -> list[str]:
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    return [str(dep).rstrip("/") for dep in pipeline["stages"][stage].get("deps", [])]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep + "/") for dep in deps)


@pytest.mark.parametrize("stage", STAGES)
def test_every_file_a_stage_runs_is_a_dep(stage):
    files = loaded_files(stage)
    assert f"{stage}/cli.py" in files  # the probe found the stage's own code
    missing = [path for path in files if not covered(path, stage_deps(stage))]
    assert not missing, f"dvc.yaml stage {stage!r} misses deps: {missing}"


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_depends_on_no_code_it_does_not_run(stage):
    """The other direction: every Python file a code dep covers is one the stage runs, so a
    change to another stage's code (a new sampler, an etl source) does not re-run this one."""
    files = set(loaded_files(stage))
    unused = []
    for dep in stage_deps(stage):
        path = REPO_ROOT / dep
        if "${" in dep or not path.exists():
            continue  # an artifact (tiles, weights), not code
        code = [path] if path.is_file() else sorted(path.rglob("*.py"))
        unused += [p.relative_to(REPO_ROOT).as_posix() for p in code
                   if p.suffix == ".py" and p.relative_to(REPO_ROOT).as_posix() not in files]
    assert not unused, f"dvc.yaml stage {stage!r} depends on code it does not run: {unused}"


@pytest.mark.parametrize("stage", STAGES)
def test_every_dep_exists(stage):
    """A dep that names no file (a module renamed or removed) hides a missing one."""
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    outputs = {str(out if isinstance(out, str) else next(iter(out)))
               for spec in pipeline["stages"].values() for out in spec.get("outs", [])}
    for dep in stage_deps(stage):
        assert dep in outputs or (REPO_ROOT / dep).exists(), f"{stage}: no such dep {dep}"


def plot_sources(pipeline: dict) -> list[str]:
    """Every file or folder that a stage-level or top-level plot definition draws."""
    sources = [str(next(iter(p)) if isinstance(p, dict) else p)
               for spec in pipeline["stages"].values() for p in spec.get("plots", [])]
    for plot in pipeline.get("plots", []):
        if not isinstance(plot, dict):
            sources.append(str(plot))
            continue
        ((name, spec),) = plot.items()
        y = (spec or {}).get("y")
        sources += list(y) if isinstance(y, dict) else [name]
    return sources


def test_each_plot_is_declared_once():
    """`dvc plots show` draws a file once per definition that covers it."""
    sources = plot_sources(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text()))
    overlapping = [(a, b) for i, a in enumerate(sources) for b in sources[i + 1:]
                   if covered(a, [b]) or covered(b, [a])]
    assert not overlapping, f"drawn twice: {overlapping}"


def interpolated_keys(text: str) -> set[str]:
    return set(re.findall(r"\$\{\s*([\w.]+)\s*\}", text))


@pytest.mark.parametrize("params_file", ["params.yaml", *sorted(
    str(path.relative_to(REPO_ROOT)) for path in (REPO_ROOT / "examples").glob("*.yaml"))])
def test_params_files_hold_every_key_dvc_yaml_interpolates(params_file):
    """`dvc repro` fails to parse dvc.yaml when params.yaml lacks a key it interpolates."""
    params = yaml.safe_load((REPO_ROOT / params_file).read_text())
    for key in interpolated_keys((REPO_ROOT / "dvc.yaml").read_text()):
        value = params
        for part in key.split("."):
            assert isinstance(value, dict) and part in value, f"{params_file} lacks {key}"
            value = value[part]
