"""The chat page, rendered in headless Chromium (Debian's package) driven by Playwright."""

import os

import pytest
from live_server import API_KEY, MODEL

from browser import CHROMIUM, CHROMIUM_FLAGS
from forge.serve.launch import ServerProcess


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make test` installs it as root)")
def test_the_chat_page_streams_an_answer_and_keeps_the_conversation(
    live_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(live_server.url + "/")
            expect(page.locator("#model")).to_have_text(MODEL)
            page.fill("#key", API_KEY)
            page.fill("#max_tokens", "16")
            page.fill("#input", "hello there")
            page.keyboard.press("Enter")
            answer = page.locator(".msg.assistant").first
            expect(answer.locator(".meta")).to_be_visible(timeout=30_000)  # shown when the stream has ended
            assert answer.locator(".body").inner_text().strip() != ""
            assert "Error" not in answer.inner_text()
            page.fill("#input", "and again")
            page.click("#send")
            expect(page.locator(".msg.assistant").nth(1).locator(".meta")).to_be_visible(timeout=30_000)
            assert page.locator(".msg.user").count() == 2
            page.screenshot(
                path=os.environ.get("FORGE_CHAT_SCREENSHOT")
                or str(tmp_path_factory.mktemp("page") / "chat.png")
            )
        finally:
            browser.close()
