"""Feature and label corruption for "feature and label unlearning" (paper B, after Warnecke et al.).

A group of training examples Z is corrupted — a trigger patch stamped on the images, and/or the labels
changed — and an unlearning method must revert the model to what training on the clean versions Z̃ would
give. `backdoor` builds such a poisoned training set and keeps Z̃ (the original rows) in `info`.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from jaxunlearn.data.dataset import Dataset
from jaxunlearn.data.forget import select_forget

__all__ = ["TRIGGER_POSITIONS", "add_trigger", "backdoor", "flip_labels", "triggered_test_set"]

TRIGGER_POSITIONS = ("bottom_right", "bottom_left", "top_right", "top_left", "center")


def _as_indices(idx, n: int, what: str) -> np.ndarray:
    idx = np.asarray(idx)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise ValueError(f"{what}: a boolean mask must have shape ({n},), got {idx.shape}")
        return np.flatnonzero(idx)
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{what}: indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64).reshape(-1)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise ValueError(f"{what}: indices must lie in [0, {n}), got [{idx.min()}, {idx.max()}]")
    return idx


def _corner(position, h: int, w: int, patch_size: int) -> tuple[int, int]:
    if isinstance(position, str):
        table = {
            "bottom_right": (h - patch_size, w - patch_size),
            "bottom_left": (h - patch_size, 0),
            "top_right": (0, w - patch_size),
            "top_left": (0, 0),
            "center": ((h - patch_size) // 2, (w - patch_size) // 2),
        }
        if position not in table:
            raise ValueError(f"position must be one of {TRIGGER_POSITIONS} or (row, col), got {position!r}")
        return table[position]
    row, col = (int(v) for v in position)
    if not (0 <= row <= h - patch_size and 0 <= col <= w - patch_size):
        raise ValueError(f"a {patch_size}x{patch_size} trigger at (row, col)={position} does not fit in {h}x{w} images")
    return row, col


def add_trigger(
    x: np.ndarray,
    idx: np.ndarray,
    *,
    patch_size: int = 2,
    value: float = 1.0,
    position: str | tuple[int, int] = "bottom_right",
) -> np.ndarray:
    """Return a copy of the NHWC images `x` with a square trigger stamped on the images `idx`.

    The trigger sets a `patch_size × patch_size` square, in every channel, to `value`; `position` is one of
    `TRIGGER_POSITIONS` or the `(row, col)` of its top-left pixel. `idx` are indices (or a boolean mask)
    into the batch axis; the input is never modified.

    Example:
      >>> import numpy as np
      >>> x = np.zeros((3, 4, 4, 1), np.float32)
      >>> xt = add_trigger(x, [1], patch_size=2)
      >>> float(xt[1, 2:, 2:].min()), float(xt[0].max()), float(x.max())
      (1.0, 0.0, 0.0)
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"add_trigger expects NHWC images [N, H, W, C], got shape {x.shape}")
    n, h, w, _ = x.shape
    if isinstance(patch_size, bool) or not isinstance(patch_size, numbers.Integral) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    if patch_size > min(h, w):
        raise ValueError(f"patch_size {patch_size} does not fit in {h}x{w} images")
    idx = _as_indices(idx, n, "add_trigger")
    row, col = _corner(position, h, w, patch_size)
    out = x.copy()
    out[idx, row : row + patch_size, col : col + patch_size, :] = value
    return out


