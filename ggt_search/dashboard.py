"""`ggt-search dashboard`: optuna-dashboard on a study storage and its artifact store."""

from __future__ import annotations

import socket
import sys

import optuna
from optuna.artifacts import FileSystemArtifactStore

from ggt_search.errors import UserError
from ggt_search.storage import artifact_dir, hide_password, open_storage


def serve(storage: str, artifacts: str | None, host: str, port: int) -> None:
    from optuna_dashboard import run_server

    store = open_storage(storage, must_exist=True)
    check_port_free(host, port)
    folder = artifact_dir(storage, artifacts)  # where `search` put the best weights
    artifact_store = FileSystemArtifactStore(str(folder)) if folder.exists() else None
    print(
        f"optuna-dashboard: http://{host}:{port}/dashboard  (storage {hide_password(storage)}; Ctrl-C stops it)",
        flush=True,
    )
    try:
        run_server(store, host=host, port=port, artifact_store=artifact_store)
    except KeyboardInterrupt:  # optuna-dashboard catches Ctrl-C itself in some versions, not in others
        pass
    print("dashboard stopped")


def save_report_notes(name: str, storage: str) -> bool:
    """The report's answer (`report.note_markdown`) as the note of each study of a search or ablation group,
    which the dashboard shows on the study's page (False, with a warning, where the report cannot be made);
    each trial already lists its run's values (variant, seed,
    dataset, parameters, seconds per epoch) as user attributes."""
    from optuna_dashboard import save_note

    from ggt_search.record import StudyRecord
    from ggt_search.report import note_markdown

    store = open_storage(storage, must_exist=True)
    try:
        body = note_markdown(name, storage)
    except UserError as error:  # the runs are recorded either way; only the note is missing
        print(f"warning: no dashboard note for {name}: {error}", file=sys.stderr)
        return False
    for summary in optuna.get_all_study_summaries(store):
        if (StudyRecord.of(summary).group or summary.study_name) == name:
            save_note(optuna.load_study(study_name=summary.study_name, storage=store), body)
    return True


def check_port_free(host: str, port: int) -> None:
    """Fail with one line now, rather than with a server traceback, when the port cannot be had."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UserError(
                f"cannot serve on {host}:{port} ({error.strerror}); pick another port with --port"
            ) from None
