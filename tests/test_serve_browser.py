"""``difflab serve``'s page in a real headless Chromium against a real server (the bundled model).

A person's paths through the UI: a server-side 422 shown next to its field, a generation with live
previews, the result's recipe, "Use these settings", then inpainting that result with a brush stroke;
a recipe read from a dropped or chosen PNG; image-to-image and outpainting from a chosen file; a
420 px wide window; cancelling; the login page of a server with a token and a 401 leading back to it.
Each test stands alone (pytest-xdist may split them). Needs Debian's ``chromium`` and
``chromium-driver`` (or ``DIFFLAB_CHROMIUM`` / ``DIFFLAB_CHROMEDRIVER`` naming others) and selenium;
skipped without them unless ``DIFFLAB_REQUIRE_BROWSER=1`` (CI), where that fails instead. Nothing
is downloaded: the driver's path is given, so Selenium Manager never runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("DIFFLAB_CHROMIUM", "/usr/bin/chromium")            # Debian's chromium
CHROMEDRIVER = os.environ.get("DIFFLAB_CHROMEDRIVER", "/usr/bin/chromedriver")  # and chromium-driver
PROMPT = "a red circle above a blue square"
TOKEN = "browser-test-token-0123456789"


def _browser_or_skip() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package")
    if missing:
        reason = (f"the browser test needs {', '.join(missing)} "
                  f"(apt-get install chromium chromium-driver; pip install selenium)")
        if os.environ.get("DIFFLAB_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + "; DIFFLAB_REQUIRE_BROWSER=1 requires it")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--no-first-run", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}", "--window-size=1280,800"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # explicit: no Selenium Manager
    browser.set_script_timeout(20)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _browser_or_skip()
    from difflab.serve import ServeConfig, background_server
    outputs = tmp_path_factory.mktemp("serve")
    config = ServeConfig(outputs=outputs, token=None, queue_size=16, port=0, models=["shapes"])   # 32x32: sizes below
    with background_server(config) as url:
        yield Server(url, outputs)


class Server(str):
    """The server's base URL, knowing its outputs folder."""

    def __new__(cls, url: str, outputs: Path):
        server = super().__new__(cls, url)
        server.outputs = outputs
        return server


def viewport(driver, width: int, height: int) -> None:
    driver.set_window_size(width, height)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


def api(url: str, path: str) -> dict:
    with urllib.request.urlopen(url + path, timeout=10) as response:
        return json.loads(response.read())


def wait(driver, condition, timeout: float = 20.0, what: str = "the page"):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.02).until(condition, message=f"waiting for {what}")


def fill(driver, element_id: str, value) -> None:
    from selenium.webdriver.common.by import By
    box = driver.find_element(By.ID, element_id)
    box.clear()
    if value != "":
        box.send_keys(str(value))


def open_page(driver, url: str) -> None:
    driver.get(url + "/")
    wait(driver, lambda d: d.execute_script(
        "return document.querySelectorAll('#model option').length > 0"
        " && document.querySelectorAll('#examples .chip').length > 0"
        " && !document.querySelector('#gallery').textContent.includes('Loading')"), what="the models and history")


def final_images(driver) -> list:
    """The visible results: (src, naturalWidth) of each ``#results img`` once all have loaded."""
    return driver.execute_script(
        "const box = document.getElementById('results'); if (box.hidden) return null;"
        "const imgs = [...box.querySelectorAll('img')];"
        "if (!imgs.length || !imgs.every(i => i.complete)) return null;"
        "return imgs.map(i => [i.getAttribute('src'), i.naturalWidth]);")


def page_path(driver) -> str:
    return driver.execute_script("return window.location.pathname")


def new_results(driver, before, count: int = 1, timeout: float = 30.0) -> list:
    """Wait for ``count`` final images other than ``before`` (the results shown earlier)."""
    shown = [tuple(b) for b in before or []]     # JSON gives lists; a caller may pass (src, width) tuples

    def ready(d):
        images = final_images(d)
        return images if images and len(images) == count and [tuple(i) for i in images] != shown else None
    return wait(driver, ready, timeout=timeout, what=f"{count} new result(s)")


