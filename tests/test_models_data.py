"""The neural learners (MLP, CNN-k) and the image datasets behind Table 1."""
import io
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from dht_fast.data.base import DatasetNotFound
from dht_fast.data.mnist import find_mnist
from dht_fast.data.vision import ImageTensorDataset, crop_flip, generated_images, load_vision
from dht_fast.models import ARCHS, build_model
from dht_fast.models.cnn import CNN


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_exposes_features_and_a_linear_head(arch):
    shape = (1, 28, 28) if arch == "mlp" else (3, 32, 32)
    model = build_model(arch, in_shape=shape, num_classes=7)
    x = torch.randn(3, *shape)
    feats = model.features(x)
    d = 128 if arch == "mlp" else 256
    assert feats.shape == (3, d) and model.feature_dim == d
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 7
    torch.testing.assert_close(model(x), model.head(feats))


@pytest.mark.parametrize("depth,convs", [(3, 4), (6, 7), (9, 10), (15, 16)])
def test_cnn_depth_counts_conv3x3_blocks(depth, convs):
    model = CNN(depth)
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(layers) == convs  # depth 3x3 convs + the final 4x4
    assert [m.out_channels for m in layers[:-1]] == sorted(m.out_channels for m in layers[:-1])
    assert layers[-1].kernel_size == (4, 4)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == depth + 1


def test_model_errors():
    with pytest.raises(ValueError, match="32x32"):
        build_model("cnn3", in_shape=(1, 28, 28), num_classes=10)
    with pytest.raises(ValueError, match="arch"):
        build_model("resnet", in_shape=(3, 32, 32), num_classes=10)
    with pytest.raises(ValueError, match="depth"):
        CNN(4)


def test_crop_flip_draws_shifted_and_mirrored_windows():
    img = torch.arange(2 * 6 * 6, dtype=torch.uint8).view(1, 2, 6, 6).repeat(200, 1, 1, 1)
    out = crop_flip(img, pad=2)
    assert out.shape == img.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(img[0], (2, 2, 2, 2))
    crops = [padded[:, r:r + 6, c:c + 6] for r in range(5) for c in range(5)]
    windows = {w.numpy().tobytes() for crop in crops for w in (crop, crop.flip(-1))}
    seen = {o.numpy().tobytes() for o in out}
    assert seen <= windows and len(seen) > 20
    unpadded = crop_flip(img[:50], pad=0)
    assert all(torch.equal(o, img[0]) or torch.equal(o, img[0].flip(-1)) for o in unpadded)


def test_generated_data_is_deterministic_and_cifar100_shaped():
    x1, y1 = generated_images(64)
    x2, y2 = generated_images(64)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (64, 3, 32, 32) and x1.dtype == torch.uint8 and int(y1.max()) < 100
    data = load_vision("generated", generated_train=300, generated_test=100, limit_train=120)
    assert data.in_shape == (3, 32, 32) and data.num_classes == 100
    assert len(data.train) == 120 and len(data.test) == 100
    assert data.train.augment and not data.test.augment
    x, y = data.test.batch(torch.arange(100))
    assert x.dtype == torch.float32 and abs(x.mean()) < 0.5 and y.shape == (100,)


def test_image_dataset_normalizes_and_indexes():
    images = torch.full((4, 1, 5, 5), 51, dtype=torch.uint8)
    ds = ImageTensorDataset(images, torch.arange(4), (0.1,), (0.2,), augment=False)
    x, y = ds[2]
    torch.testing.assert_close(x, torch.full((1, 5, 5), (0.2 - 0.1) / 0.2))
    assert y == 2 and len(ds) == 4
    with pytest.raises(ValueError, match="uint8"):
        ImageTensorDataset(images.float(), torch.arange(4), (0.1,), (0.2,), augment=False)


def test_mnist_through_torchvision(tmp_path):
    try:
        find_mnist()
    except DatasetNotFound:
        pytest.skip("MNIST files not available")
    data = load_vision("mnist", cache=tmp_path, limit_test=500)
    assert (tmp_path / "mnist" / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert len(data.train) == 60000 and len(data.test) == 500 and data.in_shape == (1, 28, 28)
    assert not data.train.augment
    assert torch.bincount(data.train.labels).min() > 5000


def _fake_cifar_archive(path: Path, per_class: int = 2) -> Path:
    classes = ["airplane", "automobile", "bird"]
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            for k, name in enumerate(classes):
                for i in range(per_class):
                    buf = io.BytesIO()
                    Image.new("RGB", (32, 32), (40 * k, 100, 200)).save(buf, "JPEG", quality=95)
                    info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


def test_cifar10_from_jpeg_archive_into_cache(tmp_path):
    archive = _fake_cifar_archive(tmp_path / "cifar10-jpeg.tar.gz")
    cache = tmp_path / "cache"
    data = load_vision("cifar10", data_root=archive, cache=cache)
    assert len(data.train) == 6 and data.in_shape == (3, 32, 32)
    assert data.train.labels.tolist() == [0, 0, 1, 1, 2, 2] and data.train.augment
    assert abs(int(data.test.images[4, 0, 5, 5]) - 80) <= 3  # class 2's red channel
    assert (cache / "cifar10-jpeg" / "train_uint8.pt").is_file()
    again = load_vision("cifar10", data_root=tmp_path / "missing", cache=cache)
    assert torch.equal(again.train.images, data.train.images)  # served from the cache
    assert not list(cache.glob(".*")), "no temporary entries left behind"
    with pytest.raises(DatasetNotFound, match="--data-root"):
        load_vision("cifar10", data_root=tmp_path / "missing", cache=tmp_path / "empty")


def test_cifar100_needs_a_user_path(tmp_path):
    with pytest.raises(DatasetNotFound, match="cifar-100-python"):
        load_vision("cifar100")
    with pytest.raises(DatasetNotFound, match="cifar-100-python"):
        load_vision("cifar100", data_root=tmp_path)
