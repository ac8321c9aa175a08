"""Model registry: ``build(name, *, num_classes, input_shape, seed=0, **kwargs)`` and ``MODELS``."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence

from flax import nnx

from jaxunlearn.models.cnn import CNN
from jaxunlearn.models.mlp import MLP
from jaxunlearn.models.resnet import ResNet18
from jaxunlearn.models.theory import TheoryCNN


def _theory_cnn(
    *,
    num_classes: int,
    input_shape: Sequence[int],
    rngs: nnx.Rngs,
    filters: int = 10,
    activation: str = "poly",
    q: float = 3,
    sigma0: float = 0.01,
) -> TheoryCNN:
    """Theory two-layer CNN; ``input_shape = (P, d)``, ``num_classes = 2``."""
    if num_classes != 2:
        raise ValueError(
            f"theory_cnn is a binary model (logits [F_-1, F_+1]): num_classes must be 2, got {num_classes}"
        )
    if len(input_shape) != 2:
        raise ValueError(
            f"theory_cnn expects input_shape = (P, d) (P patches of dimension d), got {tuple(input_shape)}"
        )
    p, d = input_shape
    return TheoryCNN(p, d, filters=filters, activation=activation, q=q, sigma0=sigma0, rngs=rngs)


def _mlp(*, num_classes: int, input_shape: Sequence[int], rngs: nnx.Rngs, hidden: Sequence[int] = (256, 128)) -> MLP:
    """MLP on the flattened input."""
    return MLP(input_shape, num_classes, hidden=hidden, rngs=rngs)


def _image_shape(name: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        hint = f" (add a channel axis: {(*input_shape, 1)})" if len(input_shape) == 2 else ""
        raise ValueError(f"{name} expects NHWC images, input_shape = (H, W, C); got {tuple(input_shape)}{hint}")
    return tuple(input_shape)


def _cnn(
    *,
    num_classes: int,
    input_shape: Sequence[int],
    rngs: nnx.Rngs,
    channels: Sequence[int] = (32, 64),
    dense: int = 128,
    pool_min_size: int = 8,
    conv: str = "xla",
) -> CNN:
    """Small CNN (conv32-relu-pool-conv64-relu-pool-dense128-relu-dense)."""
    shape = _image_shape("cnn", input_shape)
    return CNN(shape, num_classes, channels=channels, dense=dense, pool_min_size=pool_min_size, conv=conv, rngs=rngs)


def _resnet18(*, num_classes: int, input_shape: Sequence[int], rngs: nnx.Rngs, width: float = 1.0) -> ResNet18:
    """CIFAR-style ResNet-18 with a channel multiplier ``width``."""
    shape = _image_shape("resnet18", input_shape)
    return ResNet18(shape, num_classes, width=width, rngs=rngs)


#: name -> constructor ``f(*, num_classes, input_shape, rngs, **kwargs) -> nnx.Module``. Register a custom
#: model by adding an entry; its ``__call__`` must accept ``(x, *, train=False, features=False)``.
MODELS: dict[str, Callable[..., nnx.Module]] = {
    "theory_cnn": _theory_cnn,
    "mlp": _mlp,
    "cnn": _cnn,
    "resnet18": _resnet18,
}


def build(name: str, *, num_classes: int, input_shape: Sequence[int], seed=0, **kwargs) -> nnx.Module:
    """Build the model ``name`` for examples of shape ``input_shape`` and ``num_classes`` outputs.

    Models (``MODELS``) and their keyword arguments:

    * ``theory_cnn`` — ``input_shape=(P, d)``, ``num_classes=2``; ``filters=10`` (m per class),
      ``activation="poly"`` (or ``"relu"``), ``q=3``, ``sigma0=0.01``. Logits ``[F_-1, F_+1]``.
    * ``mlp`` — any ``input_shape``; ``hidden=(256, 128)``.
    * ``cnn`` — ``input_shape=(H, W, C)``; ``channels=(32, 64)``, ``dense=128``, ``pool_min_size=8``,
      ``conv="xla"`` (or ``"im2col"``: same parameters, fast under ``vmap`` over models).
    * ``resnet18`` — ``input_shape=(H, W, C)``; ``width=1.0`` (channel multiplier).

    ``seed`` (int or PRNG key) seeds ``nnx.Rngs`` for the initialization. Every model is called as
    ``model(x, train=False, features=False)``; use `split_model` for the functional form.

    Raises:
        ValueError: unknown name (the message lists the known names and the closest match), an
            ``input_shape`` the model cannot take, or a keyword argument the model does not accept.

    Example:
        >>> from jaxunlearn import models
        >>> model = models.build("cnn", num_classes=10, input_shape=(8, 8, 1), seed=0)
        >>> type(model).__name__
        'CNN'
    """
    if name not in MODELS:
        close = difflib.get_close_matches(str(name), list(MODELS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}.{hint}")
    try:
        input_shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise ValueError(f"input_shape must be a sequence of ints (one example's shape), got {input_shape!r}") from None
    if not input_shape or any(s < 1 for s in input_shape):
        raise ValueError(f"input_shape must be a non-empty shape of positive ints, got {input_shape}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    ctor = MODELS[name]
    sig = inspect.signature(ctor)
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    accepted = [k for k in sig.parameters if k not in ("num_classes", "input_shape", "rngs")]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown and not has_var_kw:
        raise ValueError(
            f"model {name!r} does not accept {', '.join(map(repr, unknown))}; "
            f"accepted keyword arguments: {', '.join(accepted) or '(none)'}"
        )
    return ctor(num_classes=int(num_classes), input_shape=input_shape, rngs=nnx.Rngs(seed), **kwargs)


def _gpt(
    *,
    num_classes: int,
    input_shape: Sequence[int],
    rngs: nnx.Rngs,
    dim: int = 64,
    depth: int = 2,
    heads: int = 4,
    mlp_ratio: int = 4,
    positions: str = "learned",
    dropout: float = 0.0,
):
    """Decoder-only transformer (:class:`jaxunlearn.models.gpt.GPT`): ``num_classes`` = vocabulary size,
    ``input_shape = (context,)``; ``dim=64``, ``depth=2``, ``heads=4``, ``mlp_ratio=4``, ``positions="learned"``
    (or ``"rotary"``), ``dropout=0.0``.

    Example:
        >>> type(build("gpt", num_classes=12, input_shape=(8,), dim=16, heads=2)).__name__
        'GPT'
    """
    from jaxunlearn.models.gpt import GPT

    if len(input_shape) != 1:
        raise ValueError(f"gpt expects input_shape = (context,) (the longest token sequence), got {tuple(input_shape)}")
    return GPT(num_classes, context=input_shape[0], dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
               positions=positions, dropout=dropout, rngs=rngs)  # fmt: skip


MODELS["gpt"] = _gpt
