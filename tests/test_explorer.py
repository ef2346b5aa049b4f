"""The explorer page in a real headless browser: Debian's chromium driven by Selenium through
Debian's chromium-driver (no browser download). The page is the offline demo's, so what it
shows is checked against the hits artifacts the workflow wrote."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from clipbench.arrow_io import read_table
from tests.test_workflow import DEMO_MODELS

pytestmark = pytest.mark.e2e
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def missing_browser() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (DRIVER, "chromium-driver")):
        if not Path(path).exists():
            return f"{path} missing: apt-get install {package} (.ci/run does, as root)"
    if shutil.which("chromium") is None:
        return "chromium is not on PATH"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium missing: pip install -r requirements-dev.txt"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def shown(driver, css: str, attribute: str) -> list[int]:
    return [int(e.get_attribute(attribute)) for e in driver.find_elements("css selector", css)]


def test_explorer_shows_exactly_the_hits_artifacts(demo, browser, tmp_path):
    from selenium.webdriver.common.by import By

    dataset = "demo-multi"  # several captions per image: image → text has several positives
    results = demo / "results" / dataset
    captions = read_table(results / "captions.arrow").to_pylist()
    t2i = {m: read_table(results / f"hits/{m}.arrow").to_pylist() for m in DEMO_MODELS}
    i2t = {m: read_table(results / f"hits/{m}.i2t.arrow").to_pylist() for m in DEMO_MODELS}
    browser.get((results / "explorer.html").as_uri())
    assert browser.get_log("browser") == []  # no script error

    # Typing filters the caption list to the captions holding every typed word, any case.
    word = captions[0]["text"].split()[1]
    browser.find_element(By.ID, "search").send_keys(word.upper())
    listed = shown(browser, "#caption-list li", "data-caption")
    assert listed == [i for i, c in enumerate(captions) if word in c["text"].lower().split()]
    assert all(
        word in e.text.lower() for e in browser.find_elements(By.CSS_SELECTOR, "#caption-list li")
    )

    # Choosing a caption shows each model's top-K exactly as the hits artifact holds it, the
    # true image marked, and its rank.
    row = listed[-1]
    browser.find_element(By.CSS_SELECTOR, f'#caption-list li[data-caption="{row}"]').click()
    true_image = captions[row]["image_id"]
    for model in DEMO_MODELS:
        box = f'#detail .model-result[data-model="{model}"]'
        hits = t2i[model][row]
        assert shown(browser, f"{box} .hit", "data-image") == hits["topk_image_ids"]
        assert shown(browser, f"{box} .rank", "data-rank") == [hits["rank"]]
        positives = shown(browser, f"{box} .hit.positive", "data-image")
        assert positives == ([true_image] if true_image in hits["topk_image_ids"] else [])
    browser.save_screenshot(str(tmp_path / "caption.png"))

    # Its image, clicked: image → text, with all its captions as positives.
    browser.find_element(By.CSS_SELECTOR, f'#detail > figure[data-image="{true_image}"]').click()
    own = {c["id"] for c in captions if c["image_id"] == true_image}
    for model in DEMO_MODELS:
        box = f'#detail .model-result[data-model="{model}"]'
        hits = i2t[model][true_image]
        assert shown(browser, f"{box} .hit", "data-text") == hits["topk_text_ids"]
        assert shown(browser, f"{box} .rank", "data-rank") == [hits["rank"]]
        assert set(shown(browser, f"{box} .hit.positive", "data-text")) == own & set(
            hits["topk_text_ids"]
        )

    # The hardest caption of the first model heads its table; clicking it shows it.
    browser.find_element(By.CSS_SELECTOR, 'nav button[data-tab="hardest"]').click()
    ranks = [r["rank"] for r in t2i[DEMO_MODELS[0]]]
    hardest = ranks.index(max(ranks))
    first = browser.find_element(By.CSS_SELECTOR, "#hardest table tr.pick")
    assert first.text.startswith(captions[hardest]["text"])
    first.click()
    assert browser.find_element(By.ID, "detail").get_attribute("data-query") == str(hardest)

    # The report links to it.
    page = (results / "report.html").read_text()
    assert 'id="explorer-link" href="explorer.html"' in page
