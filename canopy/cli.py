"""The `canopy` command: one subcommand per pipeline stage, each owned by its stage package."""

from __future__ import annotations

import typer

from canopy.etl.cli import app as etl_app
from canopy.evaluate.cli import app as evaluate_app
from canopy.sample.cli import app as sample_app
from canopy.train.cli import app as train_app

app = typer.Typer(
    name="canopy",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain click help: paragraphs re-wrapped to the terminal
    pretty_exceptions_enable=False,
)


@app.callback()
def canopy() -> None:
    """Satellite forest imagery -> tiles -> diffusion model -> samples -> metrics.

    Each subcommand is one DVC stage (`dvc repro` runs them in order) and reads its settings
    from params.yaml; options override params for debugging.
    """


def add_stage(stage_app: typer.Typer, name: str) -> None:
    """Register a stage's Typer app as a plain subcommand (`canopy etl --params ...`)."""
    app.command(name=name)(stage_app.registered_callback.callback)


add_stage(etl_app, "etl")
add_stage(train_app, "train")
add_stage(sample_app, "sample")
add_stage(evaluate_app, "evaluate")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
