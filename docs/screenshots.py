"""Screenshots of ``difflab serve`` for the README: a real server, a real (headless) Chromium.

    python docs/screenshots.py            # writes docs/images/serve-desktop.png and serve-narrow.png

It starts a server on a temporary outputs folder with the bundled model, queues a few generations
through the API (so the history has something in it), makes one more through the page itself (a
batch of four, so the stage shows results) and photographs the page at 1280x800 and at 420x900.
Needs Debian's ``chromium`` and ``chromium-driver`` (or ``--chromium`` / ``--chromedriver``) and
``pip install selenium``; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
HISTORY = [  # (prompt, seed): what the gallery shows, oldest first
    ("a green triangle above a yellow cross", 3),
    ("two blue squares", 11),
    ("a small purple square in the top left", 5),
    ("three yellow triangles", 8),
    ("a large green circle on a white background", 2),
    ("a red circle", 21),
]
PROMPT, SEED = "a red circle above a blue square", 7


def make_driver(chromium: str, chromedriver: str, profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--no-first-run", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars", "--force-color-profile=srgb", f"--user-data-dir={profile}",
                 "--window-size=1280,800"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def set_viewport(driver, width: int, height: int) -> None:
    """The page's viewport exactly ``width`` x ``height`` CSS pixels (a screenshot of that size)."""
    driver.set_window_size(width, height)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


def api(url: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_idle(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(job["state"] in ("succeeded", "failed", "cancelled") for job in api(url, "/api/v1/jobs")["jobs"]):
            return
        time.sleep(0.1)
    raise TimeoutError("the server's jobs did not finish")


def shoot(url: str, driver, out: Path) -> list[Path]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    for prompt, seed in HISTORY:
        api(url, "/api/v1/jobs", {"prompt": prompt, "seed": seed, "steps": 20})
    wait_idle(url)

    set_viewport(driver, 1280, 800)
    driver.get(url + "/")
    wait = WebDriverWait(driver, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#examples .chip"))
    prompt = driver.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys(PROMPT)
    for field, value in (("seed", SEED), ("steps", 24), ("num-images", 4)):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(str(value))
    driver.find_element(By.ID, "generate").click()
    wait.until(lambda d: d.execute_script(
        "const imgs = [...document.querySelectorAll('#results img')];"
        "return imgs.length === 4 && imgs.every(i => i.complete && i.naturalWidth > 0)"
        " && !document.getElementById('results').hidden;"))
    wait.until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0);"))
    driver.execute_script("document.activeElement && document.activeElement.blur();")
    time.sleep(0.3)  # let the flash animations and the toast settle
    out.mkdir(parents=True, exist_ok=True)
    desktop, narrow = out / "serve-desktop.png", out / "serve-narrow.png"
    driver.save_screenshot(str(desktop))

    set_viewport(driver, 420, 900)
    driver.get(url + "/")  # a fresh load: the newest result shows, the page at its top
    wait.until(lambda d: d.execute_script(
        "const imgs = [...document.querySelectorAll('#results img')];"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);"))
    time.sleep(0.3)
    driver.save_screenshot(str(narrow))
    return [desktop, narrow]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "images")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = parser.parse_args(argv)
    for path in (args.chromium, args.chromedriver):
        if not Path(path).exists():
            print(f"screenshots: {path} is missing (apt-get install chromium chromium-driver)", file=sys.stderr)
            return 2

    from difflab.serve import ServeConfig, background_server

    with tempfile.TemporaryDirectory() as tmp:
        outputs, profile = Path(tmp) / "outputs", Path(tmp) / "profile"
        with background_server(ServeConfig(outputs=outputs, token=None, queue_size=16, port=0)) as url:
            driver = make_driver(args.chromium, args.chromedriver, str(profile))
            try:
                for path in shoot(url, driver, args.out):
                    print(f"wrote {path}")
            finally:
                driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
