"""`canopy judge report`: the statistics, the experiment filter, and the files it writes."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from canopy.cli import app
from canopy.imaging import contact_sheet
from canopy.judge.catalog import Experiment, Identity, load_catalog
from canopy.judge.db import AnswersDB
from canopy.judge.report import bootstrap_intervals, judge_counts
from canopy.seeding import Stream, numpy_rng
from tests.judge.test_cli import report_args

R, G = "real", "generated"
# Two judges, 16 answers: generated judged real 3 of 8, real judged real 7 of 8.
JUDGE_A = [(Identity.sample(0), R), (Identity.sample(1), R), (Identity.sample(2), G),
           (Identity.sample(3), G), (Identity.tile("test_val_0000"), R),
           (Identity.tile("test_val_0001"), R), (Identity.tile("test_val_0002"), R),
           (Identity.tile("test_val_0003"), G)]
JUDGE_B = [(Identity.sample(0), R), (Identity.sample(4), G), (Identity.sample(5), G),
           (Identity.sample(6), G), (Identity.tile("test_val_0004"), R),
           (Identity.tile("test_val_0005"), R), (Identity.tile("test_val_0006"), R),
           (Identity.tile("test_val_0007"), R)]


def record(db: AnswersDB, experiment: Experiment, judge: str, answers) -> None:
    dealt = [(f"{judge}-{i}", identity) for i, (identity, _) in enumerate(answers)]
    db.deal(judge, f"{judge}-round", dealt, experiment)
    for (image_id, _), (_, answer) in zip(dealt, answers):
        db.answer(image_id, judge, answer, 700, experiment)


@pytest.fixture
def answered(workspace):
    db = AnswersDB.checked(workspace / "db" / "answers.sqlite", must_exist=False)
    db.initialise()
    experiment = load_catalog(workspace / "samples", workspace / "tiles").experiment
    record(db, experiment, "judge-a-cookie-secret1", JUDGE_A)
    record(db, experiment, "judge-b-cookie-secret2", JUDGE_B)
    # Another run's answers in the same database: never counted with these.
    other = Experiment("0" * 64, experiment.tiles_sha256)
    record(db, other, "judge-c-cookie-secret3", [(Identity.sample(0), G)] * 1)
    return workspace


def run(workspace, *extra):
    result = CliRunner().invoke(app, ["judge", *report_args(workspace, *extra)])
    assert result.exit_code == 0, result.output
    return result


def read(workspace, name):
    return json.loads((workspace / "metrics" / name).read_text())


def test_metrics_count_exactly_this_experiments_answers(answered):
    result = run(answered)
    metrics = read(answered, "judge.json")
    assert metrics["n_answers"] == 16 and metrics["n_judges"] == 2
    assert (metrics["n_generated_answers"], metrics["n_real_answers"]) == (8, 8)
    assert metrics["fooling_rate"] == 0.375
    assert metrics["real_judged_real"] == 0.875
    assert metrics["accuracy"] == 0.75
    assert metrics["hype_error_rate"] == 0.25  # (0.375 + 0.125) / 2
    for name in ("fooling_rate", "real_judged_real", "hype_error_rate"):
        assert metrics[f"{name}_ci_low"] <= metrics[name] <= metrics[f"{name}_ci_high"]
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())
    assert "fooling rate 37.5%" in result.stdout and "16 answers from 2 judge(s)" in result.stdout


def test_details_rank_the_most_fooling_images_and_grid_them(answered):
    run(answered)
    details = read(answered, "judge_details.json")
    fooled = details["most_fooling_generated"]
    assert [(row["sample"], row["shown"], row["judged_real"]) for row in fooled] == [
        ("000000.png", 2, 2), ("000001.png", 1, 1)]
    assert [row["key"] for row in details["real_most_often_called_generated"]] == ["test_val_0003"]
    assert details["experiment"]["other_experiments_in_db"] == 1
    assert details["most_fooling_grid"]["images"] == ["000000.png", "000001.png"]
    samples = [np.asarray(Image.open(answered / "samples" / name).convert("RGB"))
               for name in ("000000.png", "000001.png")]
    grid = np.asarray(Image.open(answered / "metrics" / "judge_fooled.png"))
    assert np.array_equal(grid, contact_sheet(samples))
    text = (answered / "metrics" / "judge_details.json").read_text()
    assert "cookie-secret" not in text  # judges appear by number only


def test_the_same_answers_and_seed_give_the_same_bytes(answered):
    run(answered)
    first = (answered / "metrics" / "judge.json").read_bytes()
    run(answered)
    assert (answered / "metrics" / "judge.json").read_bytes() == first


def test_bootstrap_intervals_are_over_judges():
    def counts(rows):
        return np.array(rows, dtype=np.int64)

    rng = lambda: numpy_rng(0, Stream.JUDGE_BOOTSTRAP)  # noqa: E731
    # A single judge, or judges who all answer alike: nothing to resample, the interval is
    # the point itself whatever the number of answers.
    single = bootstrap_intervals(counts([[10, 4, 10, 9]]), 500, rng())
    assert single["fooling_rate"] == pytest.approx((0.4, 0.4))
    alike = bootstrap_intervals(counts([[10, 4, 10, 9]] * 5), 500, rng())
    assert alike["real_judged_real"] == pytest.approx((0.9, 0.9))
    # Judges who disagree (half always fooled, half never): a wide interval around 0.5.
    split = bootstrap_intervals(counts([[10, 10, 10, 10]] * 6 + [[10, 0, 10, 10]] * 6), 2000,
                                rng())
    low, high = split["fooling_rate"]
    assert low < 0.3 and high > 0.7
    assert bootstrap_intervals(counts([[10, 10, 10, 10]] * 6 + [[10, 0, 10, 10]] * 6), 2000,
                               rng()) == split  # seeded


def test_judges_are_counted_in_order_of_first_answer():
    from canopy.judge.db import Answer

    answers = [Answer("b", Identity.sample(0), R, 1), Answer("a", Identity.tile("k"), G, 1),
               Answer("b", Identity.tile("k"), R, 1)]
    judges, counts = judge_counts(answers)
    assert judges == ["b", "a"]
    assert counts.tolist() == [[1, 1, 1, 1], [0, 0, 1, 0]]


def test_no_grid_until_a_generated_image_fools_someone(workspace):
    db = AnswersDB.checked(workspace / "db" / "answers.sqlite", must_exist=False)
    db.initialise()
    experiment = load_catalog(workspace / "samples", workspace / "tiles").experiment
    record(db, experiment, "j", [(Identity.sample(0), G), (Identity.tile("test_val_0000"), R)])
    result = run(workspace)
    assert not (workspace / "metrics" / "judge_fooled.png").exists()
    assert read(workspace, "judge.json")["fooling_rate"] == 0.0
    assert "no generated image was judged real" in result.stdout


def test_a_class_without_answers_leaves_its_rates_out(workspace):
    db = AnswersDB.checked(workspace / "db" / "answers.sqlite", must_exist=False)
    db.initialise()
    experiment = load_catalog(workspace / "samples", workspace / "tiles").experiment
    record(db, experiment, "j", [(Identity.tile("test_val_0000"), R)])
    run(workspace)
    metrics = read(workspace, "judge.json")
    assert metrics["real_judged_real"] == 1.0 and "fooling_rate" not in metrics
    assert "hype_error_rate" not in metrics and metrics["n_answers"] == 1


def test_grid_png_is_a_png(answered):
    run(answered, "--grid", "1")
    with Image.open(io.BytesIO((answered / "metrics" / "judge_fooled.png").read_bytes())) as im:
        assert im.size == (32 + 4, 32 + 4)  # one tile and its 2 px border
