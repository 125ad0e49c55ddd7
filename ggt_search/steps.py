"""Training steps: one optimisation step (forward, loss, backward, Adam) on one batch.

A step is given the module it trains and its loss, `loss(forward, batch)`, where `forward`
is the module itself or its compiled twin; it knows nothing of what is trained. Fine-tuning
(`Trainer`) and pre-training (`pretrain`) both take theirs from `make_step`:

- `TrainStep`, eager; with `train.compile` its forward runs as one `torch.compile`d graph;
- `CUDAGraphStep`, the same step captured once per batch shape and replayed as one CUDA
  graph: one launch per step instead of hundreds.

Compiled and captured steps need padded batches (`DeviceGraphs.batches(padded=True)`) so
that shapes repeat, and a captured step must never wait for the host. Capturing never
changes what is trained: the eager warm-up steps a capture needs are undone (`undone`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from ggt_search.config import TrainConfig
from ggt_search.errors import UserError

COMPILE_BACKEND = "inductor"  # train.compile's backend; the CPU tests trace with "aot_eager" (no code generation)
WARMUP_STEPS = 3  # eager steps before a capture (cuBLAS handles, autograd, Adam state)

Loss = Callable[[Callable, object], torch.Tensor]  # loss(forward, batch): a scalar tensor


def check_device(train: TrainConfig, device: torch.device) -> None:
    if train.precision != "fp32" and device.type != "cuda":
        raise UserError(
            f"train.precision {train.precision} needs a CUDA device (its autocast is CUDA-only), not {device}; "
            "use --precision fp32 (or train.precision: fp32)"
        )
    if train.cuda_graphs and device.type != "cuda":
        raise UserError(
            f"train.cuda_graphs needs a CUDA device, not {device}; drop --cuda-graphs (or set train.cuda_graphs: false)"
        )


def autocast(train: TrainConfig, device: torch.device):
    """train.precision's autocast (CUDA only: `check_device` refuses bf16 and fp16 elsewhere)."""
    if train.precision == "fp32" or device.type != "cuda":
        return nullcontext()
    # A captured graph must not depend on autocast's cache of cast weights.
    return torch.autocast(
        "cuda",
        dtype=torch.bfloat16 if train.precision == "bf16" else torch.float16,
        cache_enabled=not train.cuda_graphs,
    )


def make_step(module: nn.Module, loss: Loss, train: TrainConfig, device: torch.device) -> TrainStep:
    """The training step the config asks for: eager or replayed as CUDA graphs, its forward compiled or not."""
    check_device(train, device)
    if train.cuda_graphs:
        return CUDAGraphStep(module, loss, train, device)
    return TrainStep(module, loss, train, device, compiled=train.compile)


def train_steps(step: TrainStep, batches) -> float:
    """One optimisation step per batch; returns the mean loss (one host sync, at the end)."""
    step.module.train()
    total = torch.zeros((), device=step.device)
    steps = 0
    for batch in batches:
        if batch.real_graphs == 1:
            continue  # a last batch of one graph: BatchNorm cannot normalise a single sample
        total += step(batch)
        steps += 1
    return float(total) / max(steps, 1)


class TrainStep:
    """One optimisation step: Adam on `loss` of a batch, under train.precision's autocast.

    With `compiled` (`train.compile`, via `make_step`), the forward runs as one
    `torch.compile`d graph (inductor's fused kernels) specialised to the padded batch shape;
    evaluation stays eager, as its batches are not padded. The module and its weights are the
    same object either way.
    """

    def __init__(
        self,
        module: nn.Module,
        loss: Loss,
        train: TrainConfig,
        device: torch.device,
        lr: float | torch.Tensor | None = None,
        compiled: bool = False,
        **adam,
    ):
        self.module, self.loss, self.train, self.device = module, loss, train, device
        # fullgraph: a graph break would mean a host sync or a Python fallback inside the step.
        self.forward = (
            torch.compile(module, backend=COMPILE_BACKEND, fullgraph=True, dynamic=False) if compiled else module
        )
        self.optimizer = torch.optim.Adam(
            module.parameters(), lr=train.lr if lr is None else lr, weight_decay=train.weight_decay, **adam
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=train.precision == "fp16" and device.type == "cuda")

    def batch_loss(self, batch) -> torch.Tensor:
        with autocast(self.train, self.device):
            return self.loss(self.forward, batch)

    def __call__(self, batch) -> torch.Tensor:
        """Train on `batch`; returns its loss, detached."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.batch_loss(batch)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()


class CUDAGraphStep(TrainStep):
    """The same step (forward, backward, Adam) captured once per batch shape and replayed as one CUDA graph.

    Batches must be padded (`DeviceGraphs.batches(padded=True)`) so that their shapes
    repeat; each new shape is captured after a few eager warm-up steps whose effects on
    the weights, statistics, optimizer and random state are undone, so capturing never
    changes what is trained. Adam runs `capturable`, with its learning rate a device
    tensor the plateau scheduler updates in place.
    """

    def __init__(self, module: nn.Module, loss: Loss, train: TrainConfig, device: torch.device):
        super().__init__(
            module,
            loss,
            train,
            device,
            lr=torch.tensor(train.lr, device=device),
            compiled=train.compile,
            capturable=True,
        )
        self.captured: dict[tuple, tuple[torch.cuda.CUDAGraph, object, torch.Tensor]] = {}

    def __call__(self, batch) -> torch.Tensor:
        """Train on `batch`; the returned loss is overwritten by the next call."""
        if batch.node_mask is None:
            raise ValueError("CUDA graph steps need padded batches: DeviceGraphs.batches(..., padded=True)")
        if batch.shape() not in self.captured:
            self.captured[batch.shape()] = self.capture(batch)
        graph, static, loss = self.captured[batch.shape()]
        for name, tensor in batch.tensors().items():
            getattr(static, name).copy_(tensor)
        graph.replay()
        return loss

    def capture(self, batch):
        static = dataclasses.replace(batch, **{name: t.clone() for name, t in batch.tensors().items()})
        with torch.cuda.device(self.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), undone(self.module, self.optimizer):
                for _ in range(WARMUP_STEPS):
                    super().__call__(static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            self.optimizer.zero_grad(set_to_none=True)  # the graph owns its gradients
            with torch.cuda.graph(graph):
                loss = self.batch_loss(static)
                loss.backward()
                self.optimizer.step()
        return graph, static, loss.detach()


@contextmanager
def undone(module: nn.Module, optimizer: torch.optim.Optimizer):
    """Run the body, then put back the weights, buffers, optimizer state and random state as they were."""
    tensors = [*module.parameters(), *module.buffers()]
    tensors += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    saved = [t.detach().clone() for t in tensors]
    had_state = set(optimizer.state)
    on_cuda = next(module.parameters()).is_cuda  # then under torch.cuda.device(the module's), so current_device is it
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if on_cuda else []):
        yield
    with torch.no_grad():
        for tensor, value in zip(tensors, saved):
            tensor.copy_(value)
        for param, state in optimizer.state.items():  # state the body created: back to Adam's fresh zeros
            if param not in had_state:
                for value in state.values():
                    if torch.is_tensor(value):
                        value.zero_()
