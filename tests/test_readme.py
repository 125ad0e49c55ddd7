"""The README's commands run as written: parsed from README.md itself, so that they cannot drift.

Every `ggt-search` line of the README's command blocks is parsed by the CLI's own parser (a renamed
or removed flag fails here). The cheap ones then run, in the README's order, in a folder laid out
as a checkout (`repo/` beside `shared/`), so that each one finds what the ones before it made (the
run folder `evaluate --config` names, the study `report` reads, the checkpoint `train --init` loads),
with their budgets shrunk by flags appended to the line (argparse keeps a repeated flag's last value).
The GPU-sized ones (ogbg-molhiv, ogbg-molpcba), the dashboard, and the lines that would add runs to
the committed studies or need a PostgreSQL server are checked, not run.
"""

import shlex
import tomllib

import pytest

from ggt_search import cli
from tests.conftest import MOLECULENET, ROOT

README = (ROOT / "README.md").read_text()
PROGRAM = "ggt-search"
GPU_SIZED = ("ogbg-molhiv", "ogbg-molpcba")
# Flags appended to a command to shrink its budget (the model too, unless it must fit a checkpoint).
TINY_MODEL = ["--layers", "1", "--hidden", "8"]
SHRINK = {
    "data": [],
    "train": ["--epochs", "1", "--device", "cpu"],
    "evaluate": ["--epochs", "1", "--seeds", "0,1", "--device", "cpu"],
    "search": ["--trials", "2", "--epochs", "1", "--device", "cpu"],
    "ablate": ["--seeds", "0", "--epochs", "1", "--device", "cpu"],
    "report": [],
    "pretrain": ["--max-molecules", "200", "--epochs", "1", "--device", "cpu"],
}


def command_lines(text: str) -> list[str]:
    """The `ggt-search ...` lines of the README's indented command blocks, continuations joined, comments cut."""
    lines, joined = [], ""
    for line in text.splitlines():
        if not line.startswith("    "):
            joined = ""
            continue
        joined += line.strip().removesuffix("\\") + (" " if line.rstrip().endswith("\\") else "")
        if not line.rstrip().endswith("\\"):
            words = shlex.split(joined, comments=True)
            if words and words[0].endswith(PROGRAM):
                lines.append(shlex.join(words))
            joined = ""
    return lines


COMMANDS = command_lines(README)


def is_checked_only(argv: list[str]) -> bool:
    """A line too long for a test, or one that would touch what the test must not (committed studies, servers)."""
    storage = argv[argv.index("--storage") + 1] if "--storage" in argv else "sqlite:///ggt-search.db"
    evaluates_a_gpu_search = "--from-study" in argv and argv[argv.index("--from-study") + 1] == "hiv"
    return (
        any(name in argv for name in GPU_SIZED)
        or argv[0] == "dashboard"
        or evaluates_a_gpu_search
        or storage != "sqlite:///ggt-search.db"
    )


def test_the_readme_has_its_commands_and_says_to_activate_the_environment():
    assert len(COMMANDS) >= 15, COMMANDS
    assert f'{PROGRAM} = "ggt_search.cli:main"' in (ROOT / "pyproject.toml").read_text()  # the entry point
    first_bare = README.index(f"\n    {PROGRAM} ")
    assert README.index("source .venv/bin/activate") < first_bare  # a fresh shell finds `ggt-search`
    assert "run.yaml" not in README  # `train` writes runs/<name>/config.yaml
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"][PROGRAM]


@pytest.mark.parametrize("line", COMMANDS)
def test_every_readme_command_parses_and_names_what_it_needs(line):
    argv = shlex.split(line)[1:]
    args = cli.build_parser().parse_args(argv)  # a flag the CLI lacks exits here
    named = [getattr(args, "dataset", None) or getattr(args, "name", None), getattr(args, "exclude_datasets", None)]
    if any(name and "ogbg-" in name for name in named):
        assert "--source" in argv, f"an OGB name needs --source to build offline: {line}"
    for value in argv:  # the files and folders a line names exist in a checkout beside ../shared
        if value.startswith(("ablations/", "../shared/")):
            assert (ROOT / value).exists(), f"{value} of `{line}` does not exist"


@pytest.mark.slow
def test_the_readme_commands_run_in_order_with_shrunken_budgets(tmp_path, monkeypatch, capsys):
    """Each runnable line runs (exit 0) where the README's user stands: the repository root, ../shared beside it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "ablations").symlink_to(ROOT / "ablations")
    (tmp_path / "shared").symlink_to(MOLECULENET.parents[1])
    monkeypatch.chdir(repo)
    ran = []
    for line in COMMANDS:
        argv = shlex.split(line)[1:]
        if is_checked_only(argv):
            continue
        shrink = SHRINK[argv[0]] + (TINY_MODEL if argv[0] == "train" and "--init" not in argv else [])
        code = cli.main(argv + shrink)
        output = capsys.readouterr()
        assert code == 0, f"`{line}` failed:\n{output.err[-2000:]}"
        ran.append(argv[0])
    assert {"data", "train", "evaluate", "search", "ablate", "report", "pretrain"} <= set(ran), ran
    assert (repo / "runs" / "ogbg-molbbbp-gated-gcn-seed0" / "config.yaml").is_file()
    assert (repo / "reports" / "convolution" / "index.html").is_file()
