"""Unlearning methods, one small file each, and the registry ``METHODS`` (name -> :class:`Method`).

Registry names: ``retrain``, ``ft``, ``ga``, ``neggrad``, ``rl``, ``scrub``, ``salun``, ``l1_sparse``,
``sharp_minmax``, ``ssd``, ``hessian_select``. Each gradient method runs with the unlearning optimizer of
the :class:`Context` (plain AdamW/SGD, SAM or ASAM, or any Optax optimizer); :func:`unlearn` runs one.
:func:`toy_context` builds a tiny untrained context to try them on. :func:`parts` takes a method apart
(phase losses + Optax transforms) for a loop of one's own; a new method is a recipe builder registered
with :func:`register`, composed of :class:`Phase`, :func:`method_plan`, :class:`Recipe` and
:mod:`jaxunlearn.objectives` (``notebooks/bring_your_own_model.ipynb`` registers an NPO-style method).

Example:
    >>> from jaxunlearn import methods
    >>> methods.get("sharp_minmax").defaults["fraction"]
    0.3
    >>> res = methods.unlearn("neggrad", methods.toy_context(), progress=False)
    >>> len(res.history), res.diverged is None
    (1, True)
"""

from jaxunlearn.methods import (  # noqa: F401  (registration side effects)
    ft,
    ga,
    hessian_select,
    l1_sparse,
    neggrad,
    retrain,
    rl,
    salun,
    scrub,
    sharp_minmax,
    ssd,
)
from jaxunlearn.methods.adapter import unlearn
from jaxunlearn.methods.base import (
    METHODS,
    VARIANT_SEP,
    Context,
    Method,
    Recipe,
    get,
    method_plan,
    register,
    resolve_options,
    scaled,
    toy_context,
)
from jaxunlearn.methods.options import OptionError
from jaxunlearn.methods.parts import MethodParts, PhasePart, parts
from jaxunlearn.plan import OptimConfig, Phase, Plan, StepInfo, supervised_loss

__all__ = [
    "METHODS",
    "VARIANT_SEP",
    "Context",
    "Method",
    "MethodParts",
    "OptionError",
    "OptimConfig",
    "Phase",
    "PhasePart",
    "Plan",
    "Recipe",
    "StepInfo",
    "get",
    "method_plan",
    "parts",
    "register",
    "resolve_options",
    "scaled",
    "supervised_loss",
    "toy_context",
    "unlearn",
]

from jaxunlearn.methods import lm  # noqa: E402,F401  (language-model methods: methods.lm.LM_METHODS, unlearn)
