"""Index arithmetic on flat graph tensors: the helpers every gather in the code uses."""

import torch


def counts_to_ptr(counts: torch.Tensor) -> torch.Tensor:
    """[0, c0, c0+c1, ...]: where each graph's rows start, with the total at the end."""
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def ptr_to_counts(ptr: torch.Tensor) -> torch.Tensor:
    """The inverse of counts_to_ptr: how many rows each graph has."""
    return ptr[1:] - ptr[:-1]


def ranges(ptr: torch.Tensor, graphs: torch.Tensor) -> torch.Tensor:
    """Concatenated arange(ptr[g], ptr[g+1]) for g in graphs, without a Python loop.

    The output's length depends on the data, so on a GPU this reads it back (one sync);
    `padded_ranges` is the sync-free, fixed-size version.
    """
    counts = ptr[graphs + 1] - ptr[graphs]
    total = int(counts.sum())
    starts = torch.repeat_interleave(ptr[graphs] - counts_to_ptr(counts)[:-1], counts, output_size=total)
    return starts + torch.arange(total, device=ptr.device)


def padded_ranges(ptr: torch.Tensor, graphs: torch.Tensor, size: int, pad_slot: int):
    """`ranges(ptr, graphs)` padded to `size` rows, plus each row's slot (padding: `pad_slot`).

    Returns (rows, slot, start): rows index the dataset (padding rows read row 0), and
    start[g] is where graph g's rows begin in the batch.
    """
    counts = ptr[graphs + 1] - ptr[graphs]
    start = counts_to_ptr(counts)
    position = torch.arange(size, device=ptr.device)
    slot = (torch.searchsorted(start, position, right=True) - 1).clamp(max=len(graphs) - 1)
    real = position < start[-1]
    rows = torch.where(real, ptr[graphs[slot]] + position - start[slot], 0)
    return rows, torch.where(real, slot, pad_slot), start
