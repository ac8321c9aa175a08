"""The synthetic experiment of the theory: signal learning vs noise memorization, SGD vs SAM.

Setting (PAPERS.md, "Theory model"; after Cao et al. 2022 and Chen et al. 2023). An example has two
patches, the signal ``y·φ`` (``φ = ‖φ‖·e₁``) and the noise ``ξ ~ N(0, σ_p²(I − φφᵀ/‖φ‖²))``
(:func:`jaxunlearn.data.make_signal_noise`). The model is the two-layer CNN ``theory_cnn``,

    F_j(W, x) = (1/m) Σ_r Σ_p σ(<w_{j,r}, x^(p)>),   f = F_{+1} − F_{−1},   L = mean log(1 + exp(−y f)),

trained by FULL-BATCH gradient descent ``W ← W − η·G`` where ``G = ∇L(W)`` (SGD) or
``G = ∇L(W + e)``, ``e = ρ ∇L/‖∇L‖`` (SAM, :func:`jaxunlearn.sharpness.value_and_sam_grad`).

Tracked every step (``c = theory_coefficients(W, φ, ξ)``; row ``j`` of ``W`` has class sign ``s_j``):

* signal learning   ``S = mean_j max_r s_j·<w_{j,r}, φ>``  (each class's best filter; the mean over
  the two classes of the largest signal coefficient, so it is the "max" reading of the coefficient);
* noise memorization ``N = mean_i max_r <w_{y_i,r}, ξ_i>``  (each example's own-class filters);
* for the forget examples also the WRONG-class memorization ``N⁻ = mean_{i∈F} max_r <w_{−y_i,r}, ξ_i>``.

Then the model UNLEARNS a random forget set F (``forget_fraction`` of the training examples) with the
NegGrad objective ``α·L_R − (1−α)·L_F`` (``unlearn="neggrad"``: plain GD for the SGD arm, SAM-min for
the SAM arm) or Sharp MinMax without a mask (``unlearn="sharp_minmax"``: GD/SAM-min on ``α·L_R`` plus
GD/sharpness maximization ``(1+λ)g − λg'`` on ``−(1−α)·L_F``). Unlearning a forget example ``(x_i, y_i)``
drives ``N`` down and ``N⁻`` up: its noise is re-memorized by the wrong class, and the prediction flips
to ``−y_i`` (reported as ``forget_flipped``, the fraction of F predicted ``−y``).

Finally a sweep of the test error against ‖φ‖ (``phi_sweep`` × ``sweep_seeds``, one vmapped
program per optimizer): SGD needs ``‖φ‖ ≳ d^{1/4} n^{−1/4} σ_p`` for benign overfitting, SAM much less.
:func:`run_theory` runs all of it (its docstring has an example).
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxunlearn import _atomic, _validate, models, report, sharpness
from jaxunlearn.data import make_signal_noise

__all__ = ["run_theory", "UNLEARN_KINDS", "RESULT_KEYS"]

UNLEARN_KINDS = ("neggrad", "sharp_minmax")
#: Top-level keys of the returned dict and of ``theory.json`` (``summary`` is not written to JSON).
RESULT_KEYS = ("settings", "pretrain", "unlearn", "sweep", "seconds", "files")
_OPTS = ("sgd", "sam")


def _check(s: dict) -> list[float]:
    """Validate the settings of :func:`run_theory` (a dict by name); return ``phi_sweep`` as floats."""
    n, d, alpha, forget_fraction = s["n"], s["d"], s["alpha"], s["forget_fraction"]
    for name in ("n", "d", "steps", "unlearn_steps", "filters", "sweep_seeds", "n_test"):
        _validate.positive_int(name, s[name])
    if n < 2:
        raise ValueError(f"n must be >= 2 (at least one retain and one forget example), got {n!r}.")
    if d < 2:
        raise ValueError(f"d must be >= 2 (coordinate 0 carries the signal φ), got {d!r}.")
    _validate.positive("lr", s["lr"], hint="e.g. lr=0.5 for full-batch gradient descent on the theory CNN.")
    if s["unlearn_lr"] is not None:
        _validate.positive("unlearn_lr", s["unlearn_lr"])
    _validate.positive("rho", s["rho"], hint="SAM's radius must be positive, e.g. rho=1.0 in the theory setting.")
    _validate.positive("phi_norm", s["phi_norm"], allow_zero=True)
    _validate.positive("sigma_p", s["sigma_p"], hint="the noise patches need a positive standard deviation.")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (weight of the retain loss), got {alpha!r}.")
    if not 0.0 < float(forget_fraction) < 1.0:
        raise ValueError(f"forget_fraction must be in (0, 1), got {forget_fraction!r}.")
    _validate.choice("unlearn", s["unlearn"], UNLEARN_KINDS)
    _validate.choice("activation", s["activation"], models.theory.ACTIVATIONS)
    phis = [float(p) for p in s["phi_sweep"]]
    if not phis or any(not np.isfinite(p) or p < 0 for p in phis):
        raise ValueError(f"phi_sweep must be a non-empty list of finite numbers >= 0, got {s['phi_sweep']!r}.")
    return phis


def _loss_fn(apply_fn, model_state):
    def loss(params, x, y):
        logits, _ = apply_fn(params, model_state, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    return loss


def _grad_fns(loss, rho, lamb=1.0):
    """``opt -> (sign -> f(params, x, y) -> (loss, direction))``."""
    plain = jax.value_and_grad(loss)
    return {
        "sgd": {"min": plain, "max": plain},
        "sam": {
            "min": sharpness.value_and_sam_grad(loss, rho),
            "max": sharpness.value_and_sam_grad(loss, rho, sign="max", lamb=lamb),
        },
    }


def _coefficients(params, phi, xi, y, forget_mask):
    """Signal S, noise N on retain / forget (own class) and N⁻ (wrong class) on forget."""
    c = models.theory_coefficients(params, phi, xi)
    class_sign = jnp.asarray(models.CLASS_SIGNS, jnp.float32)[:, None]
    signal = jnp.mean(jnp.max(class_sign * c["signal"], axis=1))
    idx = jnp.arange(y.shape[0])
    own = jnp.max(c["noise"][y, :, idx], axis=-1)  # [n]
    wrong = jnp.max(c["noise"][1 - y, :, idx], axis=-1)
    fm = forget_mask.astype(jnp.float32)
    rm = 1.0 - fm

    def mean(v, m):
        return jnp.sum(v * m) / jnp.maximum(jnp.sum(m), 1.0)

    return {
        "signal": signal,
        "noise": jnp.mean(own),
        "noise_retain": mean(own, rm),
        "noise_forget": mean(own, fm),
        "noise_forget_wrong": mean(wrong, fm),
    }


def run_theory(
    out: str | os.PathLike | None = None,
    *,
    n: int = 80,
    d: int = 400,
    phi_norm: float = 1.0,
    sigma_p: float = 1.0,
    steps: int = 300,
    lr: float = 0.5,
    rho: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    filters: int = 10,
    activation: str = "relu",
    sigma0: float = 0.01,
    n_test: int = 1000,
    forget_fraction: float = 0.1,
    unlearn: str = "sharp_minmax",
    unlearn_steps: int = 100,
    unlearn_lr: float | None = None,
    alpha: float = 0.5,
    lamb: float = 1.0,
    phi_sweep: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    sweep_seeds: int = 3,
    figures: bool = True,
    overwrite: bool = False,
) -> dict:
    """Pretrain the theory CNN with SGD and SAM, unlearn a forget set, sweep ‖φ‖; write figures + JSON.

    Full-batch gradient descent ``W ← W − η·G`` for ``steps`` steps from the same initialization, with
    ``G = ∇L(W)`` (SGD) or ``G = ∇L(W + ρ∇L/‖∇L‖)`` (SAM). Every step records the signal learning
    ``S = mean_j max_r s_j·<w_{j,r}, φ>`` and the noise memorization ``N = mean_i max_r <w_{y_i,r}, ξ_i>``
    (see the module docstring). Then ``unlearn_steps`` steps of unlearning a random forget set F
    (``round(forget_fraction·n)`` examples) with ``unlearn`` (``"neggrad"``: direction of
    ``α·L_R − (1−α)·L_F``, SGD or SAM-min; ``"sharp_minmax"``: SGD/SAM-min on ``α·L_R`` plus
    SGD/SAM-max (λ = ``lamb``) on ``−(1−α)·L_F``), each arm unlearning its own pretrained model with its
    own optimizer. Finally the test error against ``phi_sweep`` (``sweep_seeds`` data/initialization
    seeds, vmapped).

    Defaults: ReLU filters (``activation="relu"``, m = 10, σ₀ = 0.01), n = 80, d = 400, ‖φ‖ = 1,
    σ_p = 1, η = 0.5, ρ = 1: here SGD memorizes the noise (test error ≈ 25 %) while SAM learns the
    signal (test error ≈ 0) with less than half the noise memorization. ~10 s on 2 CPU cores.

    Args:
        out: output directory (created); default a new ``runs/theory-<timestamp>``. A non-empty ``out`` is
            refused unless ``overwrite=True``.
        n, d, phi_norm, sigma_p: data (``make_signal_noise``, P = 2 patches); ``n_test`` test examples.
        steps, lr, rho: pretraining steps, learning rate η, SAM radius ρ.
        seed: seed of the data (train/test/forget set) and of the initialization.
        progress: show a progress bar over the stages.
        filters, activation, sigma0: the ``theory_cnn`` (m, σ, initialization scale).
        forget_fraction, unlearn, unlearn_steps, unlearn_lr, alpha, lamb: unlearning (``unlearn_lr``
            defaults to ``lr``).
        phi_sweep, sweep_seeds: the test-error-vs-signal sweep.
        figures: write ``coefficients.png`` and ``test_error_vs_signal.png``.

    Returns:
        ``{"settings", "pretrain", "unlearn", "sweep", "seconds", "files", "summary"}``. ``pretrain[opt]``
        and ``unlearn[opt]`` (opt ∈ sgd, sam) hold the final ``signal``, ``noise``, ``noise_retain``,
        ``noise_forget``, ``noise_forget_wrong``, ``train_acc``/``retain_acc``, ``forget_acc``,
        ``forget_flipped``, ``test_error`` and per-step ``curves``; ``sweep`` holds ``phi_norms`` and
        ``{opt: {"mean", "std"}}`` test errors. Everything but ``summary`` is written to
        ``out/theory.json``.

    Raises:
        ValueError: invalid settings (n < 2, d < 2, steps < 1, lr <= 0, rho <= 0, sigma_p <= 0, ...).

    Example (a small, fast setting; a few seconds, most of it compilation):
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> res = run_theory(tmp.name, n=40, d=100, steps=50, unlearn_steps=10, n_test=100, phi_sweep=(1.0,),
        ...                  sweep_seeds=1, figures=False, progress=False)
        >>> res["pretrain"]["sam"]["noise"] < res["pretrain"]["sgd"]["noise"]          # SAM memorizes less noise
        True
        >>> res["pretrain"]["sam"]["test_error"] < res["pretrain"]["sgd"]["test_error"]
        True
        >>> print(res["summary"])
        theory: n=40 d=100 |phi|=1.0 sigma_p=1.0 relu m=10 lr=0.5 rho=1.0 steps=50; unlearn sharp_minmax ...
                      signal S  noise N(R)  N(F, y)  N(F, -y)  retain acc  F -> -y  test err
        SGD pretrain ...
        SAM pretrain ...
        SGD unlearn ...
        SAM unlearn ...
        <BLANKLINE>
        test error vs |phi| (mean over 1 seeds):
          |phi|       1
          SGD ...
          SAM ...
        time ... s; files: .../theory.json
        >>> sorted(os.listdir(tmp.name)); tmp.cleanup()
        ['theory.json']
    """
    settings = dict(
        n=n,
        d=d,
        phi_norm=phi_norm,
        sigma_p=sigma_p,
        steps=steps,
        lr=lr,
        rho=rho,
        seed=seed,
        filters=filters,
        activation=activation,
        sigma0=sigma0,
        n_test=n_test,
        forget_fraction=forget_fraction,
        unlearn=unlearn,
        unlearn_steps=unlearn_steps,
        unlearn_lr=unlearn_lr,
        alpha=alpha,
        lamb=lamb,
        phi_sweep=phi_sweep,
        sweep_seeds=sweep_seeds,
    )
    phis = settings["phi_sweep"] = _check(settings)
    t_start = time.perf_counter()
    unlearn_lr = settings["unlearn_lr"] = float(lr if unlearn_lr is None else unlearn_lr)
    if out is None:
        out = _atomic.unique_dir("runs", "theory-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    else:
        out = os.fspath(out)
        kept = sorted(os.listdir(out)) if os.path.isdir(out) else []
        if kept and not overwrite:
            shown = ", ".join(kept[:4]) + (", ..." if len(kept) > 4 else "")
            raise ValueError(
                f"{out} is not empty ({shown}); choose a new --out, or pass --overwrite (overwrite=True) to "
                "replace the theory run's files there."
            )
        if os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"--out {out} is a file; choose a directory.")
        os.makedirs(out, exist_ok=True)
    bar = tqdm(total=3, desc="theory", disable=not progress, leave=False, dynamic_ncols=True)

    # ---- data, model, forget set -------------------------------------------------------------------
    ss_train, ss_test, ss_forget = np.random.SeedSequence([seed, 7]).spawn(3)
    train = make_signal_noise(n, d, phi_norm=phi_norm, sigma_p=sigma_p, seed=ss_train)
    test = make_signal_noise(n_test, d, phi_norm=phi_norm, sigma_p=sigma_p, seed=ss_test)
    num_forget = min(n - 1, max(1, int(round(forget_fraction * n))))
    forget_idx = np.sort(np.random.default_rng(ss_forget).choice(n, size=num_forget, replace=False))
    forget_mask = np.zeros(n, bool)
    forget_mask[forget_idx] = True

    def build(s):
        model = models.build(
            "theory_cnn",
            num_classes=2,
            input_shape=(2, d),
            seed=s,
            filters=filters,
            activation=activation,
            sigma0=sigma0,
        )
        return models.split_model(model)

    apply_fn, params0, model_state = build(seed)
    loss = _loss_fn(apply_fn, model_state)
    gfs = _grad_fns(loss, rho, lamb)
    x, y = jnp.asarray(train.x), jnp.asarray(train.y)
    xi, phi = jnp.asarray(train.noise[:, 0]), jnp.asarray(train.phi)
    fmask = jnp.asarray(forget_mask)
    x_test, y_test = jnp.asarray(test.x), jnp.asarray(test.y)

    def predict(p, xs):
        return jnp.argmax(apply_fn(p, model_state, xs)[0], axis=-1)

    def metrics(p):
        m = _coefficients(p, phi, xi, y, fmask)
        correct = (predict(p, x) == y).astype(jnp.float32)
        fm = fmask.astype(jnp.float32)
        m["train_acc"] = jnp.mean(correct)
        m["retain_acc"] = jnp.sum(correct * (1 - fm)) / jnp.sum(1 - fm)
        m["forget_acc"] = jnp.sum(correct * fm) / jnp.sum(fm)
        m["forget_flipped"] = 1.0 - m["forget_acc"]  # binary: wrong <=> predicted -y
        m["test_error"] = jnp.mean((predict(p, x_test) != y_test).astype(jnp.float32))
        return m

    # ---- pretraining: full-batch GD, lax.scan over the steps, curves recorded per step ---------------
    def pretrain_run(opt):
        gf = gfs[opt]["min"]

        def body(p, _):
            value, g = gf(p, x, y)
            p = jax.tree.map(lambda w, u: w - lr * u, p, g)
            m = _coefficients(p, phi, xi, y, fmask)
            m["loss"] = value
            return p, m

        @jax.jit
        def go(p):
            p, curves = jax.lax.scan(body, p, None, length=steps)
            return p, curves, metrics(p)

        return go(params0)

    # ---- unlearning ---------------------------------------------------------------------------------
    x_r, y_r = x[~forget_mask], y[~forget_mask]
    x_f, y_f = x[forget_mask], y[forget_mask]

    def unlearn_run(opt, p_start):
        if unlearn == "neggrad":

            def objective(p, _x, _y):
                return alpha * loss(p, x_r, y_r) - (1.0 - alpha) * loss(p, x_f, y_f)

            gf = _grad_fns(objective, rho, lamb)[opt]["min"]

            def direction(p):
                return gf(p, None, None)
        else:

            def retain_obj(p, xs, ys):
                return alpha * loss(p, xs, ys)

            def forget_obj(p, xs, ys):
                return -(1.0 - alpha) * loss(p, xs, ys)

            g_r = _grad_fns(retain_obj, rho, lamb)[opt]["min"]
            g_f = _grad_fns(forget_obj, rho, lamb)[opt]["max"]

            def direction(p):
                v_r, d_r = g_r(p, x_r, y_r)
                v_f, d_f = g_f(p, x_f, y_f)
                return v_r + v_f, jax.tree.map(jnp.add, d_r, d_f)

        def body(p, _):
            value, g = direction(p)
            p = jax.tree.map(lambda w, u: w - unlearn_lr * u, p, g)
            m = metrics(p)
            m["loss"] = value
            return p, m

        @jax.jit
        def go(p):
            p, curves = jax.lax.scan(body, p, None, length=unlearn_steps)
            return p, curves, metrics(p)

        return go(p_start)

    def final(m, curves):
        res = {k: float(v) for k, v in m.items()}
        res["curves"] = {k: np.asarray(v).tolist() for k, v in curves.items()}
        return res

    pretrain, unlearned, timing = {}, {}, {}
    for opt in _OPTS:
        t0 = time.perf_counter()
        p, curves, m = pretrain_run(opt)
        jax.block_until_ready(p)
        timing[f"pretrain_{opt}"] = time.perf_counter() - t0
        pretrain[opt] = final(m, curves)
        pretrain[opt]["_params"] = p
    bar.update(1)
    for opt in _OPTS:
        t0 = time.perf_counter()
        start = pretrain[opt].pop("_params")
        m0 = {k: float(v) for k, v in metrics(start).items()}
        p, curves, m = unlearn_run(opt, start)
        jax.block_until_ready(p)
        timing[f"unlearn_{opt}"] = time.perf_counter() - t0
        unlearned[opt] = final(m, curves)
        unlearned[opt]["before"] = m0
    bar.update(1)

    # ---- test error vs ‖φ‖: vmapped over (φ, seed) ---------------------------------------------------
    t0 = time.perf_counter()
    grid = [(ph, s) for ph in phis for s in range(sweep_seeds)]
    sw_x, sw_y, sw_xt, sw_yt, sw_p = [], [], [], [], []
    for ph, s in grid:
        a, b = np.random.SeedSequence([seed, 11, s]).spawn(2)
        tr = make_signal_noise(n, d, phi_norm=ph, sigma_p=sigma_p, seed=a)
        te = make_signal_noise(n_test, d, phi_norm=ph, sigma_p=sigma_p, seed=b)
        sw_x.append(tr.x)
        sw_y.append(tr.y)
        sw_xt.append(te.x)
        sw_yt.append(te.y)
        sw_p.append(build(seed + 1000 * (s + 1))[1])
    sw_x, sw_y, sw_xt, sw_yt = (jnp.asarray(np.stack(a)) for a in (sw_x, sw_y, sw_xt, sw_yt))
    sw_p = jax.tree.map(lambda *a: jnp.stack(a), *sw_p)
    sweep = {"phi_norms": phis, "seeds": sweep_seeds}
    for opt in _OPTS:
        gf = gfs[opt]["min"]

        def train_one(p, xs, ys, xt, yt, gf=gf):
            def body(p, _):
                _, g = gf(p, xs, ys)
                return jax.tree.map(lambda w, u: w - lr * u, p, g), None

            p, _ = jax.lax.scan(body, p, None, length=steps)
            return jnp.mean((predict(p, xt) != yt).astype(jnp.float32))

        errs = np.asarray(jax.jit(jax.vmap(train_one))(sw_p, sw_x, sw_y, sw_xt, sw_yt)).reshape(len(phis), -1)
        sweep[opt] = {"mean": errs.mean(axis=1).tolist(), "std": errs.std(axis=1).tolist()}
    timing["sweep"] = time.perf_counter() - t0
    bar.update(1)
    bar.close()

    # ---- files ----------------------------------------------------------------------------------------
    files = {}
    if figures:
        files["coefficients"] = _plot_coefficients(os.path.join(out, "coefficients.png"), pretrain, unlearned)
        files["test_error_vs_signal"] = _plot_sweep(os.path.join(out, "test_error_vs_signal.png"), sweep)
    timing["total"] = time.perf_counter() - t_start
    result = {
        "settings": settings,
        "pretrain": pretrain,
        "unlearn": unlearned,
        "sweep": sweep,
        "seconds": timing,
        "files": files,
    }
    files["json"] = os.path.join(out, "theory.json")
    result["summary"] = _summary(result)
    payload = report.to_jsonable({k: v for k, v in result.items() if k != "summary"})
    tmp = files["json"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, files["json"])
    return result


# -------------------------------------------------------------------------------------------------------
# summary and figures
# -------------------------------------------------------------------------------------------------------

_COLS = (
    ("signal", "signal S", "{:.3f}"),
    ("noise_retain", "noise N(R)", "{:.3f}"),
    ("noise_forget", "N(F, y)", "{:.3f}"),
    ("noise_forget_wrong", "N(F, -y)", "{:.3f}"),
    ("retain_acc", "retain acc", "{:.1%}"),
    ("forget_flipped", "F -> -y", "{:.1%}"),
    ("test_error", "test err", "{:.1%}"),
)


def _summary(res: dict) -> str:
    s = res["settings"]
    head = (
        f"theory: n={s['n']} d={s['d']} |phi|={s['phi_norm']} sigma_p={s['sigma_p']} "
        f"{s['activation']} m={s['filters']} lr={s['lr']} rho={s['rho']} steps={s['steps']}; "
        f"unlearn {s['unlearn']} alpha={s['alpha']} "
        f"{s['unlearn_steps']} steps on {s['forget_fraction']:.0%} of train"
    )
    rows = [("", *[c[1] for c in _COLS])]
    for stage, key in (("pretrain", "pretrain"), ("unlearn", "unlearn")):
        for opt in _OPTS:
            m = res[key][opt]
            rows.append((f"{opt.upper()} {stage}", *[fmt.format(m[k]) for k, _, fmt in _COLS]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head] + [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows
    ]
    sw = res["sweep"]
    lines.append("")
    lines.append(f"test error vs |phi| (mean over {sw['seeds']} seeds):")
    lines.append("  |phi|  " + "  ".join(f"{p:>6g}" for p in sw["phi_norms"]))
    for opt in _OPTS:
        lines.append(f"  {opt.upper():5s}  " + "  ".join(f"{e:6.1%}" for e in sw[opt]["mean"]))
    lines.append(f"time {res['seconds']['total']:.1f} s; files: {res['files'].get('json', '')}")
    return "\n".join(lines)


def _plot_coefficients(path, pretrain, unlearned):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 7.5))
    axes = fig.subplots(2, 2)
    colors = {"sgd": "tab:blue", "sam": "tab:red"}
    for opt in _OPTS:
        c = pretrain[opt]["curves"]
        axes[0, 0].plot(c["signal"], color=colors[opt], label=opt.upper())
        axes[0, 1].plot(c["noise"], color=colors[opt], label=opt.upper())
        u = unlearned[opt]["curves"]
        axes[1, 0].plot(u["signal"], color=colors[opt], label=f"{opt.upper()} signal")
        axes[1, 0].plot(u["forget_flipped"], color=colors[opt], ls=":", label=f"{opt.upper()} F predicted -y")
        axes[1, 1].plot(u["noise_retain"], color=colors[opt], label=f"{opt.upper()} retain, own class")
        axes[1, 1].plot(u["noise_forget"], color=colors[opt], ls="--", label=f"{opt.upper()} forget, own class y")
        axes[1, 1].plot(u["noise_forget_wrong"], color=colors[opt], ls=":", label=f"{opt.upper()} forget, class -y")
    titles = (
        (
            "pretraining: signal learning  mean_j max_r s_j<w_jr, phi>",
            "pretraining: noise memorization  mean_i max_r <w_(y_i)r, xi_i>",
        ),
        ("unlearning: signal learning, forget flips", "unlearning: noise memorization"),
    )
    for i in range(2):
        for j in range(2):
            ax = axes[i, j]
            ax.set_title(titles[i][j], fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return report.save_figure(fig, path)


def _plot_sweep(path, sweep):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    phis = np.asarray(sweep["phi_norms"])
    for opt, color in (("sgd", "tab:blue"), ("sam", "tab:red")):
        mean, std = np.asarray(sweep[opt]["mean"]), np.asarray(sweep[opt]["std"])
        ax.errorbar(phis, mean, yerr=std, color=color, marker="o", capsize=3, label=opt.upper())
    ax.set_xscale("log")
    ax.set_xlabel("signal strength |phi|")
    ax.set_ylabel("test error")
    ax.set_title(f"test error vs signal ({sweep['seeds']} seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return report.save_figure(fig, path)
