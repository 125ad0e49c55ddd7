"""The dashboard in a real headless browser (Debian's chromium + chromedriver)."""

import re
import shutil
import socket
import subprocess
import time
import urllib.request

import optuna
import pytest

from ggt_search import cli
from tests.conftest import CLI, interruptible
from tests.test_ablate_report import ABLATION
from tests.test_search import bbbp_csv, space  # noqa: F401  (fixtures: 300 real molecules, a tiny space)


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


def study_note(storage: str, name: str) -> str:
    """The note optuna-dashboard shows on a study's page."""
    from optuna_dashboard._note import get_note_from_system_attrs

    study = optuna.load_study(study_name=name, storage=storage)
    return get_note_from_system_attrs(study._storage.get_study_system_attrs(study._study_id), None)["body"]


def test_an_ablation_leaves_its_verdicts_as_the_note_and_each_run_its_values(bbbp_csv, tmp_path, capsys):  # noqa: F811
    (tmp_path / "conv.yaml").write_text(ABLATION)
    storage = f"sqlite:///{tmp_path}/a.db"
    assert cli.main(["ablate", str(tmp_path / "conv.yaml"), "--dataset", str(bbbp_csv), "--storage", storage]) == 0
    assert "(the verdicts are their note in the dashboard)" in capsys.readouterr().out
    note = study_note(storage, "conv")
    assert note.startswith("## Ablation: anisotropic convolution (conv)\n") and "### Verdicts" in note
    for variant in ("gcn", "mlp"):  # the verdict table's rows: effect [interval: unbounded at 3 seeds] and its mark
        assert re.search(rf"^\|\s*{variant}\s*\|\s*[+-]\d\.\d{{3}} \[unbounded at 3 seeds\] \?", note, re.M)
    assert "![" not in note and "## Reproducibility" not in note and "### bbbp300: scores" not in note
    for trial in optuna.load_study(study_name="conv", storage=storage).trials:
        attrs = trial.user_attrs
        assert attrs["dataset"] == "bbbp300" and attrs["variant"] in ("baseline", "gcn", "mlp")
        assert attrs["seed"] in (0, 1, 2)
        assert attrs["parameters"] > 0 and attrs["seconds_per_epoch"] > 0


def test_a_search_leaves_its_best_configurations_and_budget_curve_as_the_note(
    bbbp_csv,  # noqa: F811
    space,  # noqa: F811
    tmp_path,
    capsys,
):
    storage = f"sqlite:///{tmp_path}/s.db"
    argv = ["search", "--study", "s", "--dataset", str(bbbp_csv), "--space", str(space), "--trials", "3"]
    assert cli.main([*argv, "--epochs", "2", "--batch-size", "64", "--device", "cpu", "--storage", storage]) == 0
    assert "the report's best configurations are the study's note in the dashboard" in capsys.readouterr().out
    note = study_note(storage, "s")
    assert note.startswith("## Search: s\n")
    assert "### Best configurations" in note and "### Optimisation history" in note
    curve = re.findall(r"^\|\s+(\d+) \|\s+([\d.]+) \|$", note, re.M)  # the budget curve's rows
    assert [n for n, _ in curve] == ["1", "2", "3"]
    assert [float(best) for _, best in curve] == sorted(float(best) for _, best in curve)  # rocauc: best so far
    assert "Parameter importances" not in note and "![" not in note
