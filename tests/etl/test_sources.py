"""Every etl source sits behind one interface: SOURCES[etl.source](params, workdir, progress=...)."""

from __future__ import annotations

import inspect
from typing import get_args

from canopy.etl.params import EtlParams
from canopy.etl.scene import SceneSpec
from canopy.etl.sources import SOURCES, sentinelhub
from tests.etl.rasters import forest_rgb, make_params, write_raster


def test_registry_covers_every_etl_source_value():
    assert sorted(SOURCES) == sorted(get_args(EtlParams.model_fields["source"].annotation))


def test_sources_share_one_signature():
    def shape(scenes):
        signature = inspect.signature(scenes)
        return [(p.name, p.kind) for p in signature.parameters.values()], signature.return_annotation

    positional, keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
    expected = ([("params", positional), ("workdir", positional), ("progress", keyword)], "list[SceneSpec]")
    assert all(shape(scenes) == expected for scenes in SOURCES.values())


def test_local_and_synthetic_return_scene_specs(tmp_path):
    path = write_raster(tmp_path / "f.tif", forest_rgb(32, 32))
    local = SOURCES["local"](make_params(source="local", local={"paths": [str(path)]}), tmp_path,
                             progress=False)
    synthetic = SOURCES["synthetic"](make_params(synthetic={"scenes": 1, "width": 32, "height": 32}),
                                     tmp_path, progress=False)
    for scenes, source in ((local, "local"), (synthetic, "synthetic")):
        assert [type(scene) for scene in scenes] == [SceneSpec]
        assert scenes[0].source == source


def test_sentinelhub_scene_range_is_in_the_cached_files_units(tmp_path):
    fetched = sentinelhub.FetchedScene("Berlin-000", tmp_path / "a.tif", "Berlin", "2023-06-01/2023-06-30")
    scene = sentinelhub.scene_spec(fetched, (0.0, 0.3))
    assert scene.scene_id == "berlin-000" and scene.source == "sentinelhub"
    assert scene.reflectance_range == (0.0, 0.3 * sentinelhub.REFLECTANCE_SCALE)
    assert f"* {sentinelhub.REFLECTANCE_SCALE}," in sentinelhub.EVALSCRIPT
    assert scene.vegetation_method == "scl" and scene.extra == {"aoi": "Berlin"}
