"""The etl sources behind one interface: each turns the params into the scenes to tile.

A source is a function `scenes(params, workdir, *, progress) -> list[SceneSpec]`: `workdir` is
a temporary folder that lasts as long as the run (synthetic scenes are rendered there) and
`progress` says whether a long download may draw a progress bar. docs/data.md describes the
sources and their params.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from canopy.etl.scene import SceneSpec
from canopy.etl.sources import local, sentinelhub, synthetic
from canopy.params import CanopyParams


class SceneSource(Protocol):
    def __call__(self, params: CanopyParams, workdir: Path, *, progress: bool) -> list[SceneSpec]: ...


# Keys are the values of etl.source.
SOURCES: dict[str, SceneSource] = {
    "local": local.scenes,
    "sentinelhub": sentinelhub.scenes,
    "synthetic": synthetic.scenes,
}
