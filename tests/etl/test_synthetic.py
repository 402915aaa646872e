"""The offline demo source: deterministic, labelled synthetic, forest-like."""

from __future__ import annotations

import json
import tarfile

import numpy as np

from canopy.etl.pipeline import run_etl
from canopy.etl.sources.synthetic import render_forest
from tests.etl.rasters import make_params


def synthetic_params(seed=0, **etl):
    params = make_params(source="synthetic", tile_size=32, stride=32,
                         synthetic={"scenes": 2, "width": 96, "height": 64}, **etl)
    return params.model_copy(update={"seed": seed})


def test_render_is_deterministic_and_seeded():
    a = render_forest(np.random.default_rng([0, 0]), 64, 80)
    b = render_forest(np.random.default_rng([0, 0]), 64, 80)
    c = render_forest(np.random.default_rng([1, 0]), 64, 80)
    assert a.shape == (64, 80, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_render_looks_like_vegetation():
    image = render_forest(np.random.default_rng(0), 256, 256).astype(float)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    gli = (2 * g - r - b) / np.maximum(2 * g + r + b, 1)
    assert 0.3 < (gli > 0.02).mean() < 0.99  # mostly canopy, with clearings
    assert image.std() > 10  # texture, not a flat colour


def test_output_is_labelled_synthetic(tmp_path):
    result = run_etl(synthetic_params(min_vegetation_fraction=0), tmp_path / "out", progress=False)
    assert result.synthetic
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["synthetic"] is True
    assert all(s["source"] == "synthetic" for s in manifest["sources"])
    assert manifest["sources"][0]["files"] == ["synthetic:seed=0:scene=000"]
    shard = next((tmp_path / "out").rglob("*.tar"))
    with tarfile.open(shard) as tar:
        meta = json.loads(tar.extractfile(next(n for n in tar.getnames() if n.endswith(".json"))).read())
    assert meta["synthetic"] is True and meta["source"] == "synthetic"


def test_seed_changes_the_tiles(tmp_path):
    run_etl(synthetic_params(0, min_vegetation_fraction=0), tmp_path / "a", progress=False)
    run_etl(synthetic_params(0, min_vegetation_fraction=0), tmp_path / "b", progress=False)
    run_etl(synthetic_params(1, min_vegetation_fraction=0), tmp_path / "c", progress=False)

    def shards(root):
        return b"".join(p.read_bytes() for p in sorted(root.rglob("*.tar")))

    assert shards(tmp_path / "a") == shards(tmp_path / "b")
    assert shards(tmp_path / "a") != shards(tmp_path / "c")


def test_scratch_files_stay_in_the_staging_folder(tmp_path, monkeypatch):
    import tempfile

    from canopy.etl import pipeline

    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    seen = []
    real = pipeline.SOURCES["synthetic"]

    def recording(params, workdir, *, progress):
        seen.append(workdir)
        return real(params, workdir, progress=progress)

    monkeypatch.setitem(pipeline.SOURCES, "synthetic", recording)
    out = tmp_path / "out"
    run_etl(synthetic_params(min_vegetation_fraction=0), out, progress=False)
    # A killed run's scratch files go with its staging folder, which the next run removes.
    assert seen[0].parent.name.startswith(".out.staging-")
    assert list(system_tmp.iterdir()) == []
    assert not (out / ".work").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "out", "system-tmp"]


def test_the_default_kind_renders_the_demo_scene_as_before():
    from canopy.etl.sources.synthetic import KINDS

    rng_a, rng_b = np.random.default_rng([3, 1]), np.random.default_rng([3, 1])
    np.testing.assert_array_equal(render_forest(rng_a, 64, 64),
                                  render_forest(rng_b, 64, 64, KINDS["mixed"]))


def test_kinds_look_different_in_colour_and_cover():
    from canopy.etl.sources.synthetic import KINDS

    def rendered(kind):
        return render_forest(np.random.default_rng(5), 256, 256, KINDS[kind]).astype(float)

    broadleaf, conifer, open_ = rendered("broadleaf"), rendered("conifer"), rendered("open")
    assert conifer.mean() < broadleaf.mean() - 20  # dark crowns against bright ones
    assert broadleaf[..., 1].mean() > open_[..., 1].mean() - 20
    # open woodland: mostly the grassy ground, little variation from crown to crown
    assert open_.std(axis=(0, 1)).mean() < broadleaf.std(axis=(0, 1)).mean()


def test_each_scene_is_one_kind_and_its_tiles_carry_it_as_region(tmp_path):
    params = make_params(source="synthetic", tile_size=32, stride=32, min_vegetation_fraction=0,
                         synthetic={"scenes": 3, "width": 64, "height": 64,
                                    "kinds": ["conifer", "open"]})
    run_etl(params, tmp_path / "out", progress=False)
    regions = {}
    for shard in (tmp_path / "out").rglob("*.tar"):
        with tarfile.open(shard) as tar:
            for name in tar.getnames():
                if name.endswith(".json"):
                    meta = json.loads(tar.extractfile(name).read())
                    regions[meta["scene"]] = meta["region"]
    assert regions == {"synthetic-000": "conifer", "synthetic-001": "open",
                       "synthetic-002": "conifer"}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["kind"] for s in manifest["sources"]] == ["conifer", "open", "conifer"]
