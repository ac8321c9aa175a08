"""Image classification datasets from TensorFlow Datasets, read through `tfds.data_source` (no TensorFlow).

`tfds.data_source` gives random access to datasets prepared in the ArrayRecord format; examples are
decoded with numpy/PIL. Nothing is downloaded here: the data must already be in `data_dir` (default:
`$TFDS_DATA_DIR` or `~/tensorflow_datasets`), prepared on a machine with internet by
`tfds build NAME --data_dir DIR --file_format array_record`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["tfds_arrays"]

_BATCH = 1024


def _default_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _build_hint(name: str, data_dir: str) -> str:
    base = name.split(":")[0].split("/")[0]
    return (
        f"On a machine with internet (and TensorFlow) run `tfds build {base} --data_dir {data_dir} "
        f"--file_format array_record` and copy {data_dir} here, or pass --data-dir / data_dir=DIR "
        f"pointing at a directory where it is already prepared."
    )


def _open_split(name: str, split: str, data_dir: str | None):
    import tensorflow_datasets as tfds

    shown_dir = data_dir or _default_data_dir()
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(
            f"TFDS has no dataset {name!r} (neither registered nor prepared in {shown_dir!r}). "
            f"See https://www.tensorflow.org/datasets/catalog for names."
        ) from e
    except (NotImplementedError, FileNotFoundError, AssertionError, OSError, KeyError, ValueError) as e:
        # tfds reports missing data in several ways (no random-access files, empty split metadata, ...):
        # ask the builder whether the dataset is prepared at all to pick the right message.
        try:
            prepared = tfds.builder(name, data_dir=data_dir).is_prepared()
        except Exception:  # only used to choose the message
            prepared = False
        if not prepared:
            raise FileNotFoundError(
                f"TFDS dataset {name!r} is not prepared in {shown_dir!r} and jaxunlearn never downloads. "
                + _build_hint(name, shown_dir)
            ) from e
        if isinstance(e, NotImplementedError):
            raise RuntimeError(
                f"TFDS dataset {name!r} is prepared in {shown_dir!r} but not in a random-access format "
                f"(ArrayRecord), which reading without TensorFlow needs ({e}). Rebuild it: "
                + _build_hint(name, shown_dir)
            ) from e
        raise ValueError(f"TFDS dataset {name!r}: cannot open split {split!r}: {e}") from e


def _feature_keys(info, image_key: str | None, label_key: str | None) -> tuple[str, str, int]:
    from tensorflow_datasets import features as tfds_features

    features = info.features
    keys = list(features.keys())
    supervised = info.supervised_keys
    if image_key is None:
        if isinstance(supervised, tuple) and len(supervised) >= 2 and isinstance(supervised[0], str):
            image_key = supervised[0]
        else:
            found = [k for k in keys if isinstance(features[k], tfds_features.Image)]
            if not found:
                raise ValueError(f"TFDS {info.name!r} has no Image feature among {keys}; pass image_key=")
            image_key = found[0]
    if label_key is None:
        if isinstance(supervised, tuple) and len(supervised) >= 2 and isinstance(supervised[1], str):
            label_key = supervised[1]
        else:
            found = [k for k in keys if isinstance(features[k], tfds_features.ClassLabel)]
            if not found:
                raise ValueError(f"TFDS {info.name!r} has no ClassLabel feature among {keys}; pass label_key=")
            label_key = found[0]
    for key in (image_key, label_key):
        if key not in features:
            raise ValueError(f"TFDS {info.name!r} has no feature {key!r}; features: {keys}")
    label_feature = features[label_key]
    if not isinstance(label_feature, tfds_features.ClassLabel):
        raise ValueError(f"TFDS {info.name!r}: feature {label_key!r} is {type(label_feature).__name__}, not ClassLabel")
    return image_key, label_key, int(label_feature.num_classes)


def _read_batch(source, keys: list[int]) -> Sequence[dict[str, Any]]:
    # Data sources read a batch of records at once with `__getitems__`. tfds.testing.mock_data installs a
    # `__getitems__` that is not bound to the source (it raises TypeError), so fall back to single reads.
    getitems = getattr(source, "__getitems__", None)
    if getitems is not None:
        try:
            return getitems(keys)
        except TypeError:
            pass
    return [source[k] for k in keys]


def _read(source, indices: np.ndarray, image_key: str, label_key: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for start in range(0, len(indices), _BATCH):
        keys = [int(i) for i in indices[start : start + _BATCH]]
        for example in _read_batch(source, keys):
            images.append(np.asarray(example[image_key]))
            labels.append(np.asarray(example[label_key]))
    if not images:
        raise ValueError(f"{what}: no examples read")
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"{what}: images have different shapes {sorted(shapes)[:4]}; resize them first")
    x = np.stack(images)
    if x.ndim == 3:  # [N, H, W] grayscale
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"{what}: expected images [H, W, C], got examples of shape {x.shape[1:]}")
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32) / np.float32(np.iinfo(x.dtype).max)
    else:
        x = x.astype(np.float32)
    return x, np.asarray(labels).astype(np.int32).reshape(-1)


def _choose(n: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=limit, replace=False))


def tfds_arrays(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    max_train: int | None = None,
    max_test: int | None = None,
    train_split: str = "train",
    test_split: str | None = None,
    image_key: str | None = None,
    label_key: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a TFDS image classification dataset into `(x_train, y_train, x_test, y_test, info)`.

    Images become float32 NHWC scaled to [0, 1] (integer images divided by their dtype's maximum), labels
    int32. The test split is `test_split`, else `"test"`, else `"validation"`. `max_train` / `max_test`
    read only a uniformly random, seeded subset of that many examples (labels are unknown before
    reading, so this subset is not stratified); reads go in sorted index batches. `info` holds
    `num_classes`, `class_names`, `splits`, the features used and `source_train_indices` /
    `source_test_indices` (the positions read).

    Example (TFDS's mock data stands in for a prepared ``mnist``: no download):
      >>> import tensorflow_datasets as tfds
      >>> with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
      ...     x, y, xt, yt, info = tfds_arrays("mnist", max_train=5)
      >>> x.shape, x.dtype, xt.shape, info["num_classes"], info["source_train_indices"].size
      ((5, 28, 28, 1), dtype('float32'), (8, 28, 28, 1), 10, 5)
      >>> bool(0.0 <= x.min() and x.max() <= 1.0)
      True
    """
    data_dir = None if data_dir is None else os.fspath(os.path.expanduser(data_dir))
    for arg, value in (("max_train", max_train), ("max_test", max_test)):
        if value is not None and (int(value) != value or value < 1):
            raise ValueError(f"{arg} must be a positive int or None, got {value!r}")
    train_source = _open_split(name, train_split, data_dir)
    info = train_source.dataset_info
    available = list(info.splits.keys())  # empty when the metadata is unknown (e.g. under mock_data)
    if test_split is None:
        test_split = "test"
        if available and "test" not in available:
            if "validation" not in available:
                raise ValueError(
                    f"TFDS {name!r} has neither a 'test' nor a 'validation' split (splits: {available}); "
                    f"pass test_split="
                )
            test_split = "validation"
    test_source = _open_split(name, test_split, data_dir)
    image_key, label_key, num_classes = _feature_keys(info, image_key, label_key)

    rng = np.random.default_rng([seed, 7])
    train_idx = _choose(len(train_source), max_train, rng)
    test_idx = _choose(len(test_source), max_test, rng)
    x_train, y_train = _read(train_source, train_idx, image_key, label_key, f"tfds:{name} {train_split}")
    x_test, y_test = _read(test_source, test_idx, image_key, label_key, f"tfds:{name} {test_split}")
    label_feature = info.features[label_key]
    try:
        class_names = list(label_feature.names)
    except Exception:  # names are optional metadata
        class_names = [str(i) for i in range(num_classes)]
    meta = {
        "source": "tfds",
        "tfds_name": name,
        "data_dir": data_dir or _default_data_dir(),
        "train_split": train_split,
        "test_split": test_split,
        "splits": available,
        "image_key": image_key,
        "label_key": label_key,
        "num_classes": num_classes,
        "class_names": class_names,
        "source_train_size": len(train_source),
        "source_test_size": len(test_source),
        "source_train_indices": train_idx,
        "source_test_indices": test_idx,
    }
    return x_train, y_train, x_test, y_test, meta
