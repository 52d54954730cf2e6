"""The web app with a video and an audio model beside the image model, in headless Chromium: choosing a
video or audio model turns the edit modes off, and its results play (an animated GIF; a WAV in an
``<audio>`` player that Chromium decodes). Needs what test_serve_browser.py needs."""

from __future__ import annotations

import pytest

from test_serve_browser import _browser_or_skip, driver, fill, final_images, new_results, open_page, viewport, wait

assert driver  # a module-scoped fixture, shared from test_serve_browser


@pytest.fixture(scope="module")
def media_server(tmp_path_factory):
    _browser_or_skip()
    from difflab.serve import ServeConfig, background_server
    config = ServeConfig(outputs=tmp_path_factory.mktemp("serve"), token=None, port=0,
                         models=["shapes", "shapes-video", "sounds"])
    with background_server(config) as url:
        yield url


def choose(driver, model: str) -> None:
    driver.execute_script("const s = document.getElementById('model'); s.value = arguments[0];"
                          "s.dispatchEvent(new Event('change'));", model)


def test_video_and_audio_models_make_clips_and_sounds_that_play(driver, media_server):
    from selenium.webdriver.common.by import By
    viewport(driver, 1280, 800)
    open_page(driver, media_server)
    find = driver.find_element
    assert not find(By.ID, "mode-inpaint").get_attribute("disabled")        # the image model: every mode

    choose(driver, "shapes-video")
    assert find(By.ID, "mode-img2img").get_attribute("disabled") and find(By.ID, "width").get_attribute("disabled")
    chips = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#examples .chip")]
    assert "a red circle moving right" in chips
    fill(driver, "prompt", "a red circle moving right")
    fill(driver, "steps", 3)
    fill(driver, "seed", 7)
    shown = final_images(driver)
    find(By.ID, "generate").click()
    ((src, width),) = new_results(driver, shown, timeout=60)
    assert src.endswith(".gif") and width == 32
    download = find(By.CSS_SELECTOR, "#results a[download]").get_attribute("href")
    assert download.endswith(".mp4")
    assert driver.execute_script("return document.querySelectorAll('#results .send-img2img').length") == 0
    # its recipe: download the MP4, no edit buttons; "use these settings" from the image model's form
    choose(driver, "shapes")
    fill(driver, "width", 64)
    find(By.CSS_SELECTOR, "#results .result-open").click()
    assert find(By.ID, "recipe-download").get_attribute("href").endswith(".mp4")
    assert not find(By.ID, "send-img2img").is_displayed()
    find(By.ID, "use-settings").click()
    assert driver.execute_script("return document.getElementById('model').value") == "shapes-video"
    assert find(By.ID, "width").get_attribute("value") == "" and find(By.ID, "mode-img2img").get_attribute("disabled")

    choose(driver, "sounds")
    fill(driver, "prompt", "a low note then a high note")
    find(By.ID, "generate").click()
    ((src, width),) = new_results(driver, [(src, width)], timeout=60)
    assert src.endswith(".png") and width == 64                              # the spectrogram
    duration = wait(driver, lambda d: d.execute_script(
        "const a = document.querySelector('#results audio'); if (!a) return null;"
        "if (a.readyState < 1) { a.preload = 'metadata'; a.load(); return null; } return a.duration;"),
        timeout=20, what="the WAV's metadata in the player")
    assert abs(duration - 16_384 / 16_000) < 0.01
    assert driver.execute_script("return document.querySelector('#results audio').src").endswith(".wav")
    find(By.CSS_SELECTOR, "#results .result-open").click()                  # its recipe dialog plays it too
    shown = driver.execute_script("const a = document.getElementById('recipe-audio');"
                                  "return !a.hidden && a.getBoundingClientRect().height > 0")
    assert shown                                                             # (selenium's is_displayed says no to <audio>)
    assert find(By.ID, "recipe-audio").get_attribute("src").endswith(".wav")
    assert find(By.ID, "recipe-download").get_attribute("href").endswith(".wav")
    find(By.ID, "recipe-close").click()

    choose(driver, "shapes")                                                 # back to images: the modes return
    assert not find(By.ID, "mode-inpaint").get_attribute("disabled")
