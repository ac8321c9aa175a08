"""The one batched-apply helper: chunk sizes, map (pad, trim, concatenate), sum (padded rows weigh 0), meshes."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxunlearn import batching

RNG = np.random.default_rng(0)
X = RNG.normal(size=(23, 3)).astype(np.float32)
Y = RNG.integers(0, 5, size=23).astype(np.int32)
W = RNG.normal(size=(3, 2)).astype(np.float32)


def test_chunk_size_follows_its_formula():
    for n in range(1, 40):
        for bs in (1, 2, 5, 16, 64):
            for k in (1, 2, 4, 8):
                got = batching.chunk_size(n, bs, k)
                assert got == min(max(k, bs // k * k), -(-n // k) * k)
                assert got % k == 0 and got >= 1
                assert got <= max(k, bs) and got < n + k  # never a chunk of pure padding
    assert batching.chunk_size(5, 8) == 5  # a small set goes through whole


@pytest.mark.parametrize("as_jax", [False, True])
@pytest.mark.parametrize("batch_size", [1, 4, 7, 23, 100])
def test_map_matches_a_direct_call_and_compiles_once(as_jax, batch_size):
    traces = []

    @jax.jit
    def fn(xy):
        traces.append(1)
        x, y = xy
        return {"z": x @ W, "y2": 2 * y}

    x, y = (jnp.asarray(X), jnp.asarray(Y)) if as_jax else (X, Y)
    out = batching.batched_map(fn, (x, y), batch_size=batch_size)
    direct = np.asarray(jax.jit(lambda x: x @ W)(X))
    if batch_size >= len(X):  # one chunk of all the examples: the very same program as a direct call
        np.testing.assert_array_equal(out["z"], direct)
    np.testing.assert_allclose(out["z"], direct, rtol=1e-6, atol=1e-6)  # other shapes: other kernels
    np.testing.assert_array_equal(out["y2"], 2 * Y)
    assert isinstance(out["z"], np.ndarray) and out["z"].dtype == np.float32
    assert len(traces) == 1  # every chunk has the same shape, the padded last one included


def test_map_pads_with_the_last_example_and_trims():
    seen = []

    def fn(x):
        seen.append(np.asarray(x).copy())
        return x * 10

    out = batching.batched_map(fn, np.arange(5.0), batch_size=2)
    np.testing.assert_array_equal(out, np.arange(5.0) * 10)
    assert [s.tolist() for s in seen] == [[0.0, 1.0], [2.0, 3.0], [4.0, 4.0]]
    # a set no larger than batch_size goes through whole, without copies or padding
    whole = np.arange(3.0)
    got = []
    batching.batched_map(lambda x: got.append(x) or x, whole, batch_size=8)
    assert got[0] is whole


def test_map_rows_on_another_axis():
    ws = jnp.stack([jnp.asarray(W), -jnp.asarray(W)])  # K = 2 models
    fn = jax.jit(lambda x: jnp.einsum("kdo,bd->kbo", ws, x))
    out = batching.batched_map(fn, X, batch_size=5, out_axis=1)
    assert out.shape == (2, 23, 2)
    np.testing.assert_allclose(out, np.asarray(fn(X)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(batching.batched_map(fn, X, batch_size=5, out_axis=-2), out)


@pytest.mark.parametrize("as_jax", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3, 6, 23, 50])
def test_sum_weights_padding_zero(as_jax, batch_size):
    """Integer-valued terms: the chunked sum is exact, and the repeated last example is not counted."""
    x = np.arange(1.0, 24.0, dtype=np.float32)
    traces = []

    @jax.jit
    def fn(xs, w):
        traces.append(1)
        return {"s": jnp.sum(w * xs), "sq": jnp.sum(w * xs**2)}

    total = batching.batched_sum(fn, jnp.asarray(x) if as_jax else x, batch_size=batch_size)
    assert float(total["s"]) == x.sum() and float(total["sq"]) == (x**2).sum()
    assert len(traces) == 1


def test_sum_of_gradients_equals_the_full_gradient():
    def per_example(w, x, y):
        return jnp.sum((x @ w)[:, 0] - y) ** 2

    w0 = jnp.asarray(W[:, :1])

    @jax.jit
    def grad_sum(xy, weights):
        x, y = xy
        return jax.grad(lambda w: jnp.sum(weights * jax.vmap(lambda a, b: per_example(w, a[None], b))(x, y)))(w0)

    full = jax.grad(lambda w: jnp.sum(jax.vmap(lambda a, b: per_example(w, a[None], b))(X, Y)))(w0)
    got = batching.batched_sum(grad_sum, (X, Y.astype(np.float32)), batch_size=4)
    np.testing.assert_allclose(got, full, rtol=1e-5, atol=1e-5)


def test_sum_with_carry_adds_inside_the_function():
    calls = []

    def fn(xs, w, total):
        calls.append(total is None)
        part = jnp.sum(w * xs)
        return part if total is None else total + part

    got = batching.batched_sum(fn, np.arange(7.0), batch_size=3, carry=True)
    assert float(got) == 21.0 and calls == [True, False, False]


def test_sum_under_jit_with_traced_data():
    fn = jax.jit(lambda xs, w: jnp.sum(w * jnp.sin(xs)))
    eager = batching.batched_sum(fn, jnp.asarray(X[:, 0]), batch_size=4)
    jitted = jax.jit(lambda x: batching.batched_sum(fn, x, batch_size=4))(jnp.asarray(X[:, 0]))
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    np.testing.assert_allclose(eager, np.sin(X[:, 0]).sum(), rtol=1e-5)


def test_one_device_mesh_places_every_chunk():
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    shardings = []

    def fn(x):
        shardings.append(x.sharding)
        return x + 1

    out = batching.batched_map(fn, X, batch_size=8, mesh=mesh)
    np.testing.assert_array_equal(out, X + 1)
    assert all(s == jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")) for s in shardings)
    total = batching.batched_sum(lambda x, w: jnp.sum(w[:, None] * x, 0), X, batch_size=8, mesh=mesh, axis="data")
    np.testing.assert_allclose(total, X.sum(0), rtol=1e-5, atol=1e-5)


def test_bad_input_fails_with_one_line():
    cases = [
        (lambda: batching.batched_map(lambda x: x, np.zeros((0, 2)), batch_size=2), "no examples"),
        (lambda: batching.batched_map(lambda x: x, (np.zeros(3), np.zeros(4)), batch_size=2), "leading example axis"),
        (lambda: batching.batched_map(lambda x: x, np.float32(1.0), batch_size=2), "leading example axis"),
        (lambda: batching.batched_map(lambda x: x, {}, batch_size=2), "at least one array"),
        (lambda: batching.batched_map(lambda x: x, X, batch_size=0), "batch_size must be an integer >= 1"),
        (lambda: batching.batched_map(lambda x: x, X, batch_size=True), "batch_size"),
        (lambda: batching.batched_map("f", X, batch_size=2), "fn must be callable"),
        (lambda: batching.batched_map(lambda x: x, X, batch_size=2, out_axis=0.5), "out_axis"),
        (lambda: batching.batched_sum(lambda x, w: x, X, batch_size=2, carry="yes"), "carry"),
        (lambda: batching.chunk_size(5, 2, multiple=0), "multiple"),
    ]
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    cases.append((lambda: batching.batched_map(lambda x: x, X, batch_size=2, mesh=mesh, axis="model"), "not an axis"))
    for call, match in cases:
        with pytest.raises(ValueError, match=match) as err:
            call()
        assert "\n" not in str(err.value)


MESH_CHILD = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jaxunlearn import batching
    mesh = jax.make_mesh((4,), ("data",))
    x = np.arange(1.0, 11.0, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    sizes, shards = [], []
    double = jax.jit(lambda c: c * 2)
    def fn(c):
        sizes.append(c.shape[0]); shards.append(len(c.addressable_shards))
        return double(c)
    out = batching.batched_map(fn, x, batch_size=6, mesh=mesh)
    total = batching.batched_sum(jax.jit(lambda c, w: jnp.sum(w[:, None] * c, 0)), x, batch_size=6, mesh=mesh)
    small = batching.batched_map(jax.jit(lambda c: c + 0), x[:3], batch_size=6, mesh=mesh)
    json.dump({"devices": len(jax.devices()), "sizes": sizes, "shards": shards, "out": out.tolist(),
               "total": np.asarray(total).tolist(), "small": small.tolist()}, sys.stdout)
    """
)


@pytest.mark.slow
def test_mesh_chunks_are_multiples_of_the_data_axis():
    """Four simulated CPU devices (a subprocess: XLA sets the device count before jax starts)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", MESH_CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(proc.stdout)
    x = np.arange(1.0, 11.0)[:, None] * np.ones((1, 3))
    assert rep["devices"] == 4
    assert rep["sizes"] == [4, 4, 4] and rep["shards"] == [4, 4, 4]  # batch_size 6 -> chunks of 4 rows
    np.testing.assert_array_equal(rep["out"], 2 * x)
    np.testing.assert_array_equal(rep["total"], x.sum(0))
    np.testing.assert_array_equal(rep["small"], x[:3])  # 3 examples padded to 4, trimmed back
