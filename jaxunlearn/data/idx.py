"""A numpy reader for the IDX format (MNIST, Fashion-MNIST) and the Fashion-MNIST file set.

IDX layout (big-endian): two zero bytes, a type code byte, the number of dimensions `k`, then `k` uint32
sizes, then the data. Files may be gzip-compressed (detected by content, not by name).
"""

from __future__ import annotations

import functools
import gzip
import os
import pathlib
import zlib

import numpy as np

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "fashion_mnist_arrays",
    "find_idx_file",
    "read_idx",
]

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _parse_idx(raw: bytes, source: str) -> np.ndarray:
    if len(raw) < 4:
        raise ValueError(f"{source}: not an IDX file (only {len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(
            f"{source}: not an IDX file (magic number {raw[:4].hex()}; expected 0000TTNN with type TT in "
            f"{{{', '.join(f'{t:02x}' for t in _IDX_TYPES)}}})"
        )
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    if ndim == 0:
        raise ValueError(f"{source}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{source}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions declared)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{source}: IDX header declares shape {dims} ({expected} data bytes) but the file holds "
            f"{len(raw) - header} data bytes: the file is truncated or corrupt"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array of its declared shape and type.

    Raises FileNotFoundError if `path` does not exist and ValueError if it is not a valid IDX file (bad magic
    number, header/data size mismatch, broken gzip stream).

    Example (an IDX file written by hand: zeros, type 0x08 = uint8, 3 dimensions, sizes, data):
      >>> import tempfile
      >>> tmp = tempfile.TemporaryDirectory()
      >>> images = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
      >>> header = bytes([0, 0, 0x08, 3]) + np.array(images.shape, ">u4").tobytes()
      >>> path = pathlib.Path(tmp.name, "t10k-images-idx3-ubyte.gz")
      >>> _ = path.write_bytes(gzip.compress(header + images.tobytes()))
      >>> x = read_idx(path)
      >>> x.shape, x.dtype, bool((x == images).all())
      ((2, 3, 4), dtype('uint8'), True)
      >>> tmp.cleanup()
    """
    path = pathlib.Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt gzip stream ({e})") from e
    return _parse_idx(raw, str(path))


def find_idx_file(data_dir: str | os.PathLike, stem: str) -> pathlib.Path:
    """Return `data_dir/stem` or `data_dir/stem.gz`, whichever exists (uncompressed first).

    Raises FileNotFoundError naming the expected file, the directory and how to get Fashion-MNIST.

    Example:
      >>> import tempfile
      >>> tmp = tempfile.TemporaryDirectory()
      >>> _ = pathlib.Path(tmp.name, "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
      >>> find_idx_file(tmp.name, "t10k-labels-idx1-ubyte").name
      't10k-labels-idx1-ubyte.gz'
      >>> find_idx_file(tmp.name, "train-labels-idx1-ubyte")
      Traceback (most recent call last):
      ...
      FileNotFoundError: expected the IDX file 'train-labels-idx1-ubyte' (or 'train-labels-idx1-ubyte.gz') in ...
      >>> tmp.cleanup()
    """
    data_dir = pathlib.Path(data_dir)
    for name in (stem, stem + ".gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    where = "directory does not exist" if not data_dir.is_dir() else "directory exists but lacks it"
    raise FileNotFoundError(
        f"expected the IDX file {stem!r} (or {stem + '.gz'!r}) in {str(data_dir)!r} ({where}). "
        f"Fashion-MNIST needs the four files {', '.join(FASHION_MNIST_FILES.values())} (gzip or not). "
        f"On Debian/Ubuntu install them with `apt-get install dataset-fashion-mnist` "
        f"(puts them in {DEFAULT_FASHION_MNIST_DIR}), or pass --data-dir / data_dir=DIR pointing at a "
        f"directory holding them."
    )


@functools.lru_cache(maxsize=4)
def _read_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    del mtime_ns, size  # part of the cache key only: a replaced file is read again
    array = read_idx(path)
    array.flags.writeable = False
    return array


def _read(path: pathlib.Path) -> np.ndarray:
    stat = path.stat()
    return _read_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def fashion_mnist_arrays(
    data_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The raw Fashion-MNIST arrays `(x_train, y_train, x_test, y_test)` from the IDX files in `data_dir`.

    Images are uint8 `[N, 28, 28]`, labels uint8 `[N]`, exactly as stored; the arrays are read-only and
    cached per file (path, mtime, size). The same file names also fit the original MNIST. Use
    `jaxunlearn.data.load("fashion_mnist")` for scaled float32 NHWC splits.

    Example (four tiny IDX files; the Debian package holds the real 60 000 + 10 000 examples):
      >>> import tempfile
      >>> tmp = tempfile.TemporaryDirectory()
      >>> def write(stem, a):                  # header: 0, 0, type 0x08 (uint8), ndim, sizes (big-endian)
      ...     header = bytes([0, 0, 0x08, a.ndim]) + np.array(a.shape, ">u4").tobytes()
      ...     pathlib.Path(tmp.name, stem + ".gz").write_bytes(gzip.compress(header + a.tobytes()))
      >>> for split, n in (("train", 6), ("test", 2)):
      ...     write(FASHION_MNIST_FILES[f"{split}_images"], np.zeros((n, 28, 28), np.uint8))
      ...     write(FASHION_MNIST_FILES[f"{split}_labels"], np.arange(n, dtype=np.uint8))
      >>> x_train, y_train, x_test, y_test = fashion_mnist_arrays(tmp.name)
      >>> x_train.shape, y_test.tolist(), FASHION_MNIST_CLASSES[y_train[1]]
      ((6, 28, 28), [0, 1], 'Trouser')
      >>> tmp.cleanup()
    """
    data_dir = pathlib.Path(data_dir if data_dir is not None else DEFAULT_FASHION_MNIST_DIR).expanduser()
    paths = {key: find_idx_file(data_dir, stem) for key, stem in FASHION_MNIST_FILES.items()}
    arrays = {key: _read(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3:
            raise ValueError(f"{paths[f'{split}_images']}: expected [N, rows, cols] images, got {images.shape}")
        if labels.ndim != 1:
            raise ValueError(f"{paths[f'{split}_labels']}: expected [N] labels, got {labels.shape}")
        if len(images) != len(labels):
            raise ValueError(
                f"{split} split: {len(images)} images in {paths[f'{split}_images']} but {len(labels)} labels "
                f"in {paths[f'{split}_labels']}"
            )
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise ValueError(
            f"train images are {arrays['train_images'].shape[1:]}, test images {arrays['test_images'].shape[1:]}"
        )
    return arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"]
