"""Tests for jaxunlearn.data: digits, Fashion-MNIST IDX, synthetic theory data, forget sets, corruption."""

import dataclasses
import doctest
import gzip
import pathlib
import time

import numpy as np
import pytest

from jaxunlearn import data
from jaxunlearn.data import idx as idx_module

FMNIST_DIR = pathlib.Path(data.DEFAULT_FASHION_MNIST_DIR)


def _split_indices(ds):
    return ds.info["train_indices"], ds.info["val_indices"], ds.info["test_indices"]


# --------------------------------------------------------------------------------------------- Dataset


def test_dataset_casts_and_validates():
    x = np.zeros((4, 2, 2, 1), np.float64)
    y = np.array([0, 1, 0, 1], np.int64)
    ds = data.Dataset("toy", x, y, x[:0], y[:0], x[:2], y[:2], num_classes=2)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.input_shape == (2, 2, 1)
    assert "toy" in ds.summary() and "2 classes" in ds.summary()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"
    with pytest.raises(ValueError, match="outside"):
        data.Dataset("toy", x, y + 1, x[:0], y[:0], x[:2], y[:2], num_classes=2)
    with pytest.raises(ValueError, match="NaN or inf"):
        bad = x.copy()
        bad[0, 0, 0, 0] = np.nan
        data.Dataset("toy", bad, y, x[:0], y[:0], x[:2], y[:2], num_classes=2)
    with pytest.raises(ValueError, match="examples but"):
        data.Dataset("toy", x, y[:3], x[:0], y[:0], x[:2], y[:2], num_classes=2)
    with pytest.raises(ValueError, match="shape"):
        data.Dataset("toy", x, y, x[:0], y[:0], np.zeros((2, 3, 3, 1)), y[:2], num_classes=2)


def test_stratified_split_keeps_proportions():
    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    take, rest = data.stratified_split(labels, 50, np.random.default_rng(0))
    assert len(take) == 50 and len(rest) == 50
    assert np.intersect1d(take, rest).size == 0
    np.testing.assert_array_equal(np.bincount(labels[take]), np.bincount(labels) // 2)
    take0, _ = data.stratified_split(labels, 0, np.random.default_rng(0))
    assert take0.size == 0


# --------------------------------------------------------------------------------------------- digits


def test_digits_shapes_ranges_and_disjoint_splits():
    ds = data.load("digits", seed=0)
    assert ds.name == "digits" and ds.num_classes == 10 and ds.input_shape == (8, 8, 1)
    total = len(ds.y_train) + len(ds.y_val) + len(ds.y_test)
    x_all, y_all = data.digits_arrays()
    assert total == len(y_all)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)):
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert set(np.unique(y)) == set(range(10))  # stratified: every class in every split
    assert ds.x_train.max() == 1.0
    tr, va, te = _split_indices(ds)
    assert len(np.intersect1d(tr, va)) == len(np.intersect1d(tr, te)) == len(np.intersect1d(va, te)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(len(y_all)))
    np.testing.assert_array_equal(ds.x_test, x_all[te])
    np.testing.assert_array_equal(ds.y_train, y_all[tr])
    assert abs(len(te) - 0.2 * len(y_all)) <= 1
    assert abs(len(va) - 0.1 * (len(tr) + len(va))) <= 1


def test_digits_matches_sklearn_load_digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = data.digits_arrays()
    np.testing.assert_allclose(x.reshape(len(x), -1), bunch.data / 16.0, rtol=1e-6)
    np.testing.assert_array_equal(y, bunch.target)


def test_digits_deterministic_by_seed():
    a, b, c = data.load("digits", seed=3), data.load("digits", seed=3), data.load("digits", seed=4)
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.info["test_indices"], c.info["test_indices"])
    a.x_train[0] = -1.0  # loads return fresh copies: mutating one never leaks into another
    assert data.load("digits", seed=3).x_train.min() >= 0.0


