"""Digits and image folders: labels, splits, captions, and files that cannot be read."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.data import load_dataset, to_images, to_tensor
from difflab.data.digits import DigitsDataset
from difflab.data.folder import ImageFolderDataset


def test_digits_are_labelled_upsampled_and_split_disjointly():
    splits = {s: DigitsDataset(s, resolution=32) for s in ("train", "val", "test")}
    assert sum(len(d) for d in splits.values()) == len(DigitsDataset("all")) == 1797
    index_sets = [set(d.indices.tolist()) for d in splits.values()]
    assert not (index_sets[0] & index_sets[1] or index_sets[0] & index_sets[2] or index_sets[1] & index_sets[2])
    item = splits["train"][0]
    assert item["image"].size == (32, 32) and item["image"].mode == "L"
    assert 0 <= item["label"] <= 9 and item["caption"].startswith("the digit ")
    assert {splits["test"][i]["label"] for i in range(len(splits["test"]))} == set(range(10))


def test_digit_images_match_the_bundled_data():
    from sklearn.datasets import load_digits

    raw = load_digits()
    data = DigitsDataset("all", resolution=8)
    for k in (0, 100, 1796):
        item = data[k]
        assert item["label"] == raw.target[k]
        small = np.asarray(item["image"], dtype=float) / 255 * 16
        assert np.abs(small - raw.images[k]).max() < 0.5  # resizing 8 -> 8 leaves the pixels


def test_digits_reject_bad_arguments():
    with pytest.raises(ValueError, match="split must be one of"):
        DigitsDataset("training")
    with pytest.raises(IndexError):
        DigitsDataset("val")[10_000]


def _make_folder(root):
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "red.png")
    (root / "red.txt").write_text("a red rectangle\n")
    Image.new("RGB", (20, 20), (0, 0, 200)).save(root / "blue.jpg", quality=95)
    Image.new("CMYK", (24, 24), (255, 0, 0, 0)).save(root / "cmyk.jpg")
    (root / "empty.png").write_bytes(b"")
    good = root / "truncate_src.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, quality=90)
    data = good.read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    good.unlink()
    (root / "notes.md").write_text("not an image")
    lines = [{"file_name": "blue.jpg", "text": "a blue square"}, {"file_name": "cmyk.jpg", "caption": "cyan"}]
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines))


def test_folder_survives_truncated_empty_and_cmyk_files(tmp_path):
    _make_folder(tmp_path)
    with pytest.warns(UserWarning, match="2 skipped"):
        data = ImageFolderDataset(tmp_path, resolution=16)
    assert len(data) == 3
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in data.skipped}
    assert set(reasons) == {"empty.png", "truncated.jpg"}
    assert reasons["empty.png"] == "empty file" and "truncated" in reasons["truncated.jpg"]
    items = {item["path"].rsplit("/", 1)[-1]: item for item in (data[i] for i in range(len(data)))}
    assert {k: v["caption"] for k, v in items.items()} == {"blue.jpg": "a blue square", "cmyk.jpg": "cyan",
                                                          "red.png": "a red rectangle"}
    cmyk = items["cmyk.jpg"]["image"]
    assert cmyk.mode == "RGB" and cmyk.size == (16, 16)
    assert np.asarray(cmyk)[8, 8, 0] < 60 and np.asarray(cmyk)[8, 8, 2] > 200  # cyan, not garbage
    assert "truncated.jpg" in data.summary()


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="no readable images"):
        ImageFolderDataset(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text('{"name": "a.png"}\n')
    with pytest.raises(ValueError, match="metadata.jsonl:1"):
        ImageFolderDataset(tmp_path)


def test_kohya_repeat_folders_weigh_their_images(tmp_path):
    """kohya's DreamBooth layout: a top-level folder ``N_name`` counts each of its images N times per pass
    (captions from metadata.jsonl with the sub-path, or .txt beside the image); other folders count once."""
    (tmp_path / "3_cyan").mkdir()
    (tmp_path / "reg").mkdir()
    (tmp_path / "reg" / "2_nested").mkdir()                        # only the top-level folder's name counts
    Image.new("RGB", (8, 8), (20, 190, 200)).save(tmp_path / "3_cyan" / "a.png")
    Image.new("RGB", (8, 8), (20, 190, 200)).save(tmp_path / "3_cyan" / "b.png")
    (tmp_path / "3_cyan" / "b.txt").write_text("a cyan square")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "reg" / "2_nested" / "r.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "top.png")
    lines = [{"file_name": "3_cyan/a.png", "text": "a cyan circle"}, {"file_name": "reg/2_nested/r.png", "text": "red"},
             {"file_name": "top.png", "text": "blue"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    data = ImageFolderDataset(tmp_path)
    captions = sorted(data[i]["caption"] for i in range(len(data)))
    assert len(data) == 8
    assert captions == ["a cyan circle"] * 3 + ["a cyan square"] * 3 + ["blue", "red"]
    assert "4 images read" in data.summary() and "8 with kohya's folder repeats" in data.summary()
    (tmp_path / "0_none").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "0_none" / "z.png")
    with pytest.raises(ValueError, match="0_none.*N must be in \\[1, 1000\\], got 0"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "0_none").rename(tmp_path / "99999999999_huge")     # refused before any list is built
    with pytest.raises(ValueError, match="99999999999_huge"):
        ImageFolderDataset(tmp_path)


def test_load_dataset_and_tensor_round_trip(tmp_path):
    assert len(load_dataset("shapes", "val", 32)) == 1000
    assert load_dataset("digits", "test", 16)[0]["image"].size == (16, 16)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "a.png")
    assert len(load_dataset(str(tmp_path), resolution=8)) == 1
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")
    images = [load_dataset("shapes", "val")[i]["image"] for i in range(3)]
    x = to_tensor(images)
    assert x.shape == (3, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    back = to_images(x)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, back))
    assert to_tensor(load_dataset("digits")[0]["image"], channels=1).shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="shape"):
        to_images(torch.zeros(3, 32, 32))
