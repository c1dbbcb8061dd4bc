"""Neural learners for performative teaching: a feature extractor plus a linear head.

Every model exposes ``features(x) -> (B, D)`` and ``head`` (an ``nn.Linear(D, C)``), and its
``forward(x)`` is ``head(features(x))``, so a teacher can replace the features in between.
"""
from __future__ import annotations

from torch import nn

from dht_fast.models.cnn import CNN
from dht_fast.models.mlp import MLP

ARCHS = ("mlp", "cnn3", "cnn6", "cnn9", "cnn15")


def build_model(arch: str, *, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A learner by name. ``in_shape``: ``(C_in, H, W)`` of one input image.

    ``mlp``: flatten, ``C_in*H*W -> 128`` features. ``cnnK``: the VGG-like CNN-K, which needs
    ``32 x 32`` inputs (three max-pools leave ``4 x 4`` for the final ``4 x 4`` convolution).
    """
    if arch == "mlp":
        c, h, w = in_shape
        return MLP(in_features=c * h * w, num_classes=num_classes)
    if arch in ARCHS:
        return CNN(depth=int(arch[3:]), in_shape=in_shape, num_classes=num_classes)
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


__all__ = ["ARCHS", "CNN", "MLP", "build_model"]
