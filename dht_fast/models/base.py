"""The shape every neural learner here shares: a feature extractor, then a linear head."""
from __future__ import annotations

import torch
from torch import nn


class ExtractorHead(nn.Module):
    """``forward(x) = head(features(x))``, so a teacher can replace the features in between.

    Subclasses set ``self.extractor`` (input ``(B, ...)`` -> ``(B, D)``) and
    ``self.head`` (``nn.Linear(D, C)``).
    """

    extractor: nn.Module
    head: nn.Linear

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
