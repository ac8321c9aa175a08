"""PyTorch reference implementations used by ``benchmarks/run.py`` (CPU, float32, NCHW).

Architectures mirror ``jaxunlearn.models``:

* :class:`TorchCNN` — ``conv3x3(32)-relu-pool2-conv3x3(64)-relu-pool2-dense(128)-relu-dense(K)`` (the ``cnn``
  model; pooling follows the same ``pool_min_size`` rule);
* :class:`TorchResNet18` — CIFAR ResNet-18 (3×3 stem, no max-pool, BasicBlocks [2, 2, 2, 2], batch norm
  momentum 0.1 in PyTorch's convention = 0.9 in Flax's, ``eps=1e-5``).

Step functions follow the reference code of paper A (``sharp-unlearn`` / RUM, two-pass SAM):

* :func:`sgd_step` — one forward/backward, SGD(momentum 0.9, weight decay 5e-4) step;
* :func:`sam_step` — ``g = ∇L(w)``; ``e = ρ g / (‖g‖ + 1e-12)``; ``w += e``; second backward at ``w + e``;
  ``w -= e`` (restore); base optimizer step with ``g' = ∇L(w + e)``. As in the reference ``SAM`` class, the
  batch-norm running statistics of the second pass are NOT updated (momentum temporarily 0... the reference
  code disables them with ``disable_running_stats``; we do the same);
* :func:`hutchinson_diagonal` — ``(1/K) Σ_k z_k ⊙ H z_k`` with Rademacher ``z_k``: one ``create_graph``
  backward, then one double-backward per probe (``retain_graph=True``), the usual PyTorch formulation
  (PyHessian style).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class TorchCNN(nn.Module):
    """Same layers, shapes and pooling rule as ``jaxunlearn.models.CNN``."""

    def __init__(self, input_shape=(28, 28, 1), num_classes=10, channels=(32, 64), dense=128, pool_min_size=8):
        super().__init__()
        h, w, c = input_shape
        self.pools = []
        convs = []
        for out_c in channels:
            convs.append(nn.Conv2d(c, out_c, 3, padding=1))
            do = min(h, w) >= pool_min_size
            self.pools.append(do)
            if do:
                h, w = h // 2, w // 2
            c = out_c
        self.convs = nn.ModuleList(convs)
        self.dense = nn.Linear(h * w * c, dense)
        self.head = nn.Linear(dense, num_classes)

    def forward(self, x):
        for conv, pool in zip(self.convs, self.pools):
            x = F.relu(conv(x))
            if pool:
                x = F.max_pool2d(x, 2)
        return self.head(F.relu(self.dense(x.flatten(1))))


class _Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TorchResNet18(nn.Module):
    """CIFAR ResNet-18 as ``jaxunlearn.models.ResNet18`` (``width`` multiplies the channel counts)."""

    def __init__(self, in_channels=3, num_classes=10, width=1.0):
        super().__init__()
        widths = [max(1, int(round(width * c))) for c in (64, 128, 256, 512)]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        blocks, cin = [], widths[0]
        for s, cout in enumerate(widths):
            for b in range(2):
                blocks.append(_Block(cin, cout, 2 if (s > 0 and b == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.blocks(x)
        return self.head(x.mean((2, 3)))


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The papers' pretraining optimizer: SGD(lr 0.1, momentum 0.9, weight decay 5e-4)."""
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def _set_bn_momentum(model: nn.Module, enabled: bool, saved: dict) -> None:
    """The reference code's ``disable_running_stats`` / ``enable_running_stats``."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if enabled:
                m.momentum = saved.pop(m, m.momentum)
            else:
                saved[m] = m.momentum
                m.momentum = 0.0


def sgd_step(model, opt, x, y) -> float:
    """One plain step: forward, backward, optimizer step."""
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.detach()


def sam_step(model, opt, x, y, rho: float = 0.1) -> float:
    """Two-pass SAM step (perturb by ρ·g/‖g‖, second backward, restore, base step)."""
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    with torch.no_grad():
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        scale = rho / (norm + 1e-12)
        eps = [p.grad * scale for p in params]
        torch._foreach_add_(params, eps)
    saved: dict = {}
    _set_bn_momentum(model, False, saved)
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    _set_bn_momentum(model, True, saved)
    with torch.no_grad():
        torch._foreach_sub_(params, eps)
    opt.step()
    return loss.detach()


def gradient(model, x, y):
    """One gradient ``∇L`` (no optimizer): the unit of "gradient equivalents"."""
    params = [p for p in model.parameters()]
    loss = F.cross_entropy(model(x), y)
    return torch.autograd.grad(loss, params)


def hutchinson_diagonal(model, x, y, num_probes: int = 16, generator=None):
    """Hutchinson Hessian diagonal with ``num_probes`` Rademacher probes (double backward)."""
    params = [p for p in model.parameters()]
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    diag = [torch.zeros_like(p) for p in params]
    for _ in range(num_probes):
        zs = [torch.randint(0, 2, p.shape, generator=generator).to(p.dtype).mul_(2).sub_(1) for p in params]
        hz = torch.autograd.grad(grads, params, grad_outputs=zs, retain_graph=True)
        for d, z, h in zip(diag, zs, hz):
            d.add_(z * h)
    return [d / num_probes for d in diag]
