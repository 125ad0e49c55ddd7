"""The throughput levers keep results equivalent: padded fixed-shape batches, the sync-free
loss, and CUDA-graph steps (those tests run only where CUDA is, e.g. bench/gpu.sh)."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ggt_search import steps
from ggt_search.batching import DeviceGraphs, round_up
from ggt_search.config import ModelConfig, RunConfig
from ggt_search.errors import UserError
from ggt_search.metrics import masked_loss
from ggt_search.model import GatedGraphTransformer, in_degree_histogram, training_cycle_maxima
from ggt_search.steps import CUDAGraphStep, TrainStep, train_steps, undone
from ggt_search.train import Trainer
from tests.conftest import tiny_config

aten = torch.ops.aten
cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (run bench/gpu.sh on the GPU machine)"
)


def padded_twin(data: DeviceGraphs, graphs: torch.Tensor, slots: int):
    """The same graphs as an unpadded and as a padded batch (budget: 10% spare rows)."""
    plain = data.batch(graphs)
    nodes, edges = len(plain.atoms), len(plain.bonds)
    return plain, data.padded_batch(graphs, slots, nodes + nodes // 10 + 1, edges + edges // 10)


def test_padded_batch_holds_the_same_graphs_plus_inert_padding(bbbp_small):
    data = DeviceGraphs(bbbp_small, "cpu", pe_dim=4)
    plain, padded = padded_twin(data, data.split["train"][:29], slots=32)  # a short last batch: 3 empty slots
    n, e = len(plain.atoms), len(plain.bonds)
    assert padded.shape() == (32, n + n // 10 + 1, e + e // 10)
    assert torch.equal(padded.atoms[:n], plain.atoms) and torch.equal(padded.pe[:n], plain.pe)
    assert torch.equal(padded.edge_index[:, :e], plain.edge_index) and torch.equal(padded.bonds[:e], plain.bonds)
    assert torch.equal(padded.node_graph[:n], plain.node_graph) and (padded.node_graph[n:] == 32).all()
    assert (padded.edge_index[:, e:] == len(padded.atoms) - 1).all()  # padding bonds join the last, padding atom
    assert padded.node_mask.sum() == n and padded.edge_mask.sum() == e
    assert padded.graph_mask.tolist() == [True] * 29 + [False] * 4  # 32 slots + the padding slot
    assert torch.equal(padded.y[:29], plain.y) and padded.y[29:].isnan().all()
    assert padded.real_graphs == 29 and padded.num_segments == 33


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"norm": "graph", "pooling": "max", "pe_injection": "add"},
        {"norm": "layer", "norm_position": "post", "conv": "gcn", "virtual_node": True},
        {"conv": "gcn", "aggregation": "pna", "pooling": "sum", "residual": False},
        {"conv": "mlp", "ffn": False, "pe_dim": 0},
        {"norm": "batch", "virtual_node": True, "norm_position": "post"},
        {"aggregation": "softmax", "message_norm": True, "graph_size_norm": True},
        {"conv": "gcn", "aggregation": "powermean", "global_attention": "lrga"},
        {"global_attention": "transformer", "norm": "graph"},
        {"substructures": True},
    ],
)
def test_padded_batches_give_the_same_outputs_gradients_and_statistics(bbbp_small, fields):
    data = DeviceGraphs(bbbp_small, "cpu", pe_dim=8, substructures=True)
    config = ModelConfig(**({"layers": 2, "hidden": 16, "pe_dim": 8, "dropout": 0.0, "pe_sign_flip": "off"} | fields))
    histogram = in_degree_histogram(bbbp_small) if config.aggregation == "pna" else None
    cycle_maxima = training_cycle_maxima(bbbp_small) if config.substructures else None
    twins = []
    for padded in (False, True):
        torch.manual_seed(0)
        model = GatedGraphTransformer(config, 1, histogram, cycle_maxima).train()
        plain, padded_batch = padded_twin(data, data.split["train"][:29], slots=32)
        batch = padded_batch if padded else plain
        out = model(batch)[: batch.real_graphs]
        masked_loss(out, batch.y[: batch.real_graphs], "classification").backward()
        twins.append((out, model))
    (out_plain, plain_model), (out_padded, padded_model) = twins
    torch.testing.assert_close(out_padded, out_plain, rtol=1e-3, atol=1e-4)  # float32 noise; exact in float64
    for (name, p), q in zip(plain_model.named_parameters(), padded_model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
    for (name, b), c in zip(plain_model.named_buffers(), padded_model.buffers()):
        torch.testing.assert_close(c, b, rtol=1e-4, atol=1e-5, msg=name)  # BatchNorm running statistics


def seeded_epochs(trainer: Trainer, epochs: int, dtype: torch.dtype, padded: bool):
    """Seeded epochs of Adam on batches of 48: (losses, final weights)."""
    trainer.data.pe, trainer.data.y = trainer.data.pe.to(dtype), trainer.data.y.to(dtype)
    torch.manual_seed(0)
    step = trainer.make_step(trainer.build_model().to(dtype))
    return epoch_losses(trainer, step, epochs, padded), step.module.state_dict()


def epoch_losses(trainer: Trainer, step, epochs: int, padded: bool) -> list[float]:
    """Each epoch's mean loss of `step` on the training split, in batches of 48 shuffled by the epoch's seed."""
    split = trainer.data.split["train"]
    generator = torch.Generator()
    return [
        train_steps(
            step, trainer.data.batches(split, 48, shuffle=True, generator=generator.manual_seed(e), padded=padded)
        )
        for e in range(epochs)
    ]


def train_padded_and_plain(trainer: Trainer, epochs: int, dtype: torch.dtype):
    """The same seeded epochs of Adam, on unpadded and on padded batches: (losses, weights) of each."""
    return [seeded_epochs(trainer, epochs, dtype, padded) for padded in (False, True)]


def test_padded_epochs_train_exactly_like_unpadded_ones_in_float64(bbbp_small):
    """Where the arithmetic is exact up to summation order (float64), padding changes nothing:
    three epochs of Adam give the same losses and weights to 1e-9."""
    (plain_losses, plain_state), (padded_losses, padded_state) = train_padded_and_plain(
        Trainer(tiny_config(pe_sign_flip="off"), bbbp_small), epochs=3, dtype=torch.float64
    )
    assert plain_losses == pytest.approx(padded_losses, rel=1e-9)
    for name, value in plain_state.items():
        torch.testing.assert_close(padded_state[name], value, rtol=1e-9, atol=1e-9, msg=name)


def test_a_padded_float32_epoch_stays_within_adams_reach(bbbp_small):
    """In float32, summation order differs between the paths, and Adam turns that noise into
    steps of about lr: two runs of S steps can part by at most about 2 S lr per weight
    (Adam's step is bounded by lr (1 - beta1) / sqrt(1 - beta2) ~ 3.2 lr, typically ~lr)."""
    trainer = Trainer(tiny_config(pe_sign_flip="off"), bbbp_small)
    (plain_losses, plain_state), (padded_losses, padded_state) = train_padded_and_plain(
        trainer, epochs=1, dtype=torch.float32
    )
    steps = len(trainer.data.split["train"]) // 48
    assert plain_losses == pytest.approx(padded_losses, rel=1e-4)
    for name, value in plain_state.items():
        if value.is_floating_point():
            reach = 2 * steps * trainer.config.train.lr if name.endswith(("weight", "bias")) else 1e-4
            torch.testing.assert_close(padded_state[name], value, rtol=0, atol=reach, msg=name)


def test_a_compiled_step_trains_exactly_like_an_eager_one_in_float64(bbbp_small, monkeypatch):
    """`train.compile` traces the whole forward as one graph (fullgraph: a break would mean a
    host sync or a Python fallback inside the step), pads the batches it needs for fixed
    shapes, and changes no arithmetic: in float64, three epochs give the eager, unpadded run's
    losses and weights. The CPU traces with aot_eager (the same aten graph, no code
    generation, seconds instead of minutes); bench/gpu.sh runs inductor's kernels."""
    monkeypatch.setattr(steps, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    config = tiny_config(pe_sign_flip="off")
    eager_losses, eager_state = seeded_epochs(Trainer(config, bbbp_small), epochs=3, dtype=torch.float64, padded=False)
    trainer = Trainer(config.with_overrides(train={"compile": True}), bbbp_small)
    assert trainer.config.train.padded
    compiled_losses, compiled_state = seeded_epochs(trainer, epochs=3, dtype=torch.float64, padded=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the forward did run compiled
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-9)
    for name, value in eager_state.items():
        torch.testing.assert_close(compiled_state[name], value, rtol=1e-9, atol=1e-9, msg=name)


def test_padded_shapes_repeat_across_epochs(bbbp):
    """The budget only grows, in coarse steps: a few shapes per run, so a few CUDA graph captures."""
    data = DeviceGraphs(bbbp, "cpu")
    shapes, real_rows, rows = set(), 0, 0
    for epoch in range(8):
        for batch in data.batches(
            data.split["train"], 128, shuffle=True, generator=torch.Generator().manual_seed(epoch), padded=True
        ):
            shapes.add(batch.shape())
            assert batch.node_mask.sum() < len(batch.atoms) and batch.edge_mask.sum() <= len(batch.bonds)
            real_rows += int(batch.node_mask.sum())
            rows += len(batch.atoms)
    assert len(shapes) <= 3
    assert real_rows / rows > 0.85, real_rows / rows  # padding stays small


class NoHostSync(TorchDispatchMode):
    """Fails on the aten ops that would make a GPU wait for the host: reading a value back,
    or an output shape that depends on the data. A CPU stand-in for CUDA's sync debug mode."""

    SYNCING = {
        aten._local_scalar_dense.default,
        aten.nonzero.default,
        aten.masked_select.default,
        aten.unique_consecutive.default,
        aten._unique2.default,
    }

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        boolean_index = func is aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1])
        unsized_repeat = func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None
        if func in self.SYNCING or boolean_index or unsized_repeat:
            raise AssertionError(f"{func} would sync with the host")
        return func(*args, **kwargs)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"norm": "graph", "virtual_node": True, "pe_sign_flip": "graph"},
        {"conv": "gcn", "aggregation": "pna"},
        {"aggregation": "softmax", "message_norm": True, "graph_size_norm": True, "global_attention": "lrga"},
        {"aggregation": "powermean", "global_attention": "transformer", "substructures": True},
    ],
)
def test_a_padded_step_never_waits_for_the_host(bbbp_small, fields):
    """Batch building, forward, loss and backward of a padded batch: no value read back, no data-dependent shape."""
    trainer = Trainer(tiny_config(dropout=0.2, **fields), bbbp_small)
    model = trainer.build_model().train()
    batches = trainer.data.batches(trainer.data.split["train"], 48, shuffle=True, padded=True)
    next(batches)  # the epoch's one sync: its budget
    with NoHostSync():
        for batch in batches:
            trainer.loss(model, batch).backward()
    with pytest.raises(AssertionError, match="would sync"), NoHostSync():  # the unpadded path does sync
        trainer.loss(model, trainer.data.batch(trainer.data.split["train"][:48]))


