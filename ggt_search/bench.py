"""`ggt-search bench`: training throughput of the device-resident path against PyG's DataLoader.

Both paths train the same model through `steps.train_steps`. The conventional path is
PyG's `DataLoader` collating `Data` objects, `Batch.to(device)` per step, and an eager
step. The fast path cuts batches by index arithmetic from tensors already on the device
and, with `--cuda-graphs`, pads them to fixed shapes and replays each step as one CUDA
graph. `--profile` says where a step's time goes (wall vs device time, launches, syncs).
"""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path

import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from ggt_search.batching import Batch
from ggt_search.config import RunConfig
from ggt_search.datasets import load_dataset
from ggt_search.model import count_parameters
from ggt_search.progress import Progress
from ggt_search.steps import TrainStep, train_steps
from ggt_search.train import Trainer, environment


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pyg_batches(trainer: Trainer, graphs: torch.Tensor, batch_size: int):
    """The conventional path: a list of PyG Data objects, collated and copied per step."""
    g, pe_dim = trainer.graphs, trainer.config.model.pe_dim
    pe = g.load_pe(pe_dim)[:, :pe_dim] if pe_dim else None
    cycles = g.load_substructures() if trainer.config.model.substructures else None
    data = []
    for i in graphs.tolist():
        n0, n1, e0, e1 = int(g.node_ptr[i]), int(g.node_ptr[i + 1]), int(g.edge_ptr[i]), int(g.edge_ptr[i + 1])
        data.append(
            Data(
                x=g.atoms[n0:n1],
                edge_index=g.edges[:, e0:e1],
                edge_attr=g.bonds[e0:e1],
                y=g.y[i : i + 1],
                pe=None if pe is None else pe[n0:n1],
                num_nodes=n1 - n0,
                atom_cycles=None if cycles is None else cycles[0][n0:n1],
                bond_cycles=None if cycles is None else cycles[1][e0:e1],
            )
        )
    for batch in DataLoader(data, batch_size=batch_size, shuffle=True):
        batch = batch.to(trainer.device)
        yield Batch(
            batch.x,
            batch.edge_attr,
            batch.edge_index,
            batch.batch,
            batch.batch[batch.edge_index[0]],
            batch.num_graphs,
            batch.pe,
            batch.y,
            batch.num_graphs,
            trainer.data.max_nodes,
            getattr(batch, "atom_cycles", None),
            getattr(batch, "bond_cycles", None),
        )


def fast_batches(trainer: Trainer, graphs: torch.Tensor):
    """The device-resident path, padded to fixed shapes when the config replays CUDA graphs or compiles."""
    cfg = trainer.config.train
    return trainer.data.batches(graphs, cfg.batch_size, shuffle=True, padded=cfg.padded)


def time_epochs(trainer: Trainer, paths: dict[str, tuple], repeats: int) -> dict[str, float]:
    """Per path (make_batches, step): the fastest of `repeats` epochs in seconds, after a
    warm-up epoch (allocator, kernels, graph captures). Paths take turns, so a drifting
    clock or a busy neighbour slows them alike."""
    with Progress((repeats + 1) * len(paths), f"timing {' and '.join(paths)} epochs", "epochs") as bar:
        for make_batches, step in paths.values():
            train_steps(step, make_batches())
            bar.update(note="warm-up")
        fastest = dict.fromkeys(paths, math.inf)
        for _ in range(repeats):
            for name, (make_batches, step) in paths.items():
                _sync(trainer.device)
                tic = time.perf_counter()
                train_steps(step, make_batches())
                _sync(trainer.device)
                seconds = time.perf_counter() - tic
                fastest[name] = min(fastest[name], seconds)
                bar.update(note=f"{name} {seconds:.1f} s")  # after the clock stopped: display is not timed
    return fastest


def profile_steps(trainer: Trainer, graphs: torch.Tensor, steps: int = 20) -> tuple[dict, str]:
    """Where a training step's time goes: wall time vs device busy time, and launches per step.

    A step whose wall time far exceeds its device time is bound by the host (Python,
    kernel launches, syncs), not by the GPU's arithmetic.
    """
    from torch.profiler import ProfilerActivity, profile

    step = trainer.make_step(trainer.build_model())
    train_steps(step, fast_batches(trainer, graphs))  # warm-up epoch
    batches = list(itertools.islice(fast_batches(trainer, graphs), steps))
    steps = sum(b.real_graphs > 1 for b in batches)
    cuda = trainer.device.type == "cuda"
    _sync(trainer.device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        tic = time.perf_counter()
        train_steps(step, batches)
        _sync(trainer.device)
        wall = time.perf_counter() - tic
    events = prof.key_averages()
    launches = lambda names: sum(e.count for e in events if e.key in names)  # noqa: E731
    summary = {
        "profiled_steps": steps,
        "wall_ms_per_step": round(1000 * wall / steps, 3),
        "kernel_launches_per_step": round(
            launches({"cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"}) / steps, 1
        ),
        "graph_launches_per_step": round(launches({"cudaGraphLaunch"}) / steps, 2),
        "host_syncs_per_step": round(
            launches({"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy"}) / steps, 2
        ),
    }
    if cuda:
        device_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
        summary["device_busy_ms_per_step"] = round(device_us / 1000 / steps, 3)
        summary["device_busy_fraction"] = round(device_us / 1e6 / wall, 3)
    table = events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=30)
    return summary, table


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _concurrent_worker(config_dict: dict, max_graphs: int | None, barrier, results) -> None:
    trainer = Trainer(RunConfig.from_dict(config_dict))
    graphs = _train_graphs(trainer, max_graphs)
    step = trainer.make_step(trainer.build_model())
    train_steps(step, fast_batches(trainer, graphs))  # warm up (and capture) outside the timed window
    barrier.wait()
    tic = time.perf_counter()
    train_steps(step, fast_batches(trainer, graphs))
    _sync(trainer.device)
    results.put((tic, time.perf_counter(), len(graphs)))


