"""Conditioned generation against guidance (docs/conditioning.md; the targets of
docs/benchmarks.md "Conditioned generation"): for one data set, one seed,

  1. etl: the tiles, each with its `region` (synthetic: the scene kind; NEON: the site);
  2. train a model conditioned on the region (model.condition [region], condition dropout
     train.condition_dropout) and, at the same budget, the same model unconditioned;
  3. sample each guidance scale with `region: each` (an equal share per region) and evaluate:
     condition_accuracy (a classifier trained on the real train tiles by region names the
     region of each sample) against its floor (its accuracy on the real val tiles), SWD;
  4. the unconditioned model's SWD against the conditioned model's at guidance 0.

    python bench/bench_condition.py --data synthetic --out runs/cond-syn
    python bench/bench_condition.py --data neon --neon ../shared/data/NEON --out runs/cond-neon
    python bench/bench_condition.py --data synthetic --smoke --out /tmp/smoke   # plumbing only

The synthetic recipe is examples/params-conditioned.yaml (params.yaml's demo budget and recipe
on scenes of three kinds); NEON's is examples/params-neon-site.yaml (examples/params-neon.yaml's
GPU recipe, conditioned on the site). Writes
<out>/report.json (every figure, the load average before and after, wall times) and prints one
table. The stages run in this process, as `canopy STAGE` runs them; no dvc or dvclive needed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
NEON_SITES = {"HARV": "HARV/*.tif", "OSBS": "OSBS/*.tif", "TEAK": "TEAK/*.tif",
              "YELL": "2019_YELL_2_528000_4978000_image_crop2.png"}
TARGETS = {"neon_ratio": 0.8, "synthetic_accuracy": 0.9, "swd_within": 0.10}

# --smoke: the smallest run that still goes through every stage, to test the plumbing
SMOKE = {
    "etl": {"tile_size": 32, "stride": 32, "val_fraction": 0.25,
            "synthetic": {"scenes": 3, "width": 96, "height": 96}},
    "model": {"dim": 8, "dim_mults": [1, 2]},
    "train": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "ema_warmup_steps": 1,
              "checkpoint_every": 4, "sample_every": 4, "preview_images": 0, "phema_stds": [],
              "log_every": 2},
    "sample": {"n": 6, "batch_size": 6, "steps": 3, "grid_images": 6},
    "evaluate": {"swd_patches_per_image": 8, "swd_projections": 8, "swd_repeats": 1,
                 "c2st_steps": 2, "c2st_folds": 2, "bootstrap_replicates": 0,
                 "trust_min_images": 2, "memorisation_size": 8, "condition_steps": 5},
}


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def base_params(data: str, neon: Path | None, smoke: bool) -> dict[str, Any]:
    """The conditioned recipe of `data` as a params mapping (paths set per run later)."""
    if data == "synthetic":
        params = yaml.safe_load((REPO / "examples/params-conditioned.yaml").read_text())
    else:
        params = yaml.safe_load((REPO / "examples/params-neon-site.yaml").read_text())
        if neon is None or not neon.is_dir():
            sys.exit(f"--neon {neon}: not a folder (the NEON tiles' source, e.g. "
                     "../shared/data/NEON)")
        entries = [{"files": str(neon / pattern), "name": site}
                   for site, pattern in NEON_SITES.items()]
        if smoke:  # one plot a site (the smallest file)
            entries = [{"files": str(min(neon.glob(pattern), key=lambda p: p.stat().st_size)),
                        "name": site} for site, pattern in NEON_SITES.items()
                       if any(neon.glob(pattern))]
        params["etl"]["local"]["paths"] = entries
    params = merge(params, {"evaluate": {"fid": False}, "train": {"preview_images": 0}})
    return merge(params, SMOKE) if smoke else params


def run_stages(params: dict[str, Any], root: Path, guidances: list[float],
               say) -> dict[str, Any]:
    """Train `params` into root/models; sample and evaluate each guidance (conditioned) or
    once (unconditioned). Returns {guidance or "unconditioned": metrics} and the wall times."""
    from canopy.evaluate.run import run_evaluate
    from canopy.params import parse_params
    from canopy.sample.run import run_sample
    from canopy.train import loop

    params = merge(params, {"paths": {"models": str(root / "models")}})
    start = time.perf_counter()
    open_live = loop.live.open_live
    loop.live.open_live = lambda *a, **k: loop.live.NoLive()  # no dvclive curves for a benchmark
    try:
        result = loop.train(parse_params(params), quiet=True, fresh=True)
    finally:
        loop.live.open_live = open_live  # this process may train again with curves
    if result.interrupted is not None:
        sys.exit("interrupted while training: nothing sampled")
    out: dict[str, Any] = {"train_s": round(time.perf_counter() - start, 1), "runs": {}}
    conditioned = bool(params["model"].get("condition"))
    for guidance in guidances if conditioned else [None]:
        name = f"g{guidance:g}" if conditioned else "unconditioned"
        run = merge(params, {"paths": {"samples": str(root / name / "samples"),
                                       "metrics": str(root / name / "metrics")}})
        if conditioned:
            run = merge(run, {"sample": {"guidance": guidance, "condition": {"region": "each"}}})
        p = parse_params(run)
        start = time.perf_counter()
        run_sample(p, Path(p.paths.samples), Path(p.paths.models), progress=False)
        sampled = time.perf_counter() - start
        result = run_evaluate(p, Path(p.paths.samples), Path(p.paths.tiles),
                              Path(p.paths.metrics) / "evaluate.json")
        out["runs"][name] = {"guidance": guidance, "sample_s": round(sampled, 1),
                             "evaluate_s": round(time.perf_counter() - start - sampled, 1),
                             "metrics": result.metrics}
        say(f"{root.name} {name}: " + ", ".join(
            f"{k} {result.metrics[k]}" for k in ("condition_accuracy", "condition_accuracy_floor",
                                                 "condition_accuracy_ratio", "swd")
            if k in result.metrics))
    return out


def summarise(data: str, conditioned: dict[str, Any], plain: dict[str, Any] | None
              ) -> dict[str, Any]:
    """The table against guidance, and each target met or not."""
    rows = []
    for name, run in conditioned["runs"].items():
        m = run["metrics"]
        rows.append({"guidance": run["guidance"], "condition_accuracy": m.get("condition_accuracy"),
                     "floor": m.get("condition_accuracy_floor"),
                     "ratio": m.get("condition_accuracy_ratio"), "swd": m.get("swd"),
                     "c2st_accuracy": m.get("c2st_accuracy")})
    guided = [r for r in rows if r["guidance"] and r["ratio"] is not None]
    best = max(guided, key=lambda r: r["ratio"]) if guided else None
    targets: dict[str, Any] = {}
    if best is not None and data == "neon":
        targets["neon_ratio_at_least_0.8"] = best["ratio"] >= TARGETS["neon_ratio"]
    if best is not None and data == "synthetic":
        targets["synthetic_accuracy_at_least_0.9"] = (
            best["condition_accuracy"] >= TARGETS["synthetic_accuracy"])
    zero = next((r for r in rows if r["guidance"] == 0), None)
    swd_vs_plain = None
    if plain is not None and zero is not None:
        plain_swd = plain["runs"]["unconditioned"]["metrics"]["swd"]
        swd_vs_plain = zero["swd"] / plain_swd if plain_swd else None
        if swd_vs_plain is not None:
            targets["guidance0_swd_within_10pct"] = swd_vs_plain <= 1 + TARGETS["swd_within"]
    return {"rows": rows, "best_guided": best, "swd_guidance0_over_unconditioned": swd_vs_plain,
            "targets_met": targets}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["synthetic", "neon"], required=True)
    parser.add_argument("--neon", type=Path, help="the NEON folder (../shared/data/NEON)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--guidance", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, help="samples per guidance (default: the recipe's)")
    parser.add_argument("--steps", type=int, help="train.steps (default: the recipe's)")
    parser.add_argument("--device", default=None, help="train and sample device (default: auto)")
    parser.add_argument("--no-unconditioned", action="store_true",
                        help="skip the unconditioned model (and the SWD target)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: the plumbing only")
    parser.add_argument("--set", action="append", default=[],
                        help="yaml overrides of the recipe, e.g. '{evaluate: {c2st: false}}'")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(line, flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    params = base_params(args.data, args.neon, args.smoke)
    overrides: dict[str, Any] = {"seed": args.seed,
                                 "paths": {"tiles": str(args.out / "tiles")}}
    if args.n:
        overrides["sample"] = {"n": args.n}
    if args.steps:
        overrides["train"] = {"steps": args.steps}
    if args.device:
        overrides = merge(overrides, {"train": {"device": args.device},
                                      "sample": {"device": args.device}})
    params = merge(params, overrides)
    for extra in args.set:
        params = merge(params, yaml.safe_load(extra))

    from canopy.etl.pipeline import run_etl
    from canopy.params import parse_params

    start = time.perf_counter()
    tiles = args.out / "tiles"
    if tiles.exists():
        shutil.rmtree(tiles)
    run_etl(parse_params(params), tiles, progress=False)
    etl_s = time.perf_counter() - start
    conditioned = run_stages(params, args.out / "conditioned", args.guidance, say)
    plain = None
    if not args.no_unconditioned:
        unconditioned = merge(params, {"model": {"condition": []}, "sample": {"guidance": 1.0}})
        unconditioned["sample"]["condition"] = {}
        plain = run_stages(unconditioned, args.out / "unconditioned", [], say)
    report = {
        "data": args.data, "seed": args.seed, "smoke": args.smoke, "params": params,
        "etl_s": round(etl_s, 1), "conditioned": conditioned, "unconditioned": plain,
        "summary": summarise(args.data, conditioned, plain),
        "load_average": {"before": [round(v, 2) for v in load_before],
                         "after": [round(v, 2) for v in os.getloadavg()]},
        "cpu_count": os.cpu_count(),
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    say(f"{'guidance':>8} {'accuracy':>9} {'floor':>7} {'ratio':>7} {'swd':>8}")
    for row in report["summary"]["rows"]:
        say(f"{row['guidance']:>8g} {_fmt(row['condition_accuracy']):>9} {_fmt(row['floor']):>7} "
            f"{_fmt(row['ratio']):>7} {_fmt(row['swd']):>8}")
    if plain is not None:
        say(f"unconditioned swd {_fmt(plain['runs']['unconditioned']['metrics']['swd'])}; "
            f"guidance 0 over it {_fmt(report['summary']['swd_guidance0_over_unconditioned'])}")
    say(f"targets: {report['summary']['targets_met']}; load average {report['load_average']}")
    return 0


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


if __name__ == "__main__":
    sys.exit(main())
