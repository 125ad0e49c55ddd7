"""The 47 bad inputs of issue 25 (and bf16/fp16 on a CPU, issue 24), each refused in one line before
anything is made, on small slices of the shared tables; then property-based tests over the three
file kinds (run config, search space, ablation) and the command line's numeric flags."""

import gzip
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ggt_search import cli
from ggt_search.ablate import AblationSettings, load_ablation, run_ablation
from ggt_search.config import ModelConfig, RunConfig, TrainConfig
from ggt_search.errors import UserError
from ggt_search.molecules import random_split
from ggt_search.space import check_space, load_space, suggest
from tests.conftest import TINY_FLAGS

# A run that would take seconds if the refusal failed: so each case fails fast on code without it.
QUICK = [*TINY_FLAGS, "--epochs", "1"]


@pytest.fixture(scope="module")
def esol(moleculenet, tmp_path_factory) -> Path:
    """150 real ESOL molecules: a regression table whose scaffold split is never short of labels."""
    path = tmp_path_factory.mktemp("data") / "esol150.csv"
    pd.read_csv(moleculenet / "delaney.csv").head(150).to_csv(path, index=False)
    return path


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """An empty working folder: what a refused command must leave empty."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def refused(argv: list[str], message: str, capsys, work: Path | None = None, before: set | None = None) -> None:
    """The command exits 2 with one line matching `message`, having made nothing in `work`."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's refusal of a flag's value
        code = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err
    if work is not None:
        assert set(os.listdir(work)) == (before or set()), os.listdir(work)


def table(tmp_path: Path, esol: Path, name: str, change) -> Path:
    """A copy of the ESOL slice under `name`, changed by `change(frame)`."""
    frame = pd.read_csv(esol)
    frame["logp"] = frame["logp"].astype(object)
    change(frame)
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


# ----------------------------------------------------------------------------- datasets (15)


def _set(row: int, column: str, value):
    def change(frame):
        frame.loc[row, column] = value

    return change


def _unlabelled_in_valid(frame):
    """A second task labelled everywhere but in the random split's validation part."""
    frame["extra"] = 1.0
    frame.loc[random_split(len(frame), 0)[1], "extra"] = float("nan")


LABELS = {
    "label-1e30": (_set(5, "logp", 1e30), [], "hold infinite labels or labels of 1e\\+15 or more"),
    "label-inf": (_set(5, "logp", "inf"), [], "hold infinite labels"),
    "label-1e400": (_set(5, "logp", "1e400"), [], "hold infinite labels"),
    "task-without-valid-labels": (
        _unlabelled_in_valid,
        ["--split", "random"],
        r"leaves valid with no labels of task\(s\) \[1\], so rmse is undefined",
    ),
    "smiles-with-spaces": (_set(3, "smiles", " CCO "), [], r"1 SMILES of .* have surrounding spaces \(line 5\)"),
}


