"""`canopy sample` as 2 torch.distributed ranks (gloo on 127.0.0.1) writes the very files of
one process: rank r draws images r, r + 2, ..., rank 0 writes the grid and the manifest."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from canopy.cli import app
from tests import distributed
from tests.sample.conftest import write_params


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))}


@pytest.mark.slow
def test_two_ranks_write_the_files_of_one_process(workspace):
    # 7 images in batches of 2: the ranks' batches (0, 2), (4, 6) and (1, 3), (5) are none
    # of one process's (0, 1), (2, 3), ...; each image is computed the same way whatever its
    # batch (model/sampling.py).
    write_params(workspace, n=7, batch_size=2, grid_images=4)
    params = str(workspace / "params.yaml")
    one = CliRunner().invoke(app, ["sample", "-q", "-p", params, "--samples",
                                   str(workspace / "one")])
    assert one.exit_code == 0, one.output
    cwd1 = workspace / "cwd1"
    cwd1.mkdir()
    done = distributed.run(["sample", "-q", "-p", params, "--samples", str(workspace / "two")], 2,
                           cwds=[workspace, cwd1])
    assert [r.code for r in done] == [0, 0], done[0].err
    assert done[0].out.startswith("sample: 7 images") and not done[1].out and not done[1].err
    one_files, two_files = _files(workspace / "one"), _files(workspace / "two")
    assert len([f for f in one_files if f[0].isdigit()]) == 7
    assert one_files == two_files  # every PNG, grid.png and manifest.json, byte for byte
    assert not list(cwd1.iterdir())
    leftovers = [p.name for p in workspace.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no staging folder, no lock
