"""The page in a real browser (headless Chromium driven by selenium): it loads the models,
generates images with live progress, the forward-process slider changes the picture, the model
card draws the loss, and a mask painted on the canvas inpaints.

``DIFFLAB_SCREENSHOT=docs/serve.png`` also saves a screenshot of the page (the README's)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and DRIVER.exists()):
    pytest.skip("needs chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
                allow_module_level=True)
pytest.importorskip("selenium")
import uvicorn  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from difflab.serve.app import create_app  # noqa: E402
from difflab.serve.models import load_models  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    run = tmp_path_factory.mktemp("browser") / "digits-class"
    done = subprocess.run([sys.executable, "-m", "difflab.cli", "train", "--data", "digits",
                           "--image-size", "8",
                           "--cond", "class", "--steps", "6", "--batch-size", "8", "--base-channels", "8",
                           "--channel-mult", "1,2", "--T", "50", "--sample-every", "6", "--out", str(run),
                           "--no-progress", "--device", "cpu"], capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    models = load_models([run], "cpu")
    # each network call waits a little, so the page has steps to show while the image forms
    models[0].pipe.net.register_forward_pre_hook(lambda module, args: time.sleep(0.08))
    srv = uvicorn.Server(uvicorn.Config(create_app(models), host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}/"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--window-size=1280,860"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    yield driver
    driver.quit()


def test_generate_explore_and_screenshot(server, browser):
    b = browser
    wait = WebDriverWait(b, 30, poll_frequency=0.02)
    b.get(server)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
    assert b.find_element(By.ID, "model-kind").text.startswith("class")
    assert b.find_element(By.ID, "gen-label").is_displayed()  # a class-conditional run shows its classes
    b.find_element(By.CSS_SELECTOR, "#gen-label option[value='3']").click()
    n = b.find_element(By.ID, "gen-n")
    n.clear()
    n.send_keys("6")
    b.find_element(By.ID, "generate-btn").click()
    seen: set[str] = set()

    def finished(d):
        seen.add(d.find_element(By.ID, "progress-text").text)
        return d.find_element(By.ID, "progress-text").text.startswith("done")

    wait.until(finished)
    steps = {t for t in seen if " · step " in t and not t.endswith("step 10 of 10")}
    assert steps, f"no progress was shown while sampling: {seen}"
    preview = b.find_element(By.ID, "preview")
    assert preview.is_displayed() and preview.get_attribute("src").startswith("data:image/png")
    shots = b.find_elements(By.CSS_SELECTOR, "#gallery .shot img")
    assert len(shots) == 6
    wait.until(lambda d: all(d.execute_script("return arguments[0].naturalWidth", im) == 8 for im in shots))
    assert "--class 3" in b.find_element(By.CSS_SELECTOR, "#gallery .shot code").text
    shot = os.environ.get("DIFFLAB_SCREENSHOT")
    if shot:
        b.save_screenshot(shot)

    b.find_element(By.CSS_SELECTOR, "#tabs button[data-tab='explore']").click()
    xt = b.find_element(By.ID, "ex-xt")
    wait.until(lambda d: xt.get_attribute("data-t") == "25")  # the page starts at the middle, (T - 1) / 2
    before = xt.get_attribute("src")
    slider = b.find_element(By.ID, "t-slider")
    slider.send_keys(Keys.END)
    wait.until(lambda d: xt.get_attribute("data-t") == "49")
    assert b.find_element(By.ID, "t-value").text == "49"
    assert xt.get_attribute("src") != before
    assert b.find_element(By.CSS_SELECTOR, "#schedule-plot svg polyline") is not None
    assert not b.find_element(By.ID, "error").is_displayed()
    steps = b.find_element(By.ID, "traj-steps")
    steps.clear()
    steps.send_keys("4")
    b.find_element(By.ID, "traj-btn").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#trajectory img")) == 8)
    wait.until(lambda d: all(d.execute_script("return arguments[0].naturalWidth", im) == 8
                             for im in d.find_elements(By.CSS_SELECTOR, "#trajectory img")))

    b.find_element(By.CSS_SELECTOR, "#tabs button[data-tab='card']").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#loss-plot svg polyline"))
    assert '"cond": "class"' in b.find_element(By.ID, "card-config").text
    # everything the page loaded came from the server itself: it works offline
    loaded = b.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert loaded and all(u.startswith(server) or u.startswith("data:") for u in loaded), loaded


def test_inpaint_with_a_painted_mask_and_img2img(server, browser):
    b = browser
    wait = WebDriverWait(b, 30, poll_frequency=0.02)
    b.get(server)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#edit-thumbs img"))
    b.find_element(By.CSS_SELECTOR, "#tabs button[data-tab='edit']").click()
    b.find_elements(By.CSS_SELECTOR, "#edit-thumbs img")[2].click()
    mask = b.find_element(By.ID, "mask-canvas")
    ActionChains(b).move_to_element(mask).click_and_hold().move_by_offset(40, 30).move_by_offset(-20, 40) \
        .release().perform()
    painted = b.execute_script(
        "const d = arguments[0].getContext('2d').getImageData(0, 0, 256, 256).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n;", mask)
    assert painted > 500  # the brush left a stroke
    steps = b.find_element(By.ID, "inpaint-steps")
    steps.clear()
    steps.send_keys("4")
    b.find_element(By.ID, "inpaint-btn").click()
    text = b.find_element(By.ID, "edit-progress-text")
    wait.until(lambda d: text.text.startswith("done") or d.find_element(By.ID, "error").is_displayed())
    assert not b.find_element(By.ID, "error").is_displayed(), b.find_element(By.ID, "error").text
    first = len(b.find_elements(By.CSS_SELECTOR, "#edit-gallery .shot"))
    assert first >= 1
    b.execute_script("const s = document.getElementById('strength'); s.value = 0.4;"
                     "s.dispatchEvent(new Event('input'));")
    assert b.find_element(By.ID, "strength-value").text == "0.40"
    b.find_element(By.ID, "img2img-btn").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#edit-gallery .shot")) > first)
    assert "strength 0.4" in b.find_element(By.CSS_SELECTOR, "#edit-gallery .shot").text