@pytest.mark.parametrize("case", LABELS)
def test_a_table_whose_labels_or_smiles_cannot_train_is_refused(case, esol, tmp_path, work, capsys):
    change, flags, message = LABELS[case]
    path = table(tmp_path, esol, f"{case}.csv", change)
    refused(["data", "info", path, *flags], message, capsys, work)


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_a_damaged_gzip_table_is_one_line(damage, esol, tmp_path, work, capsys):
    packed = gzip.compress(esol.read_bytes())
    path = tmp_path / "esol.csv.gz"
    if damage == "truncated":
        path.write_bytes(packed[: len(packed) // 2])
    else:
        path.write_bytes(packed[:40] + bytes(200) + packed[240:])
    refused(["data", "info", path], f"cannot read {path}: damaged or truncated compressed file", capsys, work)


def test_a_damaged_moleculenet_table_under_source_is_one_line(moleculenet, tmp_path, work, capsys):
    (tmp_path / "tables").mkdir()
    whole = (moleculenet / "HIV.csv.gz").read_bytes()
    (tmp_path / "tables" / "HIV.csv.gz").write_bytes(whole[: len(whole) // 50])
    refused(
        ["data", "info", "ogbg-molhiv", "--source", tmp_path / "tables"], "HIV.csv.gz: damaged or truncated", capsys
    )


def test_an_ogb_name_is_not_built_from_another_names_table(moleculenet, work, capsys):
    refused(
        ["data", "info", "ogbg-molesol", "--source", moleculenet / "BBBP.csv"],
        r"BBBP.csv is not ogbg-molesol's MoleculeNet table \(delaney.csv: .*logp\); its columns are smiles, p_np",
        capsys,
        work,
    )


@pytest.mark.parametrize(
    "name, flags, message",
    [
        ("ogbg-molbbbp", ["--split", "random"], r"--split \(dataset.split\) does not apply to ogbg-molbbbp"),
        ("ogbg-molbbbp", ["--task-type", "regression"], r"--task-type .* does not apply to ogbg-molbbbp"),
        ("nci-tpsa", ["--source", "tables"], r"--source .* does not apply to nci-tpsa, the embedded set"),
    ],
)
def test_a_dataset_flag_the_dataset_ignores_is_refused(name, flags, message, moleculenet, work, capsys):
    flags = [moleculenet if f == "tables" else f for f in flags]
    source = [] if "--source" in flags else ["--source", moleculenet]
    refused(["data", "info", name, *source, *flags], message, capsys, work)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--split", "random", "--split-seed", "-1"], "dataset.split_seed must be >= 0, got -1"),
        (["--targets", ""], "dataset.target_columns is empty"),
        (["--targets", "logp,logp"], r"dataset.target_columns names \['logp'\] twice"),
    ],
)
def test_dataset_values_that_mean_nothing_are_refused(flags, message, esol, work, capsys):
    refused(["data", "info", esol, *flags], message, capsys, work)


# ----------------------------------------------------------------------------- config and CLI (13)


def test_a_duplicate_yaml_key_is_refused_in_every_file_kind(tmp_path, esol):
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  layers: 2\n  hidden: 8\n  layers: 3\n")
    with pytest.raises(UserError, match=r"run.yaml is not valid YAML: key 'layers' appears twice \(line 4\)"):
        RunConfig.load(config)
    space = tmp_path / "space.yaml"
    space.write_text("model.layers: {int: [1, 2]}\nmodel.layers: {int: [3, 4]}\n")
    with pytest.raises(UserError, match="key 'model.layers' appears twice"):
        load_space(space)
    ablation = tmp_path / "ablation.yaml"
    ablation.write_text("baseline: {}\nvariants: {a: {model: {layers: 2}}, a: {model: {layers: 3}}}\n")
    with pytest.raises(UserError, match="key 'a' appears twice"):
        load_ablation(ablation)


@pytest.mark.parametrize("seeds", ["0-", "-1", "3-1", "0,,1", "a"])
def test_a_seed_list_that_is_not_one_is_refused(seeds, esol, work, capsys):
    refused(["evaluate", "--dataset", esol, *QUICK, "--seeds", seeds], f"bad seed (list|range) .*{seeds}", capsys, work)


def test_a_long_seed_list_is_read_at_once():
    """Its duplicate check was quadratic: 100,000 seeds took hours. A child with a generous limit,
    four orders of magnitude above the time it takes."""
    code = "from ggt_search.final_evaluation import parse_seeds; assert parse_seeds('0-99999') == list(range(100000))"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--timeout", "-5", "--trials", "1"], "--timeout must be a positive number of seconds, got -5.0"),
        (["--timeout", "nan", "--trials", "1"], "--timeout must be a positive number of seconds, got nan"),
        (["--workers", "6", "--trials", "1"], "--workers 6 is more than --trials 1"),
    ],
)
def test_search_settings_that_cannot_mean_what_they_say_are_refused(flags, message, esol, work, capsys):
    refused(["search", "--study", "s", "--dataset", esol, *QUICK, *flags], message, capsys, work)


