import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import mlp_apply, mlp_loss
from jax.flatten_util import ravel_pytree

from jaxunlearn import curvature


@pytest.fixture
def dense(mlp):
    params, batch = mlp
    flat, unravel = ravel_pytree(params)
    H = jax.hessian(lambda f: mlp_loss(unravel(f), batch))(flat)
    return params, batch, np.asarray(H, np.float64), unravel


def _flat(t):
    return np.asarray(ravel_pytree(t)[0])


def test_hvp_matches_dense_hessian(dense):
    params, batch, H, unravel = dense
    v = jax.random.normal(jax.random.key(1), (H.shape[0],))
    got = curvature.hvp(mlp_loss, params, batch, unravel(v))
    np.testing.assert_allclose(_flat(got), H @ np.asarray(v), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [7, 256])
def test_exact_diagonal_matches_dense_hessian(dense, chunk_size):
    params, batch, H, _ = dense
    got = curvature.hessian_diagonal(mlp_loss, params, batch, chunk_size=chunk_size)
    assert jax.tree.structure(got) == jax.tree.structure(params)
    np.testing.assert_allclose(_flat(got), np.diag(H), rtol=1e-4, atol=1e-6)


def test_hutchinson_converges_to_exact_diagonal(dense):
    params, batch, H, _ = dense
    exact = np.diag(H)
    errors = []
    for probes in (4, 64, 1024):
        est = curvature.hutchinson_diagonal(mlp_loss, params, batch, jax.random.key(3), probes, chunk_size=64)
        errors.append(np.linalg.norm(_flat(est) - exact) / np.linalg.norm(exact))
    assert errors[2] < errors[0]
    assert errors[2] < 0.5 * errors[0]
    assert errors[2] < 0.25


def test_hutchinson_uses_exactly_num_probes_with_uneven_chunks():
    # diagonal Hessian: every probe gives the exact diagonal, so any count works; an uneven last chunk
    # must not be double counted
    loss = lambda w, b: 0.5 * jnp.sum(b * w**2)
    b = jnp.array([1.0, 2.0, 3.0])
    est = curvature.hutchinson_diagonal(loss, jnp.ones(3), b, jax.random.key(0), 5, chunk_size=2)
    np.testing.assert_allclose(est, b, rtol=1e-6)


def test_fisher_is_mean_squared_per_example_gradient(mlp):
    params, (x, y) = mlp
    per_example = [ravel_pytree(jax.grad(mlp_loss)(params, (x[i : i + 1], y[i : i + 1])))[0] for i in range(len(y))]
    expected = np.mean(np.square(np.stack(per_example)), axis=0)
    for chunk in (5, 16, 100):
        got = curvature.fisher_diagonal(mlp_loss, params, (x, y), chunk_size=chunk)
        np.testing.assert_allclose(_flat(got), expected, rtol=1e-5, atol=1e-9)


def test_fisher_chunks_share_one_program(mlp):
    """Many chunks do not mean many compilations: the chunk offset is a traced value (an eager slice per
    offset compiled once per chunk), so a longer batch costs the same handful of programs."""
    from jaxunlearn import engine

    params, (x, y) = mlp
    x, y = np.concatenate([x] * 7), np.concatenate([y] * 7)  # host arrays: slicing them compiles nothing
    short, long_ = (jnp.asarray(x[:40]), jnp.asarray(y[:40])), (jnp.asarray(x[:97]), jnp.asarray(y[:97]))
    curvature.fisher_diagonal(mlp_loss, params, short, chunk_size=3)  # warm up: 14 chunks
    before = engine.COMPILE_COUNTER.compiles
    again = curvature.fisher_diagonal(mlp_loss, params, short, chunk_size=3)
    assert engine.COMPILE_COUNTER.compiles == before  # same shapes: nothing new
    longer = curvature.fisher_diagonal(mlp_loss, params, long_, chunk_size=3)  # 33 chunks
    assert engine.COMPILE_COUNTER.compiles - before <= 6  # padding and the slice program for the new length
    assert np.all(np.isfinite(_flat(again))) and np.all(np.isfinite(_flat(longer)))


def test_fisher_keeps_a_low_precision_dtype(mlp):
    params, batch = mlp
    half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    diag = curvature.fisher_diagonal(lambda p, b: mlp_loss(p, b).astype(jnp.float32), half, batch, chunk_size=4)
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(diag))


