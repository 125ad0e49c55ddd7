"""`ggt-search dashboard`: optuna-dashboard on a study storage and its artifact store."""

from __future__ import annotations

from pathlib import Path

from optuna.artifacts import FileSystemArtifactStore

from ggt_search.errors import UserError
from ggt_search.study import SearchSettings, open_storage


def serve(storage: str, artifacts: str | None, host: str, port: int) -> None:
    from optuna_dashboard import run_server

    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).exists():
        raise UserError(f"no study storage at {storage}; run `ggt-search search` first or pass --storage")
    artifact_dir = SearchSettings(study="", base=None, storage=storage, artifacts=artifacts).artifact_dir()
    store = FileSystemArtifactStore(str(artifact_dir)) if artifact_dir.exists() else None
    print(f"optuna-dashboard: http://{host}:{port}/dashboard  (storage {storage}; Ctrl-C stops it)", flush=True)
    try:
        run_server(open_storage(storage), host=host, port=port, artifact_store=store)
    except KeyboardInterrupt:  # optuna-dashboard catches Ctrl-C itself in some versions, not in others
        pass
    print("dashboard stopped")