def test_round_up_pads_at_most_a_sixteenth():
    for count in itertools.chain(range(1, 300), range(5000, 9000, 7)):
        assert count <= round_up(count) <= count + max(1, count / 16)
    assert round_up(7000) % 256 == 0


def test_masked_loss_equals_the_mean_over_labelled_entries():
    torch.manual_seed(0)
    logits, y = torch.randn(50, 3), torch.randint(0, 2, (50, 3)).float()
    y[torch.rand(50, 3) < 0.3] = float("nan")
    labelled = ~y.isnan()
    expected = F.binary_cross_entropy_with_logits(logits[labelled], y[labelled])
    torch.testing.assert_close(masked_loss(logits, y, "classification"), expected)
    torch.testing.assert_close(masked_loss(logits, y, "regression"), F.mse_loss(logits[labelled], y[labelled]))


@pytest.mark.parametrize("first_step", [True, False], ids=["adam-state-exists", "fresh-adam"])
def test_warm_up_steps_before_a_capture_leave_no_trace(bbbp_small, first_step):
    """A capture's eager warm-up is undone: the next real steps train as if it never ran."""
    trainer = Trainer(
        tiny_config(dropout=0.3, virtual_node=True), bbbp_small
    )  # dropout and sign flips draw random numbers
    graphs = trainer.data.split["train"]
    batches = list(
        trainer.data.batches(graphs, 48, shuffle=True, generator=torch.Generator().manual_seed(0), padded=True)
    )
    states = []
    for warm_up in (False, True):
        torch.manual_seed(0)
        step = TrainStep(trainer.build_model(), trainer.loss, trainer.config.train, trainer.device)
        step.module.train()
        if first_step:  # a later capture (a new shape): Adam has state to restore
            step(batches[0])
        if warm_up:
            with undone(step.module, step.optimizer):
                for batch in batches[1:4]:
                    step(batch)
        losses = [float(step(batch)) for batch in batches[1:3]]
        states.append((losses, step.module.state_dict(), step.optimizer.state_dict()["state"]))
    (losses, model, adam), (warm_losses, warm_model, warm_adam) = states
    assert warm_losses == losses
    for name, value in model.items():
        assert torch.equal(warm_model[name], value), name
    for index, state in adam.items():
        for key, value in state.items():
            assert torch.equal(warm_adam[index][key], value), (index, key)