def test_top_eigenvalue_and_trace_match_numpy(dense):
    params, batch, H, _ = dense
    n = H.shape[0]
    lam = curvature.top_eigenvalue(mlp_loss, params, batch, jax.random.key(0), num_iters=n)
    assert float(lam) == pytest.approx(np.linalg.eigvalsh(H).max(), rel=1e-3)
    # few iterations already give a close lower estimate of the largest eigenvalue
    lam10 = curvature.top_eigenvalue(mlp_loss, params, batch, jax.random.key(0), num_iters=10)
    assert float(lam10) <= np.linalg.eigvalsh(H).max() * (1 + 1e-4)
    assert float(lam10) >= 0.9 * np.linalg.eigvalsh(H).max()
    tr = curvature.hessian_trace(mlp_loss, params, batch, jax.random.key(1), 2000, chunk_size=250)
    assert float(tr) == pytest.approx(np.trace(H), rel=0.1, abs=0.05)


def test_under_jit_and_vmap(mlp):
    params, batch = mlp
    probes = jax.random.normal(jax.random.key(0), (3,) + ravel_pytree(params)[0].shape)
    unravel = ravel_pytree(params)[1]
    batched = jax.jit(jax.vmap(lambda v: ravel_pytree(curvature.hvp(mlp_loss, params, batch, unravel(v)))[0]))(probes)
    for i in range(3):
        single = ravel_pytree(curvature.hvp(mlp_loss, params, batch, unravel(probes[i])))[0]
        np.testing.assert_allclose(batched[i], single, rtol=1e-5, atol=1e-6)
    jitted = jax.jit(lambda p: curvature.hutchinson_diagonal(mlp_loss, p, batch, jax.random.key(0), 4))(params)
    eager = curvature.hutchinson_diagonal(mlp_loss, params, batch, jax.random.key(0), 4)
    np.testing.assert_allclose(_flat(jitted), _flat(eager), rtol=1e-5)
    # Lanczos (a Python loop over one compiled step) unrolls under jit and batches under vmap
    top = lambda p, k: curvature.top_eigenvalue(mlp_loss, p, batch, k, num_iters=6)
    eager = float(top(params, jax.random.key(3)))
    assert float(jax.jit(top)(params, jax.random.key(3))) == pytest.approx(eager, rel=1e-5)
    keys = jax.random.split(jax.random.key(3), 2)
    per_key = jax.vmap(lambda k: top(params, k))(keys)
    for i in range(2):
        assert float(per_key[i]) == pytest.approx(float(top(params, keys[i])), rel=1e-5)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda p, b: curvature.hutchinson_diagonal(mlp_loss, p, b, jax.random.key(0), 0), "num_probes"),
        (lambda p, b: curvature.hessian_trace(mlp_loss, p, b, jax.random.key(0), -2), "num_probes"),
        (lambda p, b: curvature.hessian_diagonal(mlp_loss, p, b, chunk_size=0), "chunk_size"),
        (lambda p, b: curvature.top_eigenvalue(mlp_loss, p, b, jax.random.key(0), num_iters=0), "num_iters"),
        (lambda p, b: curvature.hvp(mlp_loss, p, b, {"x": jnp.ones(2)}), "params"),
        (lambda p, b: curvature.fisher_diagonal(mlp_loss, p, (b[0], b[1][:3])), "leading"),
    ],
)
def test_bad_input_raises(mlp, call, name):
    params, batch = mlp
    with pytest.raises(ValueError, match=name):
        call(params, batch)


