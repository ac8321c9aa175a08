"""Multi-layer perceptron: flatten, ``Dense -> ReLU`` hidden layers, then a linear classifier."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from flax import nnx

from jaxunlearn.models.layers import normal_init, prepare_input

_init = normal_init(1.0, "fan_in")  # LeCun normal


class MLP(nnx.Module):
    """``logits = W_L relu(... relu(W_1 flatten(x) + b_1) ...) + b_L``.

    Args:
        input_shape: shape of one example (any rank; it is flattened).
        num_classes: number of output logits.
        hidden: widths of the hidden layers (``()`` gives multinomial logistic regression).
        rngs: ``nnx.Rngs`` for the initialization.

    Layers are attributes ``dense0, dense1, ...`` (hidden) and ``head`` (classifier), so the params
    pytree has string keys only. ``model(x, features=True)`` returns the last hidden activation
    ``[B, hidden[-1]]`` (the flattened input when ``hidden=()``).

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> model = MLP((8, 8, 1), 10, hidden=(32,), rngs=nnx.Rngs(0))
        >>> model(jnp.ones((4, 8, 8, 1))).shape, model(jnp.ones((4, 8, 8, 1)), features=True).shape
        ((4, 10), (4, 32))
    """

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, *, hidden: Sequence[int] = (256, 128), rngs: nnx.Rngs
    ):
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.hidden = tuple(int(h) for h in hidden)
        width = math.prod(self.input_shape)
        for i, h in enumerate(self.hidden):
            setattr(self, f"dense{i}", nnx.Linear(width, h, kernel_init=_init, rngs=rngs))
            width = h
        self.head = nnx.Linear(width, self.num_classes, kernel_init=_init, rngs=rngs)

    def __call__(self, x, *, train: bool = False, features: bool = False) -> jax.Array:
        del train  # no batch norm or dropout
        x, single = prepare_input(x, self.input_shape, "mlp")
        h = x.reshape(x.shape[0], -1)
        for i in range(len(self.hidden)):
            h = nnx.relu(getattr(self, f"dense{i}")(h))
        out = h if features else self.head(h)
        return out[0] if single else out
