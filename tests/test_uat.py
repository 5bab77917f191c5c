"""Universal approximation (docs/method.md section 1): the model is the formula, fitting works, and
the measured error falls as the number of hidden units N grows."""
import math

import pytest
import torch

from duat.runtime import threads
from duat.theory.uat import (TARGETS, UAT, approximation_table, count_parameters, errors, fit_adam,
                             fit_lstsq, fit_uat, format_table, get_target, grid, make_data)


@pytest.mark.parametrize("activation,sigma", [("sigmoid", torch.sigmoid), ("tanh", torch.tanh),
                                              ("relu", torch.relu)])
def test_forward_is_the_formula(activation, sigma):
    torch.manual_seed(0)
    model = UAT(2, 5, activation)
    with torch.no_grad():
        model.alpha.normal_()
    x = torch.randn(7, 2)
    expected = torch.stack([sum(model.alpha[j] * sigma(model.w[j] @ x[i] + model.theta[j]) for j in range(5))
                            for i in range(7)])
    assert torch.allclose(model(x), expected, atol=1e-6)
    assert count_parameters(model) == 5 * (2 + 2)


def test_hidden_transitions_start_inside_the_domain():
    model = UAT(1, 200, "tanh")
    centres = -model.theta / model.w[:, 0]
    assert centres.min() >= -1 - 1e-6 and centres.max() <= 1 + 1e-6


def test_targets_and_grids():
    assert {t.kind for t in TARGETS.values()} == {"smooth", "kinked", "oscillating"}
    assert {t.dim for t in TARGETS.values()} == {1, 2}
    assert grid(2, 5).shape == (25, 2) and grid(1, 9)[4, 0] == 0
    x = torch.tensor([[0.5], [-0.25]])
    assert torch.allclose(get_target("kinked1d")(x), torch.tensor([-0.25, 0.0]))
    x_tr, y_tr, x_te, y_te = make_data("smooth2d", 6, 10)
    assert x_tr.shape == (36, 2) and y_tr.shape == (36,) and x_te.shape == (10, 2)
    assert x_te.abs().max() <= 1


def test_lstsq_recovers_a_function_in_the_span():
    torch.manual_seed(0)
    teacher = UAT(1, 6, "tanh").double()
    with torch.no_grad():
        teacher.alpha.normal_()
    x = grid(1, 100)
    student = UAT(1, 6, "tanh").double()
    student.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        student.alpha.zero_()
    fit_lstsq(student, x, teacher(x).detach())
    assert torch.allclose(student.alpha, teacher.alpha, atol=1e-6)


def test_adam_lowers_the_loss():
    torch.manual_seed(0)
    x, y = grid(1, 64, torch.float32), get_target("smooth1d")(grid(1, 64, torch.float32))
    losses = fit_adam(UAT(1, 8, "tanh"), x, y, steps=200)
    assert losses[-1] < 0.1 * losses[0]


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("target", list(TARGETS))
def test_error_falls_as_N_grows(target, activation):
    """A measurement, not a theorem: with the default fitting the error at N = 64 must be
    at most half the error at N = 2 for every target and activation."""
    table = approximation_table([target], Ns=(2, 64), activations=(activation,), n_test=500)
    small, large = (r["rmse"] for r in table)
    assert large < 0.5 * small, table


def test_adam_method_and_table_format():
    _, rec = fit_uat("oscillating1d", 8, "relu", method="adam", steps=20, n_train=64, n_test=50)
    assert rec["method"] == "adam" and rec["params"] == 24 and math.isfinite(rec["rmse"])
    text = format_table(approximation_table(["smooth1d"], Ns=(2, 4), n_test=50))
    assert "smooth1d" in text and "N=4" in text


def test_errors_helper():
    model = UAT(1, 1)
    x = torch.zeros(3, 1)
    assert errors(model, x, torch.tensor([1.0, -2.0, 0.0])) == pytest.approx({"rmse": math.sqrt(5 / 3), "max_err": 2.0})


def test_single_thread_restores_the_setting():
    before = torch.get_num_threads()
    with threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="activation"):
        UAT(1, 4, "softplus")
    with pytest.raises(ValueError, match="N must be a positive int"):
        UAT(1, 0)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        UAT(2, 4)(torch.randn(5))
    with pytest.raises(ValueError, match="unknown target"):
        get_target("cubic")
    with pytest.raises(ValueError, match=r"\(B, 1\)"):
        get_target("smooth1d")(torch.randn(3, 2))
    with pytest.raises(ValueError, match="method"):
        fit_uat("smooth1d", 4, method="sgd")
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        fit_lstsq(UAT(1, 2).double(), torch.zeros(4, 1, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
