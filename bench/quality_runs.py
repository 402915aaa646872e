"""Train and sample several recipes on one machine, for the ablation of docs/benchmarks.md
(issue 20): each job is (tiles, recipe, seed) -> models/ (export) and samples/ (PNGs, grid,
manifest), written as `canopy train` and `canopy sample` write them; `canopy evaluate` then
scores each samples folder (on any machine: it needs no accelerator).

    python bench/quality_runs.py --tiles syn=data/tiles --out runs \\
        --recipe demo --recipe all8 --seeds 0 1 --n 512 [--jobs 4]

Recipes are params overrides on top of params.yaml (RECIPES below). Jobs run `--jobs` at a
time, each in its own process (one GPU holds several demo-sized trainings). dvclive is not
needed: the training curves are not kept.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# Each a deep-merge over params.yaml, spelling out every key it is about, so that a recipe
# does not change with params.yaml's defaults. "demo": the recipe of main before issue 20 (all 8
# symmetries, the discrete VP process on raw data); each next one adds one change.
_VP = {"process": "vp", "standardize": False}
_EDM = {"process": "edm", "standardize": True}
RECIPES: dict[str, dict] = {
    "demo": {"train": {"augment": "all"}, "diffusion": _VP, "sample": {"spacing": "quadratic"}},
    "transpose": {"train": {"augment": "transpose"}, "diffusion": _VP,
                  "sample": {"spacing": "quadratic"}},
    "std": {"train": {"augment": "transpose"}, "diffusion": {**_VP, "standardize": True},
            "sample": {"spacing": "quadratic"}},
    "edm": {"train": {"augment": "transpose"}, "diffusion": _EDM,
            "sample": {"spacing": "karras", "sampler": "dpmpp2m"}},
    "edm_all8": {"train": {"augment": "all"}, "diffusion": _EDM,
                 "sample": {"spacing": "karras", "sampler": "dpmpp2m"}},
    "edm_raw": {"train": {"augment": "transpose"}, "diffusion": {**_EDM, "standardize": False},
                "sample": {"spacing": "karras", "sampler": "dpmpp2m"}},
    "edm_heun": {"train": {"augment": "transpose"}, "diffusion": _EDM,
                 "sample": {"spacing": "karras", "sampler": "heun", "steps": 10}},
}


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def one_job(spec: dict) -> None:
    """Runs in a child process: train, then sample, as the stages do."""
    from canopy.params import parse_params
    from canopy.sample.run import run_sample
    from canopy.train import loop

    loop.live.open_live = lambda *a, **k: loop.live.NoLive()  # no dvclive on this machine
    params = parse_params(spec["params"])
    start = time.perf_counter()
    loop.train(params, quiet=True, fresh=True)
    trained = time.perf_counter() - start
    run_sample(params, Path(params.paths.samples), Path(params.paths.models), progress=False)
    sampled = time.perf_counter() - start
    if spec.get("evaluate"):
        from canopy.evaluate.run import run_evaluate

        run_evaluate(params, Path(params.paths.samples), Path(params.paths.tiles),
                     Path(params.paths.metrics) / "evaluate.json")
    print(json.dumps({"job": spec["name"], "train_s": round(trained, 1),
                      "sample_s": round(sampled - trained, 1),
                      "total_s": round(time.perf_counter() - start, 1)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiles", action="append", required=True, help="name=folder")
    parser.add_argument("--recipe", action="append", required=True, choices=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--set", action="append", default=[], help="yaml overrides for all, e.g. "
                        "'{train: {compile: off}}'")
    parser.add_argument("--evaluate", action="store_true", help="also run the evaluate stage "
                        "(its params from --set, e.g. '{evaluate: {fid: false, c2st: false}}')")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        one_job(json.loads(Path(args.child).read_text()))
        return
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    for extra in args.set:
        base = merge(base, yaml.safe_load(extra))
    specs = []
    for tiles in args.tiles:
        name, _, folder = tiles.partition("=")
        for recipe in args.recipe:
            for seed in args.seeds:
                job = f"{name}-{recipe}-s{seed}"
                root = args.out / job
                params = merge(base, RECIPES[recipe])
                params = merge(params, {
                    "seed": seed,
                    "paths": {"tiles": folder, "models": str(root / "models"),
                              "samples": str(root / "samples"), "metrics": str(root / "metrics")},
                    "sample": {"n": args.n, "batch_size": min(args.n, 256)},
                })
                root.mkdir(parents=True, exist_ok=True)
                (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
                spec_file = root / "job.json"
                spec_file.write_text(json.dumps({"name": job, "params": params,
                                                 "evaluate": args.evaluate}))
                specs.append((job, spec_file))
    running: list[tuple[str, subprocess.Popen]] = []
    failed = []
    while specs or running:
        while specs and len(running) < args.jobs:
            job, spec_file = specs.pop(0)
            log = open(spec_file.with_name("log.txt"), "w")
            running.append((job, subprocess.Popen(
                [sys.executable, __file__, "--child", str(spec_file), "--tiles", "x", "--recipe",
                 "demo", "--out", str(args.out)], stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(1)
        for job, proc in list(running):
            if proc.poll() is not None:
                running.remove((job, proc))
                print(f"{job}: exit {proc.returncode}", flush=True)
                if proc.returncode:
                    failed.append(job)
    if failed:
        sys.exit(f"failed: {failed}")


if __name__ == "__main__":
    main()
