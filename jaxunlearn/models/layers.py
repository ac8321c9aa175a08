"""Small building blocks shared by the models: pooling and input checks.

Only jax/numpy here; the modules themselves live in the per-model files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2×2 max pooling with stride 2 on an NHWC batch, written as a reshape.

    ``out[b, i, j, c] = max(x[b, 2i:2i+2, 2j:2j+2, c])``. An odd height or width is cropped first (the
    last row/column is dropped), exactly like ``VALID`` padding in ``flax.linen.max_pool``.

    Why a reshape: on XLA:CPU the gradient of ``lax.reduce_window`` (used by ``nnx.max_pool``) lowers to
    ``select_and_scatter``, which is many times slower than the gradient of a plain ``max`` reduction.
    The forward values are identical; the gradients are identical when each window has a unique maximum
    (on ties ``jnp.max`` splits the cotangent evenly between the tied entries instead of picking one).

    Example:
        >>> import jax.numpy as jnp
        >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
        >>> max_pool_2x2(x)[0, :, :, 0].tolist()
        [[5.0, 7.0], [13.0, 15.0]]
    """
    if x.ndim != 4:
        raise ValueError(f"max_pool_2x2 expects an NHWC array [B, H, W, C], got shape {tuple(x.shape)}")
    b, h, w, c = x.shape
    if h < 2 or w < 2:
        raise ValueError(f"max_pool_2x2 needs H, W >= 2, got H={h}, W={w}")
    h2, w2 = h // 2, w // 2
    x = x[:, : 2 * h2, : 2 * w2, :]
    return x.reshape(b, h2, 2, w2, 2, c).max(axis=(2, 4))


