"""The judging page in a real browser: headless Chromium through its chromedriver (Selenium).

Skips where Chromium or its driver is not installed (.ci/run installs Debian's `chromium` and
`chromium-driver`). Set CANOPY_JUDGE_SCREENSHOT=docs/judge.png to keep the screenshot of the
page that README shows.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter

import pytest
from typer.testing import CliRunner

from canopy.cli import app
from tests.judge.conftest import running_server, write_workspace

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--window-size=900,780"]
ROUND = 6


def find(*names: str) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


@pytest.fixture
def browser():
    binary = find("chromium", "chromium-browser")
    driver_path = find("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("no Chromium and chromedriver here (Debian: apt-get install chromium "
                    "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(browser, condition, what: str, timeout: float = 20.0):
    return WebDriverWait(browser, timeout).until(lambda _: condition(), message=what)


def state(browser) -> str:
    return browser.find_element(By.TAG_NAME, "body").get_attribute("data-state")


def progress(browser) -> str:
    return browser.find_element(By.ID, "progress-text").text


def on_image(browser, number: int) -> None:
    wait_for(browser, lambda: state(browser) == "question"
             and progress(browser) == f"Image {number} of {ROUND}", f"image {number} on screen")


# Three answers by clicking, three by the keyboard shortcuts.
PLAN = [("click", "real"), ("click", "generated"), ("click", "real"),
        ("key", "r"), ("key", Keys.ARROW_RIGHT), ("key", "g")]
KEY_ANSWERS = {"r": "real", Keys.ARROW_LEFT: "real", "g": "generated",
               Keys.ARROW_RIGHT: "generated"}


@pytest.mark.slow
def test_a_whole_round_by_click_and_keyboard_then_the_report(tmp_path, browser):
    workspace = write_workspace(tmp_path / "w", tile=64)
    with running_server(workspace, round_size=ROUND) as server:
        browser.get(server.base + "/")
        given = []
        for number, (how, what) in enumerate(PLAN, start=1):
            on_image(browser, number)
            if number == 2:
                browser.save_screenshot(str(tmp_path / "question.png"))
            if how == "click":
                browser.find_element(By.ID, what).click()
                given.append(what)
            else:
                browser.find_element(By.TAG_NAME, "body").send_keys(what)
                given.append(KEY_ANSWERS[what])
        wait_for(browser, lambda: state(browser) == "result", "the round's score")

        rows = server.rows("answers")
        assert [row["answer"] for row in rows] == given  # every answer, in order, once
        right = sum(row["answer"] == row["truth"] for row in rows)
        assert browser.find_element(By.ID, "score").text == f"You got {right} of {ROUND} right"
        shown_wrong = [item.get_attribute("data-truth")
                       for item in browser.find_elements(By.CSS_SELECTOR, "#wrong li")]
        assert Counter(shown_wrong) == Counter(row["truth"] for row in rows
                                               if row["answer"] != row["truth"])
        assert all(row["response_ms"] >= 0 for row in rows)
        browser.save_screenshot(str(tmp_path / "result.png"))

        # The report counts exactly these answers.
        result = CliRunner().invoke(app, [
            "judge", "report", "--params", str(workspace / "params.yaml"),
            "--samples", str(workspace / "samples"), "--tiles", str(workspace / "tiles"),
            "--db", str(server.db.path), "--metrics", str(workspace)])
        assert result.exit_code == 0, result.output
        metrics = json.loads((workspace / "judge.json").read_text())
        assert (metrics["n_answers"], metrics["n_judges"]) == (ROUND, 1)
        assert metrics["accuracy"] == pytest.approx(right / ROUND, abs=1e-6)
        generated = [row for row in rows if row["truth"] == "generated"]
        assert len(generated) == ROUND // 2
        assert metrics["fooling_rate"] == pytest.approx(
            sum(row["answer"] == "real" for row in generated) / len(generated), abs=1e-6)

        # Enter starts the next round (exactly one: the focused button does not also fire).
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ENTER)
        on_image(browser, 1)
        assert len(server.rows("deals")) == 2 * ROUND

        # Phone-sized: nothing wider than the screen, both buttons in view.
        browser.set_window_size(390, 844)
        width = browser.execute_script("return window.innerWidth")
        assert browser.execute_script("return document.documentElement.scrollWidth") <= width
        image = browser.find_element(By.ID, "image").rect
        assert 250 <= image["width"] <= width
        for name in ("real", "generated"):
            button = browser.find_element(By.ID, name).rect
            assert button["x"] >= 0 and button["x"] + button["width"] <= width
        browser.find_element(By.ID, "generated").click()
        on_image(browser, 2)

    keep = os.environ.get("CANOPY_JUDGE_SCREENSHOT")
    if keep:
        shutil.copyfile(tmp_path / "question.png", keep)
