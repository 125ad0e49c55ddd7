"""`ggt-search report`: a self-contained HTML page and a Markdown file per set of studies.

An ablation (one study per dataset, reported together) gets the sections of `ablation`, a search
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
from ggt_search.report.ablation import ablation_sections
from ggt_search.report.figures import report_style
from ggt_search.report.page import Page
from ggt_search.report.search import search_sections
from ggt_search.storage import hide_password, open_storage


def build_report(names: list[str], storage: str, out: Path) -> Path:
    """A report of each named search study or ablation (an ablation on several datasets is one name, its group)."""
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


def report_page(names: list[str], storage: str, out: Path) -> tuple[Page, list[optuna.Study]]:
    """The report's page, not yet written, and the studies it covers."""
    store = open_storage(storage, must_exist=True)
    summaries = optuna.get_all_study_summaries(store)
    groups = {
        name: [s.study_name for s in summaries if (StudyRecord.of(s).group or s.study_name) == name] for name in names
    }
    missing = [name for name, members in groups.items() if not members]
    if missing:
        known = sorted({StudyRecord.of(s).group or s.study_name for s in summaries})
        raise UserError(
            f"no study named {', '.join(missing)} in {hide_password(storage)}; "
            f"studies there: {', '.join(known) or 'none'}"
        )
    page = Page(out, f"ggt-search report: {', '.join(names)}")
    studies = []
    with report_style():
        for members in groups.values():
            loaded = [optuna.load_study(study_name=n, storage=store) for n in sorted(members)]
            studies += loaded
            if StudyRecord.of(loaded[0]).kind == "ablation":
                ablation_sections(page, loaded)
            else:
                search_sections(page, loaded[0])
    reproducibility(page, studies, storage)
    return page, studies


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