def as_float(x) -> jax.Array:
    """Return ``x`` as a JAX array, casting integer/bool inputs (e.g. uint8 images) to float32.

    Floating inputs keep their dtype (so bfloat16 inputs stay bfloat16).

    Example:
        >>> import numpy as np
        >>> as_float(np.zeros((2, 3), np.uint8)).dtype
        dtype('float32')
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


def prepare_input(x, expected: Sequence[int], model: str) -> tuple[jax.Array, bool]:
    """Validate ``x`` against the per-example shape ``expected`` and add a batch axis if it is missing.

    Accepts ``[B, *expected]`` or a single example ``[*expected]`` (handy under ``jax.vmap`` over
    examples). Returns ``(x_batched, was_single)``; integer inputs are cast to float32 (`as_float`).
    Shapes are static, so the check costs nothing under ``jax.jit``.

    Example:
        >>> import jax.numpy as jnp
        >>> x, single = prepare_input(jnp.zeros((8, 8, 1)), (8, 8, 1), "cnn")
        >>> x.shape, single
        ((1, 8, 8, 1), True)
    """
    x = as_float(x)
    expected = tuple(int(s) for s in expected)
    if tuple(x.shape) == expected:
        return x[None], True
    if x.ndim == len(expected) + 1 and tuple(x.shape[1:]) == expected:
        return x, False
    raise ValueError(
        f"{model}: expected input of shape [B, {', '.join(map(str, expected))}] (or one example "
        f"[{', '.join(map(str, expected))}]), got {tuple(x.shape)}"
    )


def normal_init(scale: float = 1.0, mode: str = "fan_in") -> Callable:
    """Gaussian initializer ``w ~ N(0, scale / fan)`` (LeCun normal for ``scale=1``, He normal for ``scale=2``).

    ``fan_in = receptive_field · shape[-2]``, ``fan_out = receptive_field · shape[-1]`` with
    ``receptive_field = prod(shape[:-2])`` (Flax's ``HWIO`` conv and ``[in, out]`` dense layouts).

    Draws ``2^k >= size`` normals and reshapes the first ``size``: every kernel whose size rounds to the
    same power of two reuses one compiled sampler, so eagerly building a model compiles a handful of
    programs instead of one per distinct kernel shape (several times faster on CPU for ResNet-18). Pure
    and traceable, so it also works inside ``jax.jit`` / ``jax.vmap`` over keys.

    Example:
        >>> import jax
        >>> w = normal_init(2.0, "fan_out")(jax.random.key(0), (3, 3, 16, 32))
        >>> w.shape
        (3, 3, 16, 32)
    """
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")

    def init(key, shape, dtype=jnp.float32):
        shape = tuple(int(s) for s in shape)
        receptive = math.prod(shape[:-2])
        fan = receptive * (shape[-2] if mode == "fan_in" else shape[-1]) if len(shape) >= 2 else shape[0]
        size = math.prod(shape)
        n = 1 << max(0, (size - 1).bit_length())
        z = jax.random.normal(key, (n,), dtype)[:size].reshape(shape)
        return z * jnp.asarray(math.sqrt(scale / max(1, fan)), dtype)

    return init


_NHWC = ("NHWC", "HWIO", "NHWC")


def im2col_conv(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
    **unused,
) -> jax.Array:
    """A 2-D convolution written as patches + one matmul: a drop-in ``conv_general_dilated`` for ``nnx.Conv``.

    ``out[n, i, j, o] = Σ_{a, b, c} pad(x)[n, s_h·i + a, s_w·j + b, c] · k[a, b, c, o]``, computed as
    ``P @ K`` with ``P[(n, i, j), (a, b, c)]`` the ``kh·kw`` shifted (strided) slices of the padded input
    and ``K`` the kernel reshaped to ``[kh·kw·C_in, C_out]``. Same values as ``lax.conv_general_dilated``
    (up to float summation order), same parameters, and its derivatives come from autodiff of slices and
    one ``dot_general``.

    Why: under ``jax.vmap`` over models (``engine.train_many(model_mode="vmap")``: per-model kernels AND
    per-model inputs) XLA turns a convolution into a grouped convolution, which is slow on XLA:CPU; here
    the model axis becomes the batch axis of a batched matmul. Measured on 2 CPU cores (digits CNN, batch 64, K = 8
    models): vmapped gradient 15 ms vs 42 ms with XLA's convolution. For one large model XLA's own
    convolution is faster (28×28 CNN at batch 128: forward 7 ms vs 29 ms), so it stays the default.
    Supports NHWC/HWIO, any strides and padding, no dilation, no feature groups.

    Example:
        >>> import jax
        >>> from flax import nnx
        >>> conv = nnx.Conv(1, 4, (3, 3), conv_general_dilated=im2col_conv, rngs=nnx.Rngs(0))
        >>> conv(jax.numpy.ones((2, 8, 8, 1))).shape
        (2, 8, 8, 4)
    """
    del unused, precision
    if lhs.ndim != 4 or rhs.ndim != 4:
        raise ValueError(f"im2col_conv supports 2-D convolutions (NHWC, HWIO), got {lhs.shape} and {rhs.shape}")
    if dimension_numbers is not None and lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC) != (
        lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    ):
        raise ValueError(f"im2col_conv expects NHWC inputs and HWIO kernels, got {dimension_numbers}")
    if any(d != 1 for d in (lhs_dilation or (1, 1))) or any(d != 1 for d in (rhs_dilation or (1, 1))):
        raise ValueError("im2col_conv does not support dilation; use lax.conv_general_dilated")
    if feature_group_count != 1:
        raise ValueError("im2col_conv does not support feature groups; use lax.conv_general_dilated")
    n, h, w, c = lhs.shape
    kh, kw, c_in, c_out = rhs.shape
    if c_in != c:
        raise ValueError(f"im2col_conv: input has {c} channels, kernel expects {c_in}")
    sh, sw = (int(v) for v in window_strides)
    pads = lax.padtype_to_pads((h, w), (kh, kw), (sh, sw), padding) if isinstance(padding, str) else padding
    (pt, pb), (pl, pr) = ((int(a), int(b)) for a, b in pads)
    x = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh, ow = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    cols = [
        x[:, a : a + sh * (oh - 1) + 1 : sh, b : b + sw * (ow - 1) + 1 : sw, :] for a in range(kh) for b in range(kw)
    ]
    patches = jnp.stack(cols, axis=3).reshape(n, oh, ow, kh * kw * c)
    return jnp.einsum("nhwp,po->nhwo", patches, rhs.reshape(kh * kw * c, c_out))
