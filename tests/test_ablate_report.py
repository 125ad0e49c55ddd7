"""Ablations and reports, from a real small ablation run on ogbg-molbbbp molecules (CPU)."""

import re
import shutil

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState
from scipy import stats
from sklearn.metrics import roc_auc_score

from ggt_search import ablate, cli
from ggt_search.ablate import (
    AblationSettings,
    GridLine,
    load_ablation,
    run_ablation,
    run_on_dataset,
    run_pair,
)
from ggt_search.config import DatasetSpec
from ggt_search.datasets import load_dataset
from ggt_search.errors import UserError
from ggt_search.files import file_sha256
from ggt_search.record import StudyRecord
from ggt_search.report import build_report
from ggt_search.report.ablation import ablation_group, ablation_runs
from ggt_search.report.sizes import size_quarters
from ggt_search.report.statistics import holm, paired_comparison
from ggt_search.storage import artifact_dir
from ggt_search.trials import StoredTestPredictions, load_predictions
from tests.conftest import ROOT, age_heartbeats
from tests.test_search import bbbp_csv  # noqa: F401  (fixture: 300 real molecules)

ABLATION = """
idea: anisotropic convolution
question: gated vs mean aggregation
baseline:
  model: {conv: gated-gcn, layers: 1, hidden: 8, pe_dim: 4, dropout: 0.0}
  train: {batch_size: 64, device: cpu}
variants:
  gcn: {model: {conv: gcn}}
  mlp: {model: {conv: mlp}}
seeds: 0-2
epochs: 2
"""


@pytest.fixture(scope="module")
def ablation_storage(bbbp_csv, tmp_path_factory):  # noqa: F811
    folder = tmp_path_factory.mktemp("ablation")
    (folder / "conv.yaml").write_text(ABLATION)
    storage = f"sqlite:///{folder}/ablate.db"
    ablation = load_ablation(folder / "conv.yaml", dataset={"name": str(bbbp_csv)})
    run_ablation(AblationSettings(ablation, "conv", storage))
    return folder, storage


def test_every_variant_and_seed_runs_once_and_resumes(ablation_storage, bbbp_csv, tmp_path, capsys):  # noqa: F811
    folder, shared_storage = ablation_storage
    shutil.copy(
        shared_storage.removeprefix("sqlite:///"), tmp_path / "own.db"
    )  # adding a seed must not change the shared study
    storage = f"sqlite:///{tmp_path}/own.db"
    study = optuna.load_study(study_name="conv", storage=storage)
    pairs = sorted(run_pair(t) for t in study.trials)
    assert pairs == sorted((v, s) for v in ("baseline", "gcn", "mlp") for s in (0, 1, 2))
    assert all(t.state == optuna.trial.TrialState.COMPLETE and 0 <= t.user_attrs["test"] <= 1 for t in study.trials)
    ablation = load_ablation(folder / "conv.yaml", dataset={"name": str(bbbp_csv)}, seeds="0-3")  # one more seed
    (again,) = run_ablation(AblationSettings(ablation, "conv", storage))
    out = capsys.readouterr().out
    assert "3 runs to do" in out  # only seed 3 of each variant
    # one line per run: its count in the grid (each its own), which run, its scores, no search's "best"
    lines = re.findall(r"^\[(\d+)/12\] bbbp300 (\w+) seed 3: valid rocauc [\d.]+, test [\d.]+ in \d+ s(.*)$", out, re.M)
    assert sorted(count for count, _, _ in lines) == ["10", "11", "12"]
    assert sorted(variant for _, variant, _ in lines) == ["baseline", "gcn", "mlp"]
    assert [left for count, _, left in lines if count == "12"] == [""] and "best" not in out
    assert len(again.trials) == 12


