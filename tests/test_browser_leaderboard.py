"""A real browser (headless Chromium driven by Playwright) opens ``index.html`` from disk: sorting, a cell's
details, the verdict tables and the Pareto plot, no requests beyond the file itself, and an untrusted defense
name shown as text, never run.

Needs the Debian ``chromium`` package and ``pip install playwright`` (never ``playwright install``: the system
Chromium is used); skips with the reason when either is missing.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from leaderboard.build import write_leaderboard

from tests.results_rows import EVIL, known_rows, make_row, write_results

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
UNTRUSTED = "untrusted-defense"
ASR_COLUMN = 5  # preset, attack, defense, seeds, CA, ASR


def _chromium() -> str:
    for candidate in (os.environ.get("CLEANBENCH_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.path.exists(candidate):
            return candidate
    pytest.skip("no Chromium: apt-get install chromium (or set CLEANBENCH_CHROMIUM)")


@pytest.fixture(scope="module")
def page_url(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("site")
    # A name with markup is refused outright (benchmark.names; tests/test_leaderboard.py), so the markup comes in
    # through free text: the defense's config, shown in the cell's details.
    config = json.dumps({"x": "<img src=x onerror=alert(2)>", "y": EVIL})
    rows = known_rows() + [make_row("badnet", UNTRUSTED, 0, 0.70, 0.20, defense_config=config),
                           make_row("badnet", UNTRUSTED, 1, 0.68, 0.30)]
    rows += [make_row(attack, "wreck", seed, 0.10, None if attack == "none" else 0.0, n_classes=10)
             for attack in ("none", "badnet") for seed in (0, 1)]
    return write_leaderboard([write_results(folder / "results.csv", rows)], quiet=True).as_uri()


@pytest.fixture
def page(page_url):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright missing: pip install playwright")
    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.alerts, page.requests = [], []
        page.on("dialog", lambda dialog: (page.alerts.append(dialog.message), dialog.dismiss()))
        page.on("request", lambda request: page.requests.append(request.url))
        page.goto(page_url)
        yield page
        browser.close()


def _column(page, column: int) -> list[str]:
    return page.eval_on_selector_all(
        "#cells-table tbody tr", f"rows => rows.map(row => row.cells[{column}].getAttribute('data-sort') ?? "
                                 f"row.cells[{column}].textContent.trim())")


def test_clicking_a_header_sorts_the_rows(page):
    before = _column(page, ASR_COLUMN)
    header = page.locator("#cells-table thead th").nth(ASR_COLUMN)
    header.click()
    ascending = _column(page, ASR_COLUMN)
    numbers = [float(value) for value in ascending if value]
    assert ascending != before and numbers == sorted(numbers)
    assert all(not value for value in ascending[len(numbers):])  # cells without ASR go last
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    descending = [float(value) for value in _column(page, ASR_COLUMN) if value]
    assert descending == sorted(numbers, reverse=True) and header.get_attribute("aria-sort") == "descending"
    page.locator("#cells-table thead th").nth(2).click()  # defense: text
    defenses = _column(page, 2)
    assert defenses == sorted(defenses, key=lambda name: name)


def test_a_cells_details_show_configs_and_provenance(page):
    row = page.locator("#cells-table tbody tr", has_text="cleanclip").filter(has_text="badnet").first
    row.get_by_role("button", name="details").click()
    dialog = page.locator("dialog[open]")
    assert dialog.count() == 1 and dialog.is_visible()
    text = dialog.inner_text()
    assert "badnet × cleanclip" in text and "poison_rate" in text
    assert "git_commit" in text and "abc1234" in text and "cleanbench_version" in text
    assert "time_defense_s" in text and "results.csv:" in text
    dialog.get_by_role("button", name="close").click()
    assert page.locator("dialog[open]").count() == 0
    row.get_by_role("button", name="details").click()
    page.mouse.click(5, 5)  # on the backdrop
    assert page.locator("dialog[open]").count() == 0


def test_untrusted_text_is_text_and_the_page_fetches_nothing(page):
    assert page.locator("#cells-table td", has_text=UNTRUSTED).count() == 1
    page.locator("#cells-table tbody tr", has_text=UNTRUSTED).get_by_role("button", name="details").click()
    details = page.locator("dialog[open]").inner_text()
    assert "onerror=alert(2)" in details and "<script>alert(1)</script>" in details
    assert page.alerts == []
    assert all(url.startswith(("file:", "data:")) for url in page.requests), page.requests


def _texts(page, selector: str, column: int) -> list[str]:
    return page.eval_on_selector_all(selector, f"rows => rows.map(row => row.cells[{column}].textContent.trim())")


def test_the_verdict_tables_and_the_pareto_plot_render_and_sort(page):
    ranking = page.locator("#ranking-table tbody tr", has_text="wreck")
    assert "not ranked: CA cost" in ranking.inner_text() and ranking.locator("td").nth(1).inner_text() == "—"
    image = page.locator("#figure-pareto img")
    assert image.is_visible() and image.evaluate("img => img.complete && img.naturalWidth > 0")
    assert page.locator("#pareto-table tbody tr").count() >= 4
    assert page.locator("#cells-table .badge.chance").count() >= 1  # the wreck's cells: near chance
    rows = page.locator("#pairwise-table tbody tr")
    assert rows.count() > 0 and page.locator("#pairwise-table", has_text="paired_t").count() == 1
    header = page.locator("#pairwise-table thead th").nth(7)  # p
    header.click()
    values = [float(value) for value in _texts(page, "#pairwise-table tbody tr", 7) if value != "—"]
    assert values == sorted(values) and header.get_attribute("aria-sort") == "ascending"
    assert page.locator("#inseparable-table tbody tr").count() >= 1
