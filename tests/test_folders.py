from __future__ import annotations

import pytest
import torch
from PIL import Image

from robustar_ls.data.folders import DatasetError, ImageFolderSplits
from robustar_ls.data.tensors import ImageDataset


def _img(path, colour="red"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def test_splits_share_classes_and_list_images(tmp_path):
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            _img(tmp_path / split / cls / "1.png")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    data = ImageFolderSplits.open(tmp_path)
    assert data.classes == ["cat", "dog"]
    assert [s.relpath for s in data.splits["train"]] == ["cat/1.png", "dog/1.png"]
    assert [s.label for s in data.splits["test"]] == [0, 1]
    assert "val" not in data.splits


def test_different_classes_between_splits(tmp_path):
    _img(tmp_path / "train" / "cat" / "1.png")
    _img(tmp_path / "test" / "dog" / "1.png")
    with pytest.raises(DatasetError, match="class folders differ"):
        ImageFolderSplits.open(tmp_path)


def test_missing_train_and_empty_train(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        ImageFolderSplits.open(tmp_path / "nope")
    (tmp_path / "test" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no train folder"):
        ImageFolderSplits.open(tmp_path)
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no images"):
        ImageFolderSplits.open(tmp_path)


def test_dataset_resizes_and_normalises(tmp_path):
    _img(tmp_path / "train" / "cat" / "1.png", "white")
    _img(tmp_path / "train" / "dog" / "1.png", "black")
    data = ImageFolderSplits.open(tmp_path)
    dataset = ImageDataset(data.splits["train"], image_size=4)
    white, label = dataset[0]
    black, _ = dataset[1]
    assert white.shape == (3, 4, 4) and label == 0
    assert torch.all(white > 2) and torch.all(black < -1.5)


def test_one_image_to_tensor_conversion_for_training_and_serving():
    import numpy as np

    from robustar_ls.data.folders import IMAGENET_MEAN, IMAGENET_STD
    from robustar_ls.data.tensors import image_to_tensor, images_to_batch, images_to_unit_batch

    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in [(16, 16), (20, 12), (33, 40)]
    ]
    unit = images_to_unit_batch(images, 16)
    assert unit.shape == (3, 3, 16, 16) and unit.min() >= 0 and unit.max() <= 1
    # the untouched 16x16 image keeps its pixels; the others are resized bilinearly
    assert torch.equal(unit[0], torch.from_numpy(np.array(images[0])).permute(2, 0, 1) / 255.0)
    resized = np.array(images[1].resize((16, 16), Image.Resampling.BILINEAR))
    assert torch.equal(unit[1], torch.from_numpy(resized).permute(2, 0, 1) / 255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    batch = images_to_batch(images, 16)
    assert torch.allclose(batch, (unit - mean) / std, atol=1e-6)
    for k, image in enumerate(images):
        one = image_to_tensor(image, 16)
        assert one.is_contiguous() and torch.equal(one, batch[k])
