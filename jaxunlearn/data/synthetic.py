"""The signal-noise patch model of the theory (paper A, after Cao et al. 2022 / Chen et al. 2023).

An example has `P` patches of dimension `d`. One patch is the signal `y·φ` with `φ = ‖φ‖·e₁`; every other
patch is noise `ξ ~ N(0, σ_p²(I − φφᵀ/‖φ‖²))`, i.e. Gaussian with its first coordinate set to zero, so
`⟨ξ, φ⟩ = 0` exactly. The sign `y ∈ {−1, +1}` is stored as a class label `0 ↔ −1`, `1 ↔ +1` (the theory
CNN's logits are `[F₋₁, F₊₁]`). Label noise flips the observed label of a random subset of the examples;
the signal patch keeps the clean sign.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["SignalNoiseData", "make_signal_noise", "signs"]


@dataclasses.dataclass(frozen=True, eq=False)
class SignalNoiseData:
    """Output of `make_signal_noise`.

    Attributes:
      x: `[n, P, d]` float32 inputs.
      y: `[n]` int32 observed labels in {0, 1} (after label noise).
      y_clean: `[n]` int32 clean labels; the signal patch is `(2·y_clean − 1)·φ`.
      noise: `[n, P−1, d]` float32 noise patches ξ in patch order (the signal patch skipped); for `P = 2`
        `noise[:, 0]` is ξ_i. Noise memorization of a filter `w` is `noise @ w`.
      phi: `[d]` float32 signal vector `‖φ‖·e₁`.
      signal_patch: `[n]` int32 index of the signal patch of each example.
      flipped: `[n]` bool, True where label noise flipped the label (`y != y_clean`).

    Example:
      >>> data = make_signal_noise(4, 3, phi_norm=2.0, sigma_p=1.0, signal_position=0, seed=0)
      >>> data.phi.tolist(), data.x[:, 0].tolist() == (signs(data.y_clean)[:, None] * data.phi).tolist()
      ([2.0, 0.0, 0.0], True)
      >>> bool((data.x[:, 1] == data.noise[:, 0]).all())     # the other patch is the noise ξ
      True
    """

    x: np.ndarray
    y: np.ndarray
    y_clean: np.ndarray
    noise: np.ndarray
    phi: np.ndarray
    signal_patch: np.ndarray
    flipped: np.ndarray


def signs(labels: np.ndarray) -> np.ndarray:
    """Map class labels {0, 1} to the theory's signs {−1, +1} (int32).

    Example:
      >>> signs(np.array([0, 1, 1])).tolist()
      [-1, 1, 1]
    """
    return (2 * np.asarray(labels, np.int32) - 1).astype(np.int32)


def make_signal_noise(
    n: int,
    d: int,
    *,
    phi_norm: float,
    sigma_p: float,
    num_patches: int = 2,
    label_noise: float = 0.0,
    signal_position: int | str = "random",
    seed: int | np.random.SeedSequence = 0,
) -> SignalNoiseData:
    """Draw `n` examples of the theory's signal-noise model.

    `y_clean` is uniform on {0, 1}; the signal patch of example i is `(2·y_clean_i − 1)·φ` at position
    `signal_patch_i` (uniform over the `P` patches when `signal_position="random"`, else that fixed
    index); every other patch is an independent draw of `ξ ~ N(0, σ_p²(I − e₁e₁ᵀ))`. With
    `label_noise = p`, exactly `round(p·n)` examples, chosen uniformly, get the other label in `y`.

    Args:
      n: number of examples.
      d: patch dimension (≥ 2).
      phi_norm: ‖φ‖ ≥ 0 (the signal strength).
      sigma_p: noise standard deviation σ_p ≥ 0.
      num_patches: P ≥ 2.
      label_noise: fraction of flipped labels, in [0, 1).
      signal_position: `"random"` or a fixed patch index in `[0, P)`.
      seed: int seed (or a numpy SeedSequence).

    Example:
      >>> data = make_signal_noise(8, 16, phi_norm=2.0, sigma_p=1.0, seed=0)
      >>> data.x.shape, data.noise.shape, float(np.abs(data.noise[..., 0]).max())
      ((8, 2, 16), (8, 1, 16), 0.0)
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if int(d) != d or d < 2:
        raise ValueError(f"d must be an int >= 2 (coordinate 0 carries the signal), got {d!r}")
    if int(num_patches) != num_patches or num_patches < 2:
        raise ValueError(f"num_patches must be an int >= 2 (one signal patch plus noise), got {num_patches!r}")
    if not np.isfinite(phi_norm) or phi_norm < 0:
        raise ValueError(f"phi_norm must be finite and >= 0, got {phi_norm!r}")
    if not np.isfinite(sigma_p) or sigma_p < 0:
        raise ValueError(f"sigma_p must be finite and >= 0, got {sigma_p!r}")
    if not 0.0 <= label_noise < 1.0:
        raise ValueError(f"label_noise must be in [0, 1), got {label_noise!r}")
    n, d, P = int(n), int(d), int(num_patches)
    rng = np.random.default_rng(seed)

    y_clean = rng.integers(0, 2, size=n).astype(np.int32)
    if isinstance(signal_position, str):
        if signal_position != "random":
            raise ValueError(f"signal_position must be 'random' or an int in [0, {P}), got {signal_position!r}")
        signal_patch = rng.integers(0, P, size=n).astype(np.int32)
    else:
        if int(signal_position) != signal_position or not 0 <= signal_position < P:
            raise ValueError(f"signal_position must be 'random' or an int in [0, {P}), got {signal_position!r}")
        signal_patch = np.full(n, int(signal_position), np.int32)

    phi = np.zeros(d, np.float32)
    phi[0] = phi_norm
    noise = (sigma_p * rng.standard_normal((n, P - 1, d))).astype(np.float32)
    noise[..., 0] = 0.0  # projection onto the orthogonal complement of φ = ‖φ‖·e₁

    x = np.empty((n, P, d), np.float32)
    is_signal = np.arange(P)[None, :] == signal_patch[:, None]  # [n, P]
    x[is_signal] = signs(y_clean)[:, None] * phi[None, :]
    x[~is_signal] = noise.reshape(n * (P - 1), d)  # row-major: noise patches in patch order

    flipped = np.zeros(n, bool)
    num_flip = int(round(label_noise * n))
    if num_flip:
        flipped[rng.choice(n, size=num_flip, replace=False)] = True
    y = np.where(flipped, 1 - y_clean, y_clean).astype(np.int32)
    return SignalNoiseData(x=x, y=y, y_clean=y_clean, noise=noise, phi=phi, signal_patch=signal_patch, flipped=flipped)