@pytest.mark.parametrize(
    "storage, message",
    [
        ("sqlite:///no/such/folder/study.db", "folder no/such/folder does not exist"),
        ("sqlite:///:memory:", "keeps no file: a study must outlive the command"),
    ],
)
def test_a_storage_no_study_can_live_in_is_refused_before_any_work(storage, message, esol, work, capsys):
    refused(
        ["search", "--study", "s", "--dataset", esol, *QUICK, "--trials", "1", "--storage", storage],
        message,
        capsys,
        work,
    )


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--out", "a-file"],
        ["evaluate", "--seeds", "0", "--out", "a-file/inside"],
        ["search", "--study", "s", "--trials", "1", "--artifacts", "a-file"],
    ],
)
def test_a_folder_flag_given_a_file_is_refused(command, esol, work, capsys):
    (work / "a-file").write_text("not a folder")
    refused(
        [*command, "--dataset", esol, *QUICK], "must be a folder, but a file is in the way", capsys, work, {"a-file"}
    )


def test_a_dataset_cache_that_is_a_file_is_refused(esol, work, capsys, monkeypatch):
    (work / "a-file").write_text("not a folder")
    monkeypatch.setenv("GGT_SEARCH_CACHE", str(work / "a-file"))
    refused(
        ["data", "info", esol], r"the dataset cache \(GGT_SEARCH_CACHE\) .* must be a folder", capsys, work, {"a-file"}
    )


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_half_precision_on_a_cpu_is_refused_not_recorded(precision, esol, work, capsys):
    """Autocast is CUDA-only: on a CPU the run would be fp32 recorded as bf16 (issue 24)."""
    refused(
        ["train", "--dataset", esol, *QUICK, "--precision", precision, "--out", "run"],
        f"precision {precision} needs a CUDA device",
        capsys,
        work,
    )


# ----------------------------------------------------------------------------- search spaces (12)

SPACES = {
    "scalar-condition": (
        "model.conv: {choices: [gated-gcn, gcn]}\nmodel.norm: {choices: [batch], when: {model.conv: gated-gcn}}",
        r"model.norm.when.model.conv must be a list of values",
    ),
    "log-as-text": (
        "train.lr: {float: [1.0e-4, 1.0e-2], log: 'false'}",
        "train.lr.log must be true or false, got 'false'",
    ),
    "never-occurring-condition": (
        "model.conv: {choices: [gated-gcn, gcn]}\nmodel.norm: {choices: [batch], when: {model.conv: [gin]}}",
        r"model.norm.when.model.conv lists \['gin'\], which model.conv .* never takes",
    ),
    "scalar-int-condition": (
        "model.pe_dim: {choices: [0, 4]}\nmodel.pe_sign_flip: {choices: [batch], when: {model.pe_dim: 4}}",
        "model.pe_sign_flip.when.model.pe_dim must be a list of values",
    ),
    "condition-as-list": (
        "model.pe_dim: {choices: [0, 4]}\nmodel.pe_sign_flip: {choices: [batch], when: [model.pe_dim, 4]}",
        "model.pe_sign_flip.when must be a mapping",
    ),
    "step-zero": ("model.layers: {int: [1, 4], step: 0}", "model.layers.step must be a positive integer, got 0"),
    "step-with-log": (
        "model.layers: {int: [1, 4], step: 2, log: true}",
        "model.layers: step and log do not go together",
    ),
    "non-string-key": ("1: {choices: [a]}", "key 1 is not a string"),
    "float-step-on-int-range": (
        "model.layers: {int: [1, 4], step: 1.5}",
        "model.layers.step must be a positive integer, got 1.5",
    ),
    "condition-on-a-bool-by-an-int": (
        "model.ffn: {choices: [true, false]}\nmodel.ffn_ratio: {choices: [2], when: {model.ffn: [1]}}",
        r"model.ffn_ratio.when.model.ffn lists \[1\], which model.ffn",
    ),
}


@pytest.mark.parametrize("case", SPACES)
def test_a_malformed_space_is_refused_at_load(case, tmp_path):
    text, message = SPACES[case]
    path = tmp_path / "space.yaml"
    path.write_text(text + "\n")
    with pytest.raises(UserError, match=f"search space {path}: {message}"):
        load_space(path)


