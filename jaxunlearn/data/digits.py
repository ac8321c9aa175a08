"""scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes): the embedded default dataset."""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pathlib

import numpy as np

__all__ = ["digits_arrays"]


@functools.lru_cache(maxsize=1)
def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    # `sklearn.datasets.load_digits` reads `sklearn/datasets/data/digits.csv.gz`; importing sklearn alone
    # costs most of a second, so read that same bundled file directly when it is where we expect it.
    spec = importlib.util.find_spec("sklearn")
    path = None
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            candidate = pathlib.Path(root) / "datasets" / "data" / "digits.csv.gz"
            if candidate.is_file():
                path = candidate
                break
    if path is not None:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float64)
        images, labels = table[:, :-1], table[:, -1]
    else:  # pragma: no cover - layout change in a future scikit-learn
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images, labels = bunch.data, bunch.target
    x = (images / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    y = labels.astype(np.int32)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as `(x [N, 8, 8, 1] float32 in [0, 1], y [N] int32)`, read-only and cached.

    Pixel values (0..16 in scikit-learn) are divided by 16. Use `jaxunlearn.data.load("digits")` for the
    train / val / test split.

    Example:
      >>> x, y = digits_arrays()
      >>> x.shape, int(y.max()) + 1
      ((1797, 8, 8, 1), 10)
    """
    return _read_digits()
