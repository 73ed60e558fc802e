"""pyae.experiments.contractive: the quick run writes complete, consistent results; the
Jacobian measures are what they say."""

import json
import math

import pytest
import torch

pytest.importorskip("matplotlib")

import pyae  # noqa: E402
import reference  # noqa: E402
from helpers import run_quick  # noqa: E402
from pyae import functional as PF  # noqa: E402
from pyae.experiments.contractive import (  # noqa: E402
    QUICK_SETTINGS,
    angle_degrees,
    encoder_jacobians,
    format_table,
    jacobians_by_jacrev,
    make_data,
    measure,
    principal_components,
    run_experiment,
    sensitive_direction,
    sensitivity_ratio,
)

VARIANTS = {"2d": 2, "20d": 20}
MEASURED = ("sensitivity_ratio", "angle_to_pc1_degrees", "reconstruction_error", "relative_reconstruction_error",
            "mean_squared_jacobian_norm", "sensitive_direction", "pc_sensitivities", "contractive_weight")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("contractive")
    return run_quick(run_experiment, out)


def test_results_json(quick_run):
    out, results = quick_run
    stored = json.loads((out / "results.json").read_text())
    assert stored == json.loads(json.dumps(results))
    settings = stored["settings"]
    assert settings["quick"] is True and settings["complete"] is True
    assert settings["seed"] == 0 and settings["device"] == "cpu" and settings["cpu_threads"] == 1
    assert list(stored["variants"]) == list(VARIANTS)
    for variant, n in VARIANTS.items():
        entry = stored["variants"][variant]
        data = entry["data"]
        assert data["n_inputs"] == n and len(data["u1"]) == n and len(data["pc1"]) == n
        assert data["n_train"] == settings["n_train"] and data["n_test"] == settings["n_test"]
        assert 0.0 <= data["pc1_to_u1_degrees"] < 10.0  # the strong direction is the first component
        assert list(entry["models"]) == ["plain", "contractive"]
        for name, model in entry["models"].items():
            for key in MEASURED:
                assert key in model, (variant, name, key)
            assert math.isfinite(model["sensitivity_ratio"]) and model["sensitivity_ratio"] > 0.0
            assert 0.0 <= model["angle_to_pc1_degrees"] <= 90.0
            assert model["reconstruction_error"] >= 0.0 and model["mean_squared_jacobian_norm"] > 0.0
            assert len(model["pc_sensitivities"]) == n
            assert sum(v * v for v in model["sensitive_direction"]) == pytest.approx(1.0)
            check = model["jacobian_check"]
            assert check["jacrev_vs_closed_form_max_abs"] < 1e-12
            assert check["penalty_vs_fused_operator_rel"] < 1e-4  # the models train in float32
            assert model["config"]["contractive_weight"] == model["contractive_weight"]
            assert model["config"]["tied_weights"] is True and model["config"]["decoder_activation"] == "linear"
        plain, contractive = entry["models"]["plain"], entry["models"]["contractive"]
        assert plain["contractive_weight"] == 0.0
        assert contractive["contractive_weight"] in QUICK_SETTINGS["contractive_weights"]
        # The same initial weights: only the penalty differs.
        assert {k: v for k, v in plain["config"].items() if k != "contractive_weight"} == \
               {k: v for k, v in contractive["config"].items() if k != "contractive_weight"}

        # The comparison is what the numbers say.
        comparison = entry["comparison"]
        assert comparison["more_selective"] == (contractive["sensitivity_ratio"] > plain["sensitivity_ratio"])
        assert comparison["ratio_gain"] == pytest.approx(contractive["sensitivity_ratio"] / plain["sensitivity_ratio"])
        assert comparison["contractive_aligned_with_pc1"] == (
            contractive["angle_to_pc1_degrees"] <= settings["aligned_degrees"])

        # The weight is the rule's choice: the largest within the validation budget.
        selection = entry["selection"]
        budget = selection["plain_val_reconstruction_error"] + settings["selection_budget"] * \
            selection["val_total_variance"]
        assert selection["budget"] == pytest.approx(budget)
        assert [g["contractive_weight"] for g in selection["grid"]] == QUICK_SETTINGS["contractive_weights"]
        passing = [g["contractive_weight"] for g in selection["grid"] if g["val_reconstruction_error"] <= budget]
        assert selection["chosen"] == (max(passing) if passing else min(QUICK_SETTINGS["contractive_weights"]))
        assert selection["chosen"] == contractive["contractive_weight"]
        chosen_row = next(g for g in selection["grid"] if g["contractive_weight"] == selection["chosen"])
        assert chosen_row["sensitivity_ratio"] == contractive["sensitivity_ratio"]
    assert not list(out.glob(".*.tmp"))


