"""Unlearning methods, one small file each, and the registry ``METHODS`` (name -> :class:`Method`).

Registry names: ``retrain``, ``ft``, ``ga``, ``neggrad``, ``rl``, ``scrub``, ``salun``, ``l1_sparse``,
``sharp_minmax``, ``ssd``, ``hessian_select``. Each gradient method runs with the unlearning optimizer of
the :class:`Context` (plain AdamW/SGD, SAM or ASAM, or any Optax optimizer); :func:`unlearn` runs one.
:func:`toy_context` builds a tiny untrained context to try them on.

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
    register,
    resolve_options,
    toy_context,
)

__all__ = [
    "METHODS",
    "VARIANT_SEP",
    "Context",
    "Method",
    "Recipe",
    "get",
    "register",
    "resolve_options",
    "toy_context",
    "unlearn",
]
