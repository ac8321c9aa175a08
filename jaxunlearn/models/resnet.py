"""CIFAR-style ResNet-18 (3×3 stem, no initial max-pool, BasicBlocks [2, 2, 2, 2], batch norm)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn.models.layers import normal_init, prepare_input

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
_conv_init = normal_init(2.0, "fan_out")  # He init, as torchvision
_dense_init = normal_init(1.0, "fan_in")


def _bn(c: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(c, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)


def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        cin,
        cout,
        kernel_size=(k, k),
        strides=(stride, stride),
        padding="SAME" if k > 1 else "VALID",
        use_bias=False,
        kernel_init=_conv_init,
        rngs=rngs,
    )


class BasicBlock(nnx.Module):
    """``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))``; the shortcut is ``bn(conv1x1)`` when the
    stride or channel count changes, the identity otherwise.

    Batch norm uses batch statistics and updates its running averages (momentum 0.9:
    ``ra <- 0.9·ra + 0.1·batch``) when ``train=True``; it uses the running averages otherwise.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> BasicBlock(4, 8, stride=2, rngs=nnx.Rngs(0))(jnp.ones((1, 8, 8, 4))).shape
        (1, 4, 4, 8)
    """

    def __init__(self, cin: int, cout: int, *, stride: int = 1, rngs: nnx.Rngs):
        self.conv1 = _conv(cin, cout, 3, stride, rngs)
        self.bn1 = _bn(cout, rngs)
        self.conv2 = _conv(cout, cout, 3, 1, rngs)
        self.bn2 = _bn(cout, rngs)
        self.has_proj = stride != 1 or cin != cout
        if self.has_proj:
            self.proj_conv = _conv(cin, cout, 1, stride, rngs)
            self.proj_bn = _bn(cout, rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        ura = not train
        y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
        y = self.bn2(self.conv2(y), use_running_average=ura)
        sc = self.proj_bn(self.proj_conv(x), use_running_average=ura) if self.has_proj else x
        return nnx.relu(y + sc)


class ResNet18(nnx.Module):
    """CIFAR-style ResNet-18: ``conv3x3(w_0) - bn - relu``, four stages of two ``BasicBlock`` with widths
    ``w_s = round(width · (64, 128, 256, 512)[s])`` and strides ``(1, 2, 2, 2)``, global average pooling
    (a mean over H, W) and a dense classifier.

    Args:
        input_shape: ``(H, W, C)`` of one example (NHWC). Any size works (SAME padding); 32×32 is the
            intended one, 8×8 and 28×28 also run.
        num_classes: number of output logits.
        width: channel multiplier (1.0 = the standard 11M-parameter network; use e.g. 0.125 in tests).
        rngs: ``nnx.Rngs`` for the initialization.

    Blocks are attributes ``stage{s}_block{b}`` (string keys in the params pytree). Call as
    ``model(x, train=False, features=False)``; ``features=True`` returns the pooled ``[B, w_3]`` vector.
    Batch-norm statistics are ``nnx.BatchStat`` variables (the ``model_state`` of ``split_model``).

    Example (shapes only, with ``nnx.eval_shape``: nothing is computed):
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from jaxunlearn.models import num_params
        >>> model = nnx.eval_shape(lambda: ResNet18((32, 32, 3), 10, rngs=nnx.Rngs(0)))
        >>> num_params(model)
        11173962
        >>> logits, feats = nnx.eval_shape(lambda m, x: (m(x), m(x, features=True)), model, jnp.ones((2, 32, 32, 3)))
        >>> logits.shape, feats.shape
        ((2, 10), (2, 512))
    """

    STAGES = (2, 2, 2, 2)
    WIDTHS = (64, 128, 256, 512)

    def __init__(self, input_shape: Sequence[int], num_classes: int, *, width: float = 1.0, rngs: nnx.Rngs):
        self.input_shape = tuple(int(s) for s in input_shape)
        if len(self.input_shape) != 3:
            raise ValueError(f"resnet18 expects images of shape (H, W, C), got input_shape={self.input_shape}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        self.num_classes = int(num_classes)
        self.widths = tuple(max(1, int(round(width * c))) for c in self.WIDTHS)
        cin = self.input_shape[-1]
        self.stem_conv = _conv(cin, self.widths[0], 3, 1, rngs)
        self.stem_bn = _bn(self.widths[0], rngs)
        cin = self.widths[0]
        for s, (n_blocks, cout) in enumerate(zip(self.STAGES, self.widths)):
            for b in range(n_blocks):
                stride = 2 if (s > 0 and b == 0) else 1
                setattr(self, f"stage{s}_block{b}", BasicBlock(cin, cout, stride=stride, rngs=rngs))
                cin = cout
        self.head = nnx.Linear(cin, self.num_classes, kernel_init=_dense_init, rngs=rngs)

    def __call__(self, x, *, train: bool = False, features: bool = False) -> jax.Array:
        x, single = prepare_input(x, self.input_shape, "resnet18")
        x = nnx.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train))
        for s, n_blocks in enumerate(self.STAGES):
            for b in range(n_blocks):
                x = getattr(self, f"stage{s}_block{b}")(x, train=train)
        h = jnp.mean(x, axis=(1, 2))
        out = h if features else self.head(h)
        return out[0] if single else out
