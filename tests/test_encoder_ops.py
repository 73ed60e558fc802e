"""The fused encoder operator and its backward against the float64 reference, jacrev, gradcheck and
opcheck."""

import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyae
import reference
from helpers import DTYPES, assert_close, make_inputs
from pyae import ops

# Shapes: tiny ones, and ones spanning several tiles of the CPU kernel (64 rows x 512 columns)
# and of the CUDA kernel's blocks, with ragged edges.
SHAPES = [(1, 1, 1), (3, 5, 2), (7, 13, 5), (130, 37, 600)]

# --------------------------------------------------------------------------------------
# Forward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_matches_reference(device, dtype, shape, bias):
    x, weight, b = make_inputs(*shape, dtype=dtype, device=device, bias=bias)
    hidden, mean_activation, contractive = ops.sigmoid_encoder(x, weight, b)
    # The reference sees the same (rounded) inputs, in float64.
    expected = reference.sigmoid_encoder(x, weight, b)
    assert hidden.shape == shape[:1] + shape[2:] and mean_activation.shape == (shape[2],) and contractive.shape == ()
    assert hidden.dtype == mean_activation.dtype == contractive.dtype == dtype
    assert hidden.device.type == torch.device(device).type
    for actual, wanted in zip((hidden, mean_activation, contractive), expected):
        assert_close(actual, wanted, dtype)


@pytest.mark.parametrize("bias", [True, False])
def test_contractive_equals_jacrev(device, bias):
    x, weight, b = make_inputs(9, 11, 6, device=device, bias=bias, seed=1)
    _, _, contractive = ops.sigmoid_encoder(x, weight, b)
    torch.testing.assert_close(contractive, reference.contractive_by_jacobian(x, weight, b), rtol=1e-12, atol=1e-14)


def test_saturated_pre_activations_stay_finite(device):
    x = torch.tensor([[1.0, -1.0], [2.0, 0.5]], dtype=torch.float64, device=device, requires_grad=True)
    weight = torch.tensor([[3000.0, 0.0], [-3000.0, 0.0], [0.0, 1.0]], dtype=torch.float64, device=device,
                          requires_grad=True)
    bias = torch.zeros(3, dtype=torch.float64, device=device, requires_grad=True)
    hidden, mean_activation, contractive = ops.sigmoid_encoder(x, weight, bias)
    assert torch.equal(hidden[:, 0], torch.ones(2, dtype=torch.float64, device=device))
    assert torch.equal(hidden[:, 1], torch.zeros(2, dtype=torch.float64, device=device))
    (hidden.sum() + mean_activation.sum() + contractive).backward()
    for tensor in (hidden, mean_activation, contractive, x.grad, weight.grad, bias.grad):
        assert torch.isfinite(tensor).all()
    # Saturated units contribute nothing to the penalty; only unit 2 does.
    _, _, expected = reference.sigmoid_encoder(x.detach(), weight.detach()[2:], bias.detach()[2:])
    torch.testing.assert_close(contractive, expected)


def test_non_contiguous_inputs(device):
    x, weight, b = make_inputs(8, 6, 5, device=device)
    x_strided = torch.empty(6, 8, dtype=x.dtype, device=device).t().copy_(x)  # column-major view
    weight_strided = torch.empty(5, 12, dtype=x.dtype, device=device)[:, ::2].copy_(weight)
    b_strided = torch.empty(10, dtype=x.dtype, device=device)[::2].copy_(b)
    assert not (x_strided.is_contiguous() or weight_strided.is_contiguous() or b_strided.is_contiguous())
    for actual, expected in zip(ops.sigmoid_encoder(x_strided, weight_strided, b_strided),
                                ops.sigmoid_encoder(x, weight, b)):
        torch.testing.assert_close(actual, expected, rtol=1e-14, atol=1e-15)


