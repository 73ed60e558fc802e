"""One training step of a regularized sigmoid autoencoder: pyae against the peers a user would
otherwise pick, measured side by side in one run (docs/design.md, "Peers a benchmark compares
against").

Every peer computes the same thing from the same parameters: a 784-k-784 sigmoid autoencoder
(untied weights, cross-entropy reconstruction from logits) with the contractive penalty and
the KL sparsity penalty, forward and backward (with --whole-step also the optimizer's update:
SGD with momentum; torch's fused or foreach SGD for the torch peers, pyae's fused SGD given the
model (pyae.optim, as `pyae train` uses it) for the pyae peers). Peers:

    gemm         the step's five matrix products alone: the floor
    plain        the same autoencoder without any regularizer, eager
    eager        the closed-form penalties written with torch ops
    compiled     eager under torch.compile
    compiled_ro  eager under torch.compile(mode="reduce-overhead")       (CUDA)
    graph        eager's whole step incl. an SGD update in one hand-captured CUDA graph (CUDA)
    jacrev       the contractive penalty through vmap(jacrev(encoder))    (small batches)
    pyae         pyae.Autoencoder's step, eager
    pyae_all     the same with every regularizer on: masking noise (q = 0.25) and
                 weight decay (1e-4) besides the two penalties (not the same loss as the others:
                 compare it with plain)
    pyae_fused / pyae_all_fused   (--whole-step) pyae and pyae_all through pyae's SGD's
                 autoencoder_step, what `pyae train` and pyae.TrainStep run: the weight
                 matrices' gradient products go straight into the momentum buffers
    pyae_plain_fused   (--whole-step) plain's unregularized autoencoder through the same fused
                 step: what the regularizers cost within it (pyae_fused / pyae_plain_fused)
    pyae_compiled / pyae_compiled_ro   pyae's step under torch.compile
    pyae_graph   pyae.TrainStep: pyae's whole step incl. the SGD update in one CUDA graph (CUDA)

Timing: warm-up, then the median (and interquartile range) of --repeat timed steps, with CUDA
events on a GPU; the peers of one size take turns step by step, so drift hits them alike.
Memory: the bytes autograd saves for the backward (every device), and on
CUDA the peak allocated during a step above what was allocated before it. Ratios are to
`plain` (and to `gemm`, the floor) in the same run. Writes a Markdown table to stdout and, with --json, the raw numbers.

    python benchmarks/bench_step.py --device cpu
    python benchmarks/bench_step.py --device cuda --dtype float32 bfloat16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import types
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

import pyae

CONTRACTIVE_WEIGHT = 0.1
SPARSITY_TARGET = 0.05
SPARSITY_WEIGHT = 0.1
LEARNING_RATE = 0.01


# --------------------------------------------------------------------------------------
# The peers' losses, written the way a careful user writes them.


def plain_loss(x, W1, b1, W2, b2):
    h = torch.sigmoid(F.linear(x, W1, b1))
    logits = F.linear(h, W2, b2)
    return F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]


def kl_penalty(h):
    rho = SPARSITY_TARGET
    rho_hat = h.mean(0).clamp(1e-7, 1 - 1e-7)
    return (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()


def eager_loss(x, W1, b1, W2, b2):
    h = torch.sigmoid(F.linear(x, W1, b1))
    logits = F.linear(h, W2, b2)
    reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
    d = h * (1 - h)
    contractive = (d * d).matmul(W1.pow(2).sum(1)).mean()  # closed form: sum_l d_il^2 ||W_l||^2
    return reconstruction + CONTRACTIVE_WEIGHT * contractive + SPARSITY_WEIGHT * kl_penalty(h)


def jacrev_loss(x, W1, b1, W2, b2):
    h = torch.sigmoid(F.linear(x, W1, b1))
    logits = F.linear(h, W2, b2)
    reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
    jacobians = torch.func.vmap(torch.func.jacrev(lambda v: torch.sigmoid(F.linear(v, W1, b1))))(x)
    contractive = jacobians.pow(2).sum((1, 2)).mean()
    return reconstruction + CONTRACTIVE_WEIGHT * contractive + SPARSITY_WEIGHT * kl_penalty(h)


# --------------------------------------------------------------------------------------
# Steps: each returns a zero-argument callable that runs one forward + backward.


def distinct_copy(function, tag):
    """The same function under a code object of its own, so that compiling it in two modes
    keeps two independent compile caches."""
    code = function.__code__.replace(co_name=f"{function.__name__}_{tag}")
    return types.FunctionType(code, function.__globals__, code.co_name)


def make_model(n, k, device, dtype, seed=0, **extra):
    torch.manual_seed(seed)
    options = dict(loss="cross_entropy", contractive_weight=CONTRACTIVE_WEIGHT, sparsity_target=SPARSITY_TARGET,
                   sparsity_weight=SPARSITY_WEIGHT)
    options.update(extra)
    return pyae.Autoencoder(n, k, device=device, dtype=dtype, **options)


ALL_REGULARIZERS = dict(noise="mask", noise_level=0.25, weight_decay=1e-4)
NO_REGULARIZER = dict(contractive_weight=0.0, sparsity_target=None, sparsity_weight=0.0)
# The pyae peers' models by name prefix (the first that matches).
MODEL_OPTIONS = {"pyae_all": ALL_REGULARIZERS, "pyae_plain": NO_REGULARIZER}


def model_options(peer):
    return next((options for prefix, options in MODEL_OPTIONS.items() if peer.startswith(prefix)), {})


def parameters_of(model):
    return [model.encoder.weight, model.encoder.bias, model.decoder.weight, model.decoder.bias]


def make_optimizer(params):
    """The whole step's update: SGD with momentum in torch's fastest implementation for the
    device (fused where torch has it, else foreach), the same for every peer."""
    try:
        return torch.optim.SGD(params, lr=LEARNING_RATE, momentum=0.9, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.SGD(params, lr=LEARNING_RATE, momentum=0.9, foreach=True)


def with_update(backward, params, optimizer):
    """A step: zero the gradients (the optimizer's zero_grad when there is one: pyae.optim's
    groups hold the squared row norms too), run backward() (forward and backward), and with
    an optimizer, its update."""
    def step():
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        else:
            for p in params:
                p.grad = None
        backward()
        if optimizer is not None:
            optimizer.step()
    return step


def loss_step(loss_fn, x, params, optimizer=None):
    return with_update(lambda: loss_fn(x, *params).backward(), params, optimizer)


def gemm_step(x, params):
    W1, _, W2, _ = [p.detach() for p in params]
    B, n = x.shape
    h = torch.empty(B, W1.shape[0], device=x.device, dtype=x.dtype).uniform_()
    g = torch.randn(B, n, device=x.device, dtype=x.dtype)

    def step():
        a = x @ W1.t()          # encoder
        z = h @ W2.t()          # decoder
        gW2 = g.t() @ h         # decoder weight grad
        gh = g @ W2             # back into the code
        gW1 = gh.t() @ x        # encoder weight grad
        return a, z, gW2, gW1
    return step


def graph_step(loss_fn, x, params):
    """The whole step (forward, backward, foreach SGD update) captured in one CUDA graph."""
    optimizer = torch.optim.SGD(params, lr=LEARNING_RATE, foreach=True)
    static_x = x.clone()

    def one_step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(static_x, *params).backward()
        optimizer.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            one_step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        one_step()
    return graph.replay


def pyae_step(model, x, optimizer=None):
    return with_update(lambda: model(x).loss.backward(), list(model.parameters()), optimizer)


def compiled_module_step(model, x, mode, optimizer=None):
    compiled = torch.compile(model, mode=mode, fullgraph=True)
    return pyae_step(compiled, x, optimizer)


def pyae_graph_step(model, x):
    optimizer = pyae.optim.SGD(model.parameters(), lr=LEARNING_RATE, autoencoder=model)
    step = pyae.TrainStep(model, optimizer, capture=True)
    return lambda: step(x)


# --------------------------------------------------------------------------------------
# Measurement


def time_once(step, device):
    """Milliseconds of one step: CUDA events on a GPU, the wall clock on a CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start = time.perf_counter()
    step()
    return (time.perf_counter() - start) * 1e3


