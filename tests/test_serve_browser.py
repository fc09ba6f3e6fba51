"""The web chat page in a real headless browser (Debian's chromium + chromedriver via selenium).

Type a Vietnamese question, see the answer stream in, press stop (the server cancels the
generation), see the conversation kept and sent back, reset; an Enter that an input method
is still composing never sends. A screenshot is kept in the test's tmp folder.

The README's picture (docs/webchat.png) comes from ``test_readme_screenshot``, opt-in with
``VNMINI_UPDATE_SCREENSHOT=1`` (it serves ``runs/quickstart/export/chat-q4_0.gguf``, or the
model named by ``VNMINI_SCREENSHOT_MODEL``), so default runs never touch tracked files.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from test_serve import Scripted, running, wait_for  # skips this module too where FastAPI/openai are missing

from vnmini.runtime.server import create_app

httpx = pytest.importorskip("httpx")
webdriver = pytest.importorskip("selenium.webdriver")
pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser"))
                       or not shutil.which("chromedriver"),
                       reason="needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver)"),
]
ROOT = Path(__file__).resolve().parents[1]
ANSWER = "Chào bạn! Bộ luật Dân sự quy định địa vị pháp lý, quyền và nghĩa vụ của cá nhân, pháp nhân. " * 4


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1000,720", "--lang=vi", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    # An explicit driver path: selenium never goes looking for (or downloading) one.
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def js(driver, code: str, *args):
    return driver.execute_script(code, *args)


def bubbles(driver) -> list[tuple[str, str]]:
    return js(driver, "return [...document.querySelectorAll('.msg')].map(e => [e.className, e.textContent]);")


def test_type_stream_stop_reset(browser, tiny_tokenizer, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    gen = Scripted(tiny_tokenizer, ANSWER, delay=0.04)  # ~25 tokens/s: slow enough to watch and stop
    with running(create_app(gen, name="vnmini-demo")) as url:
        browser.get(url + "/")
        wait_for(lambda: "scripted" in browser.find_element(By.ID, "model").text, what="the page to reach /health")
        box = browser.find_element(By.ID, "input")
        box.send_keys("Luật Dân sự quy định gì?")
        box.send_keys(Keys.ENTER)
        # Streamed: text appears and keeps growing while the answer is still being written.
        wait_for(lambda: len(bubbles(browser)) == 2 and len(bubbles(browser)[1][1]) > 5, what="streamed text")
        first = bubbles(browser)[1][1]
        wait_for(lambda: len(bubbles(browser)[1][1]) > len(first) + 5, what="more streamed text")
        assert "streaming" in bubbles(browser)[1][0]
        assert ANSWER.startswith(bubbles(browser)[1][1])
        browser.save_screenshot(str(tmp_path / "webchat-streaming.png"))
        browser.find_element(By.ID, "stop").click()
        wait_for(lambda: "stopped" in bubbles(browser)[1][0], what="the stop button to take effect")
        stopped_text = bubbles(browser)[1][1]
        assert 0 < len(stopped_text) < len(ANSWER)
        health = lambda: httpx.get(url + "/health", timeout=5).json()  # noqa: E731
        wait_for(lambda: health()["counts"]["cancelled"] == 1 and health()["pending"] == 0,
                 what="the server to cancel the generation")
        steps = gen.steps
        time.sleep(0.4)
        assert bubbles(browser)[1][1] == stopped_text and gen.steps == steps  # nothing more was generated
        assert browser.find_element(By.ID, "send").is_enabled()

        # An Enter that an input method is still composing (Telex, VNI...) must not send.
        js(browser, "const i = document.getElementById('input'); i.value = 'đang gõ';"
                    "i.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', isComposing: true, bubbles: true}));")
        time.sleep(0.3)
        assert len(bubbles(browser)) == 2 and box.get_attribute("value") == "đang gõ"

        # The next question carries the conversation, the stopped answer included, and the system prompt.
        js(browser, "document.getElementById('input').value = '';")
        browser.find_element(By.ID, "settings").click()
        browser.find_element(By.ID, "system").send_keys("Trả lời ngắn gọn.")
        browser.find_element(By.ID, "max_tokens").send_keys("40")  # the answer ends at 40 tokens: "length"
        box.send_keys("Còn Điều 2?")
        browser.find_element(By.ID, "send").click()
        wait_for(lambda: len(bubbles(browser)) == 4 and "streaming" not in bubbles(browser)[3][0], timeout=30,
                 what="the second answer to finish")
        assert ANSWER.startswith(bubbles(browser)[3][1]) and len(bubbles(browser)[3][1]) > 20
        prompt = tiny_tokenizer.decode(gen.prompts[-1], skip_special=False)
        for part in ("Trả lời ngắn gọn.", "Luật Dân sự quy định gì?", stopped_text.strip(), "Còn Điều 2?"):
            assert part in prompt, part
        status = browser.find_element(By.ID, "status").text
        assert "40 token" in status and "max tokens" in status, status
        shot = tmp_path / "webchat.png"
        browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000

        browser.find_element(By.ID, "reset").click()
        wait_for(lambda: bubbles(browser) == [], what="reset to clear the page")


@pytest.mark.skipif(os.environ.get("VNMINI_UPDATE_SCREENSHOT") != "1",
                    reason="opt-in: VNMINI_UPDATE_SCREENSHOT=1 rewrites docs/webchat.png from a real model")
def test_readme_screenshot(browser, tmp_path):
    from selenium.webdriver.common.by import By

    model = Path(os.environ.get("VNMINI_SCREENSHOT_MODEL", ROOT / "runs/quickstart/export/chat-q4_0.gguf"))
    if not model.exists():
        pytest.skip(f"{model}: not here; run `vnmini quickstart` or set VNMINI_SCREENSHOT_MODEL")
    with running(create_app(model)) as url:
        browser.get(url + "/")
        wait_for(lambda: "ngữ cảnh" in browser.find_element(By.ID, "model").text, what="/health")
        browser.find_element(By.ID, "settings").click()
        browser.find_element(By.ID, "system").send_keys("Bạn là trợ lý pháp luật, trả lời bằng tiếng Việt.")
        browser.find_element(By.ID, "max_tokens").send_keys("60")
        browser.find_element(By.ID, "input").send_keys("Bộ luật Dân sự quy định những gì?")
        browser.find_element(By.ID, "send").click()
        wait_for(lambda: len(bubbles(browser)) == 2 and "streaming" not in bubbles(browser)[1][0], timeout=60,
                 what="the answer")
        shot = tmp_path / "webchat.png"
        browser.save_screenshot(str(shot))
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, ROOT / "docs" / "webchat.png")
