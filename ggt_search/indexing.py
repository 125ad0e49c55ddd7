"""Index arithmetic on flat graph tensors: the two helpers every gather in the code uses."""

import torch


def counts_to_ptr(counts: torch.Tensor) -> torch.Tensor:
    """[0, c0, c0+c1, ...]: where each graph's rows start, with the total at the end."""
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def ranges(ptr: torch.Tensor, graphs: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """Concatenated arange(ptr[g], ptr[g+1]) for g in graphs, without a Python loop.

    `total` (the sum of the ranges' lengths) spares a device-to-host sync when known.
    """
    counts = ptr[graphs + 1] - ptr[graphs]
    if total is None:
        total = int(counts.sum())
    starts = torch.repeat_interleave(ptr[graphs] - counts_to_ptr(counts)[:-1], counts, output_size=total)
    return starts + torch.arange(total, device=ptr.device)
