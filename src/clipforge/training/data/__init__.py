"""Training data: CSV/TSV tables, WebDataset shards and synthetic pairs -> ``(images, tokens)`` batches.

Entry points: ``DataConfig`` (the ``data`` config section), ``create_train_loader`` (one rank, one epoch,
resumable at a batch index; ``resume_batch`` turns a checkpointed ``TrainLoader.state_dict()`` back into
that index), ``split_global_batch`` and ``mask_tokens``. Held-out evaluation sets are read by
``clipforge.evaluation`` (the same readers as ``clipforge benchmark``).
"""
from .batch import DataStats, EpochPlan
from .config import DataConfig
from .loader import TrainLoader, create_train_loader, resume_batch, split_global_batch
from clipforge.data.shards import expand_shards
from .text import mask_tokens

__all__ = ["DataConfig", "DataStats", "EpochPlan", "TrainLoader", "create_train_loader", "expand_shards",
           "mask_tokens", "resume_batch", "split_global_batch"]
