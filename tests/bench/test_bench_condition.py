"""bench/bench_condition.py in its --smoke mode: every stage runs, the report holds each
guidance's condition accuracy and the targets' verdicts."""

from __future__ import annotations

import json

import bench_condition
import pytest


def test_smoke_run_reports_accuracy_against_guidance(tmp_path):
    out = tmp_path / "syn"
    assert bench_condition.main(["--data", "synthetic", "--smoke", "--out", str(out),
                                 "--guidance", "0", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = {row["guidance"]: row for row in report["summary"]["rows"]}
    assert set(rows) == {0.0, 2.0}
    assert rows[0.0]["condition_accuracy"] is None  # guidance 0: unconditional samples
    assert 0 <= rows[2.0]["condition_accuracy"] <= 1 and rows[2.0]["floor"] > 0
    assert set(report["summary"]["targets_met"]) == {"synthetic_accuracy_at_least_0.9",
                                                     "guidance0_swd_within_10pct"}
    assert report["unconditioned"]["runs"]["unconditioned"]["metrics"]["swd"] > 0
    assert len(report["load_average"]["before"]) == 3
    manifest = json.loads((out / "conditioned" / "g2" / "samples" / "manifest.json").read_text())
    assert {r["condition"]["region"] for r in manifest["images"]} == {"broadleaf", "conifer",
                                                                      "open"}
    from canopy.train import live

    assert live.open_live.__name__ == "open_live"  # the benchmark leaves training as it was


@pytest.mark.slow
def test_smoke_run_on_neon_sites(tmp_path, shared_data):
    out = tmp_path / "neon"
    assert bench_condition.main(["--data", "neon", "--neon", str(shared_data / "NEON"), "--smoke",
                                 "--out", str(out), "--guidance", "2", "--no-unconditioned"]) == 0
    report = json.loads((out / "report.json").read_text())
    details = json.loads((out / "conditioned" / "g2" / "metrics" /
                          "evaluate_details.json").read_text())
    assert details["conditioned"]["regions"] == ["HARV", "OSBS", "TEAK", "YELL"]
    assert "neon_ratio_at_least_0.8" in report["summary"]["targets_met"]
