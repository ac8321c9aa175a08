"""Checks of method options: each rule says what a value must be, so a bad option fails when a job is set up,
before any training, with one line naming the method, the option and the allowed range.

A rule is ``rule(value) -> str | None``: ``None`` when the value is allowed, else what it must be. The rules
of the common options (:data:`COMMON`: ``lr_scale``, ``forget_lr_scale``, ``epochs``, ``fraction``) apply to
every method that has them; a method adds its own with ``register(..., checks={name: rule})``.

Example:
    >>> check("neggrad", {"alpha": 5.0, "lr_scale": 1.0}, {"alpha": unit_interval()})
    Traceback (most recent call last):
    jaxunlearn.methods.options.OptionError: neggrad option alpha=5.0: must be a number in [0, 1].
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable

__all__ = [
    "COMMON",
    "OptionError",
    "Rule",
    "check",
    "count",
    "one_of",
    "positive",
    "nonnegative",
    "unit_interval",
    "fraction",
    "epochs",
    "boolean",
    "optional_seed",
    "mapping",
]

Rule = Callable[[object], "str | None"]


class OptionError(ValueError):
    """A method option outside its range: ``method``, ``option``, ``value`` and ``problem`` (what it must be).

    Example:
        >>> str(OptionError("ga", "epochs", 0, "must be an integer >= 1"))
        'ga option epochs=0: must be an integer >= 1.'
    """

    def __init__(self, method: str, option: str, value, problem: str):
        self.method, self.option, self.value, self.problem = method, option, value, problem
        super().__init__(f"{method} option {option}={value!r}: {problem}.")


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _integer(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def positive() -> Rule:
    """``v > 0``, a finite number.

    Example:
        >>> positive()(0.0)
        'must be a finite number > 0'
    """
    return lambda v: None if _number(v) and v > 0 else "must be a finite number > 0"


def nonnegative() -> Rule:
    """``v ≥ 0``, a finite number.

    Example:
        >>> nonnegative()(0.0) is None
        True
    """
    return lambda v: None if _number(v) and v >= 0 else "must be a finite number >= 0"


def unit_interval() -> Rule:
    """``0 ≤ v ≤ 1``.

    Example:
        >>> unit_interval()(1.5)
        'must be a number in [0, 1]'
    """
    return lambda v: None if _number(v) and 0 <= v <= 1 else "must be a number in [0, 1]"


def fraction() -> Rule:
    """``0 < v ≤ 1`` (a fraction of the parameters).

    Example:
        >>> fraction()(7)
        'must be a fraction in (0, 1]'
    """
    return lambda v: None if _number(v) and 0 < v <= 1 else "must be a fraction in (0, 1]"


def count(minimum: int = 1) -> Rule:
    """An integer ``v ≥ minimum``.

    Example:
        >>> count(1)(0)
        'must be an integer >= 1'
    """
    return lambda v: None if _integer(v) and v >= minimum else f"must be an integer >= {minimum}"


def epochs() -> Rule:
    """``None`` (the context's epochs) or an integer ≥ 1.

    Example:
        >>> epochs()(-3)
        "must be an integer >= 1, or None for the run's --unlearn-epochs"
    """
    return lambda v: (
        None
        if v is None or (_integer(v) and v >= 1)
        else ("must be an integer >= 1, or None for the run's --unlearn-epochs")
    )


def one_of(choices: Iterable[str]) -> Rule:
    """One of ``choices``.

    Example:
        >>> one_of(("a", "b"))("c")
        "must be one of 'a', 'b'"
    """
    choices = tuple(choices)
    return lambda v: None if v in choices else "must be one of " + ", ".join(repr(c) for c in choices)


def boolean() -> Rule:
    """``True`` or ``False``.

    Example:
        >>> boolean()("yes")
        'must be true or false'
    """
    return lambda v: None if isinstance(v, bool) else "must be true or false"


def optional_seed() -> Rule:
    """``None`` or an integer in ``[0, 2**32)`` (a NumPy / JAX seed).

    Example:
        >>> optional_seed()(2**63)
        'must be None or an integer in [0, 2**32)'
    """
    return lambda v: (
        None if v is None or (_integer(v) and 0 <= v < 2**32) else ("must be None or an integer in [0, 2**32)")
    )


def mapping() -> Rule:
    """``None`` or a dict of options.

    Example:
        >>> mapping()({"alpha": 0.9}) is None
        True
    """
    return lambda v: None if v is None or isinstance(v, dict) else "must be None or a dict of options"


#: Rules of the options many methods share.
COMMON: dict[str, Rule] = {
    "lr_scale": positive(),
    "forget_lr_scale": positive(),
    "epochs": epochs(),
    "fraction": fraction(),
}


def check(method: str, options: dict, checks: dict[str, Rule] | None = None) -> dict:
    """Check every option of ``options`` that has a rule (``checks`` over :data:`COMMON`); return ``options``.

    Raises ``ValueError("METHOD option NAME=VALUE: must ...")`` for the first value a rule refuses.

    Example:
        >>> check("ft", {"lr_scale": 0.5, "epochs": None})
        {'lr_scale': 0.5, 'epochs': None}
        >>> check("ft", {"lr_scale": -1})
        Traceback (most recent call last):
        jaxunlearn.methods.options.OptionError: ft option lr_scale=-1: must be a finite number > 0.
    """
    rules = {**COMMON, **(checks or {})}
    for name, value in options.items():
        rule = rules.get(name)
        problem = rule(value) if rule is not None else None
        if problem:
            raise OptionError(method, name, value, problem)
    return options
