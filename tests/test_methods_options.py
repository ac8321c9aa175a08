"""methods.options: every method's defaults pass its rules; bad values fail in one line naming method and option."""

import pytest

from jaxunlearn import methods
from jaxunlearn.methods import options


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_every_methods_defaults_pass_its_rules(name):
    m = methods.get(name)
    assert methods.resolve_options(m, {}) == m.defaults


@pytest.mark.parametrize(
    "method,opts,message",
    [
        ("neggrad", {"alpha": 5}, "neggrad option alpha=5: must be a number in [0, 1]."),
        ("neggrad", {"epochs": -3}, "neggrad option epochs=-3: must be an integer >= 1"),
        ("neggrad", {"lr_scale": -1}, "neggrad option lr_scale=-1: must be a finite number > 0."),
        ("neggrad", {"lr_scale": float("nan")}, "neggrad option lr_scale=nan: must be a finite number > 0."),
        ("ga", {"epochs": 2.5}, "ga option epochs=2.5: must be an integer >= 1"),
        ("sharp_minmax", {"fraction": 7}, "sharp_minmax option fraction=7: must be a fraction in (0, 1]."),
        ("sharp_minmax", {"largest": "yes"}, "sharp_minmax option largest='yes': must be true or false."),
        ("sharp_minmax", {"mask_reading": "loose"}, "sharp_minmax option mask_reading='loose': must be one of"),
        ("scrub", {"msteps": -1}, "scrub option msteps=-1: must be an integer >= 0."),
        ("scrub", {"kd_T": 0}, "scrub option kd_T=0: must be a finite number > 0."),
        ("ssd", {"alpha": 0}, "ssd option alpha=0: must be a finite number > 0."),
        ("retrain", {"init_seed": 2**63}, "retrain option init_seed=9223372036854775808: must be None or an integer"),
        ("hessian_select", {"base": "ssd"}, "hessian_select option base='ssd': must be a registered gradient method"),
        ("hessian_select", {"scores": "curvy"}, "hessian_select option scores='curvy': must be one of"),
        ("neggrad@strong", {"alpha": -0.1}, "neggrad@strong option alpha=-0.1: must be a number in [0, 1]."),
    ],
)
def test_bad_option_values_fail_in_one_line(method, opts, message):
    with pytest.raises(ValueError) as err:
        methods.resolve_options(methods.get(method), opts)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_user_method_declares_its_own_rules():
    @methods.register("tmp_rules", "x", {"beta": 0.5, "lr_scale": 1.0}, checks={"beta": options.positive()})
    def tmp(ctx, opts):
        raise AssertionError("not built in this test")

    try:
        with pytest.raises(ValueError, match="tmp_rules option beta=0: must be a finite number > 0"):
            methods.resolve_options(methods.get("tmp_rules"), {"beta": 0})
        with pytest.raises(ValueError, match="tmp_rules option lr_scale=0: must be a finite number > 0"):
            methods.resolve_options(methods.get("tmp_rules"), {"lr_scale": 0})  # the common rules apply too
    finally:
        methods.METHODS.pop("tmp_rules", None)
