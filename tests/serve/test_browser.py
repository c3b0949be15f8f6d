"""The dashboard in a real browser: Playwright driving Debian's chromium
(scripts/chromium) against a real `quota serve`, over data a short demo run made.
Screenshots go to the test's folder, and to docs/ with QUOTA_SCREENSHOTS=docs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import Engine

from quota import Settings
from tests.serve.conftest import BEARER, TOKENS, Served, quota_serve

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = os.environ.get("QUOTA_TEST_CHROMIUM") or shutil.which("chromium")
    assert path, (
        "no chromium: run ./scripts/chromium (./scripts/test does) or set QUOTA_TEST_CHROMIUM"
    )
    with sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
        b = pw.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def site(served: Settings, pg: Engine) -> Iterator[Served]:
    """A short demo run's ports, one more port over its soft cap, and the server; the
    demo's keys (~30,000 settled reservations) deleted after, by `quota_serve`."""
    env = {
        **os.environ,
        "QUOTA_KEY_PREFIX": served.key_prefix,
        "QUOTA_DATABASE_URL": served.database_url,
        "QUOTA_REDIS_URL": served.redis_url,
    }
    demo = [sys.executable, "-m", "quota", "demo", "--seconds", "4", "--processes", "2",
            "--ports", "6"]  # fmt: skip
    subprocess.run(demo, env=env, check=True, capture_output=True, timeout=120)
    with quota_serve(served) as server:
        admin = BEARER["ops"]
        caps = {"enabled": True, "soft_cap_tokens": 100, "hard_cap_tokens": 1000}
        put = httpx.put(f"{server.url}/v1/ports/warm-port/budget", headers=admin, json=caps)
        assert put.status_code == 200, put.text
        rec = httpx.post(f"{server.url}/v1/ports/warm-port/usage", headers=admin,
                         json={"feature": "chat", "provider": "openai", "model": "gpt-4o",
                               "input_tokens": 350, "output_tokens": 50})  # fmt: skip
        assert rec.status_code == 200, rec.text
        yield server


def shot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    if os.environ.get("QUOTA_SCREENSHOTS") == "docs":
        shutil.copy(path, DOCS / name)


def log_in(page: Page, url: str, token: str) -> None:
    page.fill("#token", token)
    page.click("button[type=submit]")


def test_overview_and_port_pages_render_the_demo(
    browser: Browser, site: Served, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    response = page.goto(f"{site.url}/")
    assert response is not None
    assert response.status == 401  # no session yet: the login form
    log_in(page, site.url, TOKENS[1]["token"])
    expect(page.locator("h1")).to_have_text("Overview")
    enabled = int(page.locator("#card-ports .value").inner_text())
    assert enabled >= 3  # the demo's enabled ports and warm-port
    expect(page.locator("#top-ports tbody tr")).to_have_count(enabled)
    expect(page.locator("#top-ports tr[data-port=warm-port]")).to_have_attribute(
        "data-state", "soft"
    )
    # The demo drives acme-small past its soft cap, to its hard cap (or just under it).
    acme = page.locator("#top-ports tr[data-port=acme-small]")
    assert acme.get_attribute("data-state") in ("soft", "hard")
    expect(page.locator("#data-age")).to_contain_text("Counters read from Redis at")
    shot(page, tmp_path, "dashboard-overview.png")

    page.click("a[href='/ports/warm-port']")
    expect(page.locator("h1")).to_contain_text("Port warm-port")
    expect(page.locator("#warning")).to_contain_text("Over its soft cap of 100 tokens")
    expect(page.locator("#state")).to_have_text("soft")
    expect(page.locator("#usage-bar")).to_be_visible()
    chart = page.locator("#daily-chart canvas")
    expect(chart).to_have_count(1)  # uPlot drew the daily chart
    assert chart.bounding_box() is not None

    demo_port = page.goto(f"{site.url}/ports/acme-small")
    assert demo_port is not None
    assert demo_port.status == 200
    expect(page.locator("#warning")).to_be_visible()
    expect(page.locator("#features tbody tr").first).to_be_visible()  # drained by the demo
    expect(page.locator("#daily-chart canvas")).to_have_count(1)
    shot(page, tmp_path, "dashboard-port.png")


def test_a_gate_token_is_refused_and_a_bad_one_asked_again(browser: Browser, site: Served) -> None:
    page = browser.new_page()
    page.goto(f"{site.url}/reconcile")
    log_in(page, site.url, TOKENS[2]["token"])  # scope gate
    expect(page.locator(".alert")).to_contain_text("may not view the dashboard")
    log_in(page, site.url, "not-a-token-at-all")
    expect(page.locator(".alert")).to_contain_text("unknown token")
    log_in(page, site.url, TOKENS[0]["token"])  # admin: back where it was going
    expect(page.locator("h1")).to_have_text("Reconciliation")
    assert page.url.endswith("/reconcile")