def test_report_has_every_section_and_figure(ablation_storage, tmp_path):
    _, storage = ablation_storage
    out = tmp_path / "report"
    build_report(["conv"], storage, out)
    md = (out / "report.md").read_text()
    for section in (
        "Ablation: anisotropic convolution",
        "Verdicts",
        "scores per variant",
        "paired differences",
        "validation and test",
        "Ranks across",
        "Run configuration",
        "Reproducibility",
        "as recorded by each run",
        "sha256",
        "simultaneous 95% interval",
        "How to read the verdicts",
        "Convergence and compute",
        "bbbp300: test differences by molecule size",
        "Family: the 2 comparisons of conv; control: the baseline runs of this ablation",
    ):
        assert section in md, section
    verdicts = md.split("### Verdicts")[1].split("###")[0]  # the first section: a row per idea, marked
    # 3 seeds, 8 sign patterns: even p = 1/9 is above the level, so no interval is bounded and none decides.
    assert re.search(r"^\| gcn +\| [+-]\d\.\d{3} \[unbounded at 3 seeds\] \? ", verdicts, re.M)
    assert "p_wilcoxon" not in md and "family-adjusted" not in md
    for figure in ("scores", "differences", "curves"):
        assert (out / f"{figure}-bbbp300.png").stat().st_size > 5000
    assert (out / "verdicts.png").stat().st_size > 5000 and "(verdicts.png)" in verdicts
    assert (out / "ranks.png").exists() and (out / "runs.csv").read_text().count("\n") == 1 + 9
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 5  # self-contained


def test_differences_by_molecule_size_are_each_quarters_own_scores_paired_by_seed(ablation_storage):
    _, storage = ablation_storage
    (d,) = ablation_group([optuna.load_study(study_name="conv", storage=storage)])
    store = FileSystemArtifactStore(str(artifact_dir(storage)))
    table = size_quarters(d, StoredTestPredictions(artifact_dir(storage))).set_index("variant")
    graphs = load_dataset(DatasetSpec(**StudyRecord.of(d.study).dataset))
    atoms = graphs.num_nodes().numpy()
    test = graphs.split["test"].numpy()
    bounds = [tuple(map(int, re.match(r"(\d+)-(\d+) atoms \((\d+)\)", c).groups())) for c in table.columns]
    assert sum(n for *_, n in bounds) == len(test)
    assert [lo for lo, _, _ in bounds[1:]] == [hi + 1 for _, hi, _ in bounds[:-1]]  # they tile the sizes
    assert bounds[0][0] <= atoms[test].min() and bounds[-1][1] == atoms[test].max()

    def quarter_auc(variant, seed, lo, hi):
        trial = next(t for t in d.study.trials if run_pair(t) == (variant, seed))
        p = load_predictions(store, trial.user_attrs["predictions"])["test"]
        within = (atoms[p.graphs] >= lo) & (atoms[p.graphs] <= hi)
        truth = p.labels[within, 0]
        return roc_auc_score(truth, p.predicted[within, 0]) if 0 < truth.sum() < len(truth) else np.nan

    for column, (lo, hi, _) in zip(table.columns, bounds):
        own = [quarter_auc("baseline", s, lo, hi) for s in (0, 1, 2)]
        assert table.loc["baseline (its rocauc)", column] == pytest.approx(np.nanmean(own))
        paired = [quarter_auc("gcn", s, lo, hi) - quarter_auc("baseline", s, lo, hi) for s in (0, 1, 2)]
        assert table.loc["gcn", column] == pytest.approx(np.nanmean(paired))


