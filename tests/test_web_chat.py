"""The web chat page in a real browser (Debian's chromium, driven by playwright) against a real server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip("needs /usr/bin/chromium (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

from medtune.predict import Predictor  # noqa: E402
from medtune.serve import create_app  # noqa: E402
from medtune.serve.config import config_from_dict  # noqa: E402
from conftest import passages  # noqa: E402
from test_serve import start_server  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def server(tiny_llama, index_dir):  # noqa: F811
    config = config_from_dict({"models": {"med": {"model": "unused", "index": index_dir, "k": 2,
                                                  "generation": {"max_new_tokens": 16}}}, "api_key": "k"})
    base, stop = start_server(create_app(config, predictors={"med": Predictor.from_pretrained(tiny_llama)}))
    yield base
    stop()


def test_page_streams_an_answer_with_sources_and_notice(server, tmp_path):
    shots = Path(os.environ.get("MEDTUNE_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            failed = []
            page.on("requestfailed", lambda req: failed.append(req.url))
            page.goto(server)
            sync_api.expect(page.locator("#status")).to_contain_text("API key")  # /v1/models refused: no key yet
            page.get_by_label("API key").fill("k")
            page.get_by_label("API key").dispatch_event("change")
            sync_api.expect(page.get_by_label("Model")).to_have_value("med")

            page.get_by_label("Your question").fill("What causes gout?")
            page.get_by_role("button", name="Ask").click()
            turn = page.locator("article.turn").nth(0)
            sync_api.expect(turn).to_have_attribute("data-done", "true", timeout=60_000)
            assert turn.locator(".error").is_hidden()
            assert turn.locator(".question").inner_text() == "What causes gout?"
            assert turn.locator(".answer").inner_text().strip()
            assert turn.locator(".emergency").is_hidden()
            notice = turn.locator(".notice")
            assert notice.is_visible() and "not medical advice" in notice.inner_text()
            links = turn.locator(".sources a")
            assert links.count() >= 1 and links.first.inner_text() == "Gout"
            hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
            assert hrefs[0] == "https://www.niams.nih.gov/health-topics/gout"
            assert all(h.startswith("https://") for h in hrefs)
            # The random model's text is not supported by the sources: the page says so, in its own box.
            assert "do not clearly support" in turn.locator(".warning").first.inner_text()

            # A follow-up with an emergency: the advice is shown first, apart from the answer.
            page.get_by_label("Your question").fill("I have wheezing and chest tightness right now, is it asthma?")
            page.get_by_label("Your question").press("Enter")
            second = page.locator("article.turn").nth(1)
            sync_api.expect(second).to_have_attribute("data-done", "true", timeout=60_000)
            emergency = second.locator(".emergency")
            assert emergency.is_visible() and emergency.inner_text().startswith("If this is happening now")
            assert emergency.get_attribute("role") == "alert"
            assert emergency.evaluate("e => getComputedStyle(e).backgroundColor") != second.evaluate(
                "e => getComputedStyle(e).backgroundColor")
            assert second.locator(".sources a").first.get_attribute("href") == "https://www.nhlbi.nih.gov/health/asthma"
            assert not failed, f"requests failed: {failed}"

            shot = shots / "web_chat.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.is_file() and shot.stat().st_size > 10_000


@pytest.fixture(scope="module")
def hostile_index(tmp_path_factory):
    """The test index's passages, with the gout page's URL replaced by a script."""
    from dataclasses import replace

    from medtune.rag.index import build_index

    rows = [replace(p, url="javascript:alert(document.cookie)") if p.id == "gout-1" else p for p in passages()]
    return str(build_index(rows, tmp_path_factory.mktemp("hostile") / "idx", progress=False))


def test_page_links_only_web_urls(tiny_llama, hostile_index):
    config = config_from_dict({"models": {"med": {"model": "unused", "index": hostile_index, "k": 2,
                                                  "generation": {"max_new_tokens": 8}}}})
    base, stop = start_server(create_app(config, predictors={"med": Predictor.from_pretrained(tiny_llama)}))
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            try:
                page = browser.new_page()
                page.goto(base)
                page.get_by_label("Your question").fill("What causes gout?")
                page.get_by_role("button", name="Ask").click()
                turn = page.locator("article.turn").nth(0)
                sync_api.expect(turn).to_have_attribute("data-done", "true", timeout=60_000)
                items = turn.locator(".sources li")
                assert items.first.inner_text() == "Gout" and items.first.locator("a").count() == 0  # shown, not linked
                hrefs = [a.get_attribute("href") for a in turn.locator(".sources a").all()]
                assert all(h.startswith("https://") for h in hrefs)
            finally:
                browser.close()
    finally:
        stop()


def test_page_shows_server_errors(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page()
            page.goto(server)
            page.get_by_label("Your question").fill("What causes gout?")  # no API key: 401
            page.get_by_role("button", name="Ask").click()
            error = page.locator("article.turn .error")
            sync_api.expect(error).to_be_visible(timeout=30_000)
            assert "API key" in error.inner_text()
        finally:
            browser.close()