def time_interleaved(steps, device, warmup, repeat, block=1):
    """{peer: (median ms, IQR ms)}. The peers take turns, so that a machine whose speed drifts
    (a shared, noisy one) slows them all alike: each turn is one step, or with block > 1 that
    many consecutive steps of which the first is not timed, so that each timed step runs after
    a step of its own, as in training one model (where the step's data stays in the caches it
    fits in), not after another peer's."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = {peer: [] for peer in steps}
    for _ in range(repeat):
        for peer, step in steps.items():
            if block > 1:
                step()
            for _ in range(max(block - 1, 1)):
                times[peer].append(time_once(step, device))
    result = {}
    for peer, values in times.items():
        quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        result[peer] = (statistics.median(values), quartiles[2] - quartiles[0])
    return result


def saved_bytes(step, alive):
    """Bytes of the activations autograd saves for the backward during one step: distinct
    storages, not counting the tensors that exist anyway (the parameters and the input)."""
    alive = {t.untyped_storage().data_ptr() for t in alive}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in alive:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


def cuda_peak_bytes(step):
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


PEERS = ["gemm", "plain", "eager", "compiled", "compiled_ro", "graph", "jacrev", "pyae", "pyae_all", "pyae_fused",
         "pyae_all_fused", "pyae_plain_fused", "pyae_compiled", "pyae_compiled_ro", "pyae_graph"]
CUDA_ONLY = {"compiled_ro", "graph", "pyae_compiled_ro", "pyae_graph"}
WHOLE_STEP_ONLY = {"pyae_fused", "pyae_all_fused", "pyae_plain_fused"}


def build(peer, model, x, whole_step=False):
    """The peer's step; with whole_step, each includes the optimizer's update (SGD with
    momentum, make_optimizer), as the graph peers always do."""
    params = parameters_of(model)
    optimizer = None
    if whole_step:
        if peer.startswith("pyae"):
            # As pyae.training.train does: pyae's fused SGD, given the model, applies its weight
            # decay and the contractive term's chain rule through the squared row norms in the
            # update's pass (pyae.optim).
            optimizer = pyae.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=0.9, autoencoder=model)
        else:
            optimizer = make_optimizer(params)
    if peer == "gemm":
        return gemm_step(x, params)
    if peer == "plain":
        return loss_step(plain_loss, x, params, optimizer)
    if peer == "eager":
        return loss_step(eager_loss, x, params, optimizer)
    if peer == "jacrev":
        return loss_step(jacrev_loss, x, params, optimizer)
    if peer in ("compiled", "compiled_ro"):
        mode = "reduce-overhead" if peer == "compiled_ro" else None
        compiled = torch.compile(distinct_copy(eager_loss, peer), mode=mode, fullgraph=True)
        return loss_step(compiled, x, params, optimizer)
    if peer == "graph":
        return graph_step(eager_loss, x, params)
    if peer in ("pyae", "pyae_all"):
        return pyae_step(model, x, optimizer)
    if peer in WHOLE_STEP_ONLY:
        refusal = optimizer.fused_step_refusal(x)
        if refusal is not None:
            raise RuntimeError(f"the fused step would not run: {refusal}")
        return lambda: optimizer.autoencoder_step(x)
    if peer in ("pyae_compiled", "pyae_compiled_ro"):
        return compiled_module_step(model, x, "reduce-overhead" if peer.endswith("_ro") else None, optimizer)
    if peer == "pyae_graph":
        return pyae_graph_step(model, x)
    raise ValueError(peer)


def run(args):
    device = torch.device(args.device)
    # Every compiled peer is its own compiled function or module: no cache resets between them.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    rows = []
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        for size in args.sizes:
            B, n, k = (int(v) for v in size.split("x"))
            x = torch.rand(B, n, device=device, dtype=dtype)
            models, steps, results = {}, {}, {}
            for peer in args.peers:
                if (peer in CUDA_ONLY and device.type != "cuda") or (peer in WHOLE_STEP_ONLY and not args.whole_step):
                    continue
                if peer == "jacrev" and B * k * n > args.jacrev_limit:
                    continue
                models[peer] = make_model(n, k, device, dtype, **model_options(peer))
                try:
                    steps[peer] = build(peer, models[peer], x, args.whole_step)
                    steps[peer]()  # compiles, captures, fails here rather than mid-measurement
                except Exception as error:  # a peer that cannot run here is reported, not fatal
                    results[peer] = dict(error=f"{type(error).__name__}: {error}".splitlines()[0][:160])
            for peer, (median, iqr) in time_interleaved(steps, device, args.warmup, args.repeat, args.block).items():
                saved = None
                # jacrev refuses saved-tensor hooks; the fused steps run no autograd to hook.
                if peer not in ("gemm", "graph", "pyae_graph", "jacrev", *WHOLE_STEP_ONLY):
                    saved = saved_bytes(steps[peer], [x, *models[peer].parameters()])
                peak = cuda_peak_bytes(steps[peer]) if device.type == "cuda" else None
                results[peer] = dict(ms=median, iqr_ms=iqr, saved_bytes=saved, peak_bytes=peak)
            base = results.get("plain", {}).get("ms")
            floor = results.get("gemm", {}).get("ms")
            for peer in args.peers:
                if peer not in results:
                    continue
                result = results[peer]
                if base and "ms" in result:
                    result["ratio_to_plain"] = result["ms"] / base
                if floor and "ms" in result:
                    result["ratio_to_gemm"] = result["ms"] / floor
                print(f"  {dtype_name} {size} {peer}: {result}", file=sys.stderr, flush=True)
                rows.append(dict(dtype=dtype_name, size=size, peer=peer, **result))
            del models, steps
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def markdown(rows, device_name):
    lines = [f"device: {device_name}", "",
             "| dtype | B x n x k | peer | median ms | IQR ms | x plain | x gemm | saved for backward MiB "
             "| CUDA peak MiB |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    mib = lambda b: "" if b is None else f"{b / 2**20:.1f}"  # noqa: E731
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['dtype']} | {r['size']} | {r['peer']} | failed: {r['error']} | | | | | |")
            continue
        ratio = f"{r['ratio_to_plain']:.2f}" if "ratio_to_plain" in r else ""
        over_floor = f"{r['ratio_to_gemm']:.2f}" if "ratio_to_gemm" in r else ""
        lines.append(f"| {r['dtype']} | {r['size']} | {r['peer']} | {r['ms']:.3f} | {r['iqr_ms']:.3f} | {ratio} | "
                     f"{over_floor} | {mib(r['saved_bytes'])} | {mib(r['peak_bytes'])} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", nargs="+", default=["float32"],
                        choices=["float32", "bfloat16", "float16", "float64"])
    parser.add_argument("--sizes", nargs="+", default=None, help="BxNxK, e.g. 256x784x1000")
    parser.add_argument("--peers", nargs="+", default=PEERS, choices=PEERS)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--block", type=int, default=1,
                        help="consecutive steps per peer and turn, the first untimed (1: one timed step per turn)")
    parser.add_argument("--jacrev-limit", type=int, default=256 * 784 * 1000, help="skip jacrev above B*n*k")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    parser.add_argument("--json", default=None, help="write the raw results here")
    parser.add_argument("--whole-step", action="store_true",
                        help="include the optimizer's update (SGD with momentum, fused or foreach) in every step")
    args = parser.parse_args(argv)
    if args.block < 1:
        parser.error(f"--block must be at least 1, got {args.block}")
    on_cuda = args.device.startswith("cuda")
    if args.sizes is None:
        args.sizes = ["256x784x1000", "4096x784x1000", "16384x4096x4096"] if on_cuda else ["256x784x1000",
                                                                                         "4096x784x1000"]
    args.warmup = args.warmup if args.warmup is not None else (20 if on_cuda else 3)
    args.repeat = args.repeat if args.repeat is not None else (100 if on_cuda else 15)
    if args.threads:
        torch.set_num_threads(args.threads)

    device_name = torch.cuda.get_device_name() if on_cuda else f"CPU ({platform.processor() or platform.machine()}, " \
                                                               f"{torch.get_num_threads()} threads)"
    rows = run(args)
    step = "forward + backward + SGD-with-momentum update" if args.whole_step else "forward + backward"
    print(markdown(rows, f"{device_name}; each step: {step}"))
    if args.json:
        meta = dict(device=device_name, torch=torch.__version__, pyae=pyae.__version__, whole_step=args.whole_step,
                    block=args.block,
                    date=datetime.now(timezone.utc).isoformat(timespec="seconds"), warmup=args.warmup,
                    repeat=args.repeat, python=platform.python_version())
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