def test_cuda_graphs_are_refused_where_they_cannot_run(bbbp_small):
    with pytest.raises(UserError, match="needs a CUDA device"):
        Trainer(tiny_config().with_overrides(train={"cuda_graphs": True}), bbbp_small)
    with pytest.raises(UserError, match="use bf16"):
        RunConfig.from_dict({"train": {"cuda_graphs": True, "precision": "fp16"}})


@cuda
def test_padded_batches_and_graph_steps_never_sync_with_the_host(bbbp_small):
    trainer = Trainer(tiny_config().with_overrides(train={"device": "cuda", "cuda_graphs": True}), bbbp_small)
    step = trainer.make_step(trainer.build_model())
    batches = trainer.data.batches(trainer.data.split["train"], 48, shuffle=True, padded=True)
    step(next(batches))  # the epoch's one sync (its budget) and the capture's warm-up happen here
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches:
            step(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda
@pytest.mark.parametrize(
    "fast",
    [
        {"cuda_graphs": True, "precision": "fp32"},
        {"cuda_graphs": True, "precision": "bf16"},
        {"compile": True, "precision": "fp32"},
        {"compile": True, "cuda_graphs": True, "precision": "bf16"},
    ],
)
def test_fast_training_equals_eager_training(bbbp_small, fast):
    """The same seed and the same padded batches: graph replays and inductor's compiled
    kernels (alone or captured) reach the eager steps' losses and metric."""
    config = tiny_config(pe_sign_flip="off").with_overrides(train={"device": "cuda", "precision": fast["precision"]})
    results = []
    for train_fields in ({}, fast):
        trainer = Trainer(config.with_overrides(train=train_fields), bbbp_small)
        torch.manual_seed(0)
        step = trainer.make_step(trainer.build_model())
        assert isinstance(step, CUDAGraphStep) == trainer.config.train.cuda_graphs
        losses = epoch_losses(trainer, step, 3, padded=True)
        results.append((losses, trainer.evaluate(step.module, "valid")[1]))
    (eager_losses, eager_valid), (fast_losses, fast_valid) = results
    if fast["precision"] == "bf16":
        loss_tolerance, metric_tolerance = 2e-2, 5e-2
    elif fast.get("compile"):  # fused kernels sum in another order; Adam turns that noise into steps of ~lr
        loss_tolerance, metric_tolerance = 2e-3, 1e-2
    else:  # a replay runs the very kernels it captured
        loss_tolerance, metric_tolerance = 1e-4, 5e-3
    assert fast_losses == pytest.approx(eager_losses, rel=loss_tolerance)
    assert fast_valid == pytest.approx(eager_valid, abs=metric_tolerance)


@cuda
def test_cuda_graph_fit_with_dropout_matches_eager_within_noise(bbbp_small):
    """Dropout and PE sign flips draw random numbers inside the graph: full fits land within seed noise."""
    config = tiny_config(dropout=0.3).with_overrides(train={"device": "cuda", "epochs": 4})
    eager = Trainer(config, bbbp_small).fit(evaluate_test=False)
    graphed = Trainer(config.with_overrides(train={"cuda_graphs": True}), bbbp_small).fit(evaluate_test=False)
    assert abs(graphed.history[-1].train_loss - eager.history[-1].train_loss) < 0.1
    assert abs(graphed.best_valid - eager.best_valid) < 0.15


@cuda
def test_a_captured_step_follows_the_schedulers_learning_rate(bbbp_small):
    """The plateau scheduler writes into the very tensor whose memory the captured Adam reads."""
    trainer = Trainer(tiny_config().with_overrides(train={"device": "cuda", "cuda_graphs": True}), bbbp_small)
    step = trainer.make_step(trainer.build_model())
    step.module.train()
    batch = next(trainer.data.batches(trainer.data.split["train"], 48, padded=True))
    step(batch)  # captured with lr 1e-3
    lr = step.optimizer.param_groups[0]["lr"]
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(step.optimizer, factor=0.5, patience=0)
    scheduler.step(1.0)
    scheduler.step(2.0)  # worse: halve
    assert step.optimizer.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(5e-4)
    step(batch)
    assert len(step.captured) == 1  # the same shape replays the same graph


def test_bench_times_both_paths_and_profiles_a_step(moleculenet, tmp_path):
    from ggt_search.bench import run_bench, write_report

    config = RunConfig.from_dict(
        {
            "dataset": {"name": "ogbg-molbbbp", "source": str(moleculenet)},
            "model": {"layers": 1, "hidden": 16, "pe_dim": 4},
            "train": {"batch_size": 32, "device": "cpu"},
        }
    )
    report = run_bench(config, max_graphs=96, profile_out=tmp_path, repeats=2)
    write_report(report, tmp_path)
    assert report["graphs_per_epoch"] == 96 and report["epochs_timed"] == 2
    assert report["fast_graphs_per_s"] > 0 and report["pyg_graphs_per_s"] > 0
    assert report["speedup_vs_pyg"] == pytest.approx(report["fast_graphs_per_s"] / report["pyg_graphs_per_s"], rel=0.05)
    assert report["profiled_steps"] == 3 and report["wall_ms_per_step"] > 0
    assert "aten::" in (tmp_path / "profile.txt").read_text()
    assert "| fast_graphs_per_s |" in (tmp_path / "bench.md").read_text()
