"""Datasets and forget sets for jaxunlearn (a leaf package: numpy, scikit-learn's data file, TFDS).

```python
from jaxunlearn import data
ds = data.load("digits", seed=0)                      # or "fashion_mnist", "synthetic", "tfds:mnist"
forget = data.select_forget(ds.y_train, "random", 0.1, seed=0)
retain = data.retain_indices(len(ds.y_train), forget)
```
"""

from jaxunlearn.data.corrupt import TRIGGER_POSITIONS, add_trigger, backdoor, flip_labels, triggered_test_set
from jaxunlearn.data.dataset import Dataset, stratified_split, stratified_subset
from jaxunlearn.data.digits import digits_arrays
from jaxunlearn.data.forget import FORGET_KINDS, forget_mask, retain_indices, select_forget
from jaxunlearn.data.idx import DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, fashion_mnist_arrays, read_idx
from jaxunlearn.data.loader import DATASETS, load
from jaxunlearn.data.synthetic import SignalNoiseData, make_signal_noise, signs
from jaxunlearn.data.tfds_source import tfds_arrays

__all__ = [
    "DATASETS",
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "FORGET_KINDS",
    "TRIGGER_POSITIONS",
    "Dataset",
    "SignalNoiseData",
    "add_trigger",
    "backdoor",
    "digits_arrays",
    "fashion_mnist_arrays",
    "flip_labels",
    "forget_mask",
    "load",
    "make_signal_noise",
    "read_idx",
    "retain_indices",
    "select_forget",
    "signs",
    "stratified_split",
    "stratified_subset",
    "tfds_arrays",
    "triggered_test_set",
]

from jaxunlearn.data.facts import FactsCorpus, FactsSplit, Tokenizer, make_facts  # noqa: E402

__all__ += ["FactsCorpus", "FactsSplit", "Tokenizer", "make_facts"]