def test_a_device_the_machine_lacks_is_refused_before_the_study(esol, work, capsys):
    (work / "space.yaml").write_text("train.device: {choices: [cpu, 'cuda:99']}\nmodel.layers: 1\n")
    refused(
        ["search", "--study", "s", "--dataset", esol, *QUICK, "--trials", "1", "--space", "space.yaml"],
        r"train.device value 'cuda:99': device 'cuda:99' asked for, but this (torch|machine) has",
        capsys,
        work,
        {"space.yaml"},
    )


def test_a_float_step_is_the_grid_of_the_float_range(tmp_path):
    """`step` on a float range: every value drawn lies on it (it was silently ignored)."""
    path = tmp_path / "space.yaml"
    path.write_text("model.dropout: {float: [0.0, 0.5], step: 0.125}\n")
    space = load_space(path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = {suggest(study.ask(), space, RunConfig()).model.dropout for _ in range(30)}
    assert drawn <= {0.0, 0.125, 0.25, 0.375, 0.5} and len(drawn) > 2


def test_a_condition_is_tested_by_equality(tmp_path):
    """A `gcn` trial does not enable what `gated-gcn` enables (the condition was a substring test)."""
    path = tmp_path / "space.yaml"
    path.write_text(
        "model.conv: {choices: [gcn, gated-gcn]}\n"
        "model.aggregation: {choices: [pna], when: {model.conv: [gated-gcn]}}\n"
    )
    study = optuna.create_study()
    configs = []
    for conv in ("gcn", "gated-gcn"):
        study.enqueue_trial({"model.conv": conv})
        configs.append(suggest(study.ask(), load_space(path), RunConfig()).model)
    assert [(m.conv, m.aggregation) for m in configs] == [("gcn", "gated"), ("gated-gcn", "pna")]


# ----------------------------------------------------------------------------- ablations (6)

ABLATION = "baseline: {model: {layers: 1, hidden: 8}, train: {epochs: 1, device: cpu}}\nseeds: 0\n"


@pytest.mark.parametrize(
    "variants, message",
    [
        ("{bad: {model: [1]}}", r"variant 'bad': model must be a mapping of fields, got \[1\]"),
        ("{empty: {}}", "variant 'empty' trains the baseline's config"),
        ("{same: {model: {conv: gated-gcn}}}", "variant 'same' trains the baseline's config"),
        ("{seeded: {model: {layers: 2}, train: {seed: 3}}}", "variant 'seeded' sets train.seed, but each run's seed"),
    ],
)
def test_a_variant_that_is_not_one_is_refused(variants, message, tmp_path):
    path = tmp_path / "ablation.yaml"
    path.write_text(f"{ABLATION}variants: {variants}\n")
    with pytest.raises(UserError, match=message):
        load_ablation(path)


def test_an_empty_seeds_flag_is_refused_not_ignored(esol, work, capsys):
    (work / "ablation.yaml").write_text(f"{ABLATION}variants: {{wide: {{model: {{hidden: 16}}}}}}\ndataset: '{esol}'\n")
    refused(["ablate", "ablation.yaml", "--seeds", ""], "bad seed list ''", capsys, work, {"ablation.yaml"})


def test_a_bad_second_dataset_is_refused_before_the_first_trains(esol, tmp_path):
    broken = table(tmp_path, esol, "broken.csv", _set(5, "logp", "inf"))
    path = tmp_path / "ablation.yaml"
    path.write_text(f"{ABLATION}variants: {{wide: {{model: {{hidden: 16}}}}}}\ndatasets: ['{esol}', '{broken}']\n")
    storage = tmp_path / "study.db"
    with pytest.raises(UserError, match="broken.csv hold infinite labels"):
        run_ablation(AblationSettings(load_ablation(path), "a", f"sqlite:///{storage}"))
    assert not storage.exists()


# ----------------------------------------------------------------------------- report (1)


def test_a_report_out_that_is_a_file_is_refused(work, capsys):
    storage = f"sqlite:///{work / 'study.db'}"
    optuna.create_study(study_name="s", storage=storage)
    (work / "a-file").write_text("not a folder")
    refused(
        ["report", "s", "--storage", storage, "--out", "a-file"],
        "--out a-file must be a folder",
        capsys,
        work,
        {"a-file", "study.db"},
    )


# ----------------------------------------------------------------------------- property-based tests

# Few examples (the CI budget), and no example database (nothing written beside the tests).
FEW = settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "yes", "false", "1", "gated-gcn", "none", "cpu", "fp16", "mean"]),
    st.lists(st.integers(0, 3), max_size=2),
)
FIELDS = [("model", f) for f in ModelConfig.__dataclass_fields__] + [
    ("train", f) for f in TrainConfig.__dataclass_fields__
]


