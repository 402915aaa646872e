"""Quality ablation on the demo: the demo recipe against one change at a time, at the same steps.

For each seed, `canopy etl` once (the demo's synthetic tiles of that seed), then for each
variant `canopy train`, `canopy sample` (n images) and `canopy evaluate` (SWD and its floor;
FID and C2ST off unless --full), each in its own folder under --root. A variant is a name and
a list of dotted overrides of params.yaml:

    python bench/ablation.py --root /tmp/abl --seeds 0 1 --n 256 \
        --variant demo \
        --variant beta2=train.adam_beta2=0.99 \
        --variant decay=train.lr_decay=linear,train.lr_decay_fraction=0.3

`--tiles FOLDER` trains and scores every seed on one etl output instead (real imagery: the
seed then draws the weights, batches, noise and samples, not the tiles). `--ema-std 0.05 0.1`
also samples and scores each trained model with those post-hoc EMA reconstructions
(sample.ema_std): no retraining. `--resample NAME=KEY=VALUE,...` does the same for any
other sample settings, e.g. `--resample ag2=sample.autoguidance=2`. Results go to <root>/results.jsonl (one row per run,
appended; a run whose metrics exist is skipped, so the script resumes). Two tables are printed:
SWD per variant over the seeds, and one markdown row per run with every figure of
`canopy evaluate` and its 95% interval, the form of docs/benchmarks.md's tables.
Quality only: no timing is measured here (the runs may share a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def set_key(params: dict, dotted: str, value: str) -> None:
    *head, last = dotted.split(".")
    node = params
    for key in head:
        node = node.setdefault(key, {})
    node[last] = yaml.safe_load(value)


def parse_variant(text: str) -> tuple[str, list[tuple[str, str]]]:
    name, _, rest = text.partition("=")
    overrides = []
    for item in _top_level_items(rest):
        key, _, value = item.partition("=")
        overrides.append((key, value))
    return name, overrides


def _top_level_items(text: str) -> list[str]:
    """`text` split at the commas outside brackets, so that a value may be a YAML list:
    `diffusion.lognormal_mean=[-0.5,2.5],train.lr=0.002`."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if text:
        items.append(text[start:])
    return items


