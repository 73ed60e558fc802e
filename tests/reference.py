"""Plain-PyTorch float64 references for pyae's operators, written straight from docs/design.md."""

import torch


def sigmoid_encoder(x, weight, bias=None):
    """(hidden, mean_activation, contractive) computed in float64 with autograd-able torch ops."""
    x64, w64 = x.double(), weight.double()
    a = x64 @ w64.T
    if bias is not None:
        a = a + bias.double()
    h = torch.sigmoid(a)
    d = h * (1 - h)
    c = (w64 * w64).sum(1)
    contractive = (d * d * c).sum(1).mean()
    return h, h.mean(0), contractive


def contractive_by_jacobian(x, weight, bias=None):
    """The same penalty the slow, general way: the Jacobian of each example's code by jacrev."""

    def encode_one(example):
        a = weight.double() @ example
        if bias is not None:
            a = a + bias.double()
        return torch.sigmoid(a)

    jacobians = torch.func.vmap(torch.func.jacrev(encode_one))(x.double())  # (B, k, n)
    return jacobians.pow(2).sum((1, 2)).mean()


def sigmoid_reconstruction_loss(logits, target, loss):
    """(reconstruction, loss) in float64: sigmoid, then the loss ("cross_entropy" or "mse")
    summed over features and averaged over the batch."""
    z, x = logits.double(), target.double()
    reconstruction = torch.sigmoid(z)
    if loss == "cross_entropy":
        per_element = torch.nn.functional.softplus(z) - x * z  # = -x log xhat - (1-x) log(1-xhat)
    else:
        per_element = (reconstruction - x) ** 2
    return reconstruction, per_element.sum() / z.shape[0]


def kl_sparsity(mean_activation, target, eps_dtype=None):
    """sum_l KL(target || rho_hat_l) in float64, rho_hat clamped into [eps, 1 - eps] with eps
    the machine epsilon of eps_dtype (default: mean_activation's own dtype), as
    functional.kl_sparsity documents."""
    eps = torch.finfo(eps_dtype or mean_activation.dtype).eps
    rho_hat = mean_activation.double().clamp(eps, 1.0 - eps)
    return (target * (torch.log(torch.tensor(target, dtype=torch.float64)) - torch.log(rho_hat))
            + (1 - target) * (torch.log1p(torch.tensor(-target, dtype=torch.float64)) - torch.log1p(-rho_hat))).sum()
