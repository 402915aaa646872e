"""The answers database: its schema, WAL mode, refusal of other files, many writers at once."""

from __future__ import annotations

import contextlib
import sqlite3
import threading

import pytest

from canopy.errors import UserError
from canopy.judge.catalog import Experiment, Identity
from canopy.judge.db import FORMAT, AnswersDB, Outcome

EXPERIMENT = Experiment("a" * 64, "b" * 64)


def fresh(tmp_path) -> AnswersDB:
    db = AnswersDB.checked(tmp_path / "judge" / "answers.sqlite", must_exist=False)
    db.initialise()
    return db


def test_created_in_wal_mode_with_its_format_marker(tmp_path):
    db = fresh(tmp_path)
    with contextlib.closing(sqlite3.connect(db.path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() == (FORMAT,)
    db.initialise()  # again: nothing changes, nothing fails
    AnswersDB.checked(db.path, must_exist=True)


def test_an_answer_row_holds_everything_about_it(tmp_path):
    db = fresh(tmp_path)
    db.deal("judge1", "round1", [("img1", Identity.tile("scene_0_64")),
                                 ("img2", Identity.sample(7))], EXPERIMENT)
    assert db.answer("img2", "judge1", "real", 812, EXPERIMENT) is Outcome.STORED
    with contextlib.closing(sqlite3.connect(db.path)) as conn:
        conn.row_factory = sqlite3.Row
        (row,) = conn.execute("SELECT * FROM answers").fetchall()
    assert dict(row) | {"answered_at": None} == {
        "deal": "img2", "judge": "judge1", "split": None, "tile_key": None, "sample_index": 7,
        "truth": "generated", "answer": "real", "response_ms": 812, "answered_at": None,
        "samples_sha256": "a" * 64, "tiles_sha256": "b" * 64}
    assert row["answered_at"].endswith("+00:00")


def test_answers_are_tied_to_their_experiment(tmp_path):
    db = fresh(tmp_path)
    other = Experiment("c" * 64, "b" * 64)
    db.deal("judge1", "round1", [("img1", Identity.sample(0))], EXPERIMENT)
    assert db.answer("img1", "judge1", "real", 5, other) is Outcome.UNKNOWN
    assert db.answer("img1", "judge1", "real", 5, EXPERIMENT) is Outcome.STORED
    assert db.answers(other) == [] and len(db.answers(EXPERIMENT)) == 1
    assert db.experiments() == [EXPERIMENT]


@pytest.mark.parametrize("content", [b"not a database at all, just text\n" * 40,
                                     b"SQLite format 3\x00" + b"\x00" * 200])
def test_a_file_that_is_no_database_is_refused_and_left_alone(tmp_path, content):
    path = tmp_path / "answers.sqlite"
    path.write_bytes(content)
    with pytest.raises(UserError, match="is not a Canopy answers database"):
        AnswersDB.checked(path, must_exist=False)
    assert path.read_bytes() == content


def test_another_sqlite_database_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "other.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
        conn.commit()
    before = path.read_bytes()
    with pytest.raises(UserError, match="no Canopy format marker"):
        AnswersDB.checked(path, must_exist=False)
    assert path.read_bytes() == before


def test_many_judges_answering_at_once_lose_nothing(tmp_path):
    db = fresh(tmp_path)
    judges, per_judge = 8, 25
    for j in range(judges):
        db.deal(f"judge{j}", f"round{j}", [(f"img{j}-{i}", Identity.sample(i))
                                           for i in range(per_judge)], EXPERIMENT)
    outcomes = []

    def answer_all(j: int) -> None:
        for i in range(per_judge):
            outcomes.append(db.answer(f"img{j}-{i}", f"judge{j}", "real", i, EXPERIMENT))

    threads = [threading.Thread(target=answer_all, args=(j,)) for j in range(judges)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == [Outcome.STORED] * (judges * per_judge)
    assert len(db.answers(EXPERIMENT)) == judges * per_judge
