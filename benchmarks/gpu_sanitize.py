"""Every pyae operator, forward and backward, in the four dtypes at the shapes where CUDA
kernels go wrong (one element; ragged edges; tiny tiles), with aligned inputs and with inputs
one element off an aligned address (the kernels' scalar paths). Run by
benchmarks/gpu_check.sh under each tool of compute-sanitizer (memcheck, racecheck,
synccheck, initcheck); on its own it only runs the operators and checks that every result is
finite. (--device cpu runs the same cases on the CPU, a check of the script itself.)

    compute-sanitizer --tool memcheck --error-exitcode 1 python benchmarks/gpu_sanitize.py
"""

import argparse
import itertools

import torch

from pyae import ops

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
SHAPES = ((1, 1, 1), (5, 3, 1001), (37, 19, 333), (9, 16, 16))


def placed(values, offset, device):
    """values on the device, starting `offset` elements past an aligned allocation."""
    buffer = torch.empty(values.numel() + offset, dtype=values.dtype, device=device)
    return buffer[offset:].view(values.shape).copy_(values)


def run_case(dtype, shape, offset, device):
    B, n, k = shape
    generator = torch.Generator().manual_seed(B * 1000 + n * 10 + k)

    def tensor(*size, scale=1.0):
        return placed((torch.randn(*size, generator=generator) * scale).to(dtype), offset, device)

    x = placed(torch.rand(B, n, generator=generator).to(dtype), offset, device)
    weight, bias = tensor(k, n, scale=n**-0.5), tensor(k)
    seed = torch.tensor(7, device=device)
    results = []
    for b in (bias, None):
        hidden, mean_activation, contractive, norms = torch.ops.pyae.sigmoid_encoder.default(x, weight, b)
        upstream = (tensor(B, k), tensor(k), tensor(()))
        for saved in (norms, None):
            results += ops.sigmoid_encoder_backward(*upstream, x, weight, hidden, (True, True, b is not None), saved)
        results += ops.sigmoid_encoder_backward(None, upstream[1], None, x, weight, hidden, (False, True, False))
        results += [hidden, mean_activation, contractive, norms]
    # The fused pass alone (the fused training step's), with the forward's c and without.
    given_norms = ops.squared_row_norms(weight)
    results += ops.sigmoid_encoder_preactivation_backward(*upstream, hidden, given_norms)
    results += ops.sigmoid_encoder_preactivation_backward(upstream[0], upstream[1], None, hidden, None)[:2]
    results += ops.masked_sigmoid_encoder(x, weight, bias, 0.3, seed)
    results.append(ops.mask_noise(x, 0.3, seed))
    logits, target = tensor(B, n, scale=3.0), x
    for loss_name in ("cross_entropy", "mse"):
        reconstruction, loss = ops.sigmoid_reconstruction_loss(logits, target, loss_name)
        results += [reconstruction, loss]
        results.append(ops.sigmoid_reconstruction_loss_backward(tensor(B, n), tensor(()), reconstruction, target,
                                                                loss_name))
        results.append(ops.sigmoid_reconstruction_loss_backward(None, tensor(()), reconstruction, target,
                                                                loss_name))
    rho_hat = placed(mean_activation.detach().clone(), offset, device)
    results += [ops.kl_sparsity(rho_hat, 0.05), ops.kl_sparsity_backward(tensor(()), rho_hat, 0.05)]
    results.append(ops.weight_decay([weight, tensor(n, k)]))
    results += ops.weight_decay_backward(tensor(()), [weight, tensor(n, k)])
    # The fused optimizer updates (with a row decay, and the updated rows' norms written) and
    # squared_row_norms.
    accumulation = ops._accumulation_dtype(dtype)
    params, grads = [tensor(k, n, scale=n**-0.5), tensor(k)], [tensor(k, n), tensor(k)]
    row_grads = [placed(torch.rand(k, generator=generator).to(accumulation), offset, device), None]
    norms_out = [torch.empty(k, dtype=accumulation, device=device), torch.empty(0, dtype=accumulation, device=device)]
    ops.sgd_update_(params, grads, [torch.zeros_like(p) for p in params], row_grads, [1e-4, 0.0], norms_out,
                    lr=0.01, momentum=0.9, dampening=0.0, nesterov=True, first_step=True)
    results += params + norms_out[:1]
    # The same with the gradient already in the momentum buffers (the fused training step's).
    ops.sgd_update_(params, [], [g.clone() for g in grads], row_grads, [1e-4, 0.0], norms_out, lr=0.01,
                    momentum=0.9, dampening=0.1, nesterov=False, first_step=False)
    results += params + norms_out[:1]
    ops.adam_update_(params, grads, [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params],
                     [torch.ones((), device=device) for _ in params], row_grads, [1e-4, 0.0], norms_out,
                     lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)
    results += params + norms_out[:1] + [ops.squared_row_norms(weight)]
    # The whole objective (the parts above composed) and its one backward node.
    leaves = [t.detach().clone().requires_grad_() for t in (weight, bias, tensor(n, k, scale=k**-0.5), tensor(n))]
    objective = ops.autoencoder_loss(x, x, *leaves, noise_level=0.3, seed=seed, loss="cross_entropy",
                                     contractive_weight=0.1, sparsity_target=0.05, sparsity_weight=0.1)
    results += list(objective) + list(torch.autograd.grad(objective.loss, leaves))
    return [r for r in results if r is not None]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    device = parser.parse_args().device
    cases = 0
    for dtype, shape, offset in itertools.product(DTYPES, SHAPES, (0, 1)):
        for result in run_case(dtype, shape, offset, device):
            if not torch.isfinite(result).all():
                raise SystemExit(f"non-finite result at dtype={dtype}, shape={shape}, offset={offset}")
        cases += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    print(f"gpu_sanitize: {cases} cases ran on {device}, every result finite")


if __name__ == "__main__":
    main()
