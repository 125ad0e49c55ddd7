"""`ggt-search report`: a self-contained HTML page and a Markdown file per set of studies.

An ablation (one study per dataset, reported together; ablations that share their baseline runs, as one
family) gets the sections of `ablation`, a search
study those of `search`; both end with each run's provenance. The numbers come from `statistics`,
the figures from `figures`, and `page` writes report.md and the index.html made from it. Test
scores appear only in the ablation sections, which are final evaluations of fixed configs; search
sections use validation scores alone.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from ggt_search.errors import UserError
from ggt_search.record import StudyRecord, TrialRecord
from ggt_search.report.ablation import ablation_families, ablation_group, ablation_sections
from ggt_search.report.figures import report_style
from ggt_search.report.page import Page
from ggt_search.report.search import search_sections
from ggt_search.storage import hide_password, open_storage


def build_report(names: list[str], storage: str | list[str], out: Path) -> Path:
    """A report of each named search study or ablation (an ablation on several datasets is one name, its
    group), from one storage or several. Ablations that share their baseline runs are one family."""
    report_page(names, storage, out)[0].write()
    return out / "index.html"


# The sections of a report that answer its question: what `note_markdown` gives the dashboard.
ANSWERS = {"ablation": ("Verdicts",), "search": ("Optimisation history", "Best configurations")}


def note_markdown(name: str, storage: str) -> str:
    """The report's answer for one search study or ablation group, as Markdown for the dashboard's study
    note: its opening (what the study is) and its ANSWERS sections, as the report itself writes them.
    Figures are left out (the note cannot show the report's files; the dashboard draws its own history)."""
    with tempfile.TemporaryDirectory() as folder:
        page, studies = report_page([name], storage, Path(folder))
    kind = StudyRecord.of(studies[0]).kind or "search"
    kept, keep = [], True
    for block in page.blocks[1:]:  # the page's own title names the report, not the study
        if block.startswith("### "):
            keep = block.removeprefix("### ") in ANSWERS[kind]
        elif block.startswith("## "):
            keep = not block.startswith("## Reproducibility")
        if keep and not block.startswith("!["):
            kept.append(block)
    return "\n\n".join(kept) + "\n"


def report_page(names: list[str], storage: str | list[str], out: Path) -> tuple[Page, list[optuna.Study]]:
    """The report's page, not yet written, and the studies it covers."""
    storages = [storage] if isinstance(storage, str) else storage
    stores = [open_storage(s, must_exist=True) for s in storages]
    summaries = [optuna.get_all_study_summaries(store) for store in stores]
    groups = {}  # name -> (its storage, its studies' names)
    for store, found in zip(stores, summaries):
        for s in found:
            group = StudyRecord.of(s).group or s.study_name
            if group in groups and groups[group][0] is not store:
                raise UserError(
                    f"{group} is in more than one of the storages {', '.join(map(hide_password, storages))}"
                )
            groups.setdefault(group, (store, []))[1].append(s.study_name)
    missing = [name for name in names if name not in groups]
    if missing:
        raise UserError(
            f"no study named {', '.join(missing)} in {', '.join(map(hide_password, storages))}; "
            f"studies there: {', '.join(sorted(groups)) or 'none'}"
        )
    page = Page(out, f"ggt-search report: {', '.join(names)}")
    loaded = {
        name: [optuna.load_study(study_name=n, storage=store) for n in sorted(members)]
        for name, (store, members) in groups.items()
    }
    ablations = [name for name, studies in loaded.items() if StudyRecord.of(studies[0]).kind == "ablation"]
    named = {name: ablation_group(loaded[name]) for name in names if name in ablations}
    unnamed = {
        name: ablation_group(loaded[name]) for name in ablations if name not in names and loaded_runs(loaded[name])
    }
    with report_style():
        url_of = {id(store): url for store, url in zip(stores, storages)}
        for members, note in ablation_families(named, unnamed):
            first = next(name for name in named if named[name] is members[0])  # its predictions lie beside its storage
            ablation_sections(page, members, note, url_of[id(groups[first][0])])
        for name in names:
            if name not in named:
                search_sections(page, loaded[name][0])
    studies = [s for name in names for s in loaded[name]]
    reproducibility(page, studies, ", ".join(storages))
    return page, studies


def loaded_runs(studies: list[optuna.Study]) -> bool:
    """Whether every dataset of an ablation has a finished run (one that has not is no control to share)."""
    return all(s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) for s in studies)


def reproducibility(page: Page, studies: list[optuna.Study], storage: str) -> None:
    """Where the runs ran, as each run recorded it when it ran (not the machine writing the report)."""
    page.heading("Reproducibility")
    page.text(f"storage: {hide_password(storage)}")
    for s in studies:
        record = StudyRecord.of(s)
        if record.command:
            page.text(f"{s.study_name}: {record.command}")
        if d := record.summary or record.dataset:  # split sizes, or the split rule (a search from before StudyRecord)
            page.text(
                f"{s.study_name}: dataset {d['name']}, sha256 {record.checksum or 'not recorded'}, split {d['split']}"
            )
        if record.ablation:
            page.text(f"{s.study_name}: seeds {record.ablation['seeds']}")
    groups = pd.DataFrame(
        [
            {"study": s.study_name, **run_provenance(TrialRecord.of(t))}
            for s in studies
            for t in s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        ]
    )
    if not groups.empty:
        page.heading("Code, packages, hardware and starting weights of the runs (as recorded by each run)", 3)
        page.table(groups.groupby(list(groups.columns)).size().reset_index(name="runs"))


def run_provenance(record: TrialRecord) -> dict[str, str]:
    environment = record.environment or {}
    keys = ("commit", "torch", "torch_geometric", "optuna", "device", "hardware", "threads")
    fine_tuned = ((record.config or {}).get("train") or {}).get("init")
    checksum = environment.get("init_sha256", "not recorded")[:12]
    init = f"{fine_tuned}, sha256 {checksum}" if fine_tuned else "from scratch"
    return {k: str(environment.get(k, "not recorded")) for k in keys} | {"init": init}
