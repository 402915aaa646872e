"""`canopy judge serve` and `canopy judge report`: people's answers -> metrics/judge.json."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import typer

from canopy.errors import user_errors
from canopy.params import DEFAULT_PARAMS, load_params, with_overrides

# Judge reads only the top-level keys (seed, paths).
PARAMS_SECTIONS: tuple[str, ...] = ()

DEFAULT_DB = Path("judge/answers.sqlite")
METRICS_FILE = "judge.json"  # in paths.metrics, beside evaluate.json; declared in dvc.yaml

judge_app = typer.Typer(
    name="judge",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="People tell real tiles from generated ones: a web page, and metrics from the answers.",
)

PARAMS_OPTION = typer.Option(DEFAULT_PARAMS, "--params", "-p",
                             help="params.yaml to read (its paths, and its seed for the bootstrap).")
SAMPLES_OPTION = typer.Option(None, "--samples", "-s",
                              help="Override paths.samples: generated NNNNNN.png images "
                                   "(with manifest.json).")
TILES_OPTION = typer.Option(None, "--tiles", "-t",
                            help="Override paths.tiles: etl output folder; its val tiles are the "
                                 "real images.")
DB_OPTION = typer.Option(DEFAULT_DB, "--db",
                         help="SQLite answers database (git-ignored; never commit it).")


@judge_app.command("serve")
def serve(
    params: Path = PARAMS_OPTION,
    samples: Path = SAMPLES_OPTION,
    tiles: Path = TILES_OPTION,
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to listen on; anything but loopback requires the "
                                  "invite token printed at start."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="TCP port (0: any free one)."),
    db: Path = DB_OPTION,
    round_size: int = typer.Option(20, "--round-size", min=2, max=200,
                                   help="Images per round, half of them real (even)."),
) -> None:
    """Serve the judging page and store every answer in the database. Ctrl-C stops.

    Images are drawn from the val tiles and the samples in equal numbers, re-encoded the same
    way and served under random ids. Answers are tied to the sha256 of both manifests.
    """
    with user_errors("judge"):
        from canopy.errors import UserError
        from canopy.judge.catalog import load_catalog
        from canopy.judge.db import AnswersDB
        from canopy.judge.server import (
            LOOPBACK_NAMES,
            Settings,
            create_app,
            listen,
            uvicorn_server,
        )

        if round_size % 2:
            raise UserError(f"--round-size must be even (half real, half generated), "
                            f"got {round_size}")
        paths = _paths(params, samples, tiles, None)
        catalog = load_catalog(Path(paths.samples), Path(paths.tiles))
        answers = AnswersDB.checked(db, must_exist=False)
        listener = listen(host, port)  # before anything is written: a port in use stops here
        answers.initialise()
        invite = None if listener.loopback else secrets.token_urlsafe(16)
        # On loopback only this machine's names are served; elsewhere the invite is the gate.
        settings = Settings(round_size=round_size, invite=invite,
                            allowed_hosts=LOOPBACK_NAMES if invite is None else None)
        server = uvicorn_server(create_app(catalog, answers, settings))
        print(f"judge: {len(catalog.real)} val tiles and {len(catalog.generated)} samples of "
              f"{catalog.tile_size} px; answers go to {db}", flush=True)
        print(f"judge: open {_url(listener, invite)} (Ctrl-C stops)", flush=True)
        try:
            server.run(sockets=[listener.socket])
        except KeyboardInterrupt:
            pass  # uvicorn stops on Ctrl-C or SIGTERM, then raises it again: a normal end here
        stored = len(answers.answers(catalog.experiment))
        print(f"judge: stopped; {stored} answers for these samples in {db}", flush=True)


def _url(listener, invite: str | None) -> str:
    host = listener.host
    if invite is not None and host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()  # a name other machines can use, not the wildcard
    if ":" in host:
        host = f"[{host}]"
    query = f"?invite={invite}" if invite else ""
    return f"http://{host}:{listener.port}/{query}"


@judge_app.command("report")
def report(
    params: Path = PARAMS_OPTION,
    samples: Path = SAMPLES_OPTION,
    tiles: Path = TILES_OPTION,
    db: Path = DB_OPTION,
    metrics: Path = typer.Option(None, "--metrics", "-m",
                                 help="Override paths.metrics: the folder that receives judge.json "
                                      "(declared in dvc.yaml), judge_details.json and "
                                      "judge_fooled.png."),
    bootstrap: int = typer.Option(2000, "--bootstrap", min=100, max=100_000,
                                  help="Bootstrap resamples of the judges."),
    grid: int = typer.Option(16, "--grid", min=1, max=256,
                             help="Generated images in the grid of those judged real most."),
) -> None:
    """Write DVC metrics from the answers given to the current samples and tiles.

    Only answers whose samples and tiles manifests match the current folders count. Writes
    fooling_rate, real_judged_real, accuracy, hype_error_rate, their 95% bootstrap intervals
    over judges, n_answers and n_judges.
    """
    with user_errors("judge"):
        loaded = load_params(params, PARAMS_SECTIONS)
        paths = _paths(params, samples, tiles, metrics)
        from canopy.judge.report import run_report

        result = run_report(db, Path(paths.samples), Path(paths.tiles),
                            Path(paths.metrics) / METRICS_FILE, loaded.seed, bootstrap, grid)
        for note in result.notes:
            print(f"judge: note: {note}")
        m = result.metrics
        parts = [f"{name.replace('_', ' ')} {m[name]:.1%} [{m[name + '_ci_low']:.1%}, "
                 f"{m[name + '_ci_high']:.1%}]"
                 for name in ("fooling_rate", "real_judged_real", "hype_error_rate")
                 if name in m and name + "_ci_low" in m]
        if "accuracy" in m:
            parts.append(f"accuracy {m['accuracy']:.1%}")
        print(f"judge: {', '.join(parts)}; {m['n_answers']} answers from {m['n_judges']} "
              f"judge(s) -> {result.out}")


def _paths(params: Path, samples: Path | None, tiles: Path | None, metrics: Path | None):
    """params.yaml's `paths`, with the folders given on the command line instead."""
    given = {"samples": samples, "tiles": tiles, "metrics": metrics}
    return with_overrides(load_params(params, PARAMS_SECTIONS), "paths", {
        key: None if value is None else str(value) for key, value in given.items()}).paths
