"""Sharing data and models through a DVC remote (docs/team.md):
push from a workspace, lose the cache and the outputs, pull them back byte for byte. Against a
folder remote, and against S3 through moto's stand-in server on 127.0.0.1 (nothing leaves
the machine).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.test_pipeline import make_project, run

# What `dvc push` sends: every cached output of the pipeline.
CACHED_OUTPUTS = ("data/tiles", "models/ema.safetensors", "data/samples")


def digests(root: Path, outputs: tuple[str, ...]) -> dict[str, str]:
    """{path relative to root: sha256} of every file of the outputs."""
    found = {}
    for output in outputs:
        path = root / output
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            found[file.relative_to(root).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


def lose_cache_and(root: Path, outputs: tuple[str, ...]) -> None:
    """A fresh clone's state: no DVC cache and none of the outputs."""
    shutil.rmtree(root / ".dvc" / "cache")
    for output in outputs:
        path = root / output
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


@pytest.mark.slow
def test_a_folder_remote_gives_back_tiles_weights_and_samples_but_not_the_state(tmp_path):
    root, env = make_project(tmp_path)
    run(["dvc", "repro"], root, env)
    before = digests(root, CACHED_OUTPUTS)
    assert any(name.startswith("data/tiles/train/") for name in before)
    assert (root / "models" / "state").is_dir()

    remote = tmp_path / "team" / "canopy-dvc"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], root, env)
    run(["dvc", "push"], root, env)
    lose_cache_and(root, (*CACHED_OUTPUTS, "models/state"))
    run(["dvc", "pull"], root, env)

    assert digests(root, CACHED_OUTPUTS) == before
    # models/state is `cache: false` in dvc.yaml: it never enters the cache, so it is not
    # pushed, and a pull does not bring it back. DVC counts that missing output as a change of
    # train, so only --allow-missing finds nothing to run (as README says).
    assert not (root / "models" / "state").exists()
    assert "Running stage 'train'" in run(["dvc", "repro", "--dry"], root, env)
    assert "Running stage" not in run(["dvc", "repro", "--allow-missing"], root, env)


@pytest.fixture
def s3_stand_in(tmp_path):
    """moto's S3 server on 127.0.0.1 at a free port, with bucket `canopy-test`; yields the
    endpoint URL and the environment that points the AWS clients at it with fake keys."""
    pytest.importorskip("dvc_s3", reason="the S3 remote needs dvc-s3 (pip install dvc-s3)")
    server_module = pytest.importorskip("moto.server", reason="needs moto[server]")
    boto3 = pytest.importorskip("boto3")

    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    empty = tmp_path / "aws-empty"
    empty.write_text("")
    aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           # never the user's real profile or keys
           "AWS_CONFIG_FILE": str(empty), "AWS_SHARED_CREDENTIALS_FILE": str(empty)}
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket="canopy-test")
        yield endpoint, aws, client
    finally:
        server.stop()


@pytest.mark.slow
def test_an_s3_remote_gives_back_the_tiles(tmp_path, s3_stand_in):
    endpoint, aws, client = s3_stand_in
    root, env = make_project(tmp_path)
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "AWS_PROFILE"):
        env.pop(proxy, None)
    env = {**env, **aws, "NO_PROXY": "127.0.0.1"}
    run(["dvc", "repro", "etl"], root, env)
    before = digests(root, ("data/tiles",))

    run(["dvc", "remote", "add", "-d", "storage", "s3://canopy-test/canopy"], root, env)
    run(["dvc", "remote", "modify", "storage", "endpointurl", endpoint], root, env)
    run(["dvc", "push"], root, env)
    stored = client.list_objects_v2(Bucket="canopy-test", Prefix="canopy/")
    assert stored["KeyCount"] > 0
    lose_cache_and(root, ("data/tiles",))
    run(["dvc", "pull", "etl"], root, env)

    assert digests(root, ("data/tiles",)) == before
