"""bench/ablation.py: variants parsed from the command line, and the markdown rows it prints
from `canopy evaluate`'s files."""

from __future__ import annotations

import json
from pathlib import Path

from ablation import markdown_row, parse_variant, resamplings, table, write_params


def write_metrics(folder: Path, full: bool) -> Path:
    folder.mkdir(parents=True)
    m = {"swd": 67.1105, "swd_lo": 54.2807, "swd_hi": 85.6904, "swd_ratio": 2.82208,
         "precision": 0.162109, "recall": 0.0, "tile_spread": 0.959784,
         "c2st_accuracy": 0.813131}
    if full:
        m |= {"fid": 178.147, "fid_lo": 170.725, "fid_hi": 188.142, "kid": 0.193611,
              "c2st_features_accuracy": 1.0}
    (folder / "evaluate.json").write_text(json.dumps(m))
    levels = {"32": 53.0794, "16": 88.2578, "64": 59.9944}  # not in size order on purpose
    (folder / "evaluate_details.json").write_text(json.dumps({"swd": {"per_level_x1e3": levels}}))
    return folder


def test_markdown_row_has_every_figure_with_its_interval(tmp_path: Path) -> None:
    row = markdown_row("base", 1, write_metrics(tmp_path / "m", full=True))
    assert row == ("| base | 1 | 67.1 [54.3, 85.7] (2.82x) | 88 / 53 / 60 | 178.1 [170.7, 188.1] "
                   "| 0.194 | 0.81 | 1.00 | 0.162 | 0.00 | 0.96 |")


def test_markdown_row_marks_figures_a_run_did_not_compute(tmp_path: Path) -> None:
    cells = markdown_row("quick", 0, write_metrics(tmp_path / "m", full=False)).split(" | ")
    assert cells[4] == "-" and cells[5] == "-" and cells[7] == "-"  # FID, KID, feature C2ST


def test_table_finds_each_runs_metrics(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    write_metrics(tmp_path / "base-s1" / "metrics", full=True)  # a row from before "metrics"
    write_metrics(tmp_path / "elsewhere", full=False)
    rows = [{"variant": "base", "seed": 1, "swd": 67.1105, "swd_floor": 23.7805},
            {"variant": "lr3", "seed": 2, "swd": 60.0, "swd_floor": 24.0,
             "metrics": str(tmp_path / "elsewhere")}]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table(results)
    out = capsys.readouterr().out
    assert "| base | 1 | 67.1 [54.3, 85.7]" in out
    assert "| lr3 | 2 | 67.1 [54.3, 85.7] (2.82x) | 88 / 53 / 60 | - |" in out


def test_variant_values_may_be_yaml_lists() -> None:
    name, overrides = parse_variant("mix=diffusion.lognormal_mean=[-0.5,2.5],train.lr=0.002")
    assert name == "mix"
    assert overrides == [("diffusion.lognormal_mean", "[-0.5,2.5]"), ("train.lr", "0.002")]


def test_resamplings_reuse_the_model_in_their_own_folders(tmp_path: Path) -> None:
    found = resamplings([0.1], ["ag2=sample.autoguidance=2,sample.guide_at=0.5"])
    assert found == [("", []), ("-ema0.1", [("sample.ema_std", "0.1")]),
                     ("-ag2", [("sample.autoguidance", "2"), ("sample.guide_at", "0.5")])]
    tag, extra = found[2]
    path = write_params({"sample": {"n": 64}}, 1, tmp_path / "base-s1", tmp_path / "tiles",
                        [("train.lr", "0.003")] + extra, 512, True, tag)
    import yaml

    params = yaml.safe_load(path.read_text())
    assert path.name == "params-ag2.yaml"
    assert params["paths"]["models"] == str(tmp_path / "base-s1" / "models")  # no retraining
    assert params["paths"]["samples"] == str(tmp_path / "base-s1" / "samples-ag2")
    assert params["paths"]["metrics"] == str(tmp_path / "base-s1" / "metrics-ag2")
    assert params["sample"]["autoguidance"] == 2 and params["sample"]["guide_at"] == 0.5
    assert params["train"]["lr"] == 0.003 and params["sample"]["n"] == 512
