"""The open training core: one step you can hold, one short loop with hooks, batches from a source.

* :mod:`.step`: :class:`TrainState` and :func:`make_step`, the pure update of one phase (any Optax
  optimizer, SAM / ASAM / sharpness maximization through :func:`jaxunlearn.transforms.sam`), to jit and
  call in your own loop.
* :mod:`.loop`: :func:`run` executes a :class:`~jaxunlearn.plan.Plan` (pretraining, Retrain, every
  unlearning method) as an epoch loop over the hooks of :mod:`.hooks` (checkpoint/resume, divergence
  guard, progress, callbacks, timing); :func:`train` is its one-phase form.
* :mod:`.sources`: batch pytrees from an in-device gather by index (:class:`ArraySource`,
  :class:`DeviceData`) or streamed from Grain / TFDS (:class:`StreamingSource`).
* :mod:`.many`: :func:`run_many`, a plan for K models at once (one compiled program per phase), and its
  one-phase form :func:`train_many`.
* :mod:`.evaluate`: batched eval-mode logits and accuracy of a classifier.

The engine knows nothing of classification: a phase loss receives the batch pytree the source gives.

Example:
    >>> import numpy as np, optax
    >>> from jaxunlearn import engine, models
    >>> apply_fn, params, state = models.split_model(models.build("mlp", num_classes=2, input_shape=(3,)))
    >>> x = np.random.default_rng(0).normal(size=(16, 3)); y = (x[:, 0] > 0).astype(int)
    >>> res = engine.train(apply_fn, params, state, engine.DeviceData.from_numpy(x, y), optimizer=optax.sgd(0.1),
    ...                    epochs=2, batch_size=8, progress=False)
    >>> len(res.history)
    2
"""

from jaxunlearn.engine.evaluate import evaluate
from jaxunlearn.engine.hooks import (
    COMPILE_COUNTER,
    Checkpointing,
    CompileCounter,
    DivergenceGuard,
    EpochCallback,
    Progress,
    Timer,
)
from jaxunlearn.engine.loop import RunResult, check_indices, compiled_step, run, train
from jaxunlearn.engine.many import (
    MAX_UNROLL_MODELS,
    MODEL_MODES,
    default_model_mode,
    run_many,
    stack_plans,
    train_many,
)
from jaxunlearn.engine.sources import ArraySource, DeviceData, StreamingSource, as_source, epoch_indices
from jaxunlearn.engine.step import SAM_MODES, TrainState, init_state, make_step
from jaxunlearn.plan import (
    PRETRAIN_DEFAULT,
    UNLEARN_DEFAULT,
    OptimConfig,
    Phase,
    Plan,
    StepInfo,
    as_optim_config,
    build_optimizer,
    supervised_loss,
)

__all__ = [
    "TrainState",
    "StepInfo",
    "init_state",
    "make_step",
    "run",
    "train",
    "train_many",
    "run_many",
    "stack_plans",
    "evaluate",
    "RunResult",
    "ArraySource",
    "DeviceData",
    "StreamingSource",
    "as_source",
    "epoch_indices",
    "check_indices",
    "compiled_step",
    "Checkpointing",
    "DivergenceGuard",
    "Progress",
    "EpochCallback",
    "Timer",
    "CompileCounter",
    "COMPILE_COUNTER",
    "OptimConfig",
    "Phase",
    "Plan",
    "PRETRAIN_DEFAULT",
    "UNLEARN_DEFAULT",
    "as_optim_config",
    "build_optimizer",
    "supervised_loss",
    "SAM_MODES",
    "MODEL_MODES",
    "MAX_UNROLL_MODELS",
    "default_model_mode",
]
