"""The two-layer CNN of the theory (signal learning vs noise memorization) and its coefficients.

Model (see PAPERS.md, "Theory model"): an input is ``P`` patches ``x^(p) in R^d``; for each class
``j in {-1, +1}`` there are ``m`` filters ``w_{j,r}`` and

    F_j(W, x) = (1/m) Σ_r Σ_p σ(<w_{j,r}, x^(p)>),      f(W, x) = F_{+1} - F_{-1}.

The second layer (the fixed ``±1/m`` averaging) is not a parameter. The module returns the two logits
``[F_-1, F_+1]`` so that softmax cross-entropy on them equals the logistic loss ``log(1 + exp(-y f))``
with label 0 <-> y = -1 and label 1 <-> y = +1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn.models.layers import prepare_input

ACTIVATIONS = ("relu", "poly")
#: Class sign of each row of the first-layer weights ``w`` (row 0 is j = -1, row 1 is j = +1).
CLASS_SIGNS = (-1, +1)


class TheoryCNN(nnx.Module):
    """Two-layer CNN ``F_j(x) = (1/m) Σ_r Σ_p σ(<w_{j,r}, x^(p)>)`` with a fixed second layer.

    Args:
        patches: number of patches ``P``.
        dim: patch dimension ``d``.
        filters: filters per class ``m``.
        activation: ``"relu"`` (σ(z) = max(z, 0)) or ``"poly"`` (σ(z) = max(z, 0)^q).
        q: exponent of the ``"poly"`` activation.
        sigma0: standard deviation of the Gaussian initialization of ``w``.
        rngs: ``nnx.Rngs`` for the initialization.

    Attributes:
        w: ``nnx.Param`` of shape ``[2, m, d]``; ``w[0]`` are the filters of class ``j = -1`` and
            ``w[1]`` those of ``j = +1`` (see ``CLASS_SIGNS``). This is the only parameter.

    Calling ``model(x, train=False, features=False)`` with ``x`` of shape ``[B, P, d]`` returns the
    logits ``[B, 2] = [F_-1, F_+1]``, or with ``features=True`` the input of the fixed second layer,
    ``h[b, j*m + r] = Σ_p σ(<w_{j,r}, x_b^(p)>)`` of shape ``[B, 2m]``. ``train`` has no effect.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> model = TheoryCNN(patches=2, dim=16, filters=5, rngs=nnx.Rngs(0))
        >>> model(jnp.ones((3, 2, 16))).shape
        (3, 2)
    """

    def __init__(
        self,
        patches: int,
        dim: int,
        *,
        filters: int = 10,
        activation: str = "poly",
        q: float = 3,
        sigma0: float = 0.01,
        rngs: nnx.Rngs,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if int(filters) < 1:
            raise ValueError(f"filters (m) must be >= 1, got {filters}")
        if activation == "poly" and not q >= 1:
            raise ValueError(f"q must be >= 1 for the poly activation, got {q}")
        self.patches = int(patches)
        self.dim = int(dim)
        self.filters = int(filters)
        self.activation = activation
        self.q = q
        self.num_classes = 2
        self.input_shape = (self.patches, self.dim)
        self.w = nnx.Param(sigma0 * jax.random.normal(rngs.params(), (2, self.filters, self.dim), jnp.float32))

    def sigma(self, z: jax.Array) -> jax.Array:
        """The activation σ: ``max(z, 0)`` (relu) or ``max(z, 0)**q`` (poly).

        Example:
            >>> import jax.numpy as jnp
            >>> from flax import nnx
            >>> TheoryCNN(2, 4, activation="poly", q=3, rngs=nnx.Rngs(0)).sigma(jnp.array([-1.0, 2.0])).tolist()
            [0.0, 8.0]
        """
        r = jnp.maximum(z, 0.0)
        return r if self.activation == "relu" else r**self.q

    def __call__(self, x, *, train: bool = False, features: bool = False) -> jax.Array:
        del train  # no batch norm or dropout
        x, single = prepare_input(x, self.input_shape, "theory_cnn")
        w = self.w[...]
        z = jnp.einsum("bpd,jrd->bjrp", x, w.astype(x.dtype))
        h = self.sigma(z).sum(axis=-1)  # [B, 2, m]
        out = h.reshape(h.shape[0], -1) if features else h.mean(axis=-1)
        return out[0] if single else out


def theory_weights(params) -> jax.Array:
    """The first-layer weights ``W`` of shape ``[2, m, d]`` (row 0: class -1, row 1: class +1).

    ``params`` may be the params pytree from ``split_model`` (a dict with key ``"w"``), an ``nnx.State``,
    a ``TheoryCNN`` module, or the ``[2, m, d]`` array itself.

    Example:
        >>> from flax import nnx
        >>> model = TheoryCNN(2, 8, filters=3, rngs=nnx.Rngs(0))
        >>> theory_weights(model).shape
        (2, 3, 8)
    """
    if isinstance(params, TheoryCNN):
        return params.w[...]
    if hasattr(params, "keys") and "w" in params:
        w = params["w"]
        w = w[...] if isinstance(w, nnx.Variable) else w
    else:
        w = params
    w = jnp.asarray(w)
    if w.ndim != 3 or w.shape[0] != 2:
        raise ValueError(
            "expected theory_cnn params (a dict with key 'w') or weights of shape [2, m, d], "
            f"got an array of shape {tuple(w.shape)}"
        )
    return w


def theory_coefficients(params, signal, noise) -> dict[str, jax.Array]:
    """Signal learning and noise memorization coefficients of every filter.

    ``signal[j, r] = <w_{j,r}, φ>`` (shape ``[2, m]``) and ``noise[j, r, i] = <w_{j,r}, ξ_i>``
    (shape ``[2, m, n]``), with row ``j = 0`` for class -1 and ``j = 1`` for class +1.

    Args:
        params: theory_cnn params (see ``theory_weights``).
        signal: the signal vector ``φ``, shape ``[d]``.
        noise: the noise patches ``ξ_i``, shape ``[n, d]`` (a single ``[d]`` vector is treated as n = 1).

    Pure jnp, so it can be jitted or vmapped over a stack of params.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> model = TheoryCNN(2, 8, filters=3, rngs=nnx.Rngs(0))
        >>> c = theory_coefficients(model, jnp.ones(8), jnp.ones((5, 8)))
        >>> c["signal"].shape, c["noise"].shape
        ((2, 3), (2, 3, 5))
    """
    w = theory_weights(params)
    d = w.shape[-1]
    signal = jnp.asarray(signal)
    noise = jnp.asarray(noise)
    if noise.ndim == 1:
        noise = noise[None]
    if signal.shape != (d,):
        raise ValueError(f"signal must have shape [d] = [{d}], got {tuple(signal.shape)}")
    if noise.ndim != 2 or noise.shape[1] != d:
        raise ValueError(f"noise must have shape [n, d] with d = {d}, got {tuple(noise.shape)}")
    return {
        "signal": jnp.einsum("jrd,d->jr", w, signal),
        "noise": jnp.einsum("jrd,nd->jrn", w, noise),
    }