def test_digits_max_train_max_test_and_val_fraction():
    ds = data.load("digits", seed=0, max_train=200, max_test=50, val_fraction=0.25)
    assert len(ds.y_train) + len(ds.y_val) == 200
    assert len(ds.y_val) == 50 and len(ds.y_test) == 50
    assert len(np.unique(ds.y_train)) == 10
    no_val = data.load("digits", val_fraction=0.0)
    assert no_val.x_val.shape == (0, 8, 8, 1) and no_val.y_val.shape == (0,)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="val_fraction"):
            data.load("digits", val_fraction=bad)
    with pytest.raises(ValueError, match="max_train"):
        data.load("digits", max_train=0)


def test_digits_loads_fast():
    data.load("digits")  # the file read is cached; a load is then only the split
    start = time.perf_counter()
    data.load("digits", seed=1)
    assert time.perf_counter() - start < 0.5


def test_unknown_name_suggests_close_match():
    with pytest.raises(ValueError, match="fashion_mnist") as err:
        data.load("fashion_mnst")
    assert "known" in str(err.value)
    with pytest.raises(ValueError, match="digits"):
        data.load("digit")
    with pytest.raises(ValueError, match="tfds:NAME"):
        data.load("tfds:")


# --------------------------------------------------------------------------------------------- IDX / Fashion-MNIST


def _write_idx(path, array, *, compress):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    array = np.asarray(array)
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.array(array.shape, ">u4").tobytes()
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def _write_fake_idx_dir(tmp_path, n_train=30, n_test=10, compress=True):
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    files = idx_module.FASHION_MNIST_FILES
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for key, stem in files.items():
        _write_idx(tmp_path / (stem + suffix), arrays[key], compress=compress)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip(tmp_path, compress):
    for array in (
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.arange(-3, 3, dtype=">i4"),
        np.linspace(-1, 1, 6, dtype=">f4").reshape(3, 2),
    ):
        path = tmp_path / "a.idx"
        _write_idx(path, array, compress=compress)
        out = data.read_idx(path)
        assert out.shape == array.shape
        np.testing.assert_array_equal(out, array)
        assert out.dtype.isnative


