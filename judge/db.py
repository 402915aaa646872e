"""The answers database: SQLite in WAL mode, one file, safe with many judges at once.

Two tables. `deals` holds every image dealt to a judge, under the opaque id the browser saw;
`answers` holds one row per answered deal, self-contained (the judge, the image's identity,
truth, answer, response time, time, and the sha256 of both manifests), so a report reads
answers alone. `answers.deal` is the primary key: an image is answered once, whatever the
number of servers or requests racing, because SQLite refuses the second row.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

from canopy.errors import UserError
from canopy.judge.catalog import TRUTHS, Experiment, Identity

FORMAT = "canopy.judge.answers/1"
_BUSY_TIMEOUT_S = 10.0

SCHEMA = f"""
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE deals (
    id TEXT PRIMARY KEY,              -- the opaque random id the browser sees
    judge TEXT NOT NULL,              -- the random id in the judge's cookie
    round TEXT NOT NULL,
    position INTEGER NOT NULL,        -- order within the round
    truth TEXT NOT NULL CHECK (truth IN {TRUTHS}),
    split TEXT,                       -- 'val' for a tile, NULL for a sample
    tile_key TEXT,
    sample_index INTEGER,
    samples_sha256 TEXT NOT NULL,
    tiles_sha256 TEXT NOT NULL,
    dealt_at TEXT NOT NULL            -- UTC, ISO 8601
);
CREATE INDEX deals_by_judge ON deals (judge, samples_sha256, tiles_sha256);
CREATE INDEX deals_by_round ON deals (round);
CREATE TABLE answers (
    deal TEXT PRIMARY KEY REFERENCES deals (id),
    judge TEXT NOT NULL,
    split TEXT,
    tile_key TEXT,
    sample_index INTEGER,
    truth TEXT NOT NULL CHECK (truth IN {TRUTHS}),
    answer TEXT NOT NULL CHECK (answer IN {TRUTHS}),
    response_ms INTEGER NOT NULL CHECK (response_ms >= 0),
    answered_at TEXT NOT NULL,        -- UTC, ISO 8601
    samples_sha256 TEXT NOT NULL,
    tiles_sha256 TEXT NOT NULL
);
CREATE INDEX answers_by_experiment ON answers (samples_sha256, tiles_sha256);
"""


class Outcome(Enum):
    STORED = "stored"
    UNKNOWN = "unknown"    # no such image dealt to this judge for this experiment
    REPLAYED = "replayed"  # already answered


@dataclass(frozen=True)
class Deal:
    id: str
    identity: Identity
    answer: str | None = None


@dataclass(frozen=True)
class Answer:
    judge: str
    identity: Identity
    answer: str
    response_ms: int


class AnswersDB:
    def __init__(self, path: Path):
        self.path = Path(path)

    # --- opening -------------------------------------------------------------------------

    @classmethod
    def checked(cls, path: Path, must_exist: bool) -> AnswersDB:
        """The database at `path` after a read-only check that it is one (it may be absent
        unless `must_exist`: `initialise` creates it)."""
        db = cls(path)
        if db.path.exists():
            db.check()
        elif must_exist:
            raise UserError(f"no answers database at {path}: collect answers with `canopy judge "
                            "serve` first, or pass --db PATH")
        return db

    def check(self) -> None:
        """Refuse a file that is not a Canopy answers database (read-only: writes nothing)."""
        if not self.path.is_file():
            raise UserError(f"{self.path} is not a file: pass --db with an answers database path")
        try:
            with self._read_only() as conn:
                tables = {row[0] for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
                if not tables:
                    return  # an empty SQLite file (or a zero-length one): initialised on serve
                version = None
                if "meta" in tables:
                    row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
                    version = row[0] if row else None
        except sqlite3.DatabaseError as err:
            raise UserError(f"{self.path} is not a Canopy answers database ({err}): pass --db "
                            "with another path, or move that file away") from None
        if version != FORMAT:
            found = f"format {version!r}" if version else "no Canopy format marker"
            raise UserError(f"{self.path} is not a Canopy answers database ({found}, expected "
                            f"{FORMAT!r}): pass --db with another path, or move that file away")

    def initialise(self) -> None:
        """Create the tables unless they are there (WAL mode, the format marker)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            # WAL: readers never block the writer, and writers queue on the busy timeout
            # instead of failing, so many judges can answer at once.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            exists = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone()
            if not exists:  # one transaction: a crash leaves no half-made schema
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
            conn.execute("COMMIT")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A connection per operation: cheap for SQLite, and safe from any thread.
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def _read_only(self) -> Iterator[sqlite3.Connection]:
        # Not SQLite's mode=ro: a read-only connection cannot remove the -wal and -shm files
        # it makes, so reading would leave files behind. query_only refuses every write.
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S)
        try:
            conn.execute("PRAGMA query_only = ON")
            yield conn
        finally:
            conn.close()

    # --- serving -------------------------------------------------------------------------

    def cookie_key(self) -> bytes:
        """The key that signs judge cookies, made on first use and kept in `meta`: cookies
        stay valid across restarts, and only this database's server could have issued one."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT value FROM meta WHERE key = 'cookie_key'").fetchone()
            if row is None:
                row = (secrets.token_hex(32),)
                conn.execute("INSERT INTO meta VALUES ('cookie_key', ?)", row)
            conn.execute("COMMIT")
        return bytes.fromhex(row[0])

    def deal(self, judge: str, round_id: str, dealt: Sequence[tuple[str, Identity]],
             experiment: Experiment, max_open_rounds: int | None = None) -> None:
        """Store a dealt round. With `max_open_rounds`, the judge keeps at most that many
        rounds with unanswered images: the unanswered images of the oldest go."""
        now = _now()
        rows = [(image_id, judge, round_id, position, ident.truth, ident.split, ident.tile_key,
                 ident.sample_index, experiment.samples_sha256, experiment.tiles_sha256, now)
                for position, (image_id, ident) in enumerate(dealt)]
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            if max_open_rounds is not None:
                self._close_oldest_rounds(conn, judge, experiment, max_open_rounds - 1)
            conn.executemany("INSERT INTO deals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")

    @staticmethod
    def _close_oldest_rounds(conn: sqlite3.Connection, judge: str, experiment: Experiment,
                             keep: int) -> None:
        open_rounds = [row[0] for row in conn.execute(
            "SELECT d.round FROM deals d LEFT JOIN answers a ON a.deal = d.id WHERE d.judge = ? "
            "AND d.samples_sha256 = ? AND d.tiles_sha256 = ? AND a.deal IS NULL "
            "GROUP BY d.round ORDER BY MIN(d.rowid)",
            (judge, experiment.samples_sha256, experiment.tiles_sha256))]
        for stale in open_rounds[:max(0, len(open_rounds) - keep)]:
            conn.execute("DELETE FROM deals WHERE round = ? AND judge = ? AND id NOT IN "
                         "(SELECT deal FROM answers)", (stale, judge))

    def seen(self, judge: str, experiment: Experiment) -> set[Identity]:
        """Every image already dealt to this judge for this experiment."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT truth, split, tile_key, sample_index FROM deals "
                "WHERE judge = ? AND samples_sha256 = ? AND tiles_sha256 = ?",
                (judge, experiment.samples_sha256, experiment.tiles_sha256)).fetchall()
        return {Identity(*row) for row in rows}

    def dealt_image(self, image_id: str, judge: str, experiment: Experiment) -> Identity | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT truth, split, tile_key, sample_index FROM deals WHERE id = ? AND "
                "judge = ? AND samples_sha256 = ? AND tiles_sha256 = ?",
                (image_id, judge, experiment.samples_sha256, experiment.tiles_sha256)).fetchone()
        return Identity(*row) if row else None

    def answer(self, image_id: str, judge: str, answer: str, response_ms: int,
               experiment: Experiment) -> Outcome:
        """Store an answer for an image dealt to `judge`, once."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = conn.execute(
                    "INSERT INTO answers SELECT id, judge, split, tile_key, sample_index, truth, "
                    "?, ?, ?, samples_sha256, tiles_sha256 FROM deals WHERE id = ? AND judge = ? "
                    "AND samples_sha256 = ? AND tiles_sha256 = ?",
                    (answer, response_ms, _now(), image_id, judge, experiment.samples_sha256,
                     experiment.tiles_sha256))
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK")
                return Outcome.REPLAYED
            conn.execute("COMMIT")
        return Outcome.STORED if cursor.rowcount == 1 else Outcome.UNKNOWN

    def round(self, round_id: str, judge: str, experiment: Experiment) -> list[Deal]:
        """The round's images in dealing order, with their answers so far ([] if not theirs)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT d.id, d.truth, d.split, d.tile_key, d.sample_index, a.answer "
                "FROM deals d LEFT JOIN answers a ON a.deal = d.id WHERE d.round = ? AND "
                "d.judge = ? AND d.samples_sha256 = ? AND d.tiles_sha256 = ? ORDER BY d.position",
                (round_id, judge, experiment.samples_sha256, experiment.tiles_sha256)).fetchall()
        return [Deal(row[0], Identity(*row[1:5]), row[5]) for row in rows]

    # --- reporting -----------------------------------------------------------------------

    def answers(self, experiment: Experiment) -> list[Answer]:
        """Every answer given for this experiment, in the order they were stored."""
        with self._read_only() as conn:
            rows = conn.execute(
                "SELECT judge, truth, split, tile_key, sample_index, answer, response_ms "
                "FROM answers WHERE samples_sha256 = ? AND tiles_sha256 = ? ORDER BY rowid",
                (experiment.samples_sha256, experiment.tiles_sha256)).fetchall()
        return [Answer(row[0], Identity(*row[1:5]), row[5], row[6]) for row in rows]

    def experiments(self) -> list[Experiment]:
        """Every experiment with answers, in the order of its first answer."""
        with self._read_only() as conn:
            rows = conn.execute(
                "SELECT samples_sha256, tiles_sha256 FROM answers "
                "GROUP BY samples_sha256, tiles_sha256 ORDER BY MIN(rowid)").fetchall()
        return [Experiment(*row) for row in rows]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
