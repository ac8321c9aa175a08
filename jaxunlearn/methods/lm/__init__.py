"""Language-model unlearning on the shared core: token-level methods, each a recipe whose plan the engine runs.

Registry :data:`LM_METHODS` (beside the classification ``methods.METHODS``, whose ``Context`` checks class
labels; see :mod:`.base`): ``grad_ascent``, ``graddiff``, ``npo``, ``simnpo``, ``rmu``, ``sharp_minmax``,
``hessian_select``, ``finetune``, ``retrain``. Every gradient method runs with the context's optimizer,
plain, SAM, ASAM or any kind of :data:`jaxunlearn.plan.OPTIMIZER_KINDS`
(``plan.optimizer_kind("sam", LM_UNLEARN_DEFAULT)``), and the single-phase ones take ``sign="max"`` for
sharpness maximization.

Example:
    >>> from jaxunlearn.methods import lm
    >>> sorted(lm.LM_METHODS)[:4]
    ['finetune', 'grad_ascent', 'graddiff', 'hessian_select']
    >>> from jaxunlearn.plan import optimizer_kind
    >>> ctx = lm.toy_lm_context(optimizer=optimizer_kind("sam", lm.LM_UNLEARN_DEFAULT, rho=0.05))
    >>> lm.unlearn("npo", ctx, progress=False).diverged is None
    True
"""

from jaxunlearn.methods.lm import (  # noqa: F401  (registration side effects)
    ga,
    graddiff,
    hessian_select,
    npo,
    retrain,
    rmu,
    sharp_minmax,
    simnpo,
)
from jaxunlearn.methods.lm.base import (
    LM_KEYS,
    LM_METHODS,
    LM_PRETRAIN_DEFAULT,
    LM_UNLEARN_DEFAULT,
    LMContext,
    Phase,
    Recipe,
    forward,
    get_lm,
    lm_loss,
    lm_plan,
    register_lm,
    resolve_options,
    toy_lm_context,
    unlearn,
)
from jaxunlearn.methods.lm.common import LMTokenCE, token_gradient

__all__ = [
    "LM_KEYS",
    "LM_METHODS",
    "LM_PRETRAIN_DEFAULT",
    "LM_UNLEARN_DEFAULT",
    "LMContext",
    "LMTokenCE",
    "Phase",
    "Recipe",
    "forward",
    "get_lm",
    "lm_loss",
    "lm_plan",
    "register_lm",
    "resolve_options",
    "token_gradient",
    "toy_lm_context",
    "unlearn",
]
