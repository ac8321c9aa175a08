"""Shared test fixtures: a tiny pure-JAX MLP and its data (no Flax, so core tests stay framework-free)."""

import os
import tempfile

os.environ.setdefault("MPLBACKEND", "Agg")
# One persistent XLA compilation cache for the whole test run: both pytest-xdist workers, both CI steps and every
# subprocess a test starts (they inherit the environment) compile the shared programs (the digits CNN's steps, the
# tiny models) once instead of once per process, which is most of a CPU test's time. JAX keys each entry by the
# program, the compile options, the devices and its own version, so a cache reused across versions is safe.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "jaxunlearn-tests-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402


def mlp_init(key, sizes=(4, 5, 3)):
    params = {}
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        params[f"l{i}"] = {"w": jax.random.normal(k, (a, b)) / jnp.sqrt(a), "b": jnp.full((b,), 0.1 * (i + 1))}
    return params


def mlp_apply(params, x):
    n = len(params)
    for i in range(n):
        x = x @ params[f"l{i}"]["w"] + params[f"l{i}"]["b"]
        if i < n - 1:
            x = jnp.tanh(x)
    return x


def mlp_loss(params, batch):
    x, y = batch
    logits = mlp_apply(params, x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


@pytest.fixture
def mlp():
    key = jax.random.key(0)
    kp, kx, ky = jax.random.split(key, 3)
    params = mlp_init(kp)
    x = jax.random.normal(kx, (16, 4))
    y = jax.random.randint(ky, (16,), 0, 3)
    return params, (x, y)
