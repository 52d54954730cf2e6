"""FID and KID on difflab's shipped feature networks: near zero for real vs real, growing with blur."""

import json
import math
from dataclasses import asdict

import pytest
import torch
from PIL import ImageFilter
from safetensors.torch import load_file, save_file

from difflab.data.digits import DigitsDataset
from difflab.data.shapes import ShapesDataset
from difflab.metrics import features as features_module
from difflab.metrics.features import as_uint8_batch, load_feature_net
from difflab.metrics.distances import feature_name, fid, kid

N = 800  # per side: FID's finite-sample bias shrinks as 1/N


@pytest.fixture(scope="module")
def real():
    """Two disjoint real samples of the shapes val split (the shipped reference is the test split)."""
    data = ShapesDataset("val", length=2 * N)
    images = [data[i]["image"] for i in range(2 * N)]
    return images[:N], images[N:]


def _blur(images, radius):
    return [im.filter(ImageFilter.GaussianBlur(radius)) for im in images]


def test_fid_is_near_zero_for_real_samples_and_grows_with_blur(real):
    a, b = real
    same = fid(a, b)
    blurred = [fid(a, _blur(b, r)) for r in (1.0, 1.5, 2.0)]
    assert 0 <= same < 0.5 * blurred[0]
    assert blurred[0] < blurred[1] < blurred[2]
    assert blurred[2] > 5 * same


def test_kid_is_near_zero_for_real_samples_and_positive_for_blur(real):
    a, b = real
    same, same_std = kid(a, b, subsets=20, subset_size=400)
    worse, _ = kid(a, _blur(b, 1.5), subsets=20, subset_size=400)
    assert abs(same) < 3 * same_std + 1e-4
    assert worse > 10 * max(abs(same), same_std)
    assert kid(a, b, subsets=5, subset_size=100) == kid(a, b, subsets=5, subset_size=100)  # seeded subsets
    # a subset as large as the sample: half-size subsets, so the spread is not a meaningless zero
    whole_mean, whole_std = kid(a[:60], _blur(b[:60], 1.5), subsets=10, subset_size=1000)
    assert whole_std > 0 and whole_mean > 0
    with pytest.raises(ValueError, match="at least 2"):
        kid(a[:1], b[:3])


def test_reference_statistics_and_tensor_input(real):
    a, b = real
    assert fid(None, b) < 0.5 * fid(None, _blur(b, 1.0))
    tensor = as_uint8_batch(b)
    assert tensor.dtype == torch.uint8 and tensor.shape == (N, 3, 32, 32)
    assert math.isclose(fid(a, tensor), fid(a, b), rel_tol=1e-9)


def test_digit_features_tell_digits_from_shapes(real):
    train = DigitsDataset("train")
    test = DigitsDataset("test")
    digits_a = [train[i]["image"] for i in range(300)]
    digits_b = [test[i]["image"] for i in range(len(test))]
    assert fid(digits_a, digits_b, dataset="digits") < 0.1 * fid(digits_a, real[0][:300], dataset="digits")
    assert "digits" in feature_name("digits") and "not Inception FID" in feature_name("digits")


def test_bad_inputs_are_refused(real):
    a, _ = real
    with pytest.raises(ValueError, match="uint8"):
        fid(a, torch.zeros(4, 3, 32, 32))
    with pytest.raises(ValueError, match="one size"):
        fid(a, [a[0], a[1].resize((64, 64))])
    with pytest.raises(ValueError, match="no difflab feature network for dataset 'cifar'"):
        fid(a, a, dataset="cifar")
    with pytest.raises(ValueError, match="features must be"):
        fid(a, a, features="clip")
    with pytest.raises(ValueError, match="at least 2"):
        fid(a, a[:1])
    with pytest.raises(FileNotFoundError, match="DIFFLAB_INCEPTION_WEIGHTS"):
        fid(a, a, features="inception", inception_weights="/nonexistent/pt_inception.pth")


def test_feature_weights_load_strictly(tmp_path, monkeypatch):
    net, reference = load_feature_net("shapes")
    assert reference.shape[1] == net.num_features and not net.training
    tensors = load_file(str(features_module.weights_path("shapes")))
    monkeypatch.setattr(features_module, "weights_path", lambda dataset: tmp_path / "w.safetensors")
    metadata = {"config": json.dumps(asdict(net.config))}
    for name, broken in [("extra", {**tensors, "surplus": torch.zeros(1)}),
                         ("missing", {k: v for k, v in tensors.items() if k != "head.bias"}),
                         ("non-finite", {**tensors, "head.bias": torch.full_like(tensors["head.bias"], float("nan"))})]:
        save_file(broken, str(tmp_path / "w.safetensors"), metadata=metadata)
        with pytest.raises((RuntimeError, ValueError), match="surplus|head.bias|non-finite"):
            load_feature_net("shapes")
