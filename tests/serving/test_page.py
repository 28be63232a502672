"""The search page in a real browser: headless Chromium (Debian's package) types a query, the results the library's
search returns appear in its order with their thumbnails, and clicking one searches for images like it. A screenshot
is kept in test-artifacts/ (or $CLIPFORGE_TEST_ARTIFACTS)."""
import os
import shutil
from pathlib import Path

import httpx
import pytest

from clipforge.search import Index, IndexConfig, build_index
from clipforge.serving import ServeConfig, create_app

from serving_helpers import running, write_shapes

ARTIFACTS = Path(os.environ.get("CLIPFORGE_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "the page test needs Chromium: apt-get install chromium (scripts/test.sh does it when run as root)"
    return path


@pytest.fixture(scope="module")
def collection_index(tiny_spec, tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    write_shapes(root, 30, 96, seed=1, ext="png")
    build_index(str(root), root.parent / "page-index", IndexConfig(model=tiny_spec, show_progress=False, workers=0))
    return root.parent / "page-index"


@pytest.mark.timeout(300)
def test_the_page_shows_the_library_results_and_searches_by_example(tiny_spec, collection_index):
    from playwright.sync_api import sync_playwright

    query, k = "a red circle", 8
    with Index(collection_index) as index:
        expected = [hit.key for hit in index.search_text(query, k=k)]
    config = ServeConfig(model=tiny_spec, device="cpu", index=str(collection_index))
    with running(create_app(config)) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.fill("#k", str(k))
            page.fill("#q", query)
            page.press("#q", "Enter")
            page.wait_for_function(f"document.querySelectorAll('.hit').length === {k}", timeout=30_000)
            page.wait_for_function("[...document.querySelectorAll('.hit img')].every(i => i.complete && "
                                   "i.naturalWidth > 0)", timeout=30_000)
            shown = page.eval_on_selector_all(".hit", "cards => cards.map(c => c.dataset.key)")
            assert shown == expected
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "search-page.png"), full_page=True)
            assert (ARTIFACTS / "search-page.png").stat().st_size > 5000

            clicked = shown[3]
            page.click(".hit:nth-child(4) img")
            page.wait_for_function("document.getElementById('status').textContent.includes('images like')",
                                   timeout=30_000)
            shown_like = page.eval_on_selector_all(".hit", "cards => cards.map(c => c.dataset.key)")
            rows = {r["key"]: r["row"] for r in httpx.post(url + "/v1/search", json={"query": query, "k": k}).json()[
                "results"]}
            like = httpx.post(url + "/v1/search", json={"like": rows[clicked], "k": k}).json()["results"]
            assert shown_like == [r["key"] for r in like]
            # an image is its own nearest neighbour (up to ties: the stored vectors are float16)
            assert clicked in [r["key"] for r in like if r["score"] >= like[0]["score"] - 1e-3]
            assert not errors, errors
        finally:
            browser.close()
