"""TFDS source of jaxunlearn.data: read through `tfds.data_source`, without TensorFlow and without downloads.

Two kinds of checks: `tfds.testing.mock_data` for the real catalogue names (mnist, cifar10), and a tiny
dataset *built here* with a real TFDS builder into ArrayRecord files, so the whole read path (files on disk,
PNG decoding, split metadata) runs as it does on a prepared `tfds build` directory.
"""

import io

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
PIL_Image = pytest.importorskip("PIL.Image")

from jaxunlearn import data  # noqa: E402


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL_Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def _tiny_images(split: str, config: str) -> list[tuple[np.ndarray, int]]:
    """The examples the tiny builder writes: deterministic, so the test can compare what it reads back."""
    n = {"train": 40, "test": 12, "validation": 12}[split]
    channels = 3 if config != "gray" else 1
    rng = np.random.default_rng(["train", "test", "validation"].index(split))
    return [(rng.integers(0, 256, (6, 5, channels), dtype=np.uint8), i % 4) for i in range(n)]


class JaxunlearnTinyImages(tfds.core.GeneratorBasedBuilder):
    """A 4-class, 6x5 image dataset for the tests (configs: rgb with test split, rgb with validation
    split only, grayscale)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="rgb"),
        tfds.core.BuilderConfig(name="rgb_val_only"),
        tfds.core.BuilderConfig(name="gray"),
    ]

    def _info(self):
        channels = 1 if self.builder_config.name == "gray" else 3
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(6, 5, channels)),
                    "label": tfds.features.ClassLabel(names=["a", "b", "c", "d"]),
                    "id": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # keep the written order, so positions can be compared
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        held_out = "validation" if self.builder_config.name == "rgb_val_only" else "test"
        return {split: self._generate_examples(split) for split in ("train", held_out)}

    def _generate_examples(self, split):
        for i, (image, label) in enumerate(_tiny_images(split, self.builder_config.name)):
            yield i, {"image": _png(image), "label": label, "id": f"{split}-{i}"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    for config in ("rgb", "rgb_val_only", "gray"):
        JaxunlearnTinyImages(data_dir=str(root), config=config, file_format="array_record").download_and_prepare()
    return root


def test_tfds_prepared_dataset_roundtrip(tiny_dir):
    ds = data.load("tfds:jaxunlearn_tiny_images/rgb", data_dir=tiny_dir, seed=0, val_fraction=0.25)
    train, test = _tiny_images("train", "rgb"), _tiny_images("test", "rgb")
    assert ds.input_shape == (6, 5, 3) and ds.num_classes == 4
    assert len(ds.y_train) + len(ds.y_val) == len(train) and len(ds.y_test) == len(test)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    # what comes back is exactly what was written (PNG is lossless), scaled by 1/255
    x_written = np.stack([im for im, _ in train]) / 255.0
    y_written = np.array([label for _, label in train])
    tr, va = ds.info["train_indices"], ds.info["val_indices"]
    np.testing.assert_allclose(ds.x_train, x_written[tr], rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train, y_written[tr])
    np.testing.assert_array_equal(ds.y_val, y_written[va])
    np.testing.assert_allclose(ds.x_test, np.stack([im for im, _ in test]) / 255.0, rtol=1e-6)
    assert ds.info["class_names"] == ["a", "b", "c", "d"] and ds.info["test_split"] == "test"
    assert set(ds.info["splits"]) == {"train", "test"}


def test_tfds_max_train_reads_a_seeded_subset(tiny_dir):
    ds = data.load("tfds:jaxunlearn_tiny_images/rgb", data_dir=tiny_dir, seed=1, max_train=10, max_test=5)
    assert len(ds.y_train) + len(ds.y_val) == 10 and len(ds.y_test) == 5
    train = _tiny_images("train", "rgb")
    read = np.sort(np.concatenate([ds.info["train_indices"], ds.info["val_indices"]]))
    assert len(np.unique(read)) == 10 and read.max() < len(train)
    x_written = np.stack([im for im, _ in train]) / 255.0
    np.testing.assert_allclose(ds.x_train, x_written[ds.info["train_indices"]], rtol=1e-6)
    again = data.load("tfds:jaxunlearn_tiny_images/rgb", data_dir=tiny_dir, seed=1, max_train=10, max_test=5)
    np.testing.assert_array_equal(ds.x_train, again.x_train)


def test_tfds_validation_fallback_and_grayscale(tiny_dir):
    ds = data.load("tfds:jaxunlearn_tiny_images/rgb_val_only", data_dir=tiny_dir)
    assert ds.info["test_split"] == "validation" and len(ds.y_test) == len(_tiny_images("validation", "x"))
    gray = data.load("tfds:jaxunlearn_tiny_images/gray", data_dir=tiny_dir)
    assert gray.input_shape == (6, 5, 1)
    with pytest.raises(ValueError, match="split"):
        data.load("tfds:jaxunlearn_tiny_images/rgb", data_dir=tiny_dir, test_split="nope")


def test_tfds_missing_data_message(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        data.load("tfds:mnist", data_dir=tmp_path)
    message = str(err.value)
    assert "tfds build mnist" in message and str(tmp_path) in message and "--data-dir" in message


def test_tfds_missing_data_in_default_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds_default"))
    with pytest.raises(FileNotFoundError, match="tfds build cifar10") as err:
        data.load("tfds:cifar10")
    assert str(tmp_path / "tfds_default") in str(err.value)


def test_tfds_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="no dataset"):
        data.load("tfds:surely_not_a_tfds_dataset_xyz", data_dir=tmp_path)


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_catalogue_names_with_mock_data(name, shape):
    with tfds.testing.mock_data(num_examples=30, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.load(f"tfds:{name}", seed=0, max_train=20, val_fraction=0.1)
    assert ds.input_shape == shape and ds.num_classes == 10
    assert len(ds.y_train) == 18 and len(ds.y_val) == 2 and len(ds.y_test) == 30
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
        assert y.dtype == np.int32 and y.min() >= 0 and y.max() < 10
