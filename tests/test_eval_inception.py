"""difflab.eval.inception: weight lookup, loading and preprocessing of the Inception-V3 FID path.

NVIDIA's ``inception-2015-12-05.pt`` is not available offline, so scripted stand-ins with its
calling convention, ``forward(x, return_features=False)``, are saved with ``torch.jit``. No test
touches the network or the real torch hub cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from difflab.eval import inception
from difflab.eval.features import FeatureExtractor, file_digest, get_extractor
from difflab.eval.inception import (
    INCEPTION_URL,
    WEIGHTS_ENV,
    InceptionFeatures,
    inception_weights_path,
    load_detector,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


class ProjectionDetector(torch.nn.Module):
    """NVIDIA's interface at toy cost: uint8 pixels -> resize (16 instead of 299) -> [-1, 1] ->
    a fixed random projection to 2048 features (or 1008 'logits' without return_features)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(3 * 16 * 16, 2048, generator=g))

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor:
        x = F.interpolate(x.to(torch.float32), size=(16, 16), mode="bilinear", align_corners=False)
        f = ((x - 128) / 128).flatten(1) @ self.proj
        return f if return_features else f[:, :1008]


class EchoDetector(torch.nn.Module):
    """Echoes what it was given: the input values (flattened), then whether it was uint8, its
    channel count and the return_features flag in the last three of 2048 outputs."""

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor:
        n = x.shape[0]
        flat = x.reshape(n, -1).to(torch.float32)
        k = min(flat.shape[1], 2045)
        out = torch.zeros(n, 2048)
        out[:, :k] = flat[:, :k]
        out[:, 2045] = 1.0 if x.dtype == torch.uint8 else 0.0
        out[:, 2046] = float(x.shape[1])
        out[:, 2047] = 1.0 if return_features else 0.0
        return out