@pytest.mark.parametrize("num_probes, chunk", [(16, 16), (7, 3)])
def test_unrolled_and_vmapped_probes_give_the_same_estimate(dense, num_probes, chunk):
    """Both probe modes draw the same probes per chunk (also a partial last chunk), so they agree."""
    params, batch, H, _ = dense
    key = jax.random.key(5)
    kw = dict(chunk_size=chunk)
    un = curvature.hutchinson_diagonal(mlp_loss, params, batch, key, num_probes, probe_mode="unroll", **kw)
    vm = curvature.hutchinson_diagonal(mlp_loss, params, batch, key, num_probes, probe_mode="vmap", **kw)
    np.testing.assert_allclose(_flat(un), _flat(vm), rtol=1e-5, atol=1e-6)
    # ... and it is a Hutchinson estimate: by hand from the same probes
    flat, _ = ravel_pytree(params)
    hand = np.zeros(flat.size)
    for i, k in enumerate(jax.random.split(key, -(-num_probes // chunk))):
        z = np.asarray(jax.random.rademacher(k, (chunk, flat.size), dtype=flat.dtype), np.float64)
        for row in z[: min(chunk, num_probes - i * chunk)]:
            hand += row * (H @ row)
    np.testing.assert_allclose(_flat(un), hand / num_probes, rtol=1e-3, atol=1e-5)
    assert curvature.default_probe_mode(16) == ("unroll" if jax.default_backend() == "cpu" else "vmap")
    assert curvature.default_probe_mode(curvature.MAX_UNROLL + 1) == "vmap"
    with pytest.raises(ValueError, match="probe_mode"):
        curvature.hutchinson_diagonal(mlp_loss, params, batch, key, 4, probe_mode="scan")


# --------------------------------------------------------------------------------------------------------
# jax.grad manners: loss_fn(params, *args), has_aux, the earlier positional forms, clear errors
# --------------------------------------------------------------------------------------------------------
def _xy_loss(p, x, y):
    return mlp_loss(p, (x, y))


def _aux_loss(p, x, y):
    return mlp_loss(p, (x, y)), {"logits_mean": jnp.mean(x)}


def test_star_args_and_has_aux_give_the_batch_form_results(mlp):
    """``loss_fn(params, x, y) -> (loss, aux)`` with ``has_aux=True``: the results of ``loss_fn(params, batch)``."""
    params, (x, y) = mlp
    key = jax.random.key(2)
    v = jax.tree.map(jnp.ones_like, params)
    kw = {"has_aux": True}
    pairs = [
        (curvature.hvp(_aux_loss, params, x, y, v=v, **kw), curvature.hvp(mlp_loss, params, (x, y), v)),
        (
            curvature.hessian_diagonal(_aux_loss, params, x, y, **kw),
            curvature.hessian_diagonal(mlp_loss, params, (x, y)),
        ),
        (
            curvature.hutchinson_diagonal(_aux_loss, params, x, y, key=key, num_probes=4, **kw),
            curvature.hutchinson_diagonal(mlp_loss, params, (x, y), key, 4),
        ),
        (
            curvature.fisher_diagonal(_aux_loss, params, x, y, chunk_size=8, **kw),
            curvature.fisher_diagonal(mlp_loss, params, (x, y), chunk_size=8),
        ),
        (
            curvature.top_eigenvalue(_aux_loss, params, x, y, key=key, num_iters=5, **kw),
            curvature.top_eigenvalue(mlp_loss, params, (x, y), key, 5),
        ),
        (
            curvature.hessian_trace(_aux_loss, params, x, y, key=key, num_probes=4, **kw),
            curvature.hessian_trace(mlp_loss, params, (x, y), key, 4),
        ),
    ]
    for got, expected in pairs:
        np.testing.assert_allclose(_flat(got), _flat(expected), rtol=1e-5, atol=1e-7)


def test_earlier_positional_forms_equal_the_keyword_forms(mlp):
    params, batch = mlp
    key = jax.random.key(4)
    v = jax.tree.map(jnp.ones_like, params)
    np.testing.assert_array_equal(
        _flat(curvature.hvp(mlp_loss, params, batch, v)), _flat(curvature.hvp(mlp_loss, params, batch, v=v))
    )
    kw = curvature.top_eigenvalue(mlp_loss, params, batch, key=key, num_iters=7)
    assert float(curvature.top_eigenvalue(mlp_loss, params, batch, key, 7)) == float(kw)
    assert float(curvature.top_eigenvalue(mlp_loss, params, batch, key, num_iters=7)) == float(kw)
    hk = curvature.hutchinson_diagonal(mlp_loss, params, batch, key=key, num_probes=6)
    for got in (
        curvature.hutchinson_diagonal(mlp_loss, params, batch, key, 6),
        curvature.hutchinson_diagonal(mlp_loss, params, batch, key, num_probes=6),
    ):
        np.testing.assert_array_equal(_flat(got), _flat(hk))
    assert float(curvature.hessian_trace(mlp_loss, params, batch, key, 6)) == pytest.approx(
        float(curvature.hessian_trace(mlp_loss, params, batch, key=key, num_probes=6))
    )
    # a raw uint32 key (jax.random.PRNGKey) is a key too
    raw = curvature.top_eigenvalue(mlp_loss, params, batch, jax.random.PRNGKey(0), 3)
    assert np.isfinite(float(raw))


@pytest.mark.parametrize(
    "call",
    [
        lambda loss, p, b: curvature.hvp(loss, p, b, v=p),
        lambda loss, p, b: curvature.hessian_diagonal(loss, p, b),
        lambda loss, p, b: curvature.hutchinson_diagonal(loss, p, b, key=jax.random.key(0), num_probes=2),
        lambda loss, p, b: curvature.fisher_diagonal(loss, p, b),
        lambda loss, p, b: curvature.top_eigenvalue(loss, p, b, key=jax.random.key(0), num_iters=2),
        lambda loss, p, b: curvature.hessian_trace(loss, p, b, key=jax.random.key(0), num_probes=2),
    ],
    ids=["hvp", "hessian_diagonal", "hutchinson_diagonal", "fisher_diagonal", "top_eigenvalue", "hessian_trace"],
)
def test_a_tuple_without_has_aux_or_a_non_scalar_loss_is_one_clear_line(mlp, call):
    params, batch = mlp
    with pytest.raises(TypeError, match=r"returned a tuple of 2; if it returns \(loss, aux\), pass has_aux=True"):
        call(lambda p, b: (mlp_loss(p, b), 0.0), params, batch)
    with pytest.raises(ValueError, match=r"must return a scalar, got shape \(\d+, 3\).*has_aux=True"):
        call(lambda p, b: mlp_apply(p, b[0]), params, batch)


def test_missing_options_name_the_keyword(mlp):
    params, batch = mlp
    with pytest.raises(TypeError, match=r"key must be a PRNG key.*key=jax.random.key\(0\)"):
        curvature.top_eigenvalue(mlp_loss, params, batch)  # no key: the batch is not a key
    with pytest.raises(TypeError, match="num_probes"):
        curvature.hutchinson_diagonal(mlp_loss, params, batch, key=jax.random.key(0))
    with pytest.raises(TypeError, match="the vector v"):
        curvature.hvp(mlp_loss, params)
    with pytest.raises(TypeError, match="loss_fn must be a function"):
        curvature.hessian_diagonal("mlp_loss", params, batch)


def test_fisher_in_axes_passes_an_argument_whole_to_every_example(mlp):
    params, (x, y) = mlp
    scaled = lambda p, x, y, s: s * mlp_loss(p, (x, y))
    got = curvature.fisher_diagonal(scaled, params, x, y, 3.0, in_axes=(0, 0, None), chunk_size=5)
    expected = curvature.fisher_diagonal(mlp_loss, params, (x, y), chunk_size=5)
    np.testing.assert_allclose(_flat(got), 9.0 * _flat(expected), rtol=1e-5)
    with pytest.raises(ValueError, match="in_axes"):
        curvature.fisher_diagonal(scaled, params, x, y, 3.0, in_axes=(0, 0))


def test_equal_losses_share_compiled_programs(mlp):
    """A fresh but identical lambda and a new batch of the same shape reuse the programs; a closure over a
    different batch is a different loss (compiled again, and its result is that batch's)."""
    from jaxunlearn import engine

    params, (x, y) = mlp
    key = jax.random.key(0)

    def run(loss, *args):
        return curvature.top_eigenvalue(loss, params, *args, key=key, num_iters=4)

    def fresh():  # the same lambda expression evaluated again: a new function object each time
        return lambda p, x, y: mlp_loss(p, (x, y))

    x1 = x + 1.0
    run(fresh(), x, y)  # warm up
    before = engine.COMPILE_COUNTER.compiles
    again = run(fresh(), x, y)
    other = run(fresh(), x1, y)  # ... and a new batch of the same shapes
    assert engine.COMPILE_COUNTER.compiles == before
    assert float(other) != float(again)

    # the same loss object, a new batch of the same shapes: compiled once (Hutchinson and the exact diagonal)
    for f in (
        lambda b: curvature.hutchinson_diagonal(_xy_loss, params, *b, key=key, num_probes=4),
        lambda b: curvature.hessian_diagonal(_xy_loss, params, *b),
    ):
        f((x, y))
        before = engine.COMPILE_COUNTER.compiles
        f((x1, y))
        assert engine.COMPILE_COUNTER.compiles == before

    def closing_over(xb):
        return lambda p: mlp_loss(p, (xb, y))

    first = run(closing_over(x))
    before = engine.COMPILE_COUNTER.compiles
    second = run(closing_over(x1))  # same code, a different captured array: not shared
    assert engine.COMPILE_COUNTER.compiles > before
    assert float(first) == pytest.approx(float(again), rel=1e-5)
    assert float(second) == pytest.approx(float(other), rel=1e-5)