def test_report_and_pictures(quick_run):
    out, results = quick_run
    report = (out / "report.md").read_text()
    assert "smoke run" in report
    assert format_table(results) in report
    for png in ("contractive.png", "sensitivity.png"):
        assert (out / png).stat().st_size > 0
        assert f"({png})" in report
    for variant, entry in results["variants"].items():
        plain, contractive = entry["models"]["plain"], entry["models"]["contractive"]
        section = report.split(f"### {variant} ")[1].split("###")[0]
        verdict = "**is more selective**" if entry["comparison"]["more_selective"] else "**is not more selective**"
        assert verdict in section
        assert f"{contractive['sensitivity_ratio']:.3g} against the plain model's {plain['sensitivity_ratio']:.3g}" \
            in section
        aligned = "**aligned**" if entry["comparison"]["contractive_aligned_with_pc1"] else "**not aligned**"
        assert aligned in section and f"{contractive['angle_to_pc1_degrees']:.2f} degrees" in section


def test_format_table(quick_run):
    _, results = quick_run
    table = format_table(results).splitlines()
    assert len(table) == 2 + 2 * len(VARIANTS)
    assert all(line.startswith("|") and line.endswith("|") for line in table)
    assert len({line.count("|") for line in table}) == 1  # no "|" inside a cell
    with pytest.raises(TypeError):
        format_table({"models": {}})


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    model = pyae.Autoencoder(3, 2, tied_weights=True, decoder_activation="linear", dtype=torch.float64)
    x = torch.randn(7, 3, dtype=torch.float64)
    return model, x


def test_jacobians_agree_with_jacrev_and_the_model():
    model, x = _tiny_model()
    weight, bias = model.encoder.weight.detach(), model.encoder.bias.detach()
    by_jacrev = jacobians_by_jacrev(weight, bias, x)
    assert by_jacrev.shape == (7, 2, 3)
    torch.testing.assert_close(encoder_jacobians(weight, bias, x), by_jacrev, rtol=1e-12, atol=1e-14)
    # The model's own (fused) encoder, differentiated by plain autograd, point by point.
    for i in range(x.shape[0]):
        jacobian = torch.autograd.functional.jacobian(lambda p: model.encode(p[None])[0], x[i])
        torch.testing.assert_close(by_jacrev[i], jacobian, rtol=1e-12, atol=1e-14)
    # Its mean squared Frobenius norm is the contractive penalty.
    squared = by_jacrev.pow(2).sum((1, 2)).mean()
    torch.testing.assert_close(squared, reference.contractive_by_jacobian(x, weight, bias))
    torch.testing.assert_close(squared, PF.sigmoid_encoder(x, weight, bias).contractive.detach())


def test_sensitivity_ratio_is_the_mean_of_the_ratios():
    model, x = _tiny_model(1)
    jacobians = jacobians_by_jacrev(model.encoder.weight.detach(), model.encoder.bias.detach(), x)
    u1 = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    u2 = torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)
    expected = sum((j @ u1).norm() / (j @ u2).norm() for j in jacobians) / len(jacobians) * (3.0 / 5.0**0.5)
    assert sensitivity_ratio(jacobians, u1, u2) == pytest.approx(float(expected), rel=1e-12)
    with pytest.raises(ValueError):
        sensitivity_ratio(jacobians, torch.zeros(3, dtype=torch.float64), u2)
    with pytest.raises(ValueError):
        sensitivity_ratio(jacobians[0], u1, u2)


