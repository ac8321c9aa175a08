"""The `Dataset` container and the deterministic split helpers every source shares.

All arrays are numpy: inputs float32 (images NHWC in [0, 1]; theory patches `[N, P, d]`), labels int32 in
`[0, num_classes)`. Splits are stratified by label and fully determined by a seed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["Dataset", "stratified_split", "stratified_subset"]

_ARRAY_FIELDS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled train / validation / test dataset held in numpy arrays.

    Construction validates everything: x is cast to float32 and y to int32, every split's x and y have the
    same length, all splits share one example shape, labels lie in `[0, num_classes)` and x holds no NaN
    or inf. An empty split (e.g. `x_val` with `val_fraction=0`) has shape `(0, *input_shape)`.

    Attributes:
      name: the name the dataset was loaded under (e.g. `"digits"`, `"tfds:mnist"`).
      x_train, y_train, x_val, y_val, x_test, y_test: the splits.
      num_classes: number of classes.
      info: source-specific extras (class names, the theory model's noise vectors, ...).

    Example:
      >>> import numpy as np
      >>> x = np.zeros((4, 2, 2, 1)); y = np.array([0, 1, 0, 1])
      >>> ds = Dataset("toy", x, y, x[:0], y[:0], x[:2], y[:2], num_classes=2)
      >>> ds.input_shape, ds.x_train.dtype, ds.y_train.dtype
      ((2, 2, 1), dtype('float32'), dtype('int32'))
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for field in _ARRAY_FIELDS:
            value = np.asarray(getattr(self, field))
            if field.startswith("x"):
                value = value.astype(np.float32, copy=False)
            else:
                if value.size and not np.issubdtype(value.dtype, np.integer):
                    if not np.all(np.equal(np.mod(value, 1), 0)):
                        raise ValueError(f"{self.name}: {field} must hold integer class labels")
                value = value.astype(np.int32, copy=False)
            object.__setattr__(self, field, value)
        if not isinstance(self.num_classes, int | np.integer) or self.num_classes < 1:
            raise ValueError(f"{self.name}: num_classes must be a positive int, got {self.num_classes!r}")
        object.__setattr__(self, "num_classes", int(self.num_classes))
        object.__setattr__(self, "info", dict(self.info))
        shape = self.x_train.shape[1:]
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim < 2:
                raise ValueError(f"{self.name}: x_{split} must have a batch axis and an example shape, got {x.shape}")
            if y.ndim != 1:
                raise ValueError(f"{self.name}: y_{split} must be 1-D, got shape {y.shape}")
            if len(x) != len(y):
                raise ValueError(f"{self.name}: x_{split} has {len(x)} examples but y_{split} has {len(y)}")
            if x.shape[1:] != shape:
                raise ValueError(f"{self.name}: x_{split} examples have shape {x.shape[1:]}, x_train examples {shape}")
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(
                    f"{self.name}: y_{split} has labels in [{y.min()}, {y.max()}], outside [0, {self.num_classes})"
                )
            if x.size and not np.isfinite(x).all():
                raise ValueError(f"{self.name}: x_{split} contains NaN or inf")
        if len(self.x_train) == 0:
            raise ValueError(f"{self.name}: the training split is empty")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. `(8, 8, 1)` for digits or `(P, d)` for the theory model.

        Example:
          >>> x = np.zeros((4, 8, 8, 1)); y = np.array([0, 1, 0, 1])
          >>> Dataset("toy", x, y, x[:0], y[:0], x[:2], y[:2], num_classes=2).input_shape
          (8, 8, 1)
        """
        return tuple(self.x_train.shape[1:])

    def summary(self) -> str:
        """One line describing the dataset.

        Example:
          >>> from jaxunlearn.data import load
          >>> load("digits").summary()
          'digits: train 1294, val 144, test 359, input (8, 8, 1), 10 classes, x in [0, 1]'
        """
        xs = [x for x in (self.x_train, self.x_val, self.x_test) if x.size]
        lo = min(float(x.min()) for x in xs)
        hi = max(float(x.max()) for x in xs)
        return (
            f"{self.name}: train {len(self.y_train)}, val {len(self.y_val)}, test {len(self.y_test)}, "
            f"input {self.input_shape}, {self.num_classes} classes, x in [{lo:.3g}, {hi:.3g}]"
        )

    def __repr__(self) -> str:
        return f"Dataset({self.summary()})"


def _allocate(counts: np.ndarray, n_take: int) -> np.ndarray:
    """Per-class sample counts proportional to `counts`, summing to `n_take` (largest remainder)."""
    total = int(counts.sum())
    quota = counts * (n_take / total)
    take = np.floor(quota).astype(np.int64)
    short = n_take - int(take.sum())
    if short:
        frac = quota - take
        # Largest fractional part first; ties go to the larger class, then the lower class id.
        order = np.lexsort((np.arange(len(counts)), -counts, -frac))
        order = [c for c in order if take[c] < counts[c]]
        take[order[:short]] += 1
    return take


def stratified_split(labels: np.ndarray, n_take: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split `range(len(labels))` into `n_take` indices and the rest, keeping class proportions.

    Each class contributes `round`-ed (largest-remainder) shares of `n_take`; the examples within a class
    are chosen uniformly by `rng`. Both outputs are sorted int64 index arrays.

    Example:
      >>> import numpy as np
      >>> take, rest = stratified_split(np.array([0, 0, 0, 0, 1, 1]), 3, np.random.default_rng(0))
      >>> len(take), len(rest), sorted(np.array([0, 0, 0, 0, 1, 1])[take].tolist())
      (3, 3, [0, 0, 1])
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 <= n_take <= n:
        raise ValueError(f"cannot take {n_take} of {n} examples")
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    per_class = _allocate(counts, n_take) if n_take else np.zeros(len(classes), np.int64)
    take = []
    for c, k in enumerate(per_class):
        members = np.flatnonzero(inverse == c)
        if k:
            take.append(rng.choice(members, size=int(k), replace=False))
    take = np.sort(np.concatenate(take)) if take else np.zeros(0, np.int64)
    mask = np.ones(n, bool)
    mask[take] = False
    return take.astype(np.int64), np.flatnonzero(mask).astype(np.int64)


def stratified_subset(labels: np.ndarray, n_take: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a class-stratified random subset of size `n_take` (see `stratified_split`).

    Example:
      >>> import numpy as np
      >>> stratified_subset(np.array([0, 1, 0, 1]), 2, np.random.default_rng(0)).shape
      (2,)
    """
    return stratified_split(labels, n_take, rng)[0]
