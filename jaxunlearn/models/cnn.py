"""Small CNN for 8×8 (digits), 28×28 (Fashion-MNIST) and 32×32 (CIFAR) images."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from jaxunlearn.models.layers import im2col_conv, max_pool_2x2, normal_init, prepare_input

_init = normal_init(1.0, "fan_in")  # LeCun normal
CONV_IMPLS = {"xla": jax.lax.conv_general_dilated, "im2col": im2col_conv}


def _pool_plan(height: int, width: int, n_convs: int, min_size: int) -> tuple[bool, ...]:
    """Pool after conv ``i`` iff the current min(H, W) is >= ``min_size``; returns the flags."""
    plan = []
    for _ in range(n_convs):
        do = min(height, width) >= min_size
        plan.append(do)
        if do:
            height, width = height // 2, width // 2
    return tuple(plan)


class CNN(nnx.Module):
    """``conv3x3(c_1) - relu - [pool] - conv3x3(c_2) - relu - [pool] - dense(D) - relu - dense(K)``.

    Convolutions use ``SAME`` padding and stride 1; pooling is 2×2 max pooling (`max_pool_2x2`, a
    reshape, fast to differentiate on CPU). A pool follows a convolution only while the feature map is
    at least ``pool_min_size`` pixels on its smaller side, so 28×28 -> 14 -> 7 and 32×32 -> 16 -> 8 pool
    twice while 8×8 -> 4 pools once. Odd sizes are cropped by the pool.

    Args:
        input_shape: ``(H, W, C)`` of one example (NHWC, any number of channels).
        num_classes: number of output logits ``K``.
        channels: output channels of the convolutions (default ``(32, 64)``).
        dense: width ``D`` of the penultimate dense layer (default 128).
        pool_min_size: see above (default 8).
        conv: ``"xla"`` (default, ``lax.conv_general_dilated``) or ``"im2col"`` (`im2col_conv`: same
            parameters and values; much faster on CPU when many models are trained at once under
            ``jax.vmap``, e.g. ``engine.train_many(..., model_mode="vmap")``).
        rngs: ``nnx.Rngs`` for the initialization.

    ``model(x, features=True)`` returns the penultimate features ``[B, D]``.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> model = CNN((28, 28, 1), 10, rngs=nnx.Rngs(0))
        >>> model(jnp.ones((2, 28, 28, 1))).shape, model.pools
        ((2, 10), (True, True))
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        channels: Sequence[int] = (32, 64),
        dense: int = 128,
        pool_min_size: int = 8,
        conv: str = "xla",
        rngs: nnx.Rngs,
    ):
        self.input_shape = tuple(int(s) for s in input_shape)
        if len(self.input_shape) != 3:
            raise ValueError(f"cnn expects images of shape (H, W, C), got input_shape={self.input_shape}")
        self.num_classes = int(num_classes)
        self.channels = tuple(int(c) for c in channels)
        h, w, c = self.input_shape
        self.pools = _pool_plan(h, w, len(self.channels), int(pool_min_size))
        if conv not in CONV_IMPLS:
            raise ValueError(f"cnn: conv must be one of {sorted(CONV_IMPLS)}, got {conv!r}")
        self.conv_impl = conv
        for i, out_c in enumerate(self.channels):
            layer = nnx.Conv(
                c, out_c, (3, 3), padding="SAME", kernel_init=_init, conv_general_dilated=CONV_IMPLS[conv], rngs=rngs
            )
            setattr(self, f"conv{i}", layer)
            c = out_c
            if self.pools[i]:
                h, w = h // 2, w // 2
        self.dense = nnx.Linear(h * w * c, int(dense), kernel_init=_init, rngs=rngs)
        self.head = nnx.Linear(int(dense), self.num_classes, kernel_init=_init, rngs=rngs)

    def __call__(self, x, *, train: bool = False, features: bool = False) -> jax.Array:
        del train  # no batch norm or dropout
        x, single = prepare_input(x, self.input_shape, "cnn")
        for i in range(len(self.channels)):
            x = nnx.relu(getattr(self, f"conv{i}")(x))
            if self.pools[i]:
                x = max_pool_2x2(x)
        h = nnx.relu(self.dense(x.reshape(x.shape[0], -1)))
        out = h if features else self.head(h)
        return out[0] if single else out
