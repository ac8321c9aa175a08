"""`load(name, ...)`: one entry point for every dataset source, returning a validated `Dataset`."""

from __future__ import annotations

import difflib
import os
from typing import Any

import numpy as np

from jaxunlearn.data.dataset import Dataset, stratified_split, stratified_subset
from jaxunlearn.data.digits import digits_arrays
from jaxunlearn.data.idx import DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, fashion_mnist_arrays
from jaxunlearn.data.synthetic import make_signal_noise
from jaxunlearn.data.tfds_source import tfds_arrays

__all__ = ["DATASETS", "load"]

DATASETS = ("digits", "fashion_mnist", "synthetic", "tfds:NAME")

# Random streams: one per purpose, so e.g. changing max_test never changes the train/val split.
_STREAM_TEST, _STREAM_MAX_TRAIN, _STREAM_MAX_TEST, _STREAM_VAL = 1, 2, 3, 4


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def _check_limit(arg: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{arg} must be a positive int or None, got {value!r}")
    return int(value)


def _finish(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    info: dict[str, Any],
    *,
    seed: int,
    max_train: int | None,
    max_test: int | None,
    val_fraction: float,
    train_map: np.ndarray | None = None,
    test_map: np.ndarray | None = None,
    convert=None,
) -> Dataset:
    """Subsample (stratified) to max_train / max_test, carve the stratified validation split, validate.

    `train_map[i]` / `test_map[i]` is the position of row i of x_train / x_test in the source's own split
    (identity by default); `info["train_indices"]` etc. are reported in those source positions.
    `convert` maps raw x rows to float32 after the split, so only the rows kept are converted.
    """
    convert = convert or (lambda a: a)
    train_map = np.arange(len(y_train)) if train_map is None else np.asarray(train_map)
    test_map = np.arange(len(y_test)) if test_map is None else np.asarray(test_map)
    pool = np.arange(len(y_train))
    if max_train is not None and max_train < len(pool):
        pool = stratified_subset(y_train, max_train, _rng(seed, _STREAM_MAX_TRAIN))
    test_idx = np.arange(len(y_test))
    if max_test is not None and max_test < len(test_idx):
        test_idx = stratified_subset(y_test, max_test, _rng(seed, _STREAM_MAX_TEST))
    n_val = int(round(val_fraction * len(pool)))
    if n_val >= len(pool):
        raise ValueError(f"val_fraction={val_fraction} leaves no training examples out of {len(pool)}")
    val_pos, train_pos = stratified_split(y_train[pool], n_val, _rng(seed, _STREAM_VAL))
    train_idx, val_idx = pool[train_pos], pool[val_pos]
    info = {
        **info,
        "seed": seed,
        "val_fraction": val_fraction,
        "train_indices": train_map[train_idx],
        "val_indices": train_map[val_idx],
        "test_indices": test_map[test_idx],
    }
    return Dataset(
        name=name,
        x_train=convert(x_train[train_idx]),
        y_train=y_train[train_idx],
        x_val=convert(x_train[val_idx]),
        y_val=y_train[val_idx],
        x_test=convert(x_test[test_idx]),
        y_test=y_test[test_idx],
        num_classes=num_classes,
        info=info,
    )


def _load_digits(*, seed, max_train, val_fraction, data_dir=None, test_fraction=0.2, max_test=None) -> Dataset:
    del data_dir  # bundled with scikit-learn
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    x, y = digits_arrays()
    test_idx, train_idx = stratified_split(y, int(round(test_fraction * len(y))), _rng(seed, _STREAM_TEST))
    info = {
        "source": "sklearn.datasets.load_digits",
        "class_names": [str(i) for i in range(10)],
        "test_fraction": test_fraction,
    }
    # The digits are one pool of 1797: train/val/test indices in `info` all point into it.
    return _finish(
        "digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx], 10, info,
        seed=seed, max_train=max_train, max_test=_check_limit("max_test", max_test), val_fraction=val_fraction,
        train_map=train_idx, test_map=test_idx,
    )  # fmt: skip


def _load_fashion_mnist(*, seed, max_train, val_fraction, data_dir=None, max_test=None) -> Dataset:
    data_dir = os.path.expanduser(os.fspath(data_dir)) if data_dir is not None else DEFAULT_FASHION_MNIST_DIR
    xr, yr, xtr, ytr = fashion_mnist_arrays(data_dir)
    for split, labels in (("train", yr), ("test", ytr)):
        if labels.size and labels.max() >= 10:
            raise ValueError(f"Fashion-MNIST {split} labels in {data_dir} go up to {labels.max()}, expected < 10")

    def to_float(images):
        return (images.astype(np.float32) / np.float32(255.0))[..., None]

    info = {
        "source": "idx",
        "data_dir": data_dir,
        "class_names": list(FASHION_MNIST_CLASSES),
        "source_train_size": len(yr),
        "source_test_size": len(ytr),
    }
    return _finish(
        "fashion_mnist", xr, yr.astype(np.int32), xtr, ytr.astype(np.int32), 10, info,
        seed=seed, max_train=max_train, max_test=_check_limit("max_test", max_test), val_fraction=val_fraction,
        convert=to_float,
    )  # fmt: skip


def _load_synthetic(
    *,
    seed,
    max_train,
    val_fraction,
    data_dir=None,
    n_train: int = 100,
    n_test: int = 1000,
    n_val: int | None = None,
    d: int = 400,
    phi_norm: float = 1.0,
    sigma_p: float = 1.0,
    num_patches: int = 2,
    label_noise: float = 0.0,
    signal_position: int | str = "random",
    max_test: int | None = None,
) -> Dataset:
    del data_dir  # generated
    n_train = min(int(n_train), max_train) if max_train is not None else int(n_train)
    if max_test is not None:
        n_test = min(int(n_test), _check_limit("max_test", max_test))
    if n_val is None:
        n_val = int(round(val_fraction * n_train))
    if int(n_val) != n_val or n_val < 0:
        raise ValueError(f"n_val must be a non-negative int, got {n_val!r}")
    train_seq, val_seq, test_seq = np.random.SeedSequence([seed, 0]).spawn(3)
    common = dict(phi_norm=phi_norm, sigma_p=sigma_p, num_patches=num_patches, signal_position=signal_position)
    train = make_signal_noise(n_train, d, label_noise=label_noise, seed=train_seq, **common)
    test = make_signal_noise(n_test, d, seed=test_seq, **common)
    if n_val:
        val = make_signal_noise(int(n_val), d, seed=val_seq, **common)
    else:
        val = None
    empty_x = np.zeros((0, num_patches, d), np.float32)
    empty_y = np.zeros(0, np.int32)
    info: dict[str, Any] = {
        "source": "synthetic",
        "class_names": ["y=-1", "y=+1"],
        "seed": seed,
        "d": d,
        "phi_norm": phi_norm,
        "sigma_p": sigma_p,
        "num_patches": num_patches,
        "label_noise": label_noise,
        "signal_position": signal_position,
        "phi": train.phi,
        # train-split arrays (the names the theory code uses)
        "noise_train": train.noise,
        "signal_patch": train.signal_patch,
        "flipped": train.flipped,
        "y_clean": train.y_clean,
        # the same for the (label-noise-free) validation and test splits
        "noise_val": val.noise if val else empty_x[:, 1:],
        "signal_patch_val": val.signal_patch if val else empty_y,
        "noise_test": test.noise,
        "signal_patch_test": test.signal_patch,
    }
    return Dataset(
        name="synthetic",
        x_train=train.x,
        y_train=train.y,
        x_val=val.x if val else empty_x,
        y_val=val.y if val else empty_y,
        x_test=test.x,
        y_test=test.y,
        num_classes=2,
        info=info,
    )


_LOADERS = {"digits": _load_digits, "fashion_mnist": _load_fashion_mnist, "synthetic": _load_synthetic}


def _unknown(name: str) -> ValueError:
    candidates = [*_LOADERS, "tfds:mnist", "tfds:cifar10", "tfds:fashion_mnist", "tfds:cifar100"]
    close = difflib.get_close_matches(name.lower(), candidates, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}.{hint}")


def load(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    max_train: int | None = None,
    val_fraction: float = 0.1,
    **kwargs: Any,
) -> Dataset:
    """Load a dataset by name into a validated, deterministically split `Dataset`.

    Names:
      - `"digits"`: scikit-learn's bundled 8x8 digits, `[N, 8, 8, 1]` in [0, 1]; a stratified test split of
        `test_fraction` (kwarg, default 0.2) is drawn by `seed`. `data_dir` is ignored.
      - `"fashion_mnist"`: the IDX files in `data_dir` (default `/usr/share/datasets/fashion-mnist`,
        Debian package `dataset-fashion-mnist`), `[N, 28, 28, 1]` in [0, 1]; 60000 train / 10000 test.
      - `"synthetic"`: the theory's signal-noise patches `[N, P, d]`, 2 classes (0 <-> y=-1). kwargs
        `n_train, n_test, n_val, d, phi_norm, sigma_p, num_patches, label_noise, signal_position` (see
        `make_signal_noise`); the validation set (`n_val`, default `round(val_fraction·n_train)`) and the
        test set are drawn without label noise. `info` holds `phi`, `noise_train` `[n, P-1, d]`,
        `signal_patch`, `flipped` and `y_clean` for the training set (and `noise_test`, ...).
      - `"tfds:NAME"` (e.g. `"tfds:mnist"`, `"tfds:cifar10"`): a TFDS dataset already prepared in
        ArrayRecord format in `data_dir`, read with `tfds.data_source` (see `tfds_arrays`; kwargs
        `train_split, test_split, image_key, label_key`).

    `max_train` caps the examples taken from the source's training split (a stratified seeded subset;
    uniformly random for TFDS, which reads only those), before `val_fraction` of them are held out as a
    stratified validation split; `max_test` (kwarg) caps the test split the same way. For `synthetic`,
    `max_train` / `max_test` cap `n_train` / `n_test`. Everything is a deterministic function of `seed`.
    Arrays are fresh copies; `info["train_indices"]` etc. give their positions in the source split.

    Example:
      >>> ds = load("digits", seed=0)
      >>> ds.input_shape, ds.num_classes
      ((8, 8, 1), 10)
    """
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {type(name).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    seed, max_train = int(seed), _check_limit("max_train", max_train)
    key = name.strip()
    if key.lower().startswith("tfds:"):
        tfds_name = key[len("tfds:") :].strip()
        if not tfds_name:
            raise ValueError("a TFDS dataset needs a name: 'tfds:NAME', e.g. 'tfds:mnist'")
        max_test = _check_limit("max_test", kwargs.pop("max_test", None))
        x_tr, y_tr, x_te, y_te, info = tfds_arrays(
            tfds_name, data_dir=data_dir, seed=seed, max_train=max_train, max_test=max_test, **kwargs
        )
        train_map, test_map = info.pop("source_train_indices"), info.pop("source_test_indices")
        return _finish(
            f"tfds:{tfds_name}", x_tr, y_tr, x_te, y_te, info["num_classes"], info,
            seed=seed, max_train=None, max_test=None, val_fraction=val_fraction,
            train_map=train_map, test_map=test_map,
        )  # fmt: skip
    key = key.lower().replace("-", "_")
    if key not in _LOADERS:
        raise _unknown(name)
    return _LOADERS[key](seed=seed, max_train=max_train, val_fraction=val_fraction, data_dir=data_dir, **kwargs)