def write_yaml(values) -> Path:
    folder = Path(tempfile.mkdtemp())
    (folder / "file.yaml").write_text(yaml.safe_dump(values))
    return folder / "file.yaml"


@FEW
@given(field=st.sampled_from(FIELDS), value=VALUES)
def test_any_run_config_value_is_refused_by_name_or_kept_as_written(field, value):
    section, name = field
    try:
        config = RunConfig.load(write_yaml({section: {name: value}}))
    except UserError as error:
        assert f"{section}.{name}" in str(error) and "\n" not in str(error)
        return
    kept = getattr(getattr(config, section), name)
    assert kept == value and type(kept) is type(value) or (isinstance(kept, tuple) and list(kept) == value)


SPECS = st.one_of(
    VALUES,
    st.fixed_dictionaries(
        {"int": st.one_of(VALUES, st.lists(st.one_of(st.integers(-2, 12), st.floats(-1, 12)), min_size=2, max_size=2))},
        optional={
            "step": VALUES,
            "log": VALUES,
            "when": st.one_of(VALUES, st.dictionaries(st.just("model.conv"), VALUES, max_size=1)),
        },
    ),
    st.fixed_dictionaries(
        {"choices": st.one_of(VALUES, st.lists(st.integers(1, 6), min_size=1, max_size=3))},
        optional={
            "when": st.dictionaries(
                st.sampled_from(["model.conv", "model.norm"]),
                st.lists(st.sampled_from(["gcn", "mlp", "gin", 1, True]), max_size=2),
                max_size=1,
            )
        },
    ),
)


@FEW
@given(spec=SPECS)
def test_any_space_entry_is_refused_by_name_or_sampled_within_it(spec):
    path = write_yaml({"model.conv": {"choices": ["gcn", "mlp"]}, "model.layers": spec})
    try:
        space = load_space(path)
        check_space(space, RunConfig(), path)
    except UserError as error:
        assert "model.layers" in str(error) and "\n" not in str(error)
        return
    if isinstance(spec, dict):  # accepted: every option has the type the format documents
        assert isinstance(spec.get("log", False), bool)
        assert type(spec.get("step", 1)) is int and spec.get("step", 1) > 0 and not ("step" in spec and spec.get("log"))
        assert all(type(v) is str for v in (spec.get("when") or {}).get("model.conv", []))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        layers = suggest(trial, space, RunConfig()).model.layers
        if not isinstance(spec, dict):
            assert layers == spec
        elif "model.layers" not in trial.params:  # its condition does not hold: the default
            assert layers == ModelConfig().layers and trial.params["model.conv"] not in spec["when"]["model.conv"]
        elif "choices" in spec:
            assert layers in spec["choices"]
        else:
            low, high = spec["int"]
            assert low <= layers <= high and (layers - low) % spec.get("step", 1) == 0


