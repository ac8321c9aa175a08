"""Test scaffolding shared by the metrics tests: a one-hidden-layer MLP trained full-batch with Adam,
vmapped over K inclusion masks (the mask is a per-example loss weight), standing in for the engine's
vmapped trainer (``runner.vmapped_train_fn``) so the metrics tests need no Flax model."""

import jax
import jax.numpy as jnp
import optax


def mlp_logits(p, x):
    return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def make_train_fn(x, y, *, num_classes=10, hidden=64, steps=300, lr=1e-2, seed=0):
    """train_fn(masks bool[K, N]) -> MLP params stacked over K (full-batch Adam, mask = example weight)."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    d = x.shape[1]
    opt = optax.adam(lr)

    def init(key):
        k1, k2 = jax.random.split(key)
        return {
            "w1": jax.random.normal(k1, (d, hidden)) * jnp.sqrt(2.0 / d),
            "b1": jnp.zeros(hidden),
            "w2": jax.random.normal(k2, (hidden, num_classes)) / jnp.sqrt(hidden),
            "b2": jnp.zeros(num_classes),
        }

    def loss(p, w):
        ce = optax.softmax_cross_entropy_with_integer_labels(mlp_logits(p, x), y)
        return jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1.0)

    def train_one(mask, key):
        p = init(key)
        w = mask.astype(jnp.float32)

        def step(carry, _):
            p, s = carry
            u, s = opt.update(jax.grad(loss)(p, w), s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), None, length=steps)
        return p

    @jax.jit
    def train_fn(masks):
        return jax.vmap(train_one)(masks, jax.random.split(jax.random.PRNGKey(seed), masks.shape[0]))

    return train_fn
