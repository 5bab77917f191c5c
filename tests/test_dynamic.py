"""Static vs dynamic UAT (docs/method.md section 3): the dynamic model is what it claims to be,
the comparison is at equal parameter count, and the experiment reports finite errors."""
import inspect
import math

import pytest
import torch

from duat.theory.dynamic import (DynamicUAT, format_rmse_summary, matched_static_width, rmse_summary,
                                 static_vs_dynamic)
from duat.theory.uat import TARGETS, UAT, count_parameters


def test_dynamic_parameters_depend_on_x_only_where_asked():
    torch.manual_seed(0)
    x = torch.randn(5, 2)
    both = DynamicUAT(2, 6, k=3)
    p = both.parameters_at(x)
    assert p["alpha"].shape == p["theta"].shape == (5, 6)
    assert p["theta"].std(dim=0).max() > 0 and p["alpha"].std(dim=0).max() > 0
    theta_only = DynamicUAT(2, 6, k=3, dynamic=("theta",))
    p = theta_only.parameters_at(x)
    assert torch.equal(p["alpha"], theta_only.base.alpha.expand(5, -1))
    assert p["theta"].std(dim=0).max() > 0


def test_forward_is_the_dynamic_formula():
    torch.manual_seed(1)
    model = DynamicUAT(1, 4, k=2)
    with torch.no_grad():
        model.base.alpha.normal_()
    x = torch.randn(3, 1)
    p = model.parameters_at(x)
    expected = (p["alpha"] * torch.tanh(x @ model.base.w.T + p["theta"])).sum(1)
    assert torch.allclose(model(x), expected)


def test_without_hypernetwork_output_it_is_a_static_uat():
    torch.manual_seed(2)
    model = DynamicUAT(2, 5, k=3)
    with torch.no_grad():
        model.V.weight.zero_()
        model.base.alpha.normal_()
    x = torch.randn(4, 2)
    assert torch.allclose(model(x), model.base(x))


@pytest.mark.parametrize("d,N,k", [(1, 12, 4), (2, 12, 4), (1, 8, 8), (2, 3, 1)])
def test_matched_width_equalises_parameter_count(d, N, k):
    dyn = DynamicUAT(d, N, k)
    static = UAT(d, matched_static_width(dyn))
    assert abs(count_parameters(static) - count_parameters(dyn)) <= (d + 2) / 2


def test_experiment_records_and_summary():
    records = static_vs_dynamic(targets=("smooth1d", "kinked2d"), steps=30, seeds=(0, 1), n_test=100)
    assert len(records) == 2 * 2 * 2
    for r in records:
        assert r["model"] in ("static", "dynamic") and math.isfinite(r["test_rmse"]) and r["test_rmse"] > 0
    rows = rmse_summary(records)
    assert [r["target"] for r in rows] == ["smooth1d", "kinked2d"]
    for r in rows:
        assert abs(r["static_params"] - r["dynamic_params"]) <= 2
        assert r["ratio"] == pytest.approx(r["dynamic_rmse"] / r["static_rmse"])
    assert "kinked2d" in format_rmse_summary(rows)


def test_the_default_comparison_covers_every_target():
    # notebook 03's table: all six targets of notebook 01, none left out silently
    default = inspect.signature(static_vs_dynamic).parameters["targets"].default
    assert default == tuple(TARGETS) and len(default) == 6 and "kinked2d" in default


def test_training_reduces_error_for_both_models():
    short = rmse_summary(static_vs_dynamic(targets=("smooth1d",), steps=5, n_test=200))[0]
    longer = rmse_summary(static_vs_dynamic(targets=("smooth1d",), steps=300, n_test=200))[0]
    assert longer["static_rmse"] < short["static_rmse"] and longer["dynamic_rmse"] < short["dynamic_rmse"]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="subset"):
        DynamicUAT(1, 4, dynamic=("w",))
    with pytest.raises(ValueError, match="positive int"):
        DynamicUAT(1, 4, k=0)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        DynamicUAT(2, 4)(torch.randn(3, 1))