@FEW
@given(
    change=st.one_of(
        VALUES,
        st.dictionaries(
            st.sampled_from(["model", "train", "data"]),
            st.one_of(VALUES, st.dictionaries(st.sampled_from(["layers", "seed", "lr", "nope"]), VALUES, max_size=2)),
            max_size=2,
        ),
    ),
    seeds=st.one_of(st.none(), VALUES),
)
def test_any_variant_is_refused_by_name_or_trains_its_change(change, seeds):
    values = {"baseline": {"model": {"layers": 1}}, "variants": {"v": change}}
    if seeds is not None:
        values["seeds"] = seeds
    try:
        ablation = load_ablation(write_yaml(values))
    except UserError as error:
        assert ("variant 'v'" in str(error) or "'seeds'" in str(error)) and "\n" not in str(error)
        return
    wanted = RunConfig.from_dict(
        {"model": {"layers": 1} | (change.get("model") or {}), "train": change.get("train") or {}}
    )
    assert ablation.config("v", 0) == wanted.with_overrides(train={"seed": 0}) != ablation.config("baseline", 0)
    assert ablation.seeds and all(isinstance(s, int) and s >= 0 for s in ablation.seeds)


NUMBERS = st.one_of(
    st.integers(-5, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "1e3", "0x10", "1_000", "nan", "-inf", "2.5", " 3", "one"]),
)
SEARCH_FLAGS = ["--timeout", "--trials", "--workers", "--seed", "--heartbeat"]
MODEL_FLAGS = [
    "--layers",
    "--hidden",
    "--dropout",
    "--lr",
    "--epochs",
    "--batch-size",
    "--weight-decay",
    "--lr-factor",
    "--pe-dim",
]


class EmptyStudy:
    def get_trials(self, **_):
        return []


@FEW
@given(flag=st.sampled_from(SEARCH_FLAGS + MODEL_FLAGS), text=NUMBERS)
def test_any_numeric_flag_is_refused_by_name_or_reaches_the_search_as_written(flag, text, capsys, monkeypatch):
    """Refused: exit 2, one line naming the flag (or its config field). Accepted: the search gets the number."""
    got = []
    # The search itself is stubbed: it takes the settings and returns a study with no trials (so no report note).
    monkeypatch.setattr("ggt_search.study.search", lambda settings: got.append(settings) or EmptyStudy())
    folder = Path(tempfile.mkdtemp())
    monkeypatch.chdir(folder)
    argv = ["search", "--study", "s", f"{flag}={text}"]
    try:
        code = cli.main(argv)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    name = flag.removeprefix("--").replace("-", "_")
    if code == 2:
        assert len(err) == 1 and (flag in err[0] or f".{name}" in err[0]), err
        assert not os.listdir(folder)
        return
    assert code == 0 and len(got) == 1
    settings_ = got[0]
    value = getattr(settings_, name, None)
    if value is None:
        value = getattr(settings_.base.model, name, None)
    if value is None:
        value = getattr(settings_.base.train, name)
    assert value == (float(text) if isinstance(value, float) else int(text))


PARSER = cli.build_parser()
OTHER_NUMERIC_FLAGS = [
    (["data", "build", "nci-tpsa"], "--pe-dim"),
    (["dashboard"], "--port"),
    (["pretrain", "--corpus", "c.csv", "--out", "o"], "--mask-rate"),
    (["pretrain", "--corpus", "c.csv", "--out", "o"], "--max-molecules"),
    (["bench"], "--concurrent"),
    (["bench"], "--max-graphs"),
    (["bench"], "--repeats"),
    (["ablate", "a.yaml"], "--epochs"),
    (["evaluate"], "--workers"),
]


@FEW
@given(command=st.sampled_from(OTHER_NUMERIC_FLAGS), text=NUMBERS)
def test_any_other_numeric_flag_is_refused_by_name_or_read_as_written(command, text, capsys):
    """Every other command's numeric flags: refused by argparse in one line naming the flag, or read as the number."""
    words, flag = command
    try:
        args = PARSER.parse_args([*words, f"{flag}={text}"])
    except SystemExit as stop:
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.code == 2 and len(err) == 1 and f"argument {flag}" in err[0], err
        return
    value = getattr(args, flag.removeprefix("--").replace("-", "_"))
    assert value == (float(text) if isinstance(value, float) else int(text))