def test_read_idx_corrupt_files(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="magic number"):
        data.read_idx(path)
    _write_idx(path, np.zeros((5, 4), np.uint8), compress=False)
    path.write_bytes(path.read_bytes()[:-3])  # truncated data
    with pytest.raises(ValueError, match="truncated or corrupt"):
        data.read_idx(path)
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")  # truncated header
    with pytest.raises(ValueError, match="header"):
        data.read_idx(path)
    good = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x02ab")
    path.write_bytes(good[: len(good) // 2])  # broken gzip stream
    with pytest.raises(ValueError, match="gzip"):
        data.read_idx(path)


def test_fashion_mnist_missing_dir_message(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        data.load("fashion_mnist", data_dir=missing)
    message = str(err.value)
    assert "train-images-idx3-ubyte" in message and str(missing) in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message


def test_fashion_mnist_missing_one_file(tmp_path):
    _write_fake_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        data.load("fashion_mnist", data_dir=tmp_path)


def test_fashion_mnist_loader_on_written_idx_files(tmp_path):
    # The loader's plumbing on small IDX files written here (the real files are tested below).
    arrays = _write_fake_idx_dir(tmp_path, compress=False)
    ds = data.load("fashion_mnist", data_dir=tmp_path, val_fraction=0.2)
    assert ds.input_shape == (28, 28, 1) and ds.num_classes == 10
    assert len(ds.y_train) + len(ds.y_val) == len(arrays["train_labels"])
    np.testing.assert_allclose(ds.x_test[..., 0], arrays["test_images"] / 255.0, rtol=1e-6)
    tr = ds.info["train_indices"]
    np.testing.assert_array_equal(ds.y_train, arrays["train_labels"][tr])


def test_fashion_mnist_corrupt_file_is_value_error(tmp_path):
    _write_fake_idx_dir(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not an idx file"))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte"):
        data.load("fashion_mnist", data_dir=tmp_path)


def test_fashion_mnist_label_count_mismatch(tmp_path):
    _write_fake_idx_dir(tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8), compress=True)
    with pytest.raises(ValueError, match="labels"):
        data.load("fashion_mnist", data_dir=tmp_path)


@pytest.mark.skipif(
    not all(
        (FMNIST_DIR / s).is_file() or (FMNIST_DIR / (s + ".gz")).is_file()
        for s in idx_module.FASHION_MNIST_FILES.values()
    ),
    reason=f"real Fashion-MNIST not installed in {FMNIST_DIR} (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_real_files():
    x_train, y_train, x_test, y_test = data.fashion_mnist_arrays()
    assert x_train.shape == (60000, 28, 28) and y_train.shape == (60000,)
    assert x_test.shape == (10000, 28, 28) and y_test.shape == (10000,)
    assert set(np.unique(y_train)) == set(range(10)) == set(np.unique(y_test))
    # Fashion-MNIST is balanced: 6000 train and 1000 test images per class.
    assert (np.bincount(y_train) == 6000).all() and (np.bincount(y_test) == 1000).all()
    assert x_train.dtype == np.uint8 and x_train.min() == 0 and x_train.max() == 255
    assert data.fashion_mnist_arrays()[0] is x_train  # cached by path

    ds = data.load("fashion_mnist", seed=0)
    assert len(ds.y_train) + len(ds.y_val) == 60000 and len(ds.y_test) == 10000
    assert abs(len(ds.y_val) - 6000) <= 1
    assert ds.num_classes == 10 and ds.input_shape == (28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    np.testing.assert_array_equal(ds.y_test, y_test)
    tr = ds.info["train_indices"]
    np.testing.assert_allclose(ds.x_train[:5, ..., 0], x_train[tr[:5]] / 255.0, rtol=1e-6)

    small = data.load("fashion_mnist", seed=1, max_train=1000, max_test=200)
    assert len(small.y_train) + len(small.y_val) == 1000 and len(small.y_test) == 200
    assert (np.bincount(small.y_test, minlength=10) == 20).all()  # stratified over a balanced set
    again = data.load("fashion_mnist", seed=1, max_train=1000, max_test=200)
    np.testing.assert_array_equal(small.info["train_indices"], again.info["train_indices"])


# --------------------------------------------------------------------------------------------- synthetic


def test_make_signal_noise_structure():
    n, d, P, phi_norm = 64, 30, 3, 2.5
    out = data.make_signal_noise(n, d, phi_norm=phi_norm, sigma_p=0.7, num_patches=P, seed=1)
    assert out.x.shape == (n, P, d) and out.x.dtype == np.float32
    assert out.noise.shape == (n, P - 1, d)
    np.testing.assert_allclose(out.phi, np.eye(d)[0] * phi_norm)
    # noise is orthogonal to phi (its first coordinate is exactly zero)
    np.testing.assert_array_equal(out.noise @ out.phi, 0.0)
    np.testing.assert_array_equal(out.noise[..., 0], 0.0)
    # the signal patch is y·phi with y in {-1, +1}; the other patches are the stored noise, in order
    signal = out.x[np.arange(n), out.signal_patch]
    np.testing.assert_allclose(signal, data.signs(out.y_clean)[:, None] * out.phi[None, :])
    for i in range(n):
        others = [p for p in range(P) if p != out.signal_patch[i]]
        np.testing.assert_array_equal(out.x[i, others], out.noise[i])
    assert len(np.unique(out.signal_patch)) == P  # random positions
    np.testing.assert_array_equal(out.y, out.y_clean)
    assert not out.flipped.any()
    # noise scale: per-coordinate std sigma_p on coordinates 1..d-1
    big = data.make_signal_noise(2000, 50, phi_norm=1.0, sigma_p=0.7, seed=0)
    assert abs(big.noise[..., 1:].std() - 0.7) < 0.02


def test_make_signal_noise_fixed_position_label_noise_and_seed():
    out = data.make_signal_noise(200, 10, phi_norm=1.0, sigma_p=1.0, signal_position=1, label_noise=0.2, seed=5)
    assert (out.signal_patch == 1).all()
    assert out.flipped.sum() == round(0.2 * 200)
    np.testing.assert_array_equal(out.y != out.y_clean, out.flipped)
    np.testing.assert_array_equal(out.y[out.flipped], 1 - out.y_clean[out.flipped])
    same = data.make_signal_noise(200, 10, phi_norm=1.0, sigma_p=1.0, signal_position=1, label_noise=0.2, seed=5)
    np.testing.assert_array_equal(out.x, same.x)
    np.testing.assert_array_equal(out.flipped, same.flipped)
    other = data.make_signal_noise(200, 10, phi_norm=1.0, sigma_p=1.0, seed=6)
    assert not np.array_equal(out.x, other.x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(d=1), "d must"),
        (dict(num_patches=1), "num_patches"),
        (dict(phi_norm=-1.0), "phi_norm"),
        (dict(sigma_p=-0.1), "sigma_p"),
        (dict(label_noise=1.0), "label_noise"),
        (dict(signal_position=2), "signal_position"),
        (dict(signal_position="first"), "signal_position"),
        (dict(n=0), "n must"),
    ],
)
def test_make_signal_noise_rejects_bad_arguments(kwargs, match):
    args = dict(n=4, d=8, phi_norm=1.0, sigma_p=1.0) | kwargs
    with pytest.raises(ValueError, match=match):
        data.make_signal_noise(args.pop("n"), args.pop("d"), **args)


def test_load_synthetic():
    ds = data.load("synthetic", seed=0, n_train=80, n_test=40, d=20, phi_norm=3.0, sigma_p=0.5, label_noise=0.25)
    assert ds.input_shape == (2, 20) and ds.num_classes == 2
    assert len(ds.y_train) == 80 and len(ds.y_test) == 40 and len(ds.y_val) == round(0.1 * 80)
    info = ds.info
    assert info["noise_train"].shape == (80, 1, 20)
    np.testing.assert_array_equal(info["noise_train"] @ info["phi"], 0.0)
    assert info["flipped"].sum() == 20
    np.testing.assert_array_equal(ds.y_train != info["y_clean"], info["flipped"])
    signal = ds.x_train[np.arange(80), info["signal_patch"]]
    np.testing.assert_allclose(signal, data.signs(info["y_clean"])[:, None] * info["phi"])
    test_signal = ds.x_test[np.arange(40), info["signal_patch_test"]]
    np.testing.assert_allclose(test_signal, data.signs(ds.y_test)[:, None] * info["phi"])  # test is clean
    again = data.load("synthetic", seed=0, n_train=80, n_test=40, d=20, phi_norm=3.0, sigma_p=0.5, label_noise=0.25)
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    capped = data.load("synthetic", max_train=10, n_val=0, d=8)
    assert len(capped.y_train) == 10 and capped.x_val.shape == (0, 2, 8)
    with pytest.raises(TypeError):
        data.load("synthetic", dimension=3)


# --------------------------------------------------------------------------------------------- forget sets


def test_select_forget_random_and_fraction():
    labels = np.arange(100) % 5
    a = data.select_forget(labels, "random", 10, seed=0)
    assert len(a) == 10 and np.all(np.diff(a) > 0) and a.dtype == np.int64
    np.testing.assert_array_equal(a, data.select_forget(labels, "random", 10, seed=0))
    assert not np.array_equal(a, data.select_forget(labels, "random", 10, seed=1))
    assert len(data.select_forget(labels, "random", 0.25)) == 25
    assert len(data.select_forget(labels, "random", 100)) == 100


def test_select_forget_class():
    labels = np.array([0, 1, 2, 1, 0, 1, 2])
    np.testing.assert_array_equal(data.select_forget(labels, "class", class_id=1), [1, 3, 5])
    capped = data.select_forget(labels, "class", 2, class_id=1, seed=0)
    assert len(capped) == 2 and set(capped) <= {1, 3, 5}
    with pytest.raises(ValueError, match="class_id"):
        data.select_forget(labels, "class")
    with pytest.raises(ValueError, match="classes present"):
        data.select_forget(labels, "class", class_id=3)
    with pytest.raises(ValueError, match="classes present"):
        data.select_forget(labels, "class", class_id=-1)
    with pytest.raises(ValueError, match="exceeds"):
        data.select_forget(labels, "class", 4, class_id=1)


def test_select_forget_by_score():
    rng = np.random.default_rng(0)
    n = 60
    scores = rng.permutation(np.linspace(0.0, 1.0, n))  # distinct scores
    labels = np.zeros(n, int)
    order = np.argsort(scores)
    high = data.select_forget(labels, "high", 6, scores=scores)
    low = data.select_forget(labels, "low", 6, scores=scores)
    mid = data.select_forget(labels, "mid", 6, scores=scores)
    np.testing.assert_array_equal(high, np.sort(order[-6:]))
    np.testing.assert_array_equal(low, np.sort(order[:6]))
    np.testing.assert_array_equal(mid, np.sort(np.argsort(np.abs(scores - 0.5))[:6]))
    assert scores[mid].min() > scores[low].max() and scores[mid].max() < scores[high].min()


@pytest.mark.parametrize("size", [9, 10, 11, 2])
def test_select_forget_mix(size):
    rng = np.random.default_rng(1)
    n = 40
    scores = rng.permutation(np.linspace(0.0, 1.0, n))
    mix = data.select_forget(np.zeros(n, int), "mix", size, scores=scores)
    assert len(mix) == size == len(np.unique(mix))
    third = size // 3
    ranks = np.argsort(np.argsort(scores))  # 0 = lowest
    assert (ranks[mix] >= n - third).sum() == third
    assert (ranks[mix] < third).sum() == third
    middle = mix[(ranks[mix] >= third) & (ranks[mix] < n - third)]
    assert len(middle) == size - 2 * third
    expected_mid = [i for i in np.argsort(np.abs(scores - 0.5)) if third <= ranks[i] < n - third]
    np.testing.assert_array_equal(np.sort(middle), np.sort(expected_mid[: size - 2 * third]))


def test_select_forget_mix_without_overlap_on_tied_scores():
    scores = np.array([0.5] * 12 + [1.0] * 3 + [0.0] * 3)
    mix = data.select_forget(np.zeros(len(scores), int), "mix", 12, scores=scores, seed=0)
    assert len(np.unique(mix)) == 12
    assert (scores[mix] == 1.0).sum() == 3 and (scores[mix] == 0.0).sum() == 3


def test_select_forget_ties_broken_by_seed():
    scores = np.zeros(50)
    picks = {tuple(data.select_forget(np.zeros(50, int), "high", 5, scores=scores, seed=s)) for s in range(4)}
    assert len(picks) > 1  # not always the lowest indices


@pytest.mark.parametrize(
    "kind, size, kwargs, error, match",
    [
        ("random", 0, {}, ValueError, "positive"),
        ("random", -3, {}, ValueError, "positive"),
        ("random", 11, {}, ValueError, "exceeds"),
        ("random", 1.5, {}, ValueError, "fraction"),
        ("random", None, {}, ValueError, "size is required"),
        ("random", "3", {}, TypeError, "size"),
        ("randm", 3, {}, ValueError, "random"),
        ("high", 3, {}, ValueError, "scores"),
        ("mid", 3, {"scores": np.zeros(9)}, ValueError, "shape"),
        ("low", 3, {"scores": np.full(10, np.nan)}, ValueError, "NaN"),
    ],
)
def test_select_forget_errors(kind, size, kwargs, error, match):
    with pytest.raises(error, match=match):
        data.select_forget(np.zeros(10, int), kind, size, **kwargs)


def test_retain_indices_and_mask():
    forget = data.select_forget(np.zeros(20, int), "random", 5, seed=2)
    retain = data.retain_indices(20, forget)
    assert len(retain) == 15 and np.intersect1d(retain, forget).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([retain, forget])), np.arange(20))
    np.testing.assert_array_equal(np.flatnonzero(data.forget_mask(20, forget)), forget)
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        data.retain_indices(20, [25])


