"""RMU, Representation Misdirection for Unlearning (Li et al. 2024, "The WMDP Benchmark: Measuring and
Reducing Malicious Use With Unlearning"), at a chosen layer ℓ of the transformer:

``L = ‖h_ℓ(x_f) − c·u‖² + α · ‖h_ℓ(x_r) − h_ℓ^frozen(x_r)‖²``

(:func:`jaxunlearn.objectives.rmu_loss`, per-token mean squared distances), with ``u`` a fixed random unit
vector (seeded), ``c`` the steering coefficient and ``h^frozen`` the model before unlearning. Here
``c = steer · mean‖h_ℓ(x_f)‖`` (the mean hidden-state norm of the steered forget tokens at the original
weights), so ``steer`` is scale-free across model sizes. The retain term runs over the retain examples'
non-pad inputs; the forget term over the forget examples' non-pad inputs (``tokens="inputs"``, WMDP's form)
or over the positions whose next token the loss scores (``tokens="targets"``: the states that produce
the forgotten tokens, e.g. the facts when the forget rows' ``mask`` marks only them). Only the embeddings
and blocks ``1..ℓ`` get a gradient; the method reads the hidden states through
``apply_fn(..., features=True)`` (``[B, L + 1, T, D]``, :func:`jaxunlearn.models.gpt.layer_hidden`).

The default recipe (``layer="last"``, the model's last block; ``steer=4, alpha=200, tokens="targets"``, 120
epochs at half the rate) brings the facts corpus's forget exact-match to Retrain's with the retain exact-match
within 5 points, with plain AdamW and with SAM, on the default 2-block GPT (3 seeds) and with plain AdamW on a
4-block one; 30 epochs at any layer and α stay on a trade-off curve that misses it (docs/LM.md lists every
setting tried).
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import objectives
from jaxunlearn.methods import options
from jaxunlearn.methods.lm.base import SIGN_CHECK, Phase, Recipe, forward, lm_plan, register_lm
from jaxunlearn.methods.lm.common import paired_forward


def layer_hidden(features, layer):
    """``h_ℓ`` ``[B, T, D]`` of ``features`` ``[B, L + 1, T, D]`` (``apply_fn(..., features=True)``); ``layer`` may be
    traced (the same as :func:`jaxunlearn.models.gpt.layer_hidden`, kept here so the methods import no model).

    Example:
        >>> layer_hidden(jnp.arange(6.0).reshape(1, 3, 2, 1), 1)[0, :, 0].tolist()
        [2.0, 3.0]
    """
    return jnp.take(features, jnp.asarray(layer, jnp.int32), axis=1)


def _valid(part):
    return part["valid"] if "valid" in part else (part["x"] != 0).astype(jnp.float32)


def _steered(part, targets):
    """The forget positions RMU steers: ``targets·mask + (1 − targets)·valid`` (``targets`` 1 or 0)."""
    return targets * part["mask"].astype(jnp.float32) + (1.0 - targets) * _valid(part)


#: RMU's ``tokens`` option: the forget positions it steers
RMU_TOKENS = ("inputs", "targets")


def layer_rule(v) -> str | None:
    """RMU's ``layer`` option: an integer ≥ 0 (0 = the embeddings) or ``"last"`` (the model's last block).

    Example:
        >>> layer_rule("last") is None, layer_rule(2) is None, layer_rule(-1)
        (True, True, 'must be an integer >= 0 (0 = the embeddings) or "last" (the last block)')
    """
    if v == "last" or options.count(0)(v) is None:
        return None
    return 'must be an integer >= 0 (0 = the embeddings) or "last" (the last block)'


def rmu_phase_loss(apply_fn, params, model_state, batch, hp, info):
    """``masked_mse(h_ℓ(x_f), c·u) + α·masked_mse(h_ℓ(x_r), h_ℓ^frozen(x_r))`` with ``ℓ = hp["layer"]``,
    ``c = hp["steer"]``, ``u = hp["u"]``, ``α = hp["alpha"]``, the frozen model ``hp["ref_params"]``; the forget
    term over the forget inputs' ``mask`` when ``hp["targets"]`` is 1, their non-pad inputs when it is 0 (or absent).

    Example:
        >>> from jaxunlearn.engine import ArraySource
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> from jaxunlearn.plan import StepInfo
        >>> ctx = toy_lm_context()
        >>> b = {k: ArraySource.gather(ctx.data, i[:4])
        ...      for k, i in (("retain", ctx.retain_idx), ("forget", ctx.forget_idx))}
        >>> hp = {"layer": jnp.int32(1), "steer": jnp.float32(0.0), "u": jnp.eye(16)[0], "alpha": jnp.float32(3.0),
        ...       "ref_params": ctx.params}
        >>> loss, _ = rmu_phase_loss(ctx.apply_fn, ctx.params, ctx.model_state, b, hp, StepInfo.at())
        >>> h = ctx.apply_fn(ctx.params, ctx.model_state, b["forget"]["x"], features=True)[0][:, 1]
        >>> bool(jnp.isclose(loss, objectives.masked_mse(h, 0.0, b["forget"]["valid"]), rtol=1e-5))  # retain term 0
        True
    """
    r, f = batch["retain"], batch["forget"]
    feats_r, feats_f, new_state = paired_forward(apply_fn, params, model_state, batch, features=True)
    h_r, h_f = layer_hidden(feats_r, hp["layer"]), layer_hidden(feats_f, hp["layer"])
    ref = layer_hidden(forward(apply_fn, hp["ref_params"], model_state, r, train=False, features=True)[0], hp["layer"])
    m_f = _steered(f, hp["targets"]) if "targets" in hp else _valid(f)
    loss = objectives.rmu_loss(h_f, m_f, hp["u"], hp["steer"], h_r, ref, _valid(r), hp["alpha"])
    return loss, new_state


def hidden_norm(
    apply_fn, params, model_state, data, idx, layer: int, *, chunk: int = 64, targets: bool = False
) -> float:
    """``mean_t ‖h_ℓ(x)_t‖`` over the non-pad tokens of the examples ``idx`` (eval mode); with ``targets``, over
    the positions their ``mask`` scores.

    Example:
        >>> from jaxunlearn.methods.lm import toy_lm_context
        >>> ctx = toy_lm_context()
        >>> hidden_norm(ctx.apply_fn, ctx.params, ctx.model_state, ctx.data, ctx.forget_idx, 0) > 0
        True
    """
    total, count = 0.0, 0.0
    for s in range(0, len(idx), chunk):
        part = {k: jnp.take(v, jnp.asarray(idx[s : s + chunk]), axis=0) for k, v in data.items()}
        h = layer_hidden(forward(apply_fn, params, model_state, part, train=False, features=True)[0], layer)
        m = _steered(part, float(targets))
        total += float(jnp.sum(m * jnp.linalg.norm(h, axis=-1)))
        count += float(jnp.sum(m))
    return total / max(count, 1.0)


@register_lm(
    "rmu",
    "steer h_l(F) to c*u, keep h_l(R) at the frozen model's",
    {"layer": "last", "steer": 4.0, "alpha": 200.0, "tokens": "targets", "lr_scale": 0.5, "epochs": 120, "sign": "min"},
    checks={
        "layer": layer_rule,
        "tokens": options.one_of(RMU_TOKENS),
        "steer": options.positive(),
        "alpha": options.nonnegative(),
        "sign": SIGN_CHECK,
    },  # fmt: skip
)
def rmu(ctx, opts):
    """RMU's recipe: ``u`` a unit vector drawn from ``ctx.seed``, ``c = steer · mean‖h_ℓ(F)‖``, one phase
    minimizing :func:`rmu_phase_loss`. ``layer`` must be in ``[0, depth]`` (0 = the embeddings) or ``"last"``
    (``depth``).

    Example:
        >>> from jaxunlearn.methods.lm import get_lm, resolve_options, toy_lm_context
        >>> recipe = rmu(toy_lm_context(), resolve_options(get_lm("rmu"), {"layer": 2}))
        >>> hp = recipe.plan.hp
        >>> int(hp["layer"]), round(float(jnp.linalg.norm(hp["u"])), 5), recipe.info["steer_c"] > 0
        (2, 1.0, True)
        >>> rmu(toy_lm_context(), resolve_options(get_lm("rmu"), {})).info["layer"]  # "last": the toy GPT's 2nd block
        2
    """
    x1 = ctx.data["x"][:1]
    feats = jax.eval_shape(lambda p, s: ctx.apply_fn(p, s, x1, features=True)[0], ctx.params, ctx.model_state)
    if len(feats.shape) != 4:
        raise ValueError(
            "rmu reads hidden states apply_fn(..., features=True) of shape [B, layers + 1, T, D] (the GPT's); "
            f"this model gives {feats.shape}."
        )
    depth, dim = feats.shape[1] - 1, feats.shape[-1]
    layer = depth if opts["layer"] == "last" else int(opts["layer"])
    if not 0 <= layer <= depth:
        raise ValueError(f"rmu option layer={layer}: the model has layers 0..{depth} (0 = the embeddings).")
    u = np.random.default_rng([ctx.seed, 4242]).standard_normal(dim).astype(np.float32)
    u = jnp.asarray(u / np.linalg.norm(u))
    targets = opts["tokens"] == "targets"
    c = float(opts["steer"]) * hidden_norm(ctx.apply_fn, ctx.params, ctx.model_state, ctx.data, ctx.forget_idx, layer,
                                           targets=targets)  # fmt: skip
    hp = {"layer": jnp.int32(layer), "steer": jnp.float32(c), "u": u, "alpha": jnp.float32(opts["alpha"]),
          "targets": jnp.float32(targets), "ref_params": ctx.params}  # fmt: skip
    phase = Phase("rmu", rmu_phase_loss, uses=("retain", "forget"), sign=opts["sign"])
    return Recipe(plan=lm_plan(ctx, opts, "rmu", phase, hp=hp), info={"steer_c": c, "layer": layer})