def _train_graphs(trainer: Trainer, max_graphs: int | None) -> torch.Tensor:
    train = trainer.data.split["train"]
    return train[:max_graphs] if max_graphs else train


def run_bench(
    config: RunConfig,
    concurrent: int = 1,
    max_graphs: int | None = None,
    baseline: bool = True,
    profile_out: Path | None = None,
    repeats: int = 3,
) -> dict:
    report = cache_build_times(config)
    trainer = Trainer(config, load_dataset(config.dataset))  # from the user's cache: the cold one is gone
    train = _train_graphs(trainer, max_graphs)
    n = len(train)
    fast_model = trainer.build_model()
    paths = {"fast": (lambda: fast_batches(trainer, train), trainer.make_step(fast_model))}
    if baseline:  # the conventional loop: PyG batches, each step run eagerly
        eager = TrainStep(trainer.build_model(), trainer.loss, config.train, trainer.device)
        paths["pyg"] = (lambda: pyg_batches(trainer, train.cpu(), config.train.batch_size), eager)
    seconds = time_epochs(trainer, paths, repeats)
    report = (
        {
            "device": environment(trainer.device)["hardware"],
            "dataset": trainer.graphs.name,
            "graphs_per_epoch": n,
            "batch_size": config.train.batch_size,
            "precision": config.train.precision,
            "cuda_graphs": config.train.cuda_graphs,
            "compile": config.train.compile,
            "parameters": count_parameters(fast_model),
        }
        | report
        | {
            "epochs_timed": repeats,
            "fast_graphs_per_s": round(n / seconds["fast"]),
            "peak_memory_mb": round(peak_memory_mb(trainer.device)),
        }
    )
    if baseline:
        report["pyg_graphs_per_s"] = round(n / seconds["pyg"])
        report["speedup_vs_pyg"] = round(seconds["pyg"] / seconds["fast"], 2)
    if profile_out is not None:
        summary, table = profile_steps(trainer, train)
        report |= summary
        profile_out.mkdir(parents=True, exist_ok=True)
        (profile_out / "profile.txt").write_text(table)
    if concurrent > 1:
        total = concurrent_graphs_per_s(config, concurrent, max_graphs)
        report |= {
            "concurrent": concurrent,
            "concurrent_total_graphs_per_s": round(total),
            "concurrent_speedup_vs_one": round(total / report["fast_graphs_per_s"], 2),
        }
    return report


def cache_build_times(config: RunConfig) -> dict:
    """Seconds to featurize the dataset and compute its PEs into a fresh cache, then to load both warm."""
    with tempfile.TemporaryDirectory() as cold_cache:
        previous = os.environ.get("GGT_SEARCH_CACHE")
        os.environ["GGT_SEARCH_CACHE"] = cold_cache
        try:
            tic = time.perf_counter()
            load_dataset(config.dataset)
            featurize_s = time.perf_counter() - tic
            tic = time.perf_counter()
            load_dataset(config.dataset).load_pe(config.model.pe_dim)
            pe_cold_s = time.perf_counter() - tic
            tic = time.perf_counter()
            load_dataset(config.dataset).load_pe(config.model.pe_dim)
            warm_s = time.perf_counter() - tic
        finally:
            if previous is None:
                del os.environ["GGT_SEARCH_CACHE"]
            else:
                os.environ["GGT_SEARCH_CACHE"] = previous
    return {
        "featurize_cold_s": round(featurize_s, 2),
        "pe_cold_s": round(pe_cold_s, 2),
        "dataset_and_pe_warm_s": round(warm_s, 3),
    }


def concurrent_graphs_per_s(config: RunConfig, concurrent: int, max_graphs: int | None) -> float:
    """Total training graphs/s of `concurrent` processes training at once on the same device."""
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(concurrent), context.Queue()
    workers = [
        context.Process(target=_concurrent_worker, args=(config.to_dict(), max_graphs, barrier, results))
        for _ in range(concurrent)
    ]
    for w in workers:
        w.start()
    spans = [results.get() for _ in workers]
    for w in workers:
        w.join()
    wall = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)
    return sum(count for _, _, count in spans) / wall


def markdown(report: dict) -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in report.items())
    return f"| measure | value |\n|---|---|\n{rows}\n"


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    (out / "bench.md").write_text(markdown(report))