# --------------------------------------------------------------------------------------------- corruption


def test_add_trigger_positions_and_copy():
    x = np.zeros((4, 6, 5, 3), np.float32)
    out = data.add_trigger(x, [0, 2], patch_size=2, value=0.5)
    assert x.max() == 0.0  # input untouched
    np.testing.assert_array_equal(out[[0, 2], 4:, 3:, :], 0.5)
    assert out[[1, 3]].max() == 0.0
    assert out[0].sum() == 0.5 * 2 * 2 * 3
    for position, (r, c) in {"top_left": (0, 0), "top_right": (0, 3), "bottom_left": (4, 0), "center": (2, 1)}.items():
        single = data.add_trigger(x, [1], patch_size=2, position=position)
        np.testing.assert_array_equal(single[1, r : r + 2, c : c + 2], 1.0)
        assert single.sum() == 2 * 2 * 3
    explicit = data.add_trigger(x, np.array([True, False, False, False]), patch_size=1, position=(3, 4))
    assert explicit[0, 3, 4].tolist() == [1.0, 1.0, 1.0] and explicit.sum() == 3
    with pytest.raises(ValueError, match="NHWC"):
        data.add_trigger(np.zeros((4, 6, 5)), [0])
    with pytest.raises(ValueError, match="does not fit"):
        data.add_trigger(x, [0], patch_size=7)
    with pytest.raises(ValueError, match="position"):
        data.add_trigger(x, [0], position="middle")
    with pytest.raises(ValueError, match="does not fit"):
        data.add_trigger(x, [0], patch_size=2, position=(5, 0))


