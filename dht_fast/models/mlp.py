"""The MNIST learner of the performative-teaching experiment: ``784 -> 128`` features + head."""
from __future__ import annotations

from torch import nn

from dht_fast.models.base import ExtractorHead


class MLP(ExtractorHead):
    """``features``: flatten, ``Linear(in_features, hidden)``, ReLU; ``head``:
    ``Linear(hidden, C)``.

    Input ``(B, ...)`` with ``in_features`` values per sample (``(B, 1, 28, 28)`` for MNIST);
    ``features(x)``: ``(B, hidden)``; ``forward(x)``: logits ``(B, C)``.
    """

    def __init__(self, in_features: int = 784, hidden: int = 128, num_classes: int = 10):
        super().__init__()
        self.extractor = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)