def newest_finished(server, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api(server, "/api/v1/jobs?limit=1")["jobs"][0]
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError("the newest job did not finish")


def job_of(server, src: str) -> dict:
    """The job whose first image the page shows at ``src`` (the history, newest first)."""
    for job in api(server, "/api/v1/jobs")["jobs"]:
        if job["images"] and job["images"][0]["url"] == src:
            return job
    raise AssertionError(f"no job made {src}")


def a_result(server) -> dict:
    """The newest succeeded job of this server, made through the API if there is none."""
    for job in api(server, "/api/v1/jobs")["jobs"]:
        if job["state"] == "succeeded":
            return job
    body = json.dumps({"prompt": PROMPT, "steps": 6, "seed": 99}).encode()
    request = urllib.request.Request(server + "/api/v1/jobs", data=body, headers={"content-type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()
    job = newest_finished(server)
    assert job["state"] == "succeeded", job
    return job


def banner(driver) -> str | None:
    return driver.execute_script(
        "const b = document.getElementById('error'); return b.hidden ? null : b.textContent.trim();")


def test_generate_recipe_and_inpaint(driver, server):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    viewport(driver, 1280, 800)
    open_page(driver, server)
    find = driver.find_element

    # An example chip fills the prompt.
    find(By.CSS_SELECTOR, "#examples .chip").click()
    assert find(By.ID, "prompt").get_attribute("value") == PROMPT

    # The server's 422 lands next to the field it names (the client does not check the upper limit).
    fill(driver, "steps", 5000)
    find(By.ID, "generate").click()
    message = wait(driver, lambda d: d.execute_script(
        "const p = document.getElementById('err-steps'); return !p.hidden && p.textContent;"), what="err-steps")
    assert "steps" in message and "limit" in message, message  # the server's words
    assert find(By.ID, "steps").get_attribute("aria-invalid") == "true"
    assert banner(driver) is None

    # Generate: live previews stream in, then the final image.
    fill(driver, "steps", 30)
    fill(driver, "seed", 1234)
    shown = final_images(driver)
    find(By.ID, "generate").click()
    wait(driver, lambda d: (find(By.ID, "preview").get_attribute("src") or "").startswith("data:image/png"),
         what="a live preview")
    assert wait(driver, lambda d: d.execute_script("return window.difflab.stats.progressEvents"), what="progress")
    images = new_results(driver, shown)
    src, natural_width = images[0]
    assert src.startswith("/api/v1/images/") and src.endswith(".png") and natural_width > 0, images
    assert not find(By.ID, "cancel").is_displayed()
    assert find(By.ID, "generate").is_enabled()
    assert "step 30 / 30" in find(By.ID, "progress").get_attribute("textContent")
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"#gallery img[src='{src}']"), what="the gallery")

    # Its recipe: prompt and seed in the dialog; "Use these settings" fills a changed form back in.
    fill(driver, "prompt", "something else")
    fill(driver, "seed", "")
    fill(driver, "steps", "")
    find(By.CSS_SELECTOR, "#results .result-open").click()
    dialog = find(By.ID, "recipe")
    wait(driver, lambda d: dialog.is_displayed(), what="the recipe dialog")
    assert PROMPT in dialog.text and "1234" in dialog.text, dialog.text
    find(By.ID, "use-settings").click()
    wait(driver, lambda d: not dialog.is_displayed(), what="the dialog to close")
    assert find(By.ID, "prompt").get_attribute("value") == PROMPT
    assert find(By.ID, "seed").get_attribute("value") == "1234"
    assert find(By.ID, "steps").get_attribute("value") == "30"

    # Send the result to inpaint, paint a stroke on the mask, generate.
    find(By.CSS_SELECTOR, "#results .send-inpaint").click()
    wait(driver, lambda d: find(By.ID, "mode-inpaint").get_attribute("aria-selected") == "true", what="inpaint mode")
    canvas = wait(driver, lambda d: find(By.ID, "mask-canvas") if find(By.ID, "mask-canvas").is_displayed() else None,
                  what="the mask canvas")
    wait(driver, lambda d: d.execute_script("return window.difflab.state.source !== null"), what="the uploaded image")
    assert driver.execute_script("return [document.getElementById('mask-canvas').width, "
                                 "document.getElementById('mask-canvas').height]") == [32, 32]
    fill(driver, "steps", 6)
    width = canvas.size["width"]
    (ActionChains(driver).move_to_element_with_offset(canvas, -width // 4, 0).click_and_hold()
     .move_by_offset(width // 8, width // 10).move_by_offset(width // 8, -width // 10).release().perform())
    assert driver.execute_script("return window.difflab.state.maskPainted") is True
    before = {job["id"] for job in api(server, "/api/v1/jobs")["jobs"]}
    find(By.ID, "generate").click()
    [(inpainted, _)] = new_results(driver, images)
    assert banner(driver) is None

    newest = job_of(server, inpainted)
    assert newest["id"] not in before and newest["state"] == "succeeded", newest
    assert newest["request"]["image"] and newest["request"]["mask"], newest["request"]
    recipe = newest["images"][0]["recipe"]
    assert isinstance(recipe.get("mask"), str) and len(recipe["mask"]) >= 8, recipe
    assert recipe["prompt"] == PROMPT and recipe["steps"] == 6
    # The uploaded mask: black and white, the image's size, white along the stroke only.
    from PIL import Image
    with Image.open(server.outputs / "uploads" / f"{newest['request']['mask']}.png") as mask:
        values = mask.convert("L")
    assert values.size == (32, 32)
    histogram = values.histogram()
    assert histogram[0] + histogram[255] == 32 * 32, "the mask is not black and white"
    assert 0 < histogram[255] < 32 * 32 // 2, histogram[255]


def test_recipe_from_a_dropped_or_chosen_png(driver, server, tmp_path):
    from selenium.webdriver.common.by import By
    from PIL import Image

    image = a_result(server)["images"][0]
    viewport(driver, 1280, 800)
    open_page(driver, server)
    recipe = image["recipe"]

    # Dropped anywhere on the page (a real File in a DataTransfer, as a drag from the desktop makes).
    fill(driver, "prompt", "")
    fill(driver, "seed", "")
    driver.execute_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0]).then(r => r.blob()).then(blob => {
            const data = new DataTransfer();
            data.items.add(new File([blob], "dropped.png", {type: "image/png"}));
            const target = document.querySelector(".stage");
            for (const type of ["dragenter", "dragover", "drop"]) {
                target.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: data}));
            }
            done();
        });""", image["url"])
    wait(driver, lambda d: d.find_element(By.ID, "prompt").get_attribute("value") == recipe["prompt"],
         what="the dropped recipe")
    assert driver.find_element(By.ID, "seed").get_attribute("value") == str(recipe["seed"])
    assert not driver.find_element(By.ID, "drop-overlay").is_displayed()

    # Chosen with "Load recipe from PNG".
    fill(driver, "prompt", "")
    driver.find_element(By.ID, "recipe-input").send_keys(str(server.outputs / "images" / image["name"]))
    wait(driver, lambda d: d.find_element(By.ID, "prompt").get_attribute("value") == recipe["prompt"],
         what="the chosen recipe")
    assert banner(driver) is None

    # A PNG without a recipe: the server's reason, in the banner.
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8), "white").save(plain)
    driver.find_element(By.ID, "recipe-input").send_keys(str(plain))
    message = wait(driver, banner, what="the error banner")
    assert "plain.png" in message, message
    driver.find_element(By.ID, "error-close").click()
    assert banner(driver) is None


def test_image_to_image_and_outpaint_from_a_file(driver, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from PIL import Image

    viewport(driver, 1280, 800)
    open_page(driver, server)
    source = tmp_path / "source.png"
    Image.new("RGB", (32, 32), (30, 60, 200)).save(source)
    driver.find_element(By.ID, "mode-img2img").click()
    driver.find_element(By.ID, "image-input").send_keys(str(source))
    wait(driver, lambda d: d.execute_script("return window.difflab.state.source !== null"), what="the upload")
    assert "32×32" in driver.find_element(By.ID, "source-info").text
    assert not driver.find_element(By.ID, "width").is_enabled()  # an edit's size is its image's
    fill(driver, "steps", 6)
    driver.execute_script("const s = document.getElementById('strength'); s.value = '0.5';"
                          "s.dispatchEvent(new Event('input'));")
    assert driver.find_element(By.ID, "strength-value").text == "0.50"
    prompt = driver.find_element(By.ID, "prompt")
    prompt.clear()
    before = final_images(driver)
    prompt.send_keys("a red circle", Keys.CONTROL, Keys.ENTER)  # Ctrl+Enter generates
    [(src, _)] = new_results(driver, before)
    job = job_of(server, src)
    assert job["state"] == "succeeded" and job["request"]["image"] and job["request"]["strength"] == 0.5, job
    assert job["images"][0]["recipe"]["strength"] == 0.5

    driver.find_element(By.ID, "mode-outpaint").click()
    fill(driver, "out-left", 8)
    fill(driver, "out-right", 0)
    fill(driver, "out-top", 0)
    fill(driver, "out-bottom", 4)
    assert "40 × 36" in driver.find_element(By.ID, "outpaint-size").text
    driver.find_element(By.ID, "generate").click()
    [(src, natural_width)] = new_results(driver, [(src, _)])
    job = job_of(server, src)
    assert job["state"] == "succeeded" and job["request"]["outpaint"] == [8, 0, 0, 4], job
    assert natural_width == 40
    assert (job["images"][0]["recipe"]["width"], job["images"][0]["recipe"]["height"]) == (40, 36)
    assert banner(driver) is None


def test_narrow_window_keeps_generate_reachable(driver, server):
    from selenium.webdriver.common.by import By

    viewport(driver, 420, 900)
    open_page(driver, server)
    assert driver.execute_script("return window.innerWidth") == 420

    def no_horizontal_scroll():
        return driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1"
            " && document.body.scrollWidth <= window.innerWidth + 1")

    assert no_horizontal_scroll()
    button = driver.find_element(By.ID, "generate")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    assert button.is_displayed() and button.is_enabled()
    rect = driver.execute_script("const r = arguments[0].getBoundingClientRect();"
                                 "return [r.left, r.right, r.top, r.bottom];", button)
    assert 0 <= rect[0] and rect[1] <= 420 and 0 <= rect[2] and rect[3] <= 900, rect
    hit = driver.execute_script("const r = arguments[0].getBoundingClientRect();"
                                "const e = document.elementFromPoint((r.left + r.right) / 2, (r.top + r.bottom) / 2);"
                                "return arguments[0].contains(e);", button)
    assert hit, "something covers the Generate button"

    fill(driver, "prompt", "two blue squares")
    fill(driver, "steps", 4)
    fill(driver, "num-images", 2)
    before = final_images(driver)
    button.click()
    images = new_results(driver, before, count=2)
    assert all(width > 0 for _, width in images)
    assert no_horizontal_scroll()
    for mode in ("img2img", "inpaint", "outpaint", "txt2img"):
        driver.find_element(By.ID, f"mode-{mode}").click()
        assert no_horizontal_scroll(), mode
    driver.find_element(By.CSS_SELECTOR, "#results .result-open").click()
    dialog = driver.find_element(By.ID, "recipe")
    wait(driver, lambda d: dialog.is_displayed(), what="the recipe dialog")
    assert dialog.size["width"] <= 420 and no_horizontal_scroll()
    driver.find_element(By.ID, "recipe-close").click()


def test_cancel_a_running_job(driver, server):
    from selenium.webdriver.common.by import By

    viewport(driver, 1280, 800)
    open_page(driver, server)
    fill(driver, "prompt", "three yellow triangles")
    fill(driver, "steps", 1000)
    fill(driver, "num-images", 1)
    driver.find_element(By.ID, "generate").click()
    wait(driver, lambda d: d.execute_script("return window.difflab.stats.progressEvents > 0"), what="progress")
    driver.find_element(By.ID, "cancel").click()
    wait(driver, lambda d: d.find_element(By.ID, "stage-title").text == "Cancelled", what="the cancelled job")
    assert not driver.find_element(By.ID, "cancel").is_displayed()
    assert driver.find_element(By.ID, "generate").is_enabled()
    newest = api(server, "/api/v1/jobs?limit=1")["jobs"][0]
    assert newest["state"] == "cancelled" and newest["progress"]["step"] < 1000, newest
    assert banner(driver) is None


def test_login_page_with_a_token(driver, tmp_path):
    from selenium.webdriver.common.by import By
    from difflab.serve import ServeConfig, background_server

    viewport(driver, 1280, 800)
    with background_server(ServeConfig(outputs=tmp_path, token=TOKEN, queue_size=4, port=0)) as url:
        try:
            driver.get(url + "/")
            wait(driver, lambda d: d.current_url.endswith("/login"), what="the redirect to /login")
            assert not driver.find_element(By.ID, "login-error").is_displayed()
            fill(driver, "token", "wrong-token-wrong-token")
            driver.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
            wait(driver, lambda d: d.find_element(By.ID, "login-error").is_displayed(), what="the error message")
            assert page_path(driver) == "/login"

            fill(driver, "token", TOKEN)
            driver.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
            wait(driver, lambda d: d.current_url.rstrip("/") == url, what="the app")
            open_page(driver, url)  # models and history load: the cookie authorises the API calls
            assert banner(driver) is None
            assert TOKEN not in driver.page_source
            assert "No images yet" in driver.find_element(By.ID, "gallery").text

            driver.delete_all_cookies()  # the session ends: the next API call (401) leads back to the login
            driver.find_element(By.ID, "history-refresh").click()
            wait(driver, lambda d: page_path(d) == "/login", what="the redirect after a 401")
        finally:
            driver.delete_all_cookies()