def test_flip_labels():
    y = np.array([0, 1, 2, 3])
    np.testing.assert_array_equal(data.flip_labels(y, [1, 3], 0), [0, 0, 2, 0])
    np.testing.assert_array_equal(data.flip_labels(y, [0, 1], np.array([3, 2])), [3, 2, 2, 3])
    np.testing.assert_array_equal(y, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="one label per index"):
        data.flip_labels(y, [0, 1], np.array([1, 2, 3]))


def test_backdoor_digits():
    ds = data.load("digits", seed=0)
    poisoned, idx = data.backdoor(ds, 0.1, target_class=3, seed=0, patch_size=2)
    assert len(idx) == round(0.1 * len(ds.y_train)) and np.all(np.diff(idx) > 0)
    assert (ds.y_train[idx] != 3).all()  # only examples of other classes are poisoned
    assert (poisoned.y_train[idx] == 3).all()
    np.testing.assert_array_equal(poisoned.x_train[idx, -2:, -2:], 1.0)
    rest = data.retain_indices(len(ds.y_train), idx)
    np.testing.assert_array_equal(poisoned.x_train[rest], ds.x_train[rest])
    np.testing.assert_array_equal(poisoned.y_train[rest], ds.y_train[rest])
    np.testing.assert_array_equal(poisoned.x_test, ds.x_test)
    record = poisoned.info["backdoor"]
    np.testing.assert_array_equal(record["x_clean"], ds.x_train[idx])  # Z̃, the clean versions
    np.testing.assert_array_equal(record["y_clean"], ds.y_train[idx])
    assert "backdoor" not in ds.info
    x_bd, y_true = data.triggered_test_set(poisoned)
    assert (y_true != 3).all() and len(y_true) == (ds.y_test != 3).sum()
    np.testing.assert_array_equal(x_bd[:, -2:, -2:], 1.0)

    labels_only, idx2 = data.backdoor(ds, 20, target_class=0, seed=1, trigger=False)
    assert len(idx2) == 20
    np.testing.assert_array_equal(labels_only.x_train, ds.x_train)
    features_only, idx3 = data.backdoor(ds, 0.05, target_class=None, seed=1)
    np.testing.assert_array_equal(features_only.y_train, ds.y_train)
    assert not np.array_equal(features_only.x_train[idx3], ds.x_train[idx3])
    with pytest.raises(ValueError, match="target_class"):
        data.backdoor(ds, 0.1, target_class=10)
    with pytest.raises(ValueError, match="no backdoor"):
        data.triggered_test_set(ds)


# --------------------------------------------------------------------------------------------- docstrings


@pytest.mark.parametrize("module", ["dataset", "digits", "forget", "corrupt", "synthetic", "loader", "idx"])
def test_docstring_examples_run(module):
    import importlib

    mod = importlib.import_module(f"jaxunlearn.data.{module}")
    result = doctest.testmod(mod, extraglobs={"np": np, "load": data.load}, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
