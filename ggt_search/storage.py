"""Where studies live: an Optuna RDB storage at a URL, the study in it, and its artifact folder.

A study is addressed by its name and storage URL: a SQLite file (one machine, a few
workers), or any SQLAlchemy URL such as PostgreSQL for workers on many machines. A worker
sends heartbeats; a trial silent for MISSED_BEATS of them is stale (its worker is taken for
dead), and `trials.fail_stale_trials` fails it and queues it again.

A URL's password never leaves it: every URL printed, written to a report or stored on a study
goes through `hide_password`.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import time
import warnings
from pathlib import Path
from typing import BinaryIO

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX  # the trial attributes that link its artifacts
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ggt_search.errors import UserError
from ggt_search.files import atomic_write

# Heartbeats, their retry callback, metric names and grouped multivariate TPE are Optuna APIs
# marked experimental; we use them on purpose, and their warnings would only puzzle users.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# Optuna's own log (a traceback per failed trial, "Using an existing study") is replaced by
# trials.ProgressLine's one line per trial, with the reason a trial failed or was pruned.
optuna.logging.set_verbosity(optuna.logging.ERROR)

MISSED_BEATS = 4  # a trial silent for this many heartbeats is stale: its worker is taken for dead


def hide_password(text: str) -> str:
    """`text` with the password of the database URL it is (or that a `--flag=URL` gives) shown as ***;
    any other text unchanged."""
    if text.startswith("--") and "=" in text:
        flag, _, value = text.partition("=")
        return f"{flag}={hide_password(value)}"
    if "://" not in text:
        return text
    try:
        url = make_url(text)
    except ArgumentError:  # not a URL SQLAlchemy reads: nothing to hide
        return text
    return url.render_as_string(hide_password=True) if url.password is not None else text


def sqlite_path(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def check_storage(url: str) -> None:
    """Refuse, before anything is created, a storage URL no study can live in: no URL at all, SQLite in
    memory (each worker and each resume would see an empty database), or a SQLite file whose folder is not there."""
    try:
        parsed = make_url(url) if "://" in url else None
    except ArgumentError:
        parsed = None
    if parsed is None:
        raise UserError(
            f"storage {hide_password(url)!r} is not a database URL; use sqlite:///file.db or postgresql+psycopg2://user@host/db"
        )
    if parsed.get_backend_name() != "sqlite":
        return
    if parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory":
        raise UserError(
            f"storage {url} keeps no file: a study must outlive the command (resume, workers, report); "
            "use sqlite:///file.db"
        )
    path = Path(parsed.database)
    if path.is_dir():
        raise UserError(f"storage {url}: {path} is a folder, not a SQLite file; name a file, e.g. {path}/study.db")
    if not path.parent.is_dir():
        raise UserError(
            f"storage {url}: folder {path.parent} does not exist (or is a file); create it, or choose another --storage"
        )


def artifact_dir(url: str, artifacts: str | None = None) -> Path:
    """The artifact store's folder (a '
    'search's best weights): `artifacts`, else beside the SQLite file, else ./artifacts."""
    if artifacts:
        return Path(artifacts)
    return sqlite_path(url).parent / "artifacts" if sqlite_path(url) is not None else Path("artifacts")


class RetryWithoutWeights(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a stale trial, without the dead run's weights: Optuna's retry copies the trial's
    attributes, and so its artifact links, and a half-written best.pt would pass for the retry's own."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        retried = copy.copy(trial)
        retried.system_attrs = {k: v for k, v in trial.system_attrs.items() if not k.startswith(ARTIFACTS_ATTR_PREFIX)}
        retried.user_attrs = {k: v for k, v in trial.user_attrs.items() if not k.startswith("weights")}
        super().__call__(study, retried)


class AtomicArtifactStore(FileSystemArtifactStore):
    """Optuna's artifact folder, each artifact written whole or not at all (Optuna's copies onto its final name)."""

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        atomic_write(self._get_filepath(artifact_id), lambda f: shutil.copyfileobj(content_body, f))

    def sha256(self, artifact_id: str) -> str | None:
        """The stored artifact's sha256, None when it is not there."""
        try:
            with self.open_reader(artifact_id) as f:
                return hashlib.file_digest(f, "sha256").hexdigest()
        except ArtifactNotFound:
            return None


def open_storage(url: str, heartbeat: int | None = None, must_exist: bool = False) -> RDBStorage:
    """The study storage at `url`; `must_exist` refuses to create a SQLite file that is not there.

    heartbeat: seconds between a running trial's heartbeats; a trial silent for MISSED_BEATS
    of them is stale, and failing it queues a retry with the same parameters (twice at most).
    """
    check_storage(url)
    if must_exist and sqlite_path(url) is not None and not sqlite_path(url).is_file():
        raise UserError(f"no study storage at {url} (no file {sqlite_path(url)}); check --storage")
    kwargs = {}
    if heartbeat:
        kwargs = dict(
            heartbeat_interval=heartbeat,
            grace_period=MISSED_BEATS * heartbeat,
            heartbeat_stale_trial_callback=RetryWithoutWeights(max_retry=2),
        )
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(3):
        try:
            return RDBStorage(url, engine_kwargs=engine, **kwargs)
        except Exception as error:  # SQLAlchemy raises many kinds; the first line says which
            # Workers started together on a fresh database race to create Optuna's tables;
            # the loser's CREATE fails, and a moment later the tables are there.
            creating = "already exists" in str(error) or "duplicate key" in str(error)
            if not (creating and attempt < 2):
                raise UserError(f"cannot open storage {hide_password(url)}: {str(error).splitlines()[0]}") from None
            time.sleep(1 + attempt)


def create_or_load_study(
    name: str, url: str, heartbeat: int, direction: str, **settings
) -> tuple[optuna.Study, RDBStorage]:
    """(study, storage): the study `name` at `url`, created on first use with `direction` and
    Optuna's `settings` (sampler, pruner). Its StudyRecord is the caller's to check and write."""
    storage = open_storage(url, heartbeat)
    study = optuna.create_study(study_name=name, storage=storage, direction=direction, load_if_exists=True, **settings)
    return study, storage


def load_existing_study(name: str, url: str) -> optuna.Study:
    """A study that must already exist (for reading: evaluate --from-study, report)."""
    storage = open_storage(url, must_exist=True)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        raise UserError(
            f"no study {name!r} in {hide_password(url)}; studies there: {', '.join(names) or 'none'}"
        ) from None


def heartbeat_ages(
    study: optuna.Study, storage: RDBStorage, trials: list[optuna.trial.FrozenTrial]
) -> dict[int, float]:
    """Seconds since each trial's last heartbeat, by trial number (trials that never beat are absent).

    The one use of Optuna's internals: Optuna keeps heartbeats in a table of its own and has
    no public reader (its `_get_stale_trial_ids` says which trials are stale, not how old a
    beat is). The trial ids come from public storage methods; the table from `_rdb.models`.
    """
    import sqlalchemy
    from optuna.storages._rdb import models

    study_id = storage.get_study_id_from_name(study.study_name)
    by_id = {storage.get_trial_id_from_study_id_trial_number(study_id, t.number): t.number for t in trials}
    beats = models.TrialHeartbeatModel
    with storage.scoped_session() as session:
        now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)
        rows = session.query(beats).filter(beats.trial_id.in_(list(by_id))).all()
        return {by_id[row.trial_id]: (now - row.heartbeat.replace(tzinfo=None)).total_seconds() for row in rows}
