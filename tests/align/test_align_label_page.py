"""The labelling page and its JSON API, over a store that already holds pairs (no model needed)."""

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from browser import CHROMIUM, CHROMIUM_FLAGS
from forge.align.preferences import NewPair, PreferenceStore
from forge.serve.label import create_label_app
from forge.serve.launch import free_port

WRITE = "Write a Python function `add(a, b)` that returns the sum of a and b."


def _store(path: Path, n: int) -> PreferenceStore:
    store = PreferenceStore(path)
    store.add_pairs(
        NewPair(
            prompt=[
                {"role": "system", "content": "Answer with code."},
                {"role": "user", "content": f"{WRITE} #{i}"},
            ],
            answer_a=f"def add(a, b):\n    return a + b  # A{i}",
            answer_b=f"def add(a, b):\n    return a - b  # B{i}",
            sampling={"temperature": 1.0},
            model_id="tiny-run",
        )
        for i in range(n)
    )
    return store


@contextmanager
def _serving(app: FastAPI) -> Iterator[str]:
    """The app on a free loopback port, in a thread of this process."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the label app did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_api_hands_out_pairs_and_records_votes(tmp_path: Path) -> None:
    store = _store(tmp_path / "prefs.db", 3)
    client = TestClient(create_label_app(store, model_id="tiny-run", default_labeller="ann"))
    page = client.get("/")
    assert page.status_code == 200 and "tiny-run" in page.text and 'data-default="ann"' in page.text
    first = client.get("/api/next", params={"labeller": "ann"}).json()
    assert first["pair"]["answer_a"].endswith("# A0") and first["progress"]["pairs"] == 3
    assert first["pair"]["prompt"][0] == {"role": "system", "content": "Answer with code."}
    judged = client.post(
        "/api/judge", json={"pair_id": first["pair"]["id"], "labeller": "ann", "choice": "b"}
    )
    assert judged.status_code == 200 and judged.json()["progress"]["done"] == 1
    second = client.get("/api/next", params={"labeller": "ann"}).json()["pair"]
    assert client.post("/api/skip", json={"pair_id": second["id"], "labeller": "ann"}).status_code == 200
    assert client.get("/api/progress", params={"labeller": "ann"}).json()["mine"] == 1

    bad = client.post("/api/judge", json={"pair_id": second["id"], "labeller": "ann", "choice": "maybe"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("choice: ")
    unknown = client.post("/api/judge", json={"pair_id": 99, "labeller": "ann", "choice": "a"})
    assert unknown.status_code == 404 and "no pair 99" in unknown.json()["error"]
    assert client.get("/api/next").status_code == 400  # no labeller
    assert client.get("/nowhere").status_code == 404

    keyed = TestClient(create_label_app(store, api_key="secret"))
    assert keyed.get("/").status_code == 200  # the page itself is open; votes need the key
    assert keyed.get("/api/progress").status_code == 401
    assert keyed.get("/api/progress", headers={"Authorization": "Bearer secret"}).status_code == 200


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make test` installs it as root)")
def test_a_person_labels_pairs_with_the_keyboard(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    store = _store(tmp_path / "prefs.db", 4)
    app = create_label_app(store, model_id="tiny-run", default_labeller="")
    with _serving(app) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url + "/?labeller=ann")
            expect(page.locator("#count")).to_have_text("0 of 4")
            expect(page.locator("#text-a")).to_contain_text("# A0")
            for done, key in enumerate(["1", "2", "t"], start=1):
                page.keyboard.press(key)
                expect(page.locator("#count")).to_have_text(f"{done} of 4")
            expect(page.locator("#text-b")).to_contain_text("# B3")
            page.keyboard.press("e")  # write a better answer, saved with Ctrl+Enter
            expect(page.locator("#edited")).to_be_focused()
            page.locator("#edited").fill("def add(a, b):\n    return sum((a, b))")
            page.keyboard.press("Control+Enter")
            expect(page.locator("#done")).to_be_visible()
            expect(page.locator("#count")).to_have_text("4 of 4")
            page.screenshot(
                path=os.environ.get("FORGE_LABEL_SCREENSHOT") or str(tmp_path / "label.png"), full_page=True
            )
        finally:
            browser.close()
    rows = store.judgements()
    assert [(r["answer_a"][-2:], r["choice"], r["labeller"]) for r in rows] == [
        ("A0", "a", "ann"),
        ("A1", "b", "ann"),
        ("A2", "tie", "ann"),
        ("A3", "both_bad", "ann"),
    ]
    assert [r["edited"] for r in rows] == [None, None, None, "def add(a, b):\n    return sum((a, b))"]
