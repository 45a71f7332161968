"""The app in a real browser: Playwright driving Debian's Chromium, headless, on loopback.

Loads the page, picks a patient, clicks an example question, sees the tool step and the figure,
uploads an EDF written by the simulator, drafts and downloads a report; a screenshot of each
step goes to ``$SLEEPLM_SCREENSHOTS`` (default: the test's tmp folder). Every request the page
makes must stay on 127.0.0.1 (no fonts, analytics or CDN from outside). Latencies (page load,
first answer, report draft) are printed.

Needs Debian's Chromium at /usr/bin/chromium (or ``$SLEEPLM_CHROMIUM``): ``./run test`` installs
it (root with apt-get) or stops with the one-line instruction, and fails this test rather than
skipping it (Playwright's own browser download does not work offline). Plain ``pytest`` without
a Chromium skips it with that reason.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import TINY_HYPNOGRAM
from test_app import OSA, free_port, tiny_library

CHROMIUM = Path(os.environ.get("SLEEPLM_CHROMIUM") or "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason=f"Chromium is not installed at {CHROMIUM} (apt-get install "
                                       "chromium; ./run test does it as root)")
sync_api = pytest.importorskip("playwright.sync_api")

from assistant.agent import Assistant
from assistant.app import serve
from assistant.config import AssistantConfig
from assistant.planner import OfflinePlanner

#: Words of the element's text that the browser broke over two or more lines (a word's range
#: has one client rectangle per line box it spans).
BROKEN_WORDS = """(selector) => {
  const root = document.querySelector(selector);
  if (!root) { return ["no element " + selector]; }
  const broken = [];
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (const m of node.textContent.matchAll(/\\S+/g)) {
      const range = document.createRange();
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
      if (tops.size > 1) { broken.push(m[0]); }
    }
  }
  return broken;
}"""
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    library = tiny_library(root)
    config = AssistantConfig.load(env={}, state_dir=root / "state")
    bot = Assistant(config, library=library, index=None, chat_model=OfflinePlanner())
    library.open(OSA, progress=False)  # a cached patient, as in the demo library
    app, url = serve(bot, host="127.0.0.1", port=free_port(), prevent_thread_lock=True,
                     quiet=True)
    yield url, root
    app.close()
    bot.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("SLEEPLM_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_the_app_in_chromium(app_url, shots, tmp_path):
    from sleeplm.simulate import simulate_night, write_study

    url, _root = app_url
    night = simulate_night(hypnogram=TINY_HYPNOGRAM, profile="osa_severe", seed=71,
                           patient_id="browser-71")
    study = write_study(night, tmp_path / "study")
    outside: list[str] = []
    timings: dict[str, float] = {}
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.on("request", lambda r: outside.append(r.url)
                if urlsplit(r.url).hostname not in ("127.0.0.1", None) and
                not r.url.startswith(("data:", "blob:")) else None)
        page.set_default_timeout(60_000)

        t0 = time.perf_counter()
        page.goto(url, wait_until="load")
        page.locator("#patient").wait_for()
        timings["page load"] = time.perf_counter() - t0
        assert page.get_by_text("Not a medical device").is_visible()
        assert page.get_by_text("SIMULATED data").first.is_visible()
        assert page.get_by_text("nothing leaves this machine").is_visible()
        page.screenshot(path=str(shots / "01-loaded.png"), full_page=True)

        page.locator("#patient input").click()
        page.get_by_role("option", name=f"{OSA} · SIMULATED").click()
        page.locator("#card").get_by_text("AHI (3 %/arousal)").wait_for()
        page.locator("#card").get_by_text("SIMULATED data").wait_for()
        page.screenshot(path=str(shots / "02-patient.png"), full_page=True)
        # the card is readable at this width: no word of it is broken over two lines
        assert page.evaluate(BROKEN_WORDS, "#card table") == []

        t0 = time.perf_counter()
        page.get_by_role("button", name="What is the AHI?").click()
        chat = page.locator("#chatbot")
        chat.get_by_text("tool: report_facts").wait_for()
        # the planner's answer ends with the simulated-data notice: the whole answer is there
        chat.get_by_text("This is a SIMULATED night", exact=False).last.wait_for()
        timings["first answer"] = time.perf_counter() - t0
        page.screenshot(path=str(shots / "03-answer.png"), full_page=True)

        page.get_by_role("button", name="Show the hypnogram").click()
        chat.get_by_text("tool: plot_hypnogram").wait_for()
        page.locator("#chat-figure img").wait_for()
        chat.get_by_text("tool: plot_hypnogram").click()  # opens the collapsed step
        page.screenshot(path=str(shots / "04-plot-in-chat.png"), full_page=True)

        page.get_by_role("tab", name="Plots").click()
        page.locator("#overview img").wait_for()
        page.locator("#find input, #find textarea").first.fill("obstructive apnea")
        page.locator("#find-btn").click()
        page.locator("#found").get_by_text("obstructive apnea").first.wait_for()
        page.locator("#event-btn").click()
        page.locator("#signals img").wait_for()
        page.screenshot(path=str(shots / "05-plots.png"), full_page=True)

        page.get_by_text("Add a study (EDF/BDF + optional annotations)").click()
        page.locator("#upload input[type=file]").set_input_files(
            [str(study.edf), str(study.annotations)])
        page.locator("#upload-id input, #upload-id textarea").first.fill("browser-71")
        page.locator("#add-study").click()
        page.locator("#status").get_by_text("browser-71 added").wait_for(timeout=120_000)
        page.locator("#card").get_by_text("browser-71").first.wait_for()
        page.screenshot(path=str(shots / "06-uploaded.png"), full_page=True)

        page.get_by_role("tab", name="Report").click()
        t0 = time.perf_counter()
        page.locator("#draft").click()
        page.locator("#report-view").get_by_text("not a medical device",
                                                 exact=False).first.wait_for()
        timings["report draft"] = time.perf_counter() - t0
        rows = page.locator("#report-files tr")
        rows.nth(3).wait_for()
        listed = "".join("".join(rows.all_inner_texts()).split())  # names are split in spans
        for ext in ("md", "html", "pdf", "json"):
            assert f"browser-71-report.{ext}" in listed, listed
        with page.expect_download() as dl:
            rows.filter(has_text="pdf").locator("a").first.click()
        pdf = tmp_path / dl.value.suggested_filename
        dl.value.save_as(pdf)
        assert pdf.read_bytes()[:5] == b"%PDF-"
        page.screenshot(path=str(shots / "07-report.png"), full_page=True)
        browser.close()
    print("latency (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    assert not outside, f"the page reached outside loopback: {outside[:5]}"
    assert sorted(p.name for p in shots.glob("*.png"))[:7] == [
        "01-loaded.png", "02-patient.png", "03-answer.png", "04-plot-in-chat.png",
        "05-plots.png", "06-uploaded.png", "07-report.png"]
