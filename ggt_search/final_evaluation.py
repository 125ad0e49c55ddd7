"""OGB-style final evaluation: one config, many seeds, mean +- unbiased std.

Each seed trains in its own run directory; a seed whose `result.json` exists, trained
with the same config, is not retrained, so an interrupted evaluation resumes where it
stopped. A result trained with another config is never reused.
"""

from __future__ import annotations

import fcntl
import json
import re
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from ggt_search.config import RunConfig, config_difference
from ggt_search.errors import UserError
from ggt_search.files import file_faults, make_folder, write_text
from ggt_search.metrics import TRIVIAL
from ggt_search.train import Trainer, environment, resolve_device, training_device
from ggt_search.workers import run_workers


def parse_seeds(text: str) -> list[int]:
    """'0-9' -> [0..9]; '0,3,5' -> [0, 3, 5]; '4' -> [4]."""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise UserError(f"bad seed list {text!r}; write e.g. 0-9 or 0,1,2 (seeds are 0, 1, 2, ...)")
        low, high = int(match[1]), int(match[2] or match[1])
        if high < low:
            raise UserError(f"bad seed range {part.strip()!r} in {text!r}; write low-high, e.g. 0-9")
        seeds += range(low, high + 1)
    repeated = sorted(seed for seed, count in Counter(seeds).items() if count > 1)
    if repeated:
        raise UserError(f"seed list {text!r} names seed(s) {repeated} more than once; each seed is one run")
    return seeds


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and unbiased (n-1) standard deviation, as OGB's leaderboard asks."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else float("nan")


def evaluate_seeds(config: RunConfig, seeds: list[int], out: Path, workers: int = 1) -> dict:
    """Train `config` once per seed (in `workers` processes sharing the device), then summarise.
    One evaluation at a time per folder: a second one on the same `out` is refused."""
    training_device(config.train)  # a device this machine has, before any folder is made
    with folder_lock(make_folder(out)):
        todo = []
        for seed in seeds:
            if finished_result(out / f"seed-{seed}") is not None:
                check_same_config(out / f"seed-{seed}", config.with_overrides(train={"seed": seed}))
                print(f"seed {seed}: done already ({out / f'seed-{seed}' / 'result.json'})")
            else:
                todo.append(seed)
        if todo:
            workers = min(workers, len(todo))
            run_workers(_train_seeds, (config, todo, out, workers), workers, config.train.device)
        results = {seed: finished_result(out / f"seed-{seed}") for seed in seeds}
        summary = summarise(config, results, environment(resolve_device(config.train.device))["hardware"])
        write_text(out / "summary.json", json.dumps(summary, indent=2))
        write_text(out / "summary.md", summary_markdown(summary))
    return summary


@contextmanager
def folder_lock(out: Path):
    """Hold `out/.lock` (flock: released when this process ends, however it ends) or refuse."""
    with file_faults(out / ".lock"), open(out / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"another evaluation is running in {out}; wait for it to finish, or pass another --out"
            ) from None
        yield


RESULT_FIELDS = ("metric", "best_valid", "test", "best_epoch", "parameters", "trivial")


def finished_result(run_dir: Path) -> dict | None:
    """A seed's result.json (RunLog writes it last, atomically), or None when the seed must be trained:
    not there, or unreadable (said in one line, and the seed is retrained)."""
    path = run_dir / "result.json"
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
        if isinstance(result, dict) and all(key in result for key in RESULT_FIELDS):
            return result
    except (ValueError, UnicodeDecodeError):
        pass
    print(f"warning: {path} is damaged (not a run's result); retraining that seed", file=sys.stderr)
    return None


def check_same_config(run_dir: Path, config: RunConfig) -> None:
    """A run folder is reused (a finished seed kept, or a run trained again over it) only if it
    holds this very config (the device aside); a folder of another run is refused, never overwritten."""
    if not (run_dir / "config.yaml").is_file():
        return
    difference = config_difference(config, RunConfig.load(run_dir / "config.yaml"))
    if difference:
        field, stored, wanted = difference
        raise UserError(
            f"{run_dir} was trained with {field} = {stored!r}, not {wanted!r}; pass another --out, or delete "
            "that folder to retrain"
        )


def _train_seeds(job: tuple, worker: int, device: str) -> None:
    """Worker `worker` of `workers`: every workers-th seed of the list, on `device`."""
    config, seeds, out, workers = job
    trainer = None
    for seed in seeds[worker::workers]:
        seeded = replace(config, train=replace(config.train, seed=seed, device=device))
        trainer = trainer or Trainer(seeded)
        trainer.config = seeded
        result = trainer.fit(out / f"seed-{seed}")
        print(
            f"seed {seed}: valid {result.best_valid:.4f}  test {result.test:.4f}  (best epoch {result.best_epoch})",
            flush=True,
        )


def summarise(config: RunConfig, results: dict[int, dict], hardware: str) -> dict:
    first = next(iter(results.values()))
    test_mean, test_std = mean_std([r["test"] for r in results.values()])
    valid_mean, valid_std = mean_std([r["best_valid"] for r in results.values()])
    return {
        "dataset": config.dataset.name,
        "metric": first["metric"],
        "seeds": sorted(results),
        "test": {"mean": test_mean, "std": test_std},
        "valid": {"mean": valid_mean, "std": valid_std},
        "parameters": first["parameters"],
        "per_seed": {
            seed: {"valid": r["best_valid"], "test": r["test"], "best_epoch": r["best_epoch"]}
            for seed, r in results.items()
        },
        "hardware": hardware,
        "trivial": first["trivial"],
        "config": config.to_dict(),
    }


def summary_markdown(summary: dict) -> str:
    metric, n = summary["metric"], len(summary["seeds"])
    lines = [
        f"# {summary['dataset']}: {n} seeds ({summary['seeds'][0]}-{summary['seeds'][-1]})",
        "",
        f"| | {metric} mean | std (n-1) |",
        "|---|---|---|",
        f"| test | {summary['test']['mean']:.4f} | {summary['test']['std']:.4f} |",
        f"| validation | {summary['valid']['mean']:.4f} | {summary['valid']['std']:.4f} |",
        "",
        f"For scale, {TRIVIAL} scores {summary['trivial']['test']:.4f} on test and "
        f"{summary['trivial']['valid']:.4f} on validation.",
        "",
        f"Parameters: {summary['parameters']:,}. Hardware: {summary['hardware']}.",
        "",
        "Hyperparameters:",
        "",
        "```yaml",
        yaml.safe_dump(summary["config"], sort_keys=False).rstrip(),
        "```",
    ]
    return "\n".join(lines) + "\n"