def test_search_study_report(tmp_path, bbbp_csv):  # noqa: F811
    from ggt_search.config import RunConfig
    from ggt_search.study import SearchSettings, search

    space = tmp_path / "space.yaml"
    space.write_text(
        "model.conv: {choices: [gated-gcn, gcn, mlp]}\nmodel.norm: {choices: [batch, layer]}\n"
        "model.layers: 1\nmodel.hidden: 8\n"
    )
    base = RunConfig.from_dict({"dataset": str(bbbp_csv), "train": {"epochs": 2, "batch_size": 64, "device": "cpu"}})
    storage = f"sqlite:///{tmp_path}/s.db"
    search(
        SearchSettings(
            study="s", base=base, space_file=str(space), trials=6, sampler="grid", pruner="none", storage=storage
        )
    )
    out = tmp_path / "report"
    build_report(["s"], storage, out)
    md = (out / "report.md").read_text()
    for section in ("Optimisation history", "Parameter importances", "Best configurations", "Design-space ranks"):
        assert section in md
    search_part = md.split("## Reproducibility")[0]
    assert not any(
        column in search_part for column in ("| test", "test_mean", "test rocauc", "test_diff")
    )  # no test score shown
    for figure in ("history-s", "importances-s", "design-ranks-s"):
        assert (out / f"{figure}.png").exists()
    assert "Warning: only 6 completed trials" in md and "sampler grid, pruner none" in md
    assert f"s: dataset bbbp300, sha256 {file_sha256(bbbp_csv)}, split {{'train': " in md  # the data the search ran on
    study = optuna.load_study(study_name="s", storage=storage)
    assert study.metric_names == ["valid rocauc"] and study.user_attrs["epochs"] == 2  # what the dashboard shows
    record = StudyRecord.of(study)
    assert (record.kind, record.metric, record.direction, record.sampler, record.pruner) == (
        "search",
        "rocauc",
        "maximize",
        "grid",
        "none",
    )
    assert record.dataset == base.dataset.to_dict()
    assert record.space["model.conv"] == {"choices": ["gated-gcn", "gcn", "mlp"]}


def test_a_study_record_round_trips(ablation_storage, bbbp_csv):  # noqa: F811
    _, storage = ablation_storage
    study = optuna.load_study(study_name="conv", storage=storage)
    record = StudyRecord.of(study)
    assert (record.kind, record.group, record.metric, record.direction, record.epochs) == (
        "ablation",
        "conv",
        "rocauc",
        "maximize",
        2,
    )
    assert record.dataset["name"] == str(bbbp_csv) and record.checksum == file_sha256(bbbp_csv)
    assert record.summary["name"] == "bbbp300" and sum(record.summary["split"].values()) == record.summary["graphs"]
    assert record.ablation["seeds"] == [0, 1, 2] and set(record.ablation["variants"]) == {"gcn", "mlp"}
    assert record.command.startswith("ggt-search") and study.metric_names == ["valid rocauc"]
    elsewhere = optuna.create_study()  # in memory
    record.write(elsewhere)
    assert StudyRecord.of(elsewhere) == record and elsewhere.metric_names == ["valid rocauc"]


def test_studies_written_before_study_records_still_read(tmp_path):
    """The committed study (reports/all/study.db) was written by ggt-search 3fb4b52: its ablations kept
    the dataset's summary, with the checksum in it, as 'dataset'. Its report must regenerate."""
    shutil.copy(ROOT / "reports" / "all" / "study.db", tmp_path / "all.db")
    summaries = optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/all.db")
    assert all("summary" not in s.user_attrs for s in summaries), "study.db was rewritten: this test needs an old one"
    records = {s.study_name: StudyRecord.of(s) for s in summaries}
    bbbp, esol = records["all--ogbg-molbbbp"], records["all--ogbg-molesol"]
    assert (bbbp.kind, bbbp.group, bbbp.metric, bbbp.direction, bbbp.epochs) == (
        "ablation",
        "all",
        "rocauc",
        "maximize",
        20,
    )
    assert (esol.metric, esol.direction) == ("rmse", "minimize")
    assert bbbp.dataset["name"] == bbbp.summary["name"] == "ogbg-molbbbp" and "checksum" not in bbbp.summary
    assert re.fullmatch("[0-9a-f]{64}", bbbp.checksum)
    assert bbbp.summary["split"] == {"train": 1631, "valid": 204, "test": 204}


