"""ggt-search: architecture search and ablation studies for Gated Graph Transformers."""

__version__ = "0.1.0"