class LogitsDetector(torch.nn.Module):
    """A TorchScript file that ignores return_features (not the FID network)."""

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor:
        return torch.zeros(x.shape[0], 1008)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("detectors")
    paths = {}
    for name, module in (("projection", ProjectionDetector()), ("echo", EchoDetector()),
                         ("logits", LogitsDetector())):
        paths[name] = root / f"{name}.pt"
        torch.jit.script(module).save(str(paths[name]))
    return paths


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch) -> Path:
    """A private, empty torch hub dir, no environment variable, and a network that fails the test."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)

    def no_network(*args, **kwargs):
        pytest.fail(f"download_url_to_file called with {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return hub / "checkpoints" / "inception-2015-12-05.pt"


def copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return dst


# ---------------------------------------------------------------------------------------------
# finding the weights


def test_lookup_order(scripted, offline, tmp_path, monkeypatch):
    hub = copy(scripted["echo"], offline)
    env = copy(scripted["echo"], tmp_path / "env" / "weights.pt")
    explicit = copy(scripted["echo"], tmp_path / "explicit.pt")
    assert inception.hub_cache_path() == hub
    assert inception_weights_path() == hub
    monkeypatch.setenv(WEIGHTS_ENV, str(env))
    assert inception_weights_path() == env
    assert inception_weights_path(explicit) == explicit
    assert inception_weights_path(str(explicit)) == explicit


def test_nothing_found_is_one_line_hint():
    with pytest.raises(FileNotFoundError) as info:
        inception_weights_path()
    message = str(info.value)
    assert "\n" not in message
    for part in ("Inception-V3", "--inception-weights", INCEPTION_URL, WEIGHTS_ENV, "effnet-lite0"):
        assert part in message
    with pytest.raises(FileNotFoundError, match="--inception-weights"):
        InceptionFeatures()


def test_missing_explicit_or_env_file_does_not_fall_back(scripted, offline, tmp_path, monkeypatch):
    copy(scripted["echo"], offline)
    with pytest.raises(FileNotFoundError, match=r"--inception-weights .*nope\.pt is not a file"):
        inception_weights_path(tmp_path / "nope.pt")
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "gone.pt"))
    with pytest.raises(FileNotFoundError, match=rf"{WEIGHTS_ENV}=.*gone\.pt is not a file"):
        inception_weights_path()
    monkeypatch.setenv(WEIGHTS_ENV, "")  # empty counts as unset
    assert inception_weights_path() == offline


def test_no_download_unless_allowed(offline):
    with pytest.raises(FileNotFoundError, match="--download"):
        inception_weights_path(allow_download=False)
    assert not offline.exists()


def test_download_when_allowed(scripted, offline, monkeypatch):
    calls = []

    def fake_download(url: str, dst: str, progress: bool = True) -> None:
        calls.append(url)
        copy(scripted["echo"], Path(dst))

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    assert inception_weights_path(allow_download=True) == offline
    assert calls == [INCEPTION_URL]
    assert inception_weights_path(allow_download=True) == offline  # cached now: no second download
    assert len(calls) == 1


def test_failed_download_is_file_not_found(monkeypatch):
    def refused(url: str, dst: str, progress: bool = True) -> None:
        raise OSError("Network is unreachable\nmore detail")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refused)
    with pytest.raises(FileNotFoundError, match=r"download of .* failed: Network is unreachable\)") as info:
        inception_weights_path(allow_download=True)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", ["garbage", "state_dict"])
def test_corrupt_file_is_value_error(tmp_path, content):
    path = tmp_path / "inception-2015-12-05.pt"
    if content == "garbage":
        path.write_bytes(b"<html>404 not found</html>")
    else:
        torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match=r"inception-2015-12-05\.pt is not a TorchScript file"):
        load_detector(path)
    with pytest.raises(ValueError, match=str(tmp_path)):
        InceptionFeatures(weights=path)


# ---------------------------------------------------------------------------------------------
# features


def test_detector_gets_uint8_rgb_pixels(scripted):
    ex = InceptionFeatures(weights=scripted["echo"])
    tenth = 10.7 / 127.5 - 1  # (x + 1) * 127.5 = 10.7: rounds to 11 (truncation would give 10)
    grey = torch.tensor([[[[-1.0, 0.0, 1.0], [0.5, -3.0, 2.0], [tenth, 0.999, -0.999]]]])
    out = ex.features(grey)
    pixels = [0, 128, 255, 191, 0, 255, 11, 255, 0]  # round((x + 1) * 127.5) after clamping
    assert out[0, :27].tolist() == pixels * 3  # grey repeated to 3 channels
    assert out[0, 2045:].tolist() == [1.0, 3.0, 1.0]  # uint8, 3 channels, return_features=True
    rgb = torch.stack([torch.full((2, 2), v) for v in (-1.0, 0.0, 1.0)])[None]
    assert ex.features(rgb)[0, :12].tolist() == [0] * 4 + [128] * 4 + [255] * 4


def test_features_shape_dtype_and_batching(scripted):
    ex = get_extractor("inception", weights=scripted["projection"])
    assert isinstance(ex, InceptionFeatures) and isinstance(ex, FeatureExtractor)
    assert (ex.name, ex.label, ex.dim, ex.input_size) == ("inception", "FID", 2048, 299)
    images = torch.rand(5, 3, 20, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    f = ex.features(images)
    assert f.shape == (5, 2048) and f.dtype == torch.float32 and f.device.type == "cpu"
    assert torch.allclose(ex.features(images, batch_size=2), f, rtol=1e-5, atol=1e-4)
    assert torch.allclose(ex.features(images[:, :1]), ex.features(images[:, :1].expand(-1, 3, -1, -1)))
    with pytest.raises(ValueError, match="expected images"):
        ex.features(images[0])


def test_wrong_network_output_is_value_error(scripted):
    with pytest.raises(ValueError, match=r"returned features of shape \(2, 1008\)"):
        InceptionFeatures(weights=scripted["logits"]).features(torch.zeros(2, 3, 8, 8))


def test_cache_key_names_the_weights(scripted):
    key = InceptionFeatures(weights=scripted["projection"]).cache_key()
    assert key.startswith("inception-") and file_digest(str(scripted["projection"])) in key
    assert InceptionFeatures(weights=scripted["echo"]).cache_key() != key
