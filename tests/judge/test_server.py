"""A round over HTTP: deal, answer, score; and what happens when a run replaces the images."""

from __future__ import annotations

import json
import threading

import pytest

from tests.judge.conftest import running_server


def test_a_round_deals_answers_and_scores(server):
    judge = server.judge()
    round_ = judge.deal()
    assert len(round_["images"]) == 10
    given = {}
    for number, image in enumerate(round_["images"]):
        given[image] = "real" if number % 3 else "generated"
        assert judge.answer(image, given[image], ms=100 + number).status == 200
    result = judge.request("GET", f"/api/round/{round_['round']}").json()
    truths = {image: server.truth(image) for image in round_["images"]}
    assert result["total"] == 10
    assert result["right"] == sum(given[i] == truths[i] for i in given)
    assert [(i["id"], i["truth"], i["answer"]) for i in result["images"]] == [
        (image, truths[image], given[image]) for image in round_["images"]]
    rows = server.rows("answers")
    assert [row["response_ms"] for row in rows] == list(range(100, 110))


def test_a_judge_sees_new_images_first(server):
    judge = server.judge()
    first, second = judge.deal()["images"], judge.deal()["images"]
    deals = {row["id"]: (row["tile_key"], row["sample_index"]) for row in server.rows("deals")}
    # 12 val tiles and 10 samples, 5 of each a round: the second round repeats no tile.
    tiles = [deals[i][0] for i in first + second if deals[i][0] is not None]
    assert len(set(tiles)) == len(tiles) == 10


def test_many_judges_at_once(server):
    failures = []

    def one_round() -> None:
        judge = server.judge()
        for image in judge.deal()["images"]:
            status = judge.answer(image).status
            if status != 200:
                failures.append(status)

    threads = [threading.Thread(target=one_round) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(server.rows("answers")) == 60
    assert len({row["judge"] for row in server.rows("answers")}) == 6


def test_no_more_deals_once_a_run_replaced_the_samples(workspace):
    with running_server(workspace) as server:
        judge = server.judge()
        image = judge.deal()["images"][0]
        (workspace / "samples" / "manifest.json").write_text(json.dumps({"images": 99}))
        refused = judge.request("POST", "/api/round", {})
        assert refused.status == 409 and b"restart" in refused.body
        # What was dealt was encoded before: it is still answered as the old experiment's.
        assert judge.request("GET", f"/img/{image}").status == 200
        assert judge.answer(image).status == 200


def test_the_page_says_what_the_real_pictures_are(server):
    # The workspace's tiles manifest names no source: the page makes no claim it cannot back.
    page = server.client().open_page().body.decode()
    assert "either a real picture of a forest or one that a model made" in page
    assert "{{" not in page and "satellite" not in page


@pytest.mark.parametrize("manifest, expected", [
    ({"synthetic": True, "sources": [{"source": "synthetic"}]}, "synthetic demo scenes"),
    ({"sources": [{"source": "sentinelhub"}, {"source": "stac", "gsd": 10.0}]},
     "a real Sentinel-2 satellite image of a forest"),
    ({"sources": [{"source": "local", "gsd": 0.1}, {"source": "local", "gsd": None}]},
     "a real aerial photograph of a forest"),
    ({"sources": [{"source": "local", "gsd": 30.0}]}, "a real satellite image of a forest"),
    ({"sources": [{"source": "local"}]}, "a real picture of a forest"),
])
def test_the_real_pictures_are_named_from_the_tiles_manifest(manifest, expected):
    from canopy.judge.catalog import real_kind_of

    assert expected in real_kind_of(manifest)
