"""The `canopy` command: one subcommand per pipeline stage, each owned by its stage package.

A subcommand's module is imported only when that subcommand runs (or `--help` lists them), so
`canopy etl` loads no code of train, sample or evaluate: dvc.yaml can list as a stage's deps
exactly the code it runs, and a change to one stage does not re-run the others.
"""

from __future__ import annotations

import importlib

import typer
from typer.core import TyperGroup

# name -> (module, attribute): a command function, or a Typer app of several commands.
COMMANDS: dict[str, tuple[str, str]] = {
    "etl": ("canopy.etl.cli", "etl"),
    "train": ("canopy.train.cli", "train"),
    "sample": ("canopy.sample.cli", "sample"),
    "evaluate": ("canopy.evaluate.cli", "evaluate"),
    # Not stages: people judge the samples after a run (serve, then report); the post-hoc EMA
    # of `canopy sample` is chosen after training; the params reference and check.
    "judge": ("canopy.judge.cli", "judge_app"),
    "ema": ("canopy.sample.cli", "ema_app"),
    "params": ("canopy.paramsdoc", "params_app"),
}


class LazyCommands(TyperGroup):
    """A command group whose subcommands are imported on first use."""

    def list_commands(self, ctx) -> list[str]:  # noqa: ANN001 (click's Context)
        return list(COMMANDS)

    def get_command(self, ctx, name: str):  # noqa: ANN001, ANN201
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name]
        target = getattr(importlib.import_module(module), attribute)
        if isinstance(target, typer.Typer):
            command = typer.main.get_group(target)  # a group even with one subcommand
        else:
            single = typer.Typer(add_completion=False, rich_markup_mode=None)
            single.command(name)(target)
            command = typer.main.get_command(single)
        command.name = name
        return command


app = typer.Typer(
    name="canopy",
    cls=LazyCommands,
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
