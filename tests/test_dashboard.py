"""The dashboard in a real headless browser (Debian's chromium + chromedriver)."""

import shutil
import socket
import subprocess
import time
import urllib.request

import optuna
import pytest

from tests.conftest import CLI, interruptible


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def study_storage(tmp_path):
    storage = f"sqlite:///{tmp_path}/dash.db"
    study = optuna.create_study(study_name="dashboard-check", storage=storage, direction="maximize")
    for value in (0.61, 0.72, 0.68):
        trial = study.ask({"model.conv": optuna.distributions.CategoricalDistribution(["gated-gcn", "gcn"])})
        study.tell(trial, value)
    return storage


@pytest.mark.browser
def test_dashboard_shows_the_study_in_a_real_browser(study_storage, tmp_path):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium and chromedriver are not installed (tests/run.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    server = subprocess.Popen(
        [*CLI, "dashboard", "--storage", study_storage, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=interruptible,
    )
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chrome'}",
    ):
        options.add_argument(flag)
    driver = None
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "dashboard did not start"
                time.sleep(0.3)
        driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")), options=options)
        driver.get(f"http://127.0.0.1:{port}/dashboard")
        WebDriverWait(driver, 30).until(lambda d: "dashboard-check" in d.find_element(By.TAG_NAME, "body").text)
        driver.get(f"http://127.0.0.1:{port}/dashboard/studies/1/trials")
        WebDriverWait(driver, 30).until(lambda d: "Trial 2" in d.find_element(By.TAG_NAME, "body").text)
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "Trial 0" in body and "Trial 1" in body
        driver.save_screenshot(str(tmp_path / "dashboard.png"))
    finally:
        if driver is not None:
            driver.quit()
        server.send_signal(2)  # Ctrl-C
        try:
            output = server.communicate(timeout=180)[0].decode()  # a guard against a hang, not a speed test
        except subprocess.TimeoutExpired:
            server.kill()  # a server that ignored the Ctrl-C must not outlive the test
            raise
    assert f"http://127.0.0.1:{port}/dashboard" in output
    assert server.returncode == 0 and "dashboard stopped" in output