def run(cmd: list[str], log: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    with log.open("a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def write_params(base: dict, seed: int, folder: Path, tiles: Path, overrides, n: int,
                 full: bool, tag: str = "") -> Path:
    """folder/params{tag}.yaml: the run's params; a tag (a re-sampling of the run's model)
    keeps the models folder and names its own samples and metrics folders."""
    params = json.loads(json.dumps(base))
    params["seed"] = seed
    params["paths"] = {"tiles": str(tiles), "models": str(folder / "models"),
                       "samples": str(folder / f"samples{tag}"),
                       "metrics": str(folder / f"metrics{tag}")}
    params.setdefault("sample", {})["n"] = n
    params["sample"]["batch_size"] = 64
    params.setdefault("train", {})["sample_every"] = 100_000  # no preview grids
    if not full:
        params.setdefault("evaluate", {}).update({"fid": False, "c2st": False})
    for key, value in overrides:
        set_key(params, key, value)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"params{tag}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def resamplings(ema_stds: list[float], resample: list[str]) -> list[tuple[str, list]]:
    """(folder tag, sample overrides) of each sampling of a trained model: the run itself,
    then its re-samplings without retraining (--ema-std, --resample)."""
    found = [("", [])] + [(f"-ema{std:g}", [("sample.ema_std", str(std))]) for std in ema_stds]
    return found + [(f"-{name}", extra) for name, extra in map(parse_variant, resample)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--ema-std", type=float, nargs="*", default=[])
    ap.add_argument("--resample", action="append", default=[],
                    help="NAME=KEY=VALUE,...: also sample and score each trained model with "
                         "these sample settings (no retraining)")
    ap.add_argument("--full", action="store_true", help="also FID/KID and C2ST")
    ap.add_argument("--tiles", type=Path, help="a tiles folder made by `canopy etl` (e.g. real "
                    "imagery) to train and evaluate every seed on, instead of the demo's "
                    "synthetic tiles of each seed")
    args = ap.parse_args()
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    canopy = [sys.executable, "-m", "canopy.cli"]
    results = args.root / "results.jsonl"
    args.root.mkdir(parents=True, exist_ok=True)
    variants = [parse_variant(v) for v in (args.variant or ["demo"])]
    samplings = resamplings(args.ema_std, args.resample)
    for seed in args.seeds:
        tiles = args.tiles or args.root / f"tiles-s{seed}"
        if not (tiles / "manifest.json").exists():
            p = write_params(base, seed, args.root / f"etl-s{seed}", tiles, [], args.n, False)
            run(canopy + ["etl", "-q", "-p", str(p)], args.root / f"etl-s{seed}" / "log.txt")
        for name, overrides in variants:
            folder = args.root / f"{name}-s{seed}"
            log = folder / "log.txt"
            for tag, extra in samplings:
                p = write_params(base, seed, folder, tiles, overrides + extra, args.n,
                                 args.full, tag)
                metrics = folder / f"metrics{tag}" / "evaluate.json"
                if metrics.exists():
                    continue
                if not (folder / "models" / "ema.safetensors").exists() or not tag:
                    run(canopy + ["train", "-q", "-p", str(p)], log)
                run(canopy + ["sample", "-q", "-p", str(p)], log)
                run(canopy + ["evaluate", "-q", "-p", str(p)], log)
                m = json.loads(metrics.read_text())
                std = dict(extra).get("sample.ema_std")
                row = {"variant": name + tag, "seed": seed, "overrides": overrides + extra,
                       "ema_std": float(std) if std is not None else None,
                       "metrics": str(metrics.parent), **{k: m.get(k) for k in
                                          ("swd", "swd_floor", "fid", "fid_floor",
                                           "c2st_accuracy", "n_samples")}}
                with results.open("a") as out:
                    out.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    table(results)


def table(results: Path) -> None:
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    by: dict[str, list[dict]] = {}
    for row in rows:
        by.setdefault(row["variant"], []).append(row)
    print(f"{'variant':<28} {'seeds':<8} {'SWD per seed':<24} {'mean':>7} {'/floor':>7}")
    for name, group in by.items():
        swds = [r["swd"] for r in group]
        ratios = [r["swd"] / r["swd_floor"] for r in group]
        print(f"{name:<28} {','.join(str(r['seed']) for r in group):<8} "
              f"{' '.join(f'{s:.1f}' for s in swds):<24} {statistics.mean(swds):7.1f} "
              f"{statistics.mean(ratios):7.2f}")
    print()
    print("| run | seed | SWD [95%] (x floor) | per level | FID [95%] | KID | pixel C2ST | "
          "feature C2ST | precision | recall | tile_spread |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        folder = Path(row.get("metrics") or results.parent / f"{row['variant']}-s{row['seed']}"
                      / "metrics")
        if (folder / "evaluate.json").exists():
            print(markdown_row(row["variant"], row["seed"], folder))


def markdown_row(name: str, seed: int, metrics: Path) -> str:
    """One run's figures from `canopy evaluate`'s files in `metrics`, as a markdown table row;
    a figure the run did not compute (FID and C2ST without --full) is a dash."""
    m = json.loads((metrics / "evaluate.json").read_text())
    details = json.loads((metrics / "evaluate_details.json").read_text())
    levels = details.get("swd", {}).get("per_level_x1e3", {})

    def fig(key: str, digits: int, interval: bool = False) -> str:
        if m.get(key) is None:
            return "-"
        text = f"{m[key]:.{digits}f}"
        if interval and m.get(f"{key}_lo") is not None:
            text += f" [{m[f'{key}_lo']:.{digits}f}, {m[f'{key}_hi']:.{digits}f}]"
        return text

    swd = fig("swd", 1, interval=True) + f" ({m['swd_ratio']:.2f}x)"
    per_level = " / ".join(f"{levels[k]:.0f}" for k in sorted(levels, key=int))
    cells = [name, str(seed), swd, per_level or "-", fig("fid", 1, interval=True),
             fig("kid", 3), fig("c2st_accuracy", 2), fig("c2st_features_accuracy", 2),
             fig("precision", 3), fig("recall", 2), fig("tile_spread", 2)]
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
