"""Progress of long steps: plain lines in a log (stderr not a terminal), a tqdm bar in a terminal; numbers unchanged."""

import re

import pytest
import torch

from ggt_search import progress
from ggt_search.positional import laplacian_pe
from ggt_search.progress import Progress, duration


@pytest.fixture
def every_update(monkeypatch):
    """Plain lines as often as a tenth of the way allows: the test needs no step that takes seconds."""
    monkeypatch.setattr(progress, "PLAIN_EVERY", 0.0)


def test_a_step_in_a_log_prints_plain_lines_with_count_and_time_left(bbbp_small, every_update, capsys):
    pe = laplacian_pe(bbbp_small.edges, bbbp_small.node_ptr, bbbp_small.edge_ptr, 4)
    lines = capsys.readouterr().err.splitlines()
    pattern = r"Laplacian PEs \(k=4\): [\d,]+/240 graphs \(\d+%\), .* left"
    counted = [line for line in lines if re.fullmatch(pattern, line)]
    assert 2 <= len(counted) <= 9, lines  # at most one per tenth, never the 100% one
    assert lines[-1].startswith("Laplacian PEs (k=4): done in ")
    assert not any("\r" in line for line in lines)  # no bar redrawn in a log
    assert torch.equal(pe, laplacian_pe(bbbp_small.edges, bbbp_small.node_ptr, bbbp_small.edge_ptr, 4))


def test_a_short_step_in_a_log_prints_nothing(bbbp_small, capsys):
    laplacian_pe(bbbp_small.edges, bbbp_small.node_ptr, bbbp_small.edge_ptr, 4)  # far below PLAIN_EVERY
    assert capsys.readouterr().err == ""


def test_an_unknown_total_says_how_far_without_a_time_left(every_update, capsys):
    with Progress(None, "featurizing corpus.csv", "molecules") as bar:
        bar.update(50_000, note="chunk 1")
    assert capsys.readouterr().err.splitlines()[0] == "featurizing corpus.csv: 50,000 molecules, 0 s; chunk 1"


def test_a_terminal_gets_a_bar(monkeypatch, capsys):
    monkeypatch.setattr(progress, "QUIET_SECONDS", 0.0)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    with Progress(4, "trial 3", "epochs") as bar:
        for _ in range(4):
            bar.update(note="valid rmse 23.1000")
        assert bar.bar.n == 4 and bar.bar.postfix == "valid rmse 23.1000"
    drawn = capsys.readouterr().err
    assert "trial 3:" in drawn and "/4 [" in drawn and "\r" in drawn  # tqdm redraws its line in place


def line_of_a_worker(out, worker: int, device: str) -> None:
    """A worker's target: write the terminal line its bars draw on."""
    (out / f"worker-{worker}").write_text(str(progress.LINE))


def test_each_worker_draws_its_bars_on_its_own_line(monkeypatch, tmp_path):
    from ggt_search.workers import run_workers

    run_workers(line_of_a_worker, tmp_path, 2, "cpu")
    assert [(tmp_path / f"worker-{i}").read_text() for i in (0, 1)] == ["0", "1"]
    monkeypatch.setattr(progress, "LINE", 1)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    with Progress(4, "trial 3", "epochs") as bar:
        assert abs(bar.bar.pos) == 1  # the second worker's line, below the first's


@pytest.mark.parametrize("seconds, text", [(44.6, "45 s"), (720, "12 min"), (12000, "3 h 20 min")])
def test_durations_read_as_a_person_says_them(seconds, text):
    assert duration(seconds) == text
