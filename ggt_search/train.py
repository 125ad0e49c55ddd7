"""Train one candidate: the reference's recipe, with OGB's selection rule.

Each epoch trains on the training split and scores the validation split; the epoch with
the best validation metric is kept (its weights too). The test split is scored once, at
the end, with those weights, and only when the caller asks: a search never reads it.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ggt_search.batching import DeviceGraphs
from ggt_search.config import RunConfig, TrainConfig
from ggt_search.datasets import load_dataset
from ggt_search.errors import UserError
from ggt_search.files import make_folder, save_tensors, write_text
from ggt_search.graphset import GraphSet
from ggt_search.metrics import is_better, masked_loss, score, trivial_score
from ggt_search.model import GatedGraphTransformer, count_parameters, in_degree_histogram, training_cycle_maxima
from ggt_search.steps import TrainStep, autocast, check_device, make_step, train_steps

EVAL_BATCH_SIZE = 1024


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite: the candidate diverged (a search prunes it; `train` says so)."""


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    valid_loss: float
    valid_metric: float
    lr: float
    seconds: float
    train_metric: float | None = None


@dataclass
class Predictions:
    """One split's predictions, on the metric's scale (probabilities, or values in the targets' units)."""

    graphs: np.ndarray  # [n] int, the molecules' rows in the dataset
    predicted: np.ndarray  # [n, tasks] float32
    labels: np.ndarray  # [n, tasks] float32, NaN = missing label


@dataclass
class RunResult:
    metric: str
    best_epoch: int
    best_valid: float
    test: float | None
    parameters: int
    seconds: float
    trivial: dict[str, float]  # per split scored: the metric of always predicting the training labels' mean
    history: list[EpochRecord] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # the best-validation weights
    # final evaluations: the best-validation weights' predictions per split (`Predictions`), valid and test
    predictions: dict[str, Predictions] | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """Everything but the weights and predictions, as JSON-ready values (result.json)."""
        skip = ("history", "best_state", "predictions")
        return {k: v for k, v in self.__dict__.items() if k not in skip} | {
            "history": [r.__dict__ for r in self.history]
        }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but this torch has no CUDA device; use --device cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(
            f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s); "
            "use cuda:0 .. cuda:N-1, or auto"
        )
    return device


def training_device(train: TrainConfig) -> torch.device:
    """The device a run of these settings trains on; refused when this machine lacks it, or cannot run
    the settings there (bf16 or CUDA graphs on a CPU)."""
    device = resolve_device(train.device)
    check_device(train, device)
    return device


def environment(device: torch.device) -> dict:
    """Where a run ran: the code's commit, package versions, device and threads (provenance stored with every run)."""
    return provenance() | {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "hardware": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine()),
    }


@functools.cache
def provenance() -> dict:
    import ogb
    import optuna
    import rdkit
    import torch_geometric

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "commit": commit or "unknown (not a git checkout)",
        "code_sha256": code_sha256(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "optuna": optuna.__version__,
        "ogb": ogb.__version__,
        "rdkit": rdkit.__version__,
        "platform": platform.platform(),
    }


# The modules that shape a run's numbers: data, features, splits, batches, model, steps, training, metrics.
# Reports, the CLI, storage and workers are left out on purpose: a long study resumes across their edits.
RESULT_CODE = (
    "config.py",
    "graphset.py",
    "datasets.py",
    "sources/*.py",
    "molecules.py",
    "positional.py",
    "indexing.py",
    "batching.py",
    "model.py",
    "steps.py",
    "train.py",
    "metrics.py",
)


def code_sha256(package: Path = Path(__file__).parent) -> str:
    """sha256 of the source that shapes a run's numbers (RESULT_CODE), sorted by path, each path then its
    bytes. Unlike the commit it sees uncommitted edits, and it is the same in any checkout of the same code."""
    digest = hashlib.sha256()
    for path in sorted({path for pattern in RESULT_CODE for path in package.glob(pattern)}):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


