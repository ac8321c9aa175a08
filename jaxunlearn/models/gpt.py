"""A decoder-only transformer (GPT) in Flax NNX, through the same adapter as the image models.

Pre-LayerNorm blocks ``h ← h + Attn(LN(h)); h ← h + MLP(LN(h))`` with causal multi-head self-attention,
learned absolute positions or rotary ones (RoPE), a GELU MLP, a final LayerNorm and tied embeddings
(``logits = LN(h) · Eᵀ``, ``E`` the token embedding), optional dropout. Sizes go from a few thousand
parameters up; the default (``dim=64, depth=2``) has about 0.1 M besides the embeddings.

``model(x, train=False, features=False)``: ``x`` int tokens ``[B, T]`` (or ``[T]``), ``T ≤ context``;
returns logits ``[B, T, vocab]``, or with ``features=True`` the hidden states of every layer,
``[B, depth + 1, T, dim]`` (index 0: embeddings plus positions, index ``ℓ``: the residual stream after block
``ℓ``), which RMU reads at its chosen layer (:func:`layer_hidden`).

Build it through the registry as ``models.build("gpt", num_classes=vocab, input_shape=(context,), ...)``
and split it with ``models.split_model`` like any model. :func:`fsdp_shardings` places each large weight's
largest divisible axis over the mesh's ``model`` axis (FSDP), the same rule ``engine.run(...,
param_sharding="fsdp")`` applies.

Example:
    >>> import jax.numpy as jnp
    >>> from jaxunlearn import models
    >>> apply_fn, params, state = models.split_model(models.build("gpt", num_classes=11, input_shape=(8,)))
    >>> logits, _ = apply_fn(params, state, jnp.zeros((2, 8), jnp.int32))
    >>> logits.shape
    (2, 8, 11)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn import distributed

__all__ = ["GPT", "Block", "rotary", "layer_hidden", "fsdp_shardings", "POSITIONS"]

POSITIONS = ("learned", "rotary")
_init = nnx.initializers.normal(0.02)


def rotary(x: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding of ``x`` ``[B, T, H, d]`` (d even): each pair ``(x_{2i}, x_{2i+1})`` at
    position t is rotated by the angle ``t · base^(−2i/d)``.

    Example:
        >>> x = jnp.ones((1, 3, 1, 4))
        >>> y = rotary(x)
        >>> bool(jnp.allclose(y[:, 0], x[:, 0])), bool(jnp.allclose(jnp.linalg.norm(y, axis=-1), 2.0))
        (True, True)
    """
    t, d = x.shape[1], x.shape[-1]
    freq = base ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    ang = jnp.arange(t, dtype=jnp.float32)[:, None] * freq[None, :]  # [T, d/2]
    cos, sin = jnp.cos(ang)[None, :, None, :], jnp.sin(ang)[None, :, None, :]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


