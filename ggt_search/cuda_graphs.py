"""Training steps replayed as CUDA graphs: one launch per step instead of hundreds.

A step (forward, backward, Adam) is captured once per batch shape and replayed. Batches
must be padded to fixed shapes (`DeviceGraphs.batches(padded=True)`) so that shapes repeat,
and the step must never wait for the host. Capturing never changes what is trained: the
eager warm-up steps a capture needs are undone (`undone`).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import torch

from ggt_search.model import GatedGraphTransformer
from ggt_search.train import Trainer, TrainStep

WARMUP_STEPS = 3  # eager steps before a capture (cuBLAS handles, autograd, Adam state)


class CUDAGraphStep(TrainStep):
    """The same step (forward, backward, Adam) captured once per batch shape and replayed as one CUDA graph.

    Batches must be padded (`DeviceGraphs.batches(padded=True)`) so that their shapes
    repeat; each new shape is captured after a few eager warm-up steps whose effects on
    the weights, statistics, optimizer and random state are undone, so capturing never
    changes what is trained. Adam runs `capturable`, with its learning rate a device
    tensor the plateau scheduler updates in place.
    """

    def __init__(self, trainer: Trainer, model: GatedGraphTransformer, compiled: bool = False):
        super().__init__(trainer, model, lr=torch.tensor(trainer.config.train.lr, device=trainer.device), compiled=compiled, capturable=True)
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
        with torch.cuda.device(self.trainer.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), undone(self.model, self.optimizer):
                for _ in range(WARMUP_STEPS):
                    super().__call__(static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            self.optimizer.zero_grad(set_to_none=True)  # the graph owns its gradients
            with torch.cuda.graph(graph):
                loss = self.trainer.loss(self.forward, static)
                loss.backward()
                self.optimizer.step()
        return graph, static, loss.detach()


@contextmanager
def undone(model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """Run the body, then put back the weights, buffers, optimizer state and random state as they were."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    saved = [t.detach().clone() for t in tensors]
    had_state = set(optimizer.state)
    on_cuda = next(model.parameters()).is_cuda  # then under torch.cuda.device(the model's), so current_device is it
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
