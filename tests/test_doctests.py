"""The examples in the package's docstrings run and print what they show; every public function has one.

Every module of ``jaxunlearn`` is found by walking the package, so a new module is checked without an edit
here. Options: ``doctest_optionflags`` of the pytest settings in pyproject.toml (``NORMALIZE_WHITESPACE
ELLIPSIS``; floats are printed rounded, or elided with ``...`` where the last digits depend on the jax version).
"""

import doctest
import importlib
import inspect
import io
import pkgutil

import pytest

import jaxunlearn

# Modules whose examples are not yet runnable: a module and everything below it (none: every module runs).
NOT_YET_RUNNABLE: tuple[str, ...] = ()


def _all_modules() -> list[str]:
    names = ["jaxunlearn"]
    names += [m.name for m in pkgutil.walk_packages(jaxunlearn.__path__, "jaxunlearn.")]
    return sorted(names)


def _not_yet(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in NOT_YET_RUNNABLE)


MODULES = [m for m in _all_modules() if not _not_yet(m)]
# Modules whose examples run a whole small training (seconds each): their examples run in the slow CI step.
TRAINING_EXAMPLES = (  # examples that train models: the slow tier
    "jaxunlearn.theory",
    "jaxunlearn.models.gpt",
    "jaxunlearn.methods.lm",
    "jaxunlearn.methods.lm.base",
    "jaxunlearn.methods.lm.common",
    "jaxunlearn.methods.lm.hessian_select",
    "jaxunlearn.methods.lm.rmu",
    "jaxunlearn.metrics.lm",
)
EXAMPLE_CASES = [pytest.param(m, marks=pytest.mark.slow) if m in TRAINING_EXAMPLES else m for m in MODULES]


def test_the_doctest_options_come_from_the_pytest_settings(pytestconfig):
    assert _flags(pytestconfig) == doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


def test_the_list_of_modules_not_yet_checked_names_real_modules():
    modules = _all_modules()
    for prefix in NOT_YET_RUNNABLE:
        assert any(m == prefix or m.startswith(prefix + ".") for m in modules), f"{prefix} is no module"
    assert "jaxunlearn.curvature" in MODULES and "jaxunlearn.metrics.accuracy" in MODULES


def _flags(config) -> int:
    flags = 0
    for name in config.getini("doctest_optionflags"):
        flags |= doctest.OPTIONFLAGS_BY_NAME[name]
    return flags


@pytest.mark.parametrize("name", EXAMPLE_CASES)
def test_docstring_examples_run(name, pytestconfig):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=_flags(pytestconfig))
    out = io.StringIO()
    for test in finder.find(module, name, globs=dict(vars(module))):
        runner.run(test, out=out.write)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, out.getvalue()


def _public_functions(module):
    for attr, obj in vars(module).items():
        if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if getattr(obj, "__module__", None) == module.__name__ and obj.__name__ != "<lambda>":
            yield attr, obj


@pytest.mark.parametrize("name", MODULES)
def test_every_public_function_has_a_runnable_example(name):
    module = importlib.import_module(name)
    missing = [attr for attr, obj in _public_functions(module) if ">>>" not in (inspect.getdoc(obj) or "")]
    assert not missing, f"{name}: no '>>>' example in the docstring of {', '.join(missing)}"
