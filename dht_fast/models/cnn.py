"""CNN-k (k = 3, 6, 9, 15): the VGG-like CIFAR learners of the performative-teaching experiment.

Three stages of 64 / 128 / 256 channels with ``k / 3`` blocks of conv3x3 + BatchNorm + ReLU each,
a 2x2 max-pool after each stage (32 -> 16 -> 8 -> 4), then a 4x4 convolution (no padding) to
256 features with BatchNorm + ReLU like every other convolution, flattened, and a linear head.
Without that normalization the 256 raw features grow without bound and SGD at the paper's
lr 0.1 diverges within 10 steps (measured on CIFAR-10: loss 2.3 -> 1e8 in 15 steps; with it,
2.3 -> 1.8).
"""
from __future__ import annotations

from torch import nn

from dht_fast.models.base import ExtractorHead

STAGE_CHANNELS = (64, 128, 256)
DEPTHS = (3, 6, 9, 15)


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


def _block_4x4(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 4, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class CNN(ExtractorHead):
    """CNN-``depth``. Input ``(B, C_in, 32, 32)``; ``features(x)``: ``(B, feature_dim)``;
    ``forward(x)``: logits ``(B, num_classes)``."""

    def __init__(self, depth: int = 3, *, in_shape: tuple[int, int, int] = (3, 32, 32),
                 num_classes: int = 10, feature_dim: int = 256):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {DEPTHS}, got {depth}")
        c_in, h, w = in_shape
        if (h, w) != (32, 32):
            raise ValueError(
                f"CNN-{depth} takes 32x32 inputs (three pools then a 4x4 conv), got in_shape "
                f"{tuple(in_shape)}; use the mlp arch for other sizes"
            )
        layers: list[nn.Module] = []
        for c_out in STAGE_CHANNELS:
            for _ in range(depth // 3):
                layers += _block(c_in, c_out)
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        layers += [*_block_4x4(c_in, feature_dim), nn.Flatten()]
        self.extractor = nn.Sequential(*layers)
        self.head = nn.Linear(feature_dim, num_classes)