def test_report_renders_in_headless_chromium(ablation_storage, tmp_path):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium and chromedriver are not installed (tests/run.sh installs them)")
    from PIL import Image
    from selenium import webdriver

    _, storage = ablation_storage
    index = build_report(["conv"], storage, tmp_path / "r")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,2000",  # a laptop's width
        "--disable-background-networking",
        f"--user-data-dir={tmp_path / 'chrome'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")), options=options)
    try:
        driver.get(index.as_uri())
        assert all(
            driver.execute_script("return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        )
        page, window = driver.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert page <= window, "the page scrolls sideways at a laptop's width"
        driver.save_screenshot(str(tmp_path / "shot.png"))
    finally:
        driver.quit()
    pixels = np.asarray(Image.open(tmp_path / "shot.png").convert("L"))
    assert pixels.std() > 10  # not a blank page


def test_statistics_match_scipy():
    variant = np.array([0.81, 0.79, 0.84, 0.80, 0.83, 0.82])
    baseline = np.array([0.78, 0.79, 0.80, 0.77, 0.81, 0.80])
    result = paired_comparison(variant, baseline)
    assert result["p_t"] == pytest.approx(stats.ttest_rel(variant, baseline).pvalue)
    assert "p_wilcoxon" not in result  # it cannot reject at these seeds and family sizes: not shown
    low, high = stats.t.interval(0.95, 5, loc=(variant - baseline).mean(), scale=stats.sem(variant - baseline))
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((low, high))
    # Holm on known numbers: sorted p 0.01, 0.02, 0.04 -> 0.03, 0.04, 0.04 (monotone)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])


def test_bad_ablation_files_and_study_names(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("baseline: {}\nvariants:\n  x: {model: {conv: transformer}}\n")
    with pytest.raises(UserError, match="variant 'x': model.conv = 'transformer'"):
        load_ablation(bad)
    optuna.create_study(study_name="other", storage=f"sqlite:///{tmp_path}/some.db")
    assert cli.main(["report", "nosuch", "--storage", f"sqlite:///{tmp_path}/some.db"]) == 2
    assert "no study named nosuch" in capsys.readouterr().err


def test_a_killed_run_is_rerun_when_the_ablation_restarts(bbbp_csv, tmp_path, capsys):  # noqa: F811
    """A worker killed mid-run leaves a RUNNING trial; once its heartbeat is stale, a restart reruns that pair."""
    from ggt_search.ablate import enqueue_missing
    from ggt_search.storage import open_storage

    (tmp_path / "conv.yaml").write_text(ABLATION.replace("seeds: 0-2", "seeds: 0").replace("epochs: 2", "epochs: 1"))
    ablation = load_ablation(tmp_path / "conv.yaml", dataset={"name": str(bbbp_csv)})
    storage = f"sqlite:///{tmp_path}/killed.db"
    study = optuna.create_study(study_name="conv", storage=open_storage(storage, heartbeat=1), direction="maximize")
    enqueue_missing(study, ablation)
    killed = study.ask()  # a worker takes the first pair, beats once, and dies
    study._storage.record_heartbeat(killed._trial_id)
    killed_pair = run_pair(study.trials[killed.number])
    age_heartbeats(storage, seconds=60)  # past the grace period of 4 heartbeats, without waiting for it

    (done,) = run_ablation(AblationSettings(ablation, "conv", storage, heartbeat=1))
    complete = [run_pair(t) for t in done.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]
    assert sorted(complete) == [("baseline", 0), ("gcn", 0), ("mlp", 0)]
    assert killed_pair in complete
    assert done.trials[killed.number].state == optuna.trial.TrialState.FAIL


@pytest.mark.parametrize(
    "text, epochs, message",
    [
        ("variants:\n  x: {model: {conv: gcn}}\n", None, "has no 'baseline'"),
        (
            "baseline: {model: {layers: 1}}\nvariants:\n  x: {model: {conv: gcn}}\nepochs: 0\n",
            None,
            "baseline: train.epochs must be >= 1, got 0",
        ),
        (
            "baseline: {model: {layers: 1}}\nvariants:\n  x: {model: {conv: gcn}}\nepochs: 5\n",
            0,
            "baseline: train.epochs must be >= 1, got 0",
        ),
    ],
)
def test_ablation_files_that_would_train_something_else_are_refused(tmp_path, text, epochs, message):
    path = tmp_path / "a.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_ablation(path, epochs=epochs)


def test_power_analysis_matches_the_known_paired_t_figures():
    from ggt_search.report.statistics import detectable_effect, power, seeds_needed

    # Two-sided paired t-test, n = 10, alpha 0.05, power 0.8: d = 0.996 (G*Power rounds to 0.99). Checked
    # independently by simulation: seeded draws of 10 differences with that mean reject H0 80% of the time.
    effect = detectable_effect(sd=1.0, n=10, alpha=0.05)
    assert effect == pytest.approx(0.996, abs=0.001)
    draws = np.random.default_rng(0).normal(effect, 1.0, (200_000, 10))
    t = draws.mean(1) / (draws.std(1, ddof=1) / np.sqrt(10))
    assert (np.abs(t) > stats.t.ppf(0.975, 9)).mean() == pytest.approx(0.8, abs=0.004)
    assert power(detectable_effect(0.02, 7, 0.05), 0.02, 7, 0.05) == pytest.approx(0.8)
    assert seeds_needed(effect, 1.0, 0.05) == 10 and seeds_needed(0.5, 1.0, 0.05) > 30


def test_power_is_statsmodels_ttest_power_and_stays_finite_where_that_is_nan():
    from statsmodels.stats.power import TTestPower

    from ggt_search.report.statistics import detectable_effect, power

    ours, theirs = [], []
    for n in (2, 3, 5, 10, 30):
        for alpha in (0.05, 0.05 / 54):
            for d in np.geomspace(0.01, 1000, 60):
                ours.append(power(d * 0.03, 0.03, n, alpha))
                theirs.append(TTestPower().power(d, n, alpha))
    ours, theirs = np.array(ours), np.array(theirs)
    finite = np.isfinite(theirs)
    assert np.all((0 <= ours) & (ours <= 1)) and finite.sum() > 100
    assert ours[finite] == pytest.approx(theirs[finite], abs=1e-10)
    # Where statsmodels gives NaN, e.g. 2 seeds and 54 comparisons: the detectable effect, checked by simulation.
    effect = detectable_effect(sd=1.0, n=2, alpha=0.05 / 54)
    draws = np.random.default_rng(0).normal(effect, 1.0, (200_000, 2))
    t = draws.mean(1) / (draws.std(1, ddof=1) / np.sqrt(2))
    assert (np.abs(t) > stats.t.ppf(1 - 0.05 / 108, 1)).mean() == pytest.approx(0.8, abs=0.004)


def test_the_html_is_made_from_the_markdown_self_contained_and_escaped(tmp_path):
    from matplotlib.figure import Figure

    from ggt_search.report.page import Page

    page = Page(tmp_path, "report: <b>bold</b>")
    page.heading("variant <script>alert(1)</script>")
    page.text("p < 0.05 & `code <i>`")
    page.table(pd.DataFrame({"variant": ["<img src=x>", "gcn"], "test": [0.81234, np.nan]}))
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    page.figure(fig, "line", "a line <u>")
    page.write()
    md, html = (tmp_path / "report.md").read_text(), (tmp_path / "index.html").read_text()
    assert md.startswith("# report: <b>bold</b>\n\n## variant <script>alert(1)</script>\n\np < 0.05")
    assert "| <img src=x>" in md and "![a line <u>](line.png)\n\n*a line <u>*" in md
    for raw in ("<b>", "<script>", "<i>", "<img src=x>", "<u>"):
        assert raw not in html
    assert "<h1>report: &lt;b&gt;bold&lt;/b&gt;</h1>" in html and "<h2>variant &lt;script&gt;" in html
    assert "<p>p &lt; 0.05 &amp; <code>code &lt;i&gt;</code></p>" in html and "<td>0.8123</td>" in html.replace(
        ' style="text-align: right;"', ""
    )
    assert html.count("<img ") == 1 and 'src="data:image/png;base64,' in html and "line.png" not in html


def test_fewer_than_two_pairs_or_no_spread_are_not_testable():
    one = paired_comparison(np.array([0.8]), np.array([0.7]))
    assert not one["testable"] and "p_t" not in one and "1 paired seed" in one["why"]
    flat = paired_comparison(np.array([0.8, 0.9]), np.array([0.7, 0.8]))
    assert not flat["testable"] and "same difference" in flat["why"]


def test_a_report_never_promises_a_detectable_effect_beyond_the_metric_range():
    from ggt_search.report.ablation import design_note

    row = paired_comparison(np.array([0.80, 0.60]), np.array([0.70, 0.72]), family=20) | {"variant": "gcn"}
    assert row["detectable"] > 1  # two seeds, 20 comparisons: a ROC-AUC difference of more than 1 would be needed
    assert "cannot detect even the largest difference the metric allows (±1)" in design_note(row | {"widest": 1.0})
    assert design_note(row | {"widest": None}) is None  # RMSE has no bound: the table's detectable effect says it


def add_variant(text: str) -> str:
    return text.replace(
        "  mlp: {model: {conv: mlp}}", "  mlp: {model: {conv: mlp}}\n  post-norm: {model: {norm_position: post}}"
    )


def test_one_seed_gives_no_p_value_and_adding_a_variant_later_works(bbbp_csv, tmp_path):  # noqa: F811
    (tmp_path / "conv.yaml").write_text(ABLATION.replace("seeds: 0-2", "seeds: 0").replace("epochs: 2", "epochs: 1"))
    storage = f"sqlite:///{tmp_path}/one.db"
    run_ablation(
        AblationSettings(load_ablation(tmp_path / "conv.yaml", dataset={"name": str(bbbp_csv)}), "conv", storage)
    )
    build_report(["conv"], storage, tmp_path / "r1")
    md = (tmp_path / "r1" / "report.md").read_text()
    assert "gcn vs baseline: not testable (1 paired seed; a paired test needs at least 2)" in md
    assert re.search(r"^\| gcn +\| – 1 seed +\|$", md, re.M) and "p_maxt" not in md.split("| gcn")[1].split("\n")[0]

    (tmp_path / "conv.yaml").write_text(add_variant((tmp_path / "conv.yaml").read_text()))  # a new variant, same study
    (study,) = run_ablation(
        AblationSettings(load_ablation(tmp_path / "conv.yaml", dataset={"name": str(bbbp_csv)}), "conv", storage)
    )
    assert sorted(run_pair(t) for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == [
        ("baseline", 0),
        ("gcn", 0),
        ("mlp", 0),
        ("post-norm", 0),
    ]
    build_report(["conv"], storage, tmp_path / "r2")
    assert "post-norm vs baseline: not testable" in (tmp_path / "r2" / "report.md").read_text()


def test_a_rerun_with_other_settings_is_refused_not_pooled(ablation_storage, bbbp_csv, tmp_path):  # noqa: F811
    folder, shared_storage = ablation_storage
    shutil.copy(shared_storage.removeprefix("sqlite:///"), tmp_path / "own.db")
    longer = load_ablation(folder / "conv.yaml", dataset={"name": str(bbbp_csv)}, seeds="0-3", epochs=3)
    with pytest.raises(
        UserError, match=r"holds runs with train.epochs = 2, but this ablation asks for 3 .*--study NEW"
    ):
        run_ablation(AblationSettings(longer, "conv", f"sqlite:///{tmp_path}/own.db"))


def test_a_duplicated_run_is_kept_out_and_listed(ablation_storage, tmp_path):
    _, shared_storage = ablation_storage
    shutil.copy(shared_storage.removeprefix("sqlite:///"), tmp_path / "dup.db")
    storage = f"sqlite:///{tmp_path}/dup.db"
    study = optuna.load_study(study_name="conv", storage=storage)
    original = next(t for t in study.trials if run_pair(t) == ("gcn", 1))
    study.add_trial(optuna.trial.create_trial(value=0.0, user_attrs=original.user_attrs | {"test": 0.0}))
    build_report(["conv"], storage, tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "a duplicate of a finished run (kept out)" in md


def test_two_report_runs_write_identical_files(ablation_storage, tmp_path):
    _, storage = ablation_storage
    for name in ("a", "b"):
        build_report(["conv"], storage, tmp_path / name)
    for file in sorted((tmp_path / "a").iterdir()):
        assert file.read_bytes() == (tmp_path / "b" / file.name).read_bytes(), file.name


def test_an_ablation_on_several_datasets_gives_verdicts_per_dataset_and_ranks(moleculenet, tmp_path):
    tables = []
    for name, rows in (("bbbp-a", slice(0, 300)), ("bbbp-b", slice(300, 600))):
        path = tmp_path / f"{name}.csv"
        pd.read_csv(moleculenet / "BBBP.csv").iloc[rows].to_csv(path, index=False)
        tables.append(str(path))
    text = (
        ABLATION.replace("seeds: 0-2", "seeds: 0-1").replace("epochs: 2", "epochs: 1")
        + f"datasets: [{tables[0]}, {tables[1]}]\n"
    )
    (tmp_path / "multi.yaml").write_text(text)
    storage = f"sqlite:///{tmp_path}/multi.db"
    studies = run_ablation(AblationSettings(load_ablation(tmp_path / "multi.yaml"), "multi", storage))
    assert [s.study_name for s in studies] == ["multi--bbbp-a", "multi--bbbp-b"]
    build_report(["multi"], storage, tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    for dataset in ("bbbp-a", "bbbp-b"):
        assert f"| {dataset} rocauc ↑" in md and f"{dataset}: scores per variant" in md
    assert "Ranks across (dataset, seed) cells" in md and (tmp_path / "r" / "ranks.png").exists()
    assert "Family: the 4 comparisons of multi" in md and "pooled d" in md and "1 - (1 - 0.05)^(1/2)" in md


def test_a_report_of_an_unfinished_ablation_says_what_its_verdicts_leave_out(
    moleculenet, tmp_path, monkeypatch, capsys
):
    tables = []
    for name, rows in (("bbbp-a", slice(0, 300)), ("bbbp-b", slice(300, 600))):
        pd.read_csv(moleculenet / "BBBP.csv").iloc[rows].to_csv(tmp_path / f"{name}.csv", index=False)
        tables.append(str(tmp_path / f"{name}.csv"))
    text = ABLATION.replace("epochs: 2", "epochs: 1") + f"datasets: [{tables[0]}, {tables[1]}]\n"
    (tmp_path / "multi.yaml").write_text(text)
    storage = f"sqlite:///{tmp_path}/multi.db"
    ablation, two_seeds = load_ablation(tmp_path / "multi.yaml"), load_ablation(tmp_path / "multi.yaml", seeds="0-1")
    run_on_dataset(AblationSettings(two_seeds, "multi", storage), two_seeds.datasets[0], ["bbbp-a", "bbbp-b"])
    # As a resume with a third seed, killed before its runs of bbbp-a finished, leaves it: bbbp-b not started.
    with monkeypatch.context() as killed:
        killed.setattr(ablate, "run_workers", lambda *args: None)
        run_on_dataset(AblationSettings(ablation, "multi", storage), ablation.datasets[0], ["bbbp-a", "bbbp-b"])
    build_report(["multi"], storage, tmp_path / "r")
    verdicts = (tmp_path / "r" / "report.md").read_text().split("### Verdicts")[1].split("|")[0]
    assert "Unfinished: bbbp-a has 6 of its 9 runs; bbbp-b has not started." in verdicts
    # Its intervals are already at the level of the file's two datasets, so they hold when bbbp-b is done.
    assert "(1 - (1 - 0.05)^(1/2), over the ablation file's datasets)" in (tmp_path / "r" / "report.md").read_text()
    run_ablation(AblationSettings(ablation, "multi", storage))  # resumed to the end
    build_report(["multi"], storage, tmp_path / "done")
    assert "Unfinished" not in (tmp_path / "done" / "report.md").read_text()
    # A later resume on bbbp-a (a grown grid) counts bbbp-b's finished runs as done, not as still to run.
    study = optuna.load_study(study_name="multi--bbbp-a", storage=storage)
    last = max(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.datetime_complete)
    capsys.readouterr()
    GridLine(AblationSettings(ablation, "multi", storage), ablation.datasets[0], "bbbp-a", "rocauc")(study, last)
    assert capsys.readouterr().out.startswith("[18/18] bbbp-a")


def test_the_packaged_cpu_suite_replaces_the_files_datasets(moleculenet, tmp_path, monkeypatch):
    import ggt_search.ablate as ablate

    seen = []
    monkeypatch.setattr(ablate, "run_ablation", lambda settings: seen.append(settings.ablation) or [])
    assert (
        cli.main(
            [
                "ablate",
                "ablations/convolution.yaml",
                "--suite",
                "cpu",
                "--source",
                str(moleculenet),
                "--storage",
                f"sqlite:///{tmp_path}/s.db",
            ]
        )
        == 0
    )
    assert [d.name for d in seen[0].datasets] == [
        "ogbg-molbbbp",
        "ogbg-molclintox",
        "ogbg-moltox21",
        "ogbg-molesol",
        "ogbg-molfreesolv",
    ]
    assert all(d.source == str(moleculenet) for d in seen[0].datasets)


def test_figures_stay_legible_with_19_variants_and_2_seeds(ablation_storage):
    """The committed study's shape: 19 variants; 2 seeds put a ROC-AUC t-interval far past 1 unless clipped."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ggt_search.report import figures

    real = ablation_runs(optuna.load_study(study_name="conv", storage=ablation_storage[1])).runs
    order = [f"{variant}-copy-{i}" for i in range(7) for variant in ("baseline", "gcn", "mlp")][:19]
    runs = pd.concat(  # each name a real variant's first two seeds, pushed near the metric's top
        [real[real.variant == name.split("-")[0]].head(2).assign(variant=name) for name in order]
    )
    runs[["valid", "test"]] = 1 - (1 - runs[["valid", "test"]]) / 20
    with figures.report_style():
        scores = figures.scores_figure(runs, order, "rocauc")
        curves = figures.curves_figure(runs, order, "rocauc")
        ranks = figures.rank_counts_figure(pd.DataFrame(1, index=order, columns=range(1, 20)))
    renderer = FigureCanvasAgg(scores).get_renderer()
    for ax in scores.axes:
        low, high = ax.get_xlim()
        assert max(t for t in ax.get_xticks() if low <= t <= high) <= 1  # no ROC-AUC above 1 on the axis
        shown = [t.get_window_extent(renderer) for t in ax.get_yticklabels() if t.get_text()]
        labels = sorted(shown, key=lambda box: box.y0)
        assert len(labels) in (0, 19) and all(a.y1 <= b.y0 for a, b in zip(labels, labels[1:]))  # no overlap
    (ax,) = curves.axes
    assert len({tuple(line.get_color()) for line in ax.lines}) == 19  # no colour repeats
    assert ax.get_legend().get_bbox_to_anchor().x0 > ax.get_window_extent().x1  # the legend beside the data
    assert {label.get_rotation() for label in ranks.axes[0].get_yticklabels()} == {0}
