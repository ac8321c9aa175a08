"""Presets: named sets of settings. ``reference`` reproduces the official code of paper A
(``HaoranTang/sharp-unlearn``) wherever its code defines the algorithm; ``default`` is the library's own.

A preset changes two things: fields of every :class:`~jaxunlearn.plan.OptimConfig` it is applied to
(pretraining and unlearning), and method options (the user's own options still win). :data:`REFERENCE`
lists every known difference between the paper's text, the official code and our defaults in
``differences``; ``docs/REFERENCE.md`` is that table.

Example:
    >>> from jaxunlearn import presets
    >>> from jaxunlearn.plan import OptimConfig
    >>> ref = presets.get("reference")
    >>> ref.optimizer_config(OptimConfig(sam="asam")).eta      # ASAM's T = |w|, no η
    0.0
    >>> opts = ref.method_options("sharp_minmax")
    >>> opts["largest"], opts["mask_reading"], opts["forget_lr_scale"], opts["rounding"], opts["saliency"]
    (False, 'reference', 1.0, 'floor', 'batch_mean')
    >>> ref.method_options("sharp_minmax", {"fraction": 0.1})["fraction"]   # the user's options win
    0.1
    >>> presets.get("default").method_options("sharp_minmax")
    {}
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxunlearn import _validate
from jaxunlearn.plan import OptimConfig

__all__ = ["Difference", "Preset", "PRESETS", "REFERENCE", "DEFAULT", "get"]


@dataclasses.dataclass(frozen=True)
class Difference:
    """One row of the fidelity table: a setting as the paper states it, as the official code runs it, our
    default, what the ``reference`` preset does, and why our default differs.

    Example:
        >>> REFERENCE.differences[0].setting, REFERENCE.differences[0].preset
        ("ASAM's scale T", 'η = 0')
    """

    setting: str
    paper: str
    official: str
    default: str
    preset: str
    why: str


@dataclasses.dataclass(frozen=True)
class Preset:
    """Named settings: ``optimizer`` (OptimConfig field overrides) and ``options`` (method -> option overrides).

    Example:
        >>> p = Preset("mine", "ASAM without η", optimizer={"eta": 0.0})
        >>> p.optimizer_config(OptimConfig(sam="asam", eta=0.01)).eta
        0.0
    """

    name: str
    description: str
    optimizer: dict[str, Any] = dataclasses.field(default_factory=dict)
    options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    differences: tuple[Difference, ...] = ()

    def optimizer_config(self, cfg: OptimConfig) -> OptimConfig:
        """``cfg`` with the preset's optimizer fields; a user's own Optax ``base`` keeps its own settings.

        Example:
            >>> REFERENCE.optimizer_config(OptimConfig(sam="asam", rho=1.0)).eta, DEFAULT.optimizer_config(
            ...     OptimConfig(sam="asam")).eta
            (0.0, 0.01)
        """
        if not isinstance(cfg, OptimConfig):
            raise TypeError(f"optimizer_config needs an OptimConfig, got {type(cfg).__name__}.")
        return dataclasses.replace(cfg, **self.optimizer) if self.optimizer else cfg

    def method_options(self, method: str, user: dict[str, Any] | None = None) -> dict[str, Any]:
        """The preset's options for ``method`` with ``user``'s on top (user settings always win).

        Example:
            >>> REFERENCE.method_options("neggrad"), REFERENCE.method_options("ft", {"lr_scale": 2.0})
            ({'alpha': 0.99, 'lr_scale': 1.0}, {'lr_scale': 2.0})
        """
        return {**self.options.get(method, {}), **dict(user or {})}

    def table(self) -> str:
        """The differences as a markdown table (``docs/REFERENCE.md`` holds the ``reference`` one).

        Example:
            >>> print(REFERENCE.table().splitlines()[0])
            | setting | paper text | official code | our default | `reference` preset | why our default |
        """
        head = "| setting | paper text | official code | our default | `reference` preset | why our default |"
        rows = [head, "|" + "---|" * 6]
        for d in self.differences:
            rows.append(f"| {d.setting} | {d.paper} | {d.official} | {d.default} | {d.preset} | {d.why} |")
        return "\n".join(rows)


_DIFFERENCES = (
    Difference(
        "ASAM's scale T",
        "T = diag(|w|) (ASAM)",
        "`torch.pow(p, 2)·g·ρ/‖|w|·g‖`: T = |w|, no η",
        "T = |w| + η, η = 0.01 (Kwon et al.)",
        "η = 0",
        "η keeps parameters at 0 perturbable; ASAM's own paper uses it",
    ),
    Difference(
        "Sharp MinMax mask: which end",
        "the parameters most important to F (largest saliency)",
        "ascending sort: the SMALLEST fraction",
        "`largest=True`",
        "`largest=False`",
        "follows the paper's text",
    ),
    Difference(
        "Sharp MinMax mask: where it applies",
        "gradient multiplied by M / (1 − M)",
        "only the perturbed gradient g' is masked; g enters unmasked",
        '`mask_reading="strict"`: the whole update masked',
        '`mask_reading="reference"`',
        "follows the paper's text; the code's reading updates every parameter on the forget step",
    ),
    Difference(
        "Sharp MinMax mask: size",
        "fraction t of the parameters",
        "`int(N·t)` entries",
        '⌈N·t⌉ (`rounding="ceil"`, never empty)',
        '`rounding="floor"`',
        "at most one entry apart; ceil never gives an empty mask",
    ),
    Difference(
        "Sharp MinMax mask: saliency",
        "abs of Σ over F of ∇(−CE)",
        "Σ over the forget loader's batches of ∇ of the batch-MEAN −CE (shuffled batches)",
        'Σ of per-example gradients (`saliency="sum"`)',
        '`saliency="batch_mean"`, batches of the unlearning batch size in the forget set\'s order',
        "the paper's formula; the two differ only by the weight of the last, shorter batch",
    ),
    Difference(
        "Sharp MinMax mask: ties",
        "—",
        "`torch.argsort` (not stable): order among equal scores unspecified",
        "stable: earlier leaf / index first",
        "stable (the official order cannot be reproduced)",
        "deterministic; only exactly equal scores (e.g. zero gradients) are affected",
    ),
    Difference(
        "Sharp MinMax forget learning rate",
        "one learning rate",
        "both optimizers at `--unlearn_lr`",
        "forget rate = 0.01 × retain rate (`forget_lr_scale=0.01`)",
        "`forget_lr_scale=1.0`",
        "with AdamW the loss weights α, 1−α barely change the step, and the forget step collapses the model",
    ),
    Difference(
        "NegGrad α and learning rate",
        "α = 0.99",
        "α = 0.99 at `--unlearn_lr`",
        "α = 0.999 at 0.3 × the unlearning rate",
        "α = 0.99, `lr_scale=1.0`",
        "with AdamW only (1−α)/α sets the forget push; at 0.99 a forgotten class wrecks the others",
    ),
    Difference(
        "NegGrad forward passes",
        "—",
        "two passes (retain, forget): batch-norm statistics per set, running averages updated twice",
        "the same (one concatenated pass only for models without state, where it is identical)",
        "the same",
        "—",
    ),
    Difference(
        "ToW",
        "(1−|ΔFA|)(1−|ΔRA|)(1−|ΔTA|)",
        "signed differences (better than Retrain counts above 1)",
        "absolute differences (RUM's)",
        "absolute (`metrics.tow(..., signed=True)` gives the official number)",
        "a method should not score above Retrain for being further from it",
    ),
    Difference(
        "MIA modified entropy",
        "Song & Mittal's modified entropy",
        "`m_entropy` indexes `[:, labels]`: −Σⱼ(1−pⱼ)·log pⱼ",
        "Song & Mittal's definition",
        "Song & Mittal's definition",
        "the paper names that attack",
    ),
)

DEFAULT = Preset("default", "the library's defaults (the papers' text where code and text differ)")
REFERENCE = Preset(
    "reference",
    "the official sharp-unlearn code's algorithms: ASAM without η; Sharp MinMax's smallest-fraction mask of "
    "int(N·t) entries from summed batch-mean gradients, masking only the perturbed gradient, one learning rate",
    optimizer={"eta": 0.0},
    options={
        "neggrad": {"alpha": 0.99, "lr_scale": 1.0},
        "hessian_select": {"base_options": {"alpha": 0.99, "lr_scale": 1.0}},
        "sharp_minmax": {
            "largest": False,
            "mask_reading": "reference",
            "forget_lr_scale": 1.0,
            "rounding": "floor",
            "saliency": "batch_mean",
        },
    },
    differences=_DIFFERENCES,
)
PRESETS: dict[str, Preset] = {p.name: p for p in (DEFAULT, REFERENCE)}


def get(name: str) -> Preset:
    """The preset called ``name`` (``default`` or ``reference``).

    Example:
        >>> get("reference").name
        'reference'
        >>> get("refrence")
        Traceback (most recent call last):
        ...
        ValueError: preset must be one of ['default', 'reference'], got 'refrence'. Did you mean 'reference'?
    """
    return PRESETS[_validate.choice("preset", name, PRESETS)]