class Trainer:
    """Holds a dataset on its device and trains models on it, one `fit` per candidate."""

    def __init__(self, config: RunConfig, graphs: GraphSet | None = None):
        self.config = config
        self.device = training_device(config.train)
        self.graphs = graphs if graphs is not None else load_dataset(config.dataset)
        model = config.model
        self.data = DeviceGraphs(
            self.graphs, self.device, model.pe_dim, model.substructures, model.pe_values, config.train.seed
        )
        # Regression targets are standardised with training-split statistics (the model
        # learns z-scores; predictions are mapped back), so one learning rate suits
        # TPSA (~60) and ESOL (~-3) alike. Classification targets stay 0/1.
        self.target_mean = torch.zeros(self.graphs.num_tasks, device=self.device)
        self.target_std = torch.ones(self.graphs.num_tasks, device=self.device)
        if self.graphs.task_type == "regression":
            train_y = self.graphs.y[self.graphs.split["train"]]
            self.target_mean = torch.nanmean(train_y, 0).to(self.device)
            self.target_std = _nanstd(train_y).clamp(min=1e-6).to(self.device)

    def build_model(self) -> GatedGraphTransformer:
        histogram = in_degree_histogram(self.graphs) if self.config.model.aggregation == "pna" else None
        cycle_maxima = training_cycle_maxima(self.graphs) if self.config.model.substructures else None
        model = GatedGraphTransformer(self.config.model, self.graphs.num_tasks, histogram, cycle_maxima)
        if self.config.train.init:
            load_pretrained(model, self.config.train.init)
        return model.to(self.device)

    def make_step(self, model: GatedGraphTransformer) -> TrainStep:
        """The training step the config asks for (eager, compiled or CUDA graphs), on this dataset's task loss."""
        return make_step(model, self.loss, self.config.train, self.device)

    def fit(
        self,
        run_dir: Path | None = None,
        on_epoch: Callable[[EpochRecord], None] | None = None,
        evaluate_test: bool = True,
        on_start: Callable[[int], None] | None = None,
    ) -> RunResult:
        """Train a fresh model (seeded by train.seed); `on_start` hears its parameter count,
        `on_epoch` every epoch's record (and may stop the run by raising)."""
        cfg = self.config.train
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        shuffle = torch.Generator().manual_seed(cfg.seed)
        model = self.build_model()
        parameters = count_parameters(model)
        if on_start is not None:
            on_start(parameters)
        step = self.make_step(model)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            step.optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience
        )
        log = RunLog(run_dir, self.config, self.device, parameters)

        best_state, best_valid, best_epoch, history = None, None, 0, []
        start = time.perf_counter()
        for epoch in range(1, cfg.epochs + 1):
            tic = time.perf_counter()
            train_loss = self.train_epoch(step, shuffle, epoch)
            valid_loss, valid_metric = self.evaluate(model, "valid")
            scheduler.step(valid_loss)
            record = EpochRecord(
                epoch,
                train_loss,
                valid_loss,
                valid_metric,
                float(step.optimizer.param_groups[0]["lr"]),
                time.perf_counter() - tic,
            )
            if cfg.eval_train:
                record.train_metric = self.evaluate(model, "train")[1]
            history.append(record)
            log.epoch(record)
            if best_valid is None or is_better(self.graphs.metric, valid_metric, best_valid):
                best_valid, best_epoch = valid_metric, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                log.weights(best_state)
            if on_epoch is not None:
                on_epoch(record)
            if cfg.patience is not None and epoch - best_epoch >= cfg.patience:
                break  # converged: `patience` epochs without a better validation score

        model.load_state_dict(best_state)
        predictions = {split: self.predictions(model, split) for split in ("valid", "test")} if evaluate_test else None
        test = self.score(predictions["test"]) if evaluate_test else None
        trivial = {
            split: trivial_score(self.graphs, split) for split in (("valid", "test") if evaluate_test else ("valid",))
        }
        result = RunResult(
            self.graphs.metric,
            best_epoch,
            best_valid,
            test,
            parameters,
            time.perf_counter() - start,
            trivial,
            history,
            best_state,
            predictions,
        )
        log.result(result)
        return result

    def standardise(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.target_mean) / self.target_std

    def train_epoch(self, step: TrainStep, generator, epoch: int) -> float:
        cfg = self.config.train
        batches = self.data.batches(
            self.data.split["train"], cfg.batch_size, shuffle=True, generator=generator, padded=cfg.padded
        )
        num_batches = math.ceil(len(self.data.split["train"]) / cfg.batch_size)
        progress = tqdm(batches, total=num_batches, desc=f"epoch {epoch}", leave=False, disable=not sys.stderr.isatty())
        mean_loss = train_steps(step, progress)
        if not math.isfinite(mean_loss):
            raise NonFiniteLoss(
                f"training loss is {mean_loss} at epoch {epoch}: the run diverged; lower --lr (now {cfg.lr:g})"
            )
        return mean_loss

    def loss(self, forward: Callable, batch) -> torch.Tensor:
        """The task's loss on a batch (a step runs it under the precision's autocast): on standardised targets."""
        return masked_loss(forward(batch), self.standardise(batch.y), self.graphs.task_type)

    @torch.no_grad()
    def predict(self, model, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        model.eval()
        logits, labels = [], []
        for batch in self.data.batches(self.data.split[split], EVAL_BATCH_SIZE):
            with autocast(self.config.train, self.device):
                logits.append(model(batch).float())
            labels.append(batch.y)
        return torch.cat(logits), torch.cat(labels)

    def evaluate(self, model, split: str) -> tuple[float, float]:
        """(loss, metric) on a split; the metric is OGB's, on probabilities or values."""
        logits, labels = self.predict(model, split)
        loss = float(masked_loss(logits, self.standardise(labels), self.graphs.task_type))
        return loss, self.score(self.scaled(logits, labels, split))

    def predictions(self, model, split: str) -> Predictions:
        return self.scaled(*self.predict(model, split), split)

    def scaled(self, logits: torch.Tensor, labels: torch.Tensor, split: str) -> Predictions:
        """Logits on the metric's scale: probabilities, or values in the targets' units."""
        if self.graphs.task_type == "classification":
            predicted = torch.sigmoid(logits)
        else:
            predicted = logits * self.target_std + self.target_mean
        if not torch.isfinite(predicted).all():
            raise NonFiniteLoss(
                f"the {split} predictions are not finite: the run diverged; lower --lr (now {self.config.train.lr:g})"
            )
        return Predictions(self.data.split[split].cpu().numpy(), predicted.cpu().numpy(), labels.cpu().numpy())

    def score(self, predictions: Predictions) -> float:
        return score(self.graphs.metric, predictions.labels, predictions.predicted, self.graphs.name)


# Fields that do not shape the pre-trained weights: a checkpoint fine-tunes under other values of them.
FREE_WHEN_FINE_TUNING = {"dropout", "pe_sign_flip", "pooling"}


def load_pretrained(model: GatedGraphTransformer, path: str) -> None:
    """Load a `ggt-search pretrain` checkpoint into everything but the task head (always fresh);
    an architecture that differs from the checkpoint's is refused, naming the first field."""
    if not Path(path).is_file():
        raise UserError(f"train.init: no checkpoint at {path}; make one with `ggt-search pretrain`")
    remedy = "--init takes a `ggt-search pretrain` checkpoint (pretrained.pt)"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a torch file, or a pickle that runs code (refused by weights_only)
        raise UserError(f"cannot read {path} as a checkpoint ({str(error).splitlines()[0][:200]}); {remedy}") from None
    if not isinstance(checkpoint, dict) or not {"model_config", "state"} <= checkpoint.keys():
        what = "a run's weights (best.pt)" if isinstance(checkpoint, dict) else f"a {type(checkpoint).__name__}"
        raise UserError(f"{path} holds {what}, not a pre-trained checkpoint; {remedy}")
    for key, value in checkpoint["model_config"].items():
        if key not in FREE_WHEN_FINE_TUNING and getattr(model.config, key, value) != value:
            raise UserError(
                f"checkpoint {path} was pre-trained with model.{key} = {value!r}, but this config has "
                f"{getattr(model.config, key)!r}; use the checkpoint's architecture, or pre-train this one"
            )
    missing, unexpected = model.load_state_dict(checkpoint["state"], strict=False)
    if unexpected or any(not key.startswith("readout.") for key in missing):
        raise UserError(
            f"checkpoint {path} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def _nanstd(y: torch.Tensor) -> torch.Tensor:
    mean = torch.nanmean(y, 0)
    return torch.sqrt(torch.nanmean((y - mean) ** 2, 0))


class RunLog:
    """A run directory: config.yaml, environment.json, metrics.csv, best.pt, result.json."""

    def __init__(self, run_dir: Path | None, config: RunConfig, device: torch.device, parameters: int):
        self.dir = Path(run_dir) if run_dir else None
        self.tensorboard = None
        if self.dir is None:
            return
        make_folder(self.dir)
        config.save(self.dir / "config.yaml")
        write_text(
            self.dir / "environment.json", json.dumps(environment(device) | {"parameters": parameters}, indent=2)
        )
        self.rows: list[dict] = []  # metrics.csv is rewritten whole each epoch: never a half-written row
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(self.dir / "tensorboard"))
        except ImportError:  # tensorboard is optional
            pass

    def epoch(self, record: EpochRecord) -> None:
        if self.dir is None:
            return
        row = record.__dict__
        self.rows.append(dict(row))
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=list(row))
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.dir / "metrics.csv", table.getvalue())
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "epoch" and value is not None:
                    self.tensorboard.add_scalar(key, value, record.epoch)

    def weights(self, state: dict) -> None:
        if self.dir is not None:
            save_tensors(state, self.dir / "best.pt")

    def result(self, result: RunResult) -> None:
        if self.dir is None:
            return
        write_text(self.dir / "result.json", json.dumps(result.to_dict(), indent=2))  # last: the run is complete
        if self.tensorboard is not None:
            self.tensorboard.close()