class Block(nnx.Module):
    """One pre-LN transformer block: ``h + Attn(LN₁(h))`` then ``h + MLP(LN₂(h))``, with causal attention
    ``softmax(q kᵀ / √d + causal) v`` over ``heads`` heads and a GELU MLP of width ``mlp_ratio · dim``.

    Example:
        >>> blk = Block(16, 2, rngs=nnx.Rngs(0))
        >>> blk(jnp.ones((1, 5, 16))).shape
        (1, 5, 16)
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        mlp_ratio: int = 4,
        positions: str = "learned",
        dropout: float = 0.0,
        rngs: nnx.Rngs,
    ):
        if dim % heads:
            raise ValueError(f"the model width dim={dim} must be divisible by heads={heads}.")
        self.heads, self.positions = int(heads), positions
        self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
        self.qkv = nnx.Linear(dim, 3 * dim, kernel_init=_init, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, kernel_init=_init, rngs=rngs)
        self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
        self.fc = nnx.Linear(dim, mlp_ratio * dim, kernel_init=_init, rngs=rngs)
        self.out = nnx.Linear(mlp_ratio * dim, dim, kernel_init=_init, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None

    def _dropout(self, h, train: bool):
        return h if self.drop is None else self.drop(h, deterministic=not train)

    def __call__(self, h: jax.Array, *, train: bool = False) -> jax.Array:
        b, t, d = h.shape
        q, k, v = jnp.split(self.qkv(self.ln1(h)), 3, axis=-1)
        q, k, v = (a.reshape(b, t, self.heads, d // self.heads) for a in (q, k, v))
        if self.positions == "rotary":
            q, k = rotary(q), rotary(k)
        att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(d // self.heads))
        causal = jnp.tril(jnp.ones((t, t), bool))
        att = jax.nn.softmax(jnp.where(causal, att, jnp.finfo(att.dtype).min), axis=-1)
        y = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, t, d)
        h = h + self._dropout(self.proj(y), train)
        return h + self._dropout(self.out(jax.nn.gelu(self.fc(self.ln2(h)))), train)


class GPT(nnx.Module):
    """Decoder-only transformer: ``h₀ = E[x] (+ P[:T])``, ``h_ℓ = Block_ℓ(h_{ℓ−1})``, ``logits = LN(h_L) Eᵀ``.

    Args:
        vocab_size: number of tokens (the registry's ``num_classes``).
        context: the longest sequence it takes (the registry's ``input_shape = (context,)``); a longer input
            raises ``ValueError``.
        dim, depth, heads, mlp_ratio: width, number of blocks, attention heads, MLP width factor.
        positions: ``"learned"`` (an absolute position table ``P``) or ``"rotary"`` (RoPE on q and k).
        dropout: dropout rate after attention and MLP (train mode only; 0 = none).

    ``model(x, features=True)`` returns every layer's hidden states ``[B, depth + 1, T, dim]``.

    Example:
        >>> m = GPT(20, context=6, dim=16, depth=2, heads=2, positions="rotary", rngs=nnx.Rngs(0))
        >>> m(jnp.zeros((3, 6), jnp.int32)).shape, m(jnp.zeros((3, 4), jnp.int32), features=True).shape
        ((3, 6, 20), (3, 3, 4, 16))
        >>> m(jnp.zeros((1, 7), jnp.int32))
        Traceback (most recent call last):
        ValueError: the sequence has 7 tokens, longer than the model's context of 6; shorten it or build ...
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        context: int = 64,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: int = 4,
        positions: str = "learned",
        dropout: float = 0.0,
        rngs: nnx.Rngs,
    ):
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}.")
        for name, v in (("vocab_size", vocab_size), ("context", context), ("dim", dim), ("depth", depth),
                        ("heads", heads), ("mlp_ratio", mlp_ratio)):  # fmt: skip
            if int(v) < 1:
                raise ValueError(f"{name} must be a positive integer, got {v}.")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        self.vocab_size, self.context, self.dim, self.depth = int(vocab_size), int(context), int(dim), int(depth)
        self.positions = positions
        self.input_shape = (self.context,)
        self.num_classes = self.vocab_size
        self.embed = nnx.Embed(self.vocab_size, self.dim, embedding_init=_init, rngs=rngs)
        self.pos = nnx.Param(_init(rngs.params(), (self.context, self.dim))) if positions == "learned" else None
        for i in range(self.depth):  # attributes block0, block1, ...: the params pytree has string keys only
            setattr(self, f"block{i}", Block(self.dim, heads, mlp_ratio=mlp_ratio, positions=positions,
                                             dropout=dropout, rngs=rngs))  # fmt: skip
        self.ln_f = nnx.LayerNorm(self.dim, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False, features: bool = False) -> jax.Array:
        x = jnp.asarray(x)
        single = x.ndim == 1
        x = x[None] if single else x
        if x.ndim != 2:
            raise ValueError(f"GPT takes int tokens [B, T] or [T], got shape {x.shape}.")
        t = x.shape[1]
        if t > self.context:
            raise ValueError(
                f"the sequence has {t} tokens, longer than the model's context of {self.context}; shorten it or "
                f"build the model with a larger context (input_shape=({t},))."
            )
        h = self.embed(x.astype(jnp.int32))
        if self.pos is not None:
            h = h + self.pos[...][:t][None]
        hidden = [h]
        for i in range(self.depth):
            h = getattr(self, f"block{i}")(h, train=train)
            hidden.append(h)
        out = jnp.stack(hidden, axis=1) if features else self.embed.attend(self.ln_f(h))
        return out[0] if single else out


def layer_hidden(features: jax.Array, layer) -> jax.Array:
    """The hidden states ``h_ℓ`` ``[B, T, dim]`` of layer ``layer`` from ``features`` ``[B, depth + 1, T, dim]``
    (``model(x, features=True)``); ``layer`` may be a traced int (``jnp.take``), so one compiled step serves
    every layer.

    Example:
        >>> f = jnp.arange(2 * 3 * 1 * 1.0).reshape(2, 3, 1, 1)
        >>> layer_hidden(f, 2)[:, 0, 0].tolist()
        [2.0, 5.0]
    """
    return jnp.take(features, jnp.asarray(layer, jnp.int32), axis=1)


def fsdp_shardings(params, mesh, *, min_size: int = 1024):
    """FSDP shardings of a GPT's parameters (or optimizer state): each leaf with ``>= min_size`` entries is
    split along its largest axis that the mesh's ``model`` axis size divides (the embedding table along the
    vocabulary or the width, attention/MLP kernels along their widest axis); smaller leaves (LayerNorm
    scales, biases) are replicated. The rule of :func:`jaxunlearn.distributed.fsdp_shardings` with a
    threshold suited to small transformers.

    Use ``jax.device_put(params, fsdp_shardings(params, mesh))``; with ``engine.run(...,
    param_sharding="fsdp")`` the engine applies the library's rule itself.

    Example:
        >>> import numpy as np
        >>> mesh = distributed.make_mesh(1, ("data", "model"), model=1)
        >>> tuple(fsdp_shardings({"w": np.zeros((64, 256))}, mesh)["w"].spec)  # model=2: (None, 'model')
        ()
    """
    return distributed.fsdp_shardings(params, mesh, min_size=min_size)