def test_zero_sized_hidden_and_feature_dimensions(device):
    for shape in [(4, 3, 0), (4, 0, 3)]:
        x, weight, b = make_inputs(*shape, device=device)
        hidden, mean_activation, contractive = ops.sigmoid_encoder(x, weight, b)
        expected = reference.sigmoid_encoder(x, weight, b)
        for actual, wanted in zip((hidden, mean_activation, contractive), expected):
            torch.testing.assert_close(actual, wanted)


# --------------------------------------------------------------------------------------
# Backward

OUTPUT_SELECTIONS = {
    "all": lambda out: out,
    "hidden": lambda out: out[0],
    "mean_activation": lambda out: out[1],
    "contractive": lambda out: out[2],
    "statistics": lambda out: (out[1], out[2]),
}


@pytest.mark.parametrize("outputs", list(OUTPUT_SELECTIONS))
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck(device, outputs, bias):
    x, weight, b = make_inputs(5, 4, 3, device=device, bias=bias, seed=2)
    inputs = [t.requires_grad_() for t in (x, weight, b) if t is not None]
    select = OUTPUT_SELECTIONS[outputs]
    torch.autograd.gradcheck(lambda *args: select(ops.sigmoid_encoder(*args)), inputs)


@pytest.mark.parametrize("wanted", [m for m in itertools.product([False, True], repeat=3) if any(m)])
def test_gradcheck_for_each_subset_of_inputs(device, wanted):
    x, weight, b = make_inputs(4, 3, 5, device=device, seed=3)
    for tensor, requires_grad in zip((x, weight, b), wanted):
        tensor.requires_grad_(requires_grad)
    torch.autograd.gradcheck(lambda *args: ops.sigmoid_encoder(*args), (x, weight, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_match_reference(device, dtype):
    x, weight, b = make_inputs(130, 20, 600, dtype=dtype, device=device, seed=4)
    generator = torch.Generator().manual_seed(5)
    upstream = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in [(130, 600), (600,), ()]]

    def gradients(function, inputs):
        inputs = [t.detach().clone().requires_grad_() for t in inputs]
        outputs = function(*inputs)
        total = sum((out * g.to(out)).sum() for out, g in zip(outputs, upstream))
        return torch.autograd.grad(total, inputs)

    actual = gradients(ops.sigmoid_encoder, (x, weight, b))
    expected = gradients(reference.sigmoid_encoder, (x, weight, b))
    for got, wanted in zip(actual, expected):
        assert got.dtype == dtype
        assert_close(got, wanted, dtype)


def test_backward_op_output_mask(device):
    x, weight, b = make_inputs(6, 4, 3, device=device, seed=6)
    hidden, _, _ = ops.sigmoid_encoder(x, weight, b)
    grad_hidden = torch.randn_like(hidden)
    grad_contractive = torch.tensor(0.7, dtype=x.dtype, device=device)
    full = ops.sigmoid_encoder_backward(grad_hidden, None, grad_contractive, x, weight, hidden)
    for mask in itertools.product([False, True], repeat=3):
        partial = ops.sigmoid_encoder_backward(grad_hidden, None, grad_contractive, x, weight, hidden, mask)
        for got, wanted, asked in zip(partial, full, mask):
            if asked:
                torch.testing.assert_close(got, wanted, rtol=1e-14, atol=1e-15)
            else:
                assert got is None
    raw = torch.ops.pyae.sigmoid_encoder_backward.default(grad_hidden, None, None, x, weight, hidden, None, False,
                                                         [True, False, False, True])
    # grad_squared_row_norms is empty too: the forward computed its c, it was not an input.
    assert raw[1].shape == (0,) and raw[2].shape == (0,) and raw[3].shape == (0,)


def test_backward_reuses_the_forward_row_norms(device):
    # The forward's fourth output, c = ||W_l||^2 in the accumulation dtype, is what the
    # backward reads instead of the weight; with or without it the gradients are the same bits.
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        x, weight, b = make_inputs(70, 9, 6, dtype=dtype, device=device, seed=33)
        hidden, _, _, norms = torch.ops.pyae.sigmoid_encoder.default(x, weight, b)
        assert norms.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        torch.testing.assert_close(norms.double(), weight.double().pow(2).sum(1), rtol=1e-6, atol=0)
        upstream = (torch.randn_like(hidden), None, torch.tensor(0.9, dtype=dtype, device=device))
        with_norms = ops.sigmoid_encoder_backward(*upstream, x, weight, hidden, squared_row_norms=norms)
        without = ops.sigmoid_encoder_backward(*upstream, x, weight, hidden)
        for got, wanted in zip(with_norms, without):
            assert torch.equal(got, wanted)
    with pytest.raises(TypeError, match="squared_row_norms must have dtype"):
        ops.sigmoid_encoder_backward(*upstream, x, weight, hidden, squared_row_norms=norms.double())
    with pytest.raises(ValueError, match="squared_row_norms must have shape"):
        ops.sigmoid_encoder_backward(*upstream, x, weight, hidden, squared_row_norms=norms[:-1])


@pytest.mark.parametrize("reduction", ["sum", "mean", "column weights"])
def test_broadcast_upstream_gradient_is_read_as_one_row(device, reduction):
    # hidden.sum() hands the backward a (B, k) gradient of stride 0: read as one row, the
    # result equals that of the same gradient materialized.
    x, weight, b = make_inputs(150, 8, 7, device=device, seed=34)
    inputs = [t.requires_grad_() for t in (x, weight, b)]
    outputs = ops.sigmoid_encoder(*inputs)
    column_weights = torch.linspace(-1, 2, 7, dtype=torch.float64, device=device)
    row = {"sum": torch.ones(7, dtype=torch.float64, device=device),
           "mean": torch.full((7,), 1 / (150 * 7), dtype=torch.float64, device=device),
           "column weights": column_weights}[reduction]
    broadcast = row.expand(150, 7)
    assert broadcast.stride(0) == 0
    upstream = (broadcast, torch.randn(7, dtype=torch.float64, device=device), torch.tensor(0.4, dtype=torch.float64,
                                                                                           device=device))
    got = torch.autograd.grad(outputs, inputs, upstream, retain_graph=True)
    wanted = torch.autograd.grad(outputs, inputs, (broadcast.contiguous(), *upstream[1:]))
    for g, w in zip(got, wanted):
        torch.testing.assert_close(g, w, rtol=1e-13, atol=1e-14)
    reference_grads = torch.autograd.grad(reference.sigmoid_encoder(*inputs), inputs, upstream)
    for g, w in zip(got, reference_grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_backward_without_upstream_gradients_is_zero(device):
    x, weight, b = make_inputs(6, 4, 3, device=device, seed=7)
    hidden, _, _ = ops.sigmoid_encoder(x, weight, b)
    for grad in ops.sigmoid_encoder_backward(None, None, None, x, weight, hidden):
        assert torch.count_nonzero(grad) == 0


# --------------------------------------------------------------------------------------
# Registration: opcheck (schema, fake kernel, autograd registration, dispatch)


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck_forward(device, bias):
    x, weight, b = make_inputs(7, 5, 4, device=device, bias=bias, seed=8)
    for requires_grad in (False, True):
        args = [t if t is None else t.clone().requires_grad_(requires_grad) for t in (x, weight, b)]
        torch.library.opcheck(torch.ops.pyae.sigmoid_encoder.default, args)


@pytest.mark.parametrize("mask", [[True, True, True], [False, True, False], [True, False, True]])
def test_opcheck_backward(device, mask):
    x, weight, b = make_inputs(7, 5, 4, device=device, seed=9)
    hidden, _, _, norms = torch.ops.pyae.sigmoid_encoder.default(x, weight, b)
    upstream = (torch.randn_like(hidden), torch.randn(4, dtype=x.dtype, device=device),
                torch.tensor(0.3, dtype=x.dtype, device=device))
    backward = torch.ops.pyae.sigmoid_encoder_backward.default
    for saved_norms, is_input in ((None, False), (norms, False), (norms, True)):
        full_mask = [*mask, is_input]
        torch.library.opcheck(backward, (*upstream, x, weight, hidden, saved_norms, is_input, full_mask))
        torch.library.opcheck(backward, (None, upstream[1], None, x, weight, hidden, saved_norms, is_input, full_mask))


# --------------------------------------------------------------------------------------
# Bad input: a TypeError or ValueError that names the argument, from the kernel and from the
# fake kernel alike.

BAD_INPUTS = [
    ("x is integer", lambda x, w, b: (x.long(), w, b), TypeError, "x must be a floating-point"),
    ("x is 1-D", lambda x, w, b: (x[0], w, b), ValueError, "x must be 2-D"),
    ("x is 3-D", lambda x, w, b: (x[None], w, b), ValueError, "x must be 2-D"),
    ("empty batch", lambda x, w, b: (x[:0], w, b), ValueError, "at least one row"),
    ("weight is 1-D", lambda x, w, b: (x, w[0], b), ValueError, "weight must be 2-D"),
    ("feature mismatch", lambda x, w, b: (x[:, :-1], w, b), ValueError, "features but weight expects"),
    ("weight dtype", lambda x, w, b: (x, w.float(), b), TypeError, "weight has dtype"),
    ("bias length", lambda x, w, b: (x, w, b[:-1]), ValueError, "bias must have shape"),
    ("bias 2-D", lambda x, w, b: (x, w, b[None]), ValueError, "bias must have shape"),
    ("bias dtype", lambda x, w, b: (x, w, b.float()), TypeError, "bias has dtype"),
    ("float8", lambda x, w, b: (x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn), None), TypeError,
     "x must be a floating-point tensor \\(float64, float32, float16 or bfloat16\\)"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_raises(case):
    _, corrupt, error, message = case
    args = corrupt(*make_inputs(4, 3, 2))
    with pytest.raises(error, match=message):
        ops.sigmoid_encoder(*args)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake_args = [None if t is None else mode.from_tensor(t) for t in args]
        with pytest.raises(error, match=message):
            ops.sigmoid_encoder(*fake_args)


def test_backward_bad_input_raises():
    x, weight, b = make_inputs(4, 3, 2)
    hidden, _, _ = ops.sigmoid_encoder(x, weight, b)
    with pytest.raises(ValueError, match="hidden must have shape"):
        ops.sigmoid_encoder_backward(None, None, None, x, weight, hidden[:, :1])
    with pytest.raises(ValueError, match="grad_hidden must have"):
        ops.sigmoid_encoder_backward(hidden[:1], None, None, x, weight, hidden)
    with pytest.raises(ValueError, match="grad_mean_activation must have shape"):
        ops.sigmoid_encoder_backward(None, hidden[0, :1], None, x, weight, hidden)
    with pytest.raises(ValueError, match="grad_contractive must be a scalar"):
        ops.sigmoid_encoder_backward(None, None, hidden[0], x, weight, hidden)
    with pytest.raises(TypeError, match="grad_hidden has dtype"):
        ops.sigmoid_encoder_backward(hidden.float(), None, None, x, weight, hidden)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_inputs_on_different_devices_raise():
    x, weight, b = make_inputs(4, 3, 2)
    with pytest.raises(ValueError, match="same device"):
        ops.sigmoid_encoder(x, weight.cuda(), b.cuda())


def test_float8_inputs_of_every_operator_raise_type_error():
    float8 = torch.ones(2, 3).to(torch.float8_e5m2)
    seed = torch.tensor(1)
    calls = [
        lambda: ops.sigmoid_reconstruction_loss(float8, float8, "cross_entropy"),
        lambda: ops.kl_sparsity(float8[0], 0.1),
        lambda: ops.weight_decay([float8]),
        lambda: ops.mask_noise(float8, 0.5, seed),
        lambda: ops.masked_sigmoid_encoder(float8, float8, None, 0.5, seed),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="must be a floating-point tensor"):
            call()


def test_torch_export_of_a_model_runs_and_matches_eager():
    torch.manual_seed(35)
    model = pyae.Autoencoder(12, 6, loss="cross_entropy", sparsity_target=0.1, sparsity_weight=0.3,
                             contractive_weight=0.2, weight_decay=0.01).eval()
    x = torch.rand(5, 12)
    exported = torch.export.export(model, (x,))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    # The model's objective is one operator (its parts inside it), weight decay's value another.
    assert {"pyae.autoencoder_loss.default", "pyae.weight_decay.default"} <= targets
    got = exported.module()(x)
    wanted = model(x)
    torch.testing.assert_close(got.loss, wanted.loss)
    torch.testing.assert_close(got.hidden, wanted.hidden)
    for name, term in wanted.terms.items():
        torch.testing.assert_close(got.terms[name], term)


# --------------------------------------------------------------------------------------
# Reproducibility


def test_cpu_results_do_not_depend_on_thread_count():
    x, weight, b = make_inputs(300, 50, 700, dtype=torch.float32, seed=10)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            hidden, mean_activation, contractive = ops.sigmoid_encoder(x, weight, b)
            grads = ops.sigmoid_encoder_backward(hidden, mean_activation, contractive, x, weight, hidden)
            results.append((mean_activation, contractive, *grads))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for got, wanted in zip(other, results[0]):
            assert torch.equal(got, wanted)


def test_cpu_kernels_run_under_inference_mode_on_several_threads():
    # The CPU kernels call ATen from their worker threads (the sigmoid of each tile), with
    # the caller's thread-local state: inference mode gives the same bits as grad mode.
    x, weight, b = make_inputs(300, 50, 700, dtype=torch.float32, seed=11)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(max(threads, 2))
        expected = ops.sigmoid_encoder(x, weight, b)
        expected_loss = ops.sigmoid_reconstruction_loss(x - 0.5, x, "cross_entropy")
        with torch.inference_mode():
            got = ops.sigmoid_encoder(x, weight, b)
            got_loss = ops.sigmoid_reconstruction_loss(x - 0.5, x, "cross_entropy")
    finally:
        torch.set_num_threads(threads)
    for actual, wanted in zip((*got, *got_loss), (*expected, *expected_loss)):
        assert torch.equal(actual, wanted)


# --------------------------------------------------------------------------------------
# Property-based: random shapes, strides and values against the reference.


@st.composite
def encoder_problems(draw):
    batch = draw(st.integers(1, 70))
    features = draw(st.integers(1, 24))
    hidden = draw(st.integers(1, 70))
    scale = draw(st.sampled_from([0.01, 1.0, 30.0, 3000.0]))  # up to saturated pre-activations
    transpose_x = draw(st.booleans())
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return batch, features, hidden, scale, transpose_x, bias, seed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=encoder_problems())
def test_property_matches_reference(problem):
    batch, features, hidden, scale, transpose_x, bias, seed = problem
    x, weight, b = make_inputs(batch, features, hidden, bias=bias, seed=seed)
    weight = weight * scale
    if transpose_x:
        x = x.t().contiguous().t()
    inputs = [t.requires_grad_() for t in (x, weight, b) if t is not None]
    outputs = ops.sigmoid_encoder(x, weight, b)
    expected = reference.sigmoid_encoder(x, weight, b)
    for got, wanted in zip(outputs, expected):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, wanted, rtol=1e-9, atol=1e-10)
    generator = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(out.shape, generator=generator, dtype=torch.float64) for out in outputs]
    grads = torch.autograd.grad(outputs, inputs, upstream)
    expected_grads = torch.autograd.grad(expected, inputs, upstream)
    for got, wanted in zip(grads, expected_grads):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, wanted, rtol=1e-8, atol=1e-8 * scale)