def flip_labels(y: np.ndarray, idx: np.ndarray, target: int | np.ndarray) -> np.ndarray:
    """Return a copy of the labels `y` with `y[idx]` set to `target` (an int, or one label per index).

    Example:
      >>> flip_labels(np.array([0, 1, 2]), [0, 2], 1).tolist()
      [1, 1, 1]
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    idx = _as_indices(idx, len(y), "flip_labels")
    target = np.asarray(target)
    if target.ndim not in (0, 1) or (target.ndim == 1 and target.shape != idx.shape):
        raise ValueError(f"target must be an int or have one label per index ({idx.shape}), got {target.shape}")
    if target.size and (not np.issubdtype(target.dtype, np.integer) or target.min() < 0):
        raise ValueError(f"target labels must be non-negative ints, got {target!r}")
    out = y.copy()
    out[idx] = target
    return out


def backdoor(
    dataset: Dataset,
    fraction: float | int,
    target_class: int | None,
    seed: int = 0,
    *,
    patch_size: int = 2,
    value: float = 1.0,
    position: str | tuple[int, int] = "bottom_right",
    trigger: bool = True,
) -> tuple[Dataset, np.ndarray]:
    """Poison part of the training set: stamp a trigger and relabel to `target_class`.

    `fraction` (a fraction in (0, 1) of the training set, or a count) of the training examples whose label
    is not `target_class` are chosen at random by `seed`. With `trigger=False` only the labels change
    (label unlearning); with `target_class=None` only the trigger is added (feature unlearning).
    Returns `(poisoned, idx)`: `poisoned` is `dataset` with the corrupted training rows (val and test are
    untouched) and `idx` the sorted indices Z of the corrupted rows. The clean versions Z̃ are
    `dataset.x_train[idx], dataset.y_train[idx]`, also kept in `poisoned.info["backdoor"]` together with the
    trigger settings (see `triggered_test_set` for the attack-success evaluation set).

    Example:
      >>> from jaxunlearn.data import load
      >>> poisoned, idx = backdoor(load("digits"), 0.05, target_class=0, seed=0)
      >>> bool((poisoned.y_train[idx] == 0).all())
      True
    """
    if not trigger and target_class is None:
        raise ValueError("nothing to corrupt: pass target_class (relabel) and/or trigger=True")
    y = dataset.y_train
    if target_class is not None:
        if isinstance(target_class, bool) or not isinstance(target_class, numbers.Integral):
            raise ValueError(f"target_class must be an int, got {target_class!r}")
        if not 0 <= target_class < dataset.num_classes:
            raise ValueError(f"target_class {target_class} outside [0, {dataset.num_classes})")
        candidates = np.flatnonzero(y != target_class)
    else:
        candidates = np.arange(len(y))
    if isinstance(fraction, float) and 0.0 < fraction < 1.0:
        size = max(1, int(round(fraction * len(y))))
    else:
        size = fraction
    pick = select_forget(y[candidates], "random", size, seed=seed)
    idx = np.sort(candidates[pick]).astype(np.int64)

    x_train = dataset.x_train
    if trigger:
        x_train = add_trigger(x_train, idx, patch_size=patch_size, value=value, position=position)
    y_train = y if target_class is None else flip_labels(y, idx, target_class)
    record = {
        "indices": idx,
        "x_clean": dataset.x_train[idx].copy(),
        "y_clean": dataset.y_train[idx].copy(),
        "target_class": target_class,
        "trigger": trigger,
        "patch_size": patch_size,
        "value": value,
        "position": position,
        "seed": seed,
    }
    poisoned = dataclasses.replace(dataset, x_train=x_train, y_train=y_train, info={**dataset.info, "backdoor": record})
    return poisoned, idx


def triggered_test_set(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The backdoor evaluation set of a `backdoor`-ed dataset: triggered test images and their true labels.

    Test examples of the target class are left out (for them the attack cannot be told from a correct
    prediction). Attack success rate = fraction predicted as `info["backdoor"]["target_class"]`.

    Example:
      >>> from jaxunlearn.data import load
      >>> poisoned, _ = backdoor(load("digits"), 0.05, target_class=0)
      >>> x_bd, y_true = triggered_test_set(poisoned)
      >>> bool((y_true != 0).all())
      True
    """
    record = dataset.info.get("backdoor")
    if record is None:
        raise ValueError(f"{dataset.name}: no backdoor in info; create the dataset with backdoor(...)")
    keep = np.arange(len(dataset.y_test))
    if record["target_class"] is not None:
        keep = np.flatnonzero(dataset.y_test != record["target_class"])
    x = dataset.x_test[keep]
    if record["trigger"]:
        x = add_trigger(
            x, np.arange(len(x)), patch_size=record["patch_size"], value=record["value"], position=record["position"]
        )
    return x, dataset.y_test[keep].copy()
