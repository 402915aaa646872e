"""`canopy params`: the reference comes from the schemas, docs/params.md is its Markdown, and a
whole params file is checked at once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from canopy.paramsdoc import field_comments, markdown, reference
from canopy.train.params import TrainParams
from tests.conftest import REPO_ROOT


def test_docs_params_md_is_the_generated_reference():
    expected = markdown()
    assert (REPO_ROOT / "docs" / "params.md").read_text() == expected, (
        "docs/params.md is out of date: canopy params show --markdown > docs/params.md")


def test_every_key_says_what_it_does():
    undocumented = [doc.key for _, _, keys in reference() for doc in keys if not doc.meaning]
    assert not undocumented, f"give these keys a comment in their schema: {undocumented}"


def test_the_reference_names_every_key_of_the_demo_params():
    import yaml

    documented = {doc.key for _, _, keys in reference() for doc in keys}

    def dotted(value, prefix=""):
        if isinstance(value, dict):
            for key, inner in value.items():
                yield from dotted(inner, f"{prefix}{key}.")
        else:
            yield prefix.rstrip(".")

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert set(dotted(params)) <= documented


def test_a_fields_comment_is_the_one_beside_or_above_it():
    comments = field_comments(TrainParams)
    assert comments["lr"] == "AdamW learning rate after the warm-up"
    assert comments["lr_decay"].startswith("Decay of the lr to 0")  # the lines above
    assert "crop_sizes" in comments


def test_allowed_values_and_defaults_come_from_the_schema():
    keys = {doc.key: doc for _, _, docs in reference(("train", "sample")) for doc in docs}
    assert keys["train.augment"].allowed == "none | transpose | all"
    assert keys["train.batch_size"].allowed == "an integer, >= 1 and <= 4,096"
    assert keys["train.batch_size"].default == "16"
    assert keys["sample.ema_std"].default == "null"


def canopy(*args: str, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "canopy.cli", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_params_show_prints_one_section():
    result = canopy("params", "show", "evaluate")
    assert result.returncode == 0, result.stderr
    assert "evaluate.c2st_steps: 150" in result.stdout
    assert "\ntrain." not in result.stdout and "\nsample." not in result.stdout


@pytest.mark.parametrize("args, expected", [
    (["params", "show", "trian"], "no section trian"),
])
def test_params_show_refuses_an_unknown_section_in_one_line(args, expected):
    result = canopy(*args)
    assert result.returncode == 2 and expected in result.stderr
    assert "Traceback" not in result.stderr


def test_params_check_checks_every_section(tmp_path):
    good = canopy("params", "check", "-p", str(REPO_ROOT / "params.yaml"))
    assert good.returncode == 0 and "is valid" in good.stdout
    bad = tmp_path / "params.yaml"
    bad.write_text("sample:\n  stpes: 20\n")
    result = canopy("params", "check", "-p", str(bad))
    assert result.returncode == 2
    assert "sample.stpes: unknown key; did you mean 'steps'?" in result.stderr