def test_measure_on_a_tiny_model():
    model, _ = _tiny_model(2)
    data = make_data(3, (50, 10, 20), generator=torch.Generator().manual_seed(0))
    measured = measure(model, data)
    jacobians = jacobians_by_jacrev(model.encoder.weight.detach(), model.encoder.bias.detach(), data.test)
    assert measured["sensitivity_ratio"] == pytest.approx(sensitivity_ratio(jacobians, data.u1, data.u2))
    assert measured["jacobian_check"]["jacrev_vs_closed_form_max_abs"] < 1e-14
    assert measured["jacobian_check"]["penalty_vs_fused_operator_rel"] < 1e-12
    components, _ = principal_components(data.train)
    assert measured["angle_to_pc1_degrees"] == pytest.approx(
        angle_degrees(torch.tensor(measured["sensitive_direction"]), components[:, 0]))
    # pc_sensitivities: the RMS of ||J p|| over the test points, one per component.
    first = (jacobians @ components[:, 0]).pow(2).sum(1).mean().sqrt()
    assert measured["pc_sensitivities"][0] == pytest.approx(float(first))
    with torch.no_grad():
        assert measured["reconstruction_error"] == pytest.approx(float(model(data.test).terms["reconstruction"]))


def test_angle_helper():
    a = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)
    b = torch.tensor([2.0, -1.0, 0.0], dtype=torch.float64)  # orthogonal to a
    assert angle_degrees(a, 3.0 * a) == pytest.approx(0.0, abs=1e-9)
    assert angle_degrees(a, -a) == pytest.approx(0.0, abs=1e-9)  # lines: the sign does not matter
    assert angle_degrees(a, b) == pytest.approx(90.0, abs=1e-9)
    assert angle_degrees(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(45.0)
    assert angle_degrees(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1e-3])) == pytest.approx(
        math.degrees(math.atan(1e-3)))
    with pytest.raises(ValueError):
        angle_degrees(a, torch.zeros(3))
    with pytest.raises(ValueError):
        angle_degrees(a, torch.ones(2))


def test_sensitive_direction_and_principal_components():
    # Jacobians of rank one along v: the code reacts along v only.
    v = torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64)
    jacobians = torch.randn(5, 4, 1, dtype=torch.float64) * v
    direction, sensitivities = sensitive_direction(jacobians)
    assert angle_degrees(direction, v) == pytest.approx(0.0, abs=1e-6)
    assert sensitivities[1:].abs().max() < 1e-6 * sensitivities[0]
    data = make_data(20, (2000, 1, 1), generator=torch.Generator().manual_seed(0))
    components, variances = principal_components(data.train)
    assert angle_degrees(components[:, 0], data.u1) < 5.0
    assert variances[0] == pytest.approx(1.01, rel=0.15) and variances[1] == pytest.approx(0.01, rel=0.3)
    assert torch.all(variances[:-1] >= variances[1:])


def test_make_data():
    first = make_data(2, (30, 10, 20), generator=torch.Generator().manual_seed(5))
    again = make_data(2, (30, 10, 20), generator=torch.Generator().manual_seed(5))
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert [t.shape for t in first[:3]] == [(30, 2), (10, 2), (20, 2)]
    assert angle_degrees(first.u1, torch.tensor([1.0, 0.0])) == pytest.approx(30.0)
    high = make_data(20, (3, 3, 3), generator=torch.Generator().manual_seed(5))
    assert high.u1.norm() == pytest.approx(1.0) and high.u2.norm() == pytest.approx(1.0)
    assert float(torch.dot(high.u1, high.u2)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        make_data(1, (3, 3, 3))
    with pytest.raises(ValueError):
        make_data(2, (3, 3))


@pytest.mark.parametrize("kwargs, error", [
    (dict(quick="yes"), TypeError),
    (dict(quick=1), TypeError),
    (dict(progress=None), TypeError),
    (dict(seed=-1), ValueError),
    (dict(seed=1.5), TypeError),
    (dict(seed=2**63), ValueError),
    (dict(device="tpu"), ValueError),
    (dict(device=0), TypeError),
    (dict(num_threads=0), ValueError),
    (dict(num_threads=True), TypeError),
])
def test_bad_arguments_raise_before_anything_is_written(tmp_path, kwargs, error):
    with pytest.raises(error):
        run_experiment(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_bad_out_dir(tmp_path):
    with pytest.raises(TypeError):
        run_experiment(3, quick=True)
    with pytest.raises(TypeError):
        run_experiment(tmp_path, True)  # quick is keyword-only
