"""End to end in headless Chromium (Selenium, the system chromedriver): a real `metalens dashboard` process on a
tiny store + SAE. Screenshots (1280x800 and 390x844) go to $METALENS_SCREENSHOTS or the test's temp directory."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_dashboard import SAE_ID, build

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def ensure_chromium() -> None:
    """Install Debian's chromium + chromium-driver when missing and we can (root + apt); skip otherwise."""
    if Path(CHROMIUM).exists() and Path(DRIVER).exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium chromium-driver) and this user cannot install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium", "chromium-driver"]):
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            pytest.skip(f"could not install Chromium: {' '.join(cmd)} failed")
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.skip("apt installed chromium but /usr/bin/chromium or /usr/bin/chromedriver is missing")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def site(tiny, tmp_path_factory):
    pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium==4.51.0)")
    ensure_chromium()
    paths = build(tmp_path_factory.mktemp("dashb"), tiny)
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "metalens.dashboard", "--model", "tiny", "--db", str(paths["db"]),
                             "--store", str(paths["store"]), "--sae", str(paths["sae"]), "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("the dashboard exited: " + proc.stdout.read().decode())
            time.sleep(0.1)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,800"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)  # no Selenium Manager download
    shots = Path(os.environ.get("METALENS_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    shots.mkdir(parents=True, exist_ok=True)
    try:
        yield dict(url=url, driver=driver, shots=shots)
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(10)


def shoot(site, name: str, focus: str | None = None) -> None:
    """Screenshots at desktop and phone sizes (scrolled to `focus`); the page must not scroll sideways."""
    d = site["driver"]
    for label, (w, h) in (("desktop", (1280, 800)), ("phone", (390, 844))):
        d.set_window_size(w, h)
        if focus:
            d.execute_script("document.querySelector(arguments[0]).scrollIntoView()", focus)
        d.save_screenshot(str(site["shots"] / f"{name}-{label}.png"))
        overflow = d.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{name} scrolls sideways by {overflow}px at {w}px wide"
    d.set_window_size(1280, 800)


def wait_for(driver, css: str, timeout: float = 30):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))


def test_feature_page_and_search(site):
    from selenium.webdriver.common.by import By

    d = site["driver"]
    d.get(site["url"] + "/feature/sae0/3")
    assert d.find_element(By.TAG_NAME, "h1").text == SAE_ID.format(3)
    assert "the word <b>Paris</b> in geography" in d.find_element(By.CLASS_NAME, "expl").text  # shown as text
    assert d.find_elements(By.CSS_SELECTOR, "#top .tok")
    assert d.execute_script("return document.querySelectorAll('script:not([src])').length") == 0  # nothing injected
    shoot(site, "feature")
    shoot(site, "feature-top", "#top")
    d.get(site["url"] + "/search")
    box = d.find_element(By.NAME, "q")
    box.send_keys("paris geography")
    box.submit()
    first = wait_for(d, "#results a")
    assert first.text == SAE_ID.format(3)
    shoot(site, "search")
    d.get(site["url"] + "/search?mode=token&q=%27%20Paris%27")
    assert d.find_elements(By.CSS_SELECTOR, "#results a")
    d.get(site["url"] + "/runs/1")
    img = wait_for(d, "figure img")
    assert d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == 1  # the 1x1 PNG
    d.get(site["url"] + "/")
    shoot(site, "home")
    d.get(site["url"] + "/features?sort=score")
    assert d.find_element(By.CSS_SELECTOR, "#features a").text == SAE_ID.format(3)
    shoot(site, "features")


def test_try_it_oracle_monitor_and_steer(site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d = site["driver"]
    d.get(site["url"] + "/try")
    d.find_element(By.NAME, "feature").send_keys("sae0:3")
    d.find_element(By.NAME, "text").send_keys("The city of Paris")
    d.find_element(By.ID, "try-go").click()
    assert len(wait_for(d, "#try-result").find_elements(By.CLASS_NAME, "tok")) == len("The city of Paris")  # bytes
    d.find_element(By.ID, "ask-go").click()
    probs = wait_for(d, "#oracle-result").text
    assert "Text-only control" in probs and probs.count("P(Yes)") == 2
    shoot(site, "try", "#oracle-result")

    d.get(site["url"] + "/monitor?features=sae0:3,neurons0-1:5%3E0")
    d.find_element(By.ID, "max-new").clear()
    d.find_element(By.ID, "max-new").send_keys("12")
    d.find_element(By.ID, "generate").click()
    WebDriverWait(d, 60).until(lambda drv: drv.find_element(By.ID, "stream").get_attribute("data-done") == "1")
    status = d.find_element(By.ID, "status").text
    n = len(d.find_elements(By.CSS_SELECTOR, "#stream .st"))
    assert status.startswith(f"{n} tokens") and 1 <= n <= 12, status
    assert len(d.find_elements(By.CSS_SELECTOR, "#stream .st .r")) == 2 * n  # two readings under each token
    assert int(d.find_element(By.ID, "stream").get_attribute("data-first-token-ms")) >= 0
    values = [float(r.get_attribute("title").split(" = ")[1].split(" ")[0])
              for r in d.find_elements(By.CSS_SELECTOR, "#stream .st .r") if r.text.startswith("neurons0-1:5")]
    assert len(d.find_elements(By.CSS_SELECTOR, "#stream .st.flag")) == sum(v > 0 for v in values)  # flags shown
    shoot(site, "monitor", "#stream")

    d.get(site["url"] + "/steer?feature=sae0:3")
    d.find_element(By.NAME, "strength").clear()
    d.find_element(By.NAME, "strength").send_keys("40")
    d.find_element(By.ID, "steer-go").click()
    gens = wait_for(d, "#steer-result").find_elements(By.CLASS_NAME, "gen")
    assert len(gens) == 2
    assert "recorded as run" in d.find_element(By.TAG_NAME, "main").text
    shoot(site, "steer", "#steer-result")
