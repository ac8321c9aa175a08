"""Shared digits setup for the method tests: one pretrained small CNN per test module, and helpers.

Import from a test module (``tests/`` is on ``sys.path`` under pytest's default import mode)::

    from _digits_setup import pretrained, make_ctx, accuracy

and build a module-scoped fixture around :func:`pretrained` so the pretraining runs once per module.
Everything here is deterministic (fixed seeds), and :func:`pretrained` caches its result per process.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from jaxunlearn import data, engine, methods, models

#: Pretraining recipe for digits with the small CNN (~98 % test accuracy in a few seconds).
PRETRAIN = engine.OptimConfig(lr=0.05)
PRETRAIN_EPOCHS = 15


@dataclasses.dataclass(frozen=True)
class Setup:
    """A dataset, a model and a model trained on ``train_idx`` of ``data`` (all training examples by default)."""

    ds: data.Dataset
    apply_fn: object
    params: object
    model_state: object
    init_fn: object
    data: engine.DeviceData
    model: str

    def accuracy(self, params, x, y, model_state=None) -> float:
        state = self.model_state if model_state is None else model_state
        return engine.evaluate(self.apply_fn, params, state, x, y)["accuracy"]

    def test_accuracy(self, params) -> float:
        return self.accuracy(params, self.ds.x_test, self.ds.y_test)

    def forget_accuracy(self, params, forget_idx) -> float:
        return self.accuracy(params, self.ds.x_train[forget_idx], self.ds.y_train[forget_idx])


def build_model(model: str, num_classes: int, input_shape, seed: int = 0, **kwargs):
    """``(apply_fn, params, model_state, init_fn)``, ``init_fn(seed) -> (params, model_state)``."""
    kwargs = dict(kwargs)

    def init_fn(s):
        _, p, st = models.split_model(
            models.build(model, num_classes=num_classes, input_shape=input_shape, seed=s, **kwargs)
        )
        return p, st

    apply_fn, params, state = models.split_model(
        models.build(model, num_classes=num_classes, input_shape=input_shape, seed=seed, **kwargs)
    )
    return apply_fn, params, state, init_fn


def train_setup(
    ds: data.Dataset,
    *,
    model: str = "cnn",
    epochs: int = PRETRAIN_EPOCHS,
    optimizer: engine.OptimConfig = PRETRAIN,
    seed: int = 0,
    train_idx=None,
    model_kwargs: dict | None = None,
) -> Setup:
    """Train ``model`` on ``ds`` (or its ``train_idx`` rows) from the initialisation ``seed``."""
    apply_fn, params, state, init_fn = build_model(model, ds.num_classes, ds.input_shape, seed, **(model_kwargs or {}))
    dd = engine.DeviceData.from_numpy(ds.x_train, ds.y_train)
    res = engine.train(
        apply_fn, params, state, dd, optimizer=optimizer, epochs=epochs, train_idx=train_idx, seed=seed, progress=False
    )
    return Setup(ds, apply_fn, res.params, res.model_state, init_fn, dd, model)


@functools.lru_cache(maxsize=4)
def pretrained(model: str = "cnn", epochs: int = PRETRAIN_EPOCHS, seed: int = 0) -> Setup:
    """Digits (default split) and ``model`` pretrained on all its training examples; cached per process."""
    return train_setup(data.load("digits", seed=0), model=model, epochs=epochs, seed=seed)


def make_ctx(setup: Setup, forget_idx, *, params=None, model_state=None, **kw) -> methods.Context:
    """A :class:`methods.Context` for forgetting ``forget_idx`` from ``setup``'s model.

    Retrain repeats the digits pretraining recipe (``PRETRAIN`` for ``PRETRAIN_EPOCHS``); other fields
    (``optimizer``, ``epochs``, ``options``, ``corrected``, ...) pass through ``kw``.
    """
    forget_idx = np.asarray(forget_idx, np.int64)
    n = len(setup.data)
    kw.setdefault("pretrain_optimizer", PRETRAIN)
    kw.setdefault("pretrain_epochs", PRETRAIN_EPOCHS)
    kw.setdefault("init_fn", setup.init_fn)
    return methods.Context(
        setup.apply_fn,
        setup.params if params is None else params,
        setup.model_state if model_state is None else model_state,
        setup.data.x,
        setup.data.y,
        data.retain_indices(n, forget_idx),
        forget_idx,
        setup.ds.num_classes,
        **kw,
    )


def leaves_equal(a, b) -> bool:
    """Bitwise equality of two pytrees of arrays."""
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def all_finite(tree) -> bool:
    return all(bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree.leaves(tree))
