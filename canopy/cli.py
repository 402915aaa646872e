"""The `canopy` command: one subcommand per pipeline stage, each owned by its stage package."""

from __future__ import annotations

import typer

from canopy.etl.cli import etl
from canopy.evaluate.cli import evaluate
from canopy.judge.cli import judge_app
from canopy.sample.cli import ema_app, sample
from canopy.train.cli import train

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


# Each stage package owns its command (options, help, what it prints); this module only
# gathers them under one root.
for command in (etl, train, sample, evaluate):
    app.command()(command)
# Not a stage: people judge the samples after a run (serve, then report).
app.add_typer(judge_app, name="judge")
# Not a stage: choose the post-hoc EMA std of `canopy sample` after training.
app.add_typer(ema_app, name="ema")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
