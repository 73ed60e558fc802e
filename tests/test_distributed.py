"""Two gloo processes on loopback give the gradients of one process on the whole batch."""

import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pyae

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

WORLD = 2


def make_model():
    torch.manual_seed(0)
    return pyae.Autoencoder(12, 6, loss="cross_entropy", weight_decay=0.01, sparsity_target=0.1,
                            sparsity_weight=0.7, contractive_weight=0.3, dtype=torch.float64)


def make_batch():
    return torch.rand(10, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _exit_rank():
    """End a spawned rank without Python's finalization. After a DDP step over gloo with a
    collective inside the backward, that finalization aborts now and then in torch's own
    teardown ("terminate called without an active exception", about 1 run in 4 here, after
    every result is written and the group destroyed); the test is about the gradients."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank, port, out_dir, split):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = make_model()
        pyae.distributed.convert_sync_sparsity(model)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        x = make_batch()
        local = x[:split] if rank == 0 else x[split:]
        out = ddp(local)
        out.loss.backward()
        torch.save({name: p.grad for name, p in model.named_parameters()}, os.path.join(out_dir, f"rank{rank}.pt"))
        # Both ranks done, and DDP's reducer gone, before the group goes: tearing gloo down
        # under a live reducer can abort the process.
        dist.barrier()
        del ddp, out
    finally:
        dist.destroy_process_group()
    _exit_rank()


def test_two_ranks_match_one_process(tmp_path):
    model = make_model()
    model(make_batch()).loss.backward()
    expected = {name: p.grad for name, p in model.named_parameters()}

    mp.spawn(rank_main, args=(free_port(), str(tmp_path), 5), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        grads = torch.load(tmp_path / f"rank{rank}.pt")
        assert set(grads) == set(expected)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected[name], rtol=1e-12, atol=1e-14)


def sparsity_rank_main(rank, port, out_dir, split):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = make_model()
        pyae.distributed.convert_sync_sparsity(model)
        x = make_batch()
        local = x[:split] if rank == 0 else x[split:]
        out = model(local)
        # Unequal shares (3 and 7 rows): DDP's plain average of the gradients would weight the
        # ranks' per-example means equally, but the sparsity statistic itself is the global
        # one, weighted by batch size; its gradient, averaged over the ranks as DDP does, is
        # the global KL's gradient.
        out.terms["sparsity"].backward()
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= WORLD
        torch.save({"value": out.terms["sparsity"].detach(),
                    **{name: p.grad for name, p in model.named_parameters() if p.grad is not None}},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_sparsity_statistic_is_global_with_unequal_shares(tmp_path):
    model = make_model()
    out = model(make_batch())
    out.terms["sparsity"].backward()
    expected = {"value": out.terms["sparsity"].detach(),
                **{name: p.grad for name, p in model.named_parameters() if p.grad is not None}}
    mp.spawn(sparsity_rank_main, args=(free_port(), str(tmp_path), 3), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert set(got) == set(expected)
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-12, atol=1e-14)


def test_pyae_train_under_torchrun_matches_one_process(tmp_path):
    """`torchrun --nproc_per_node 2 -m pyae train` gives the parameters of a single-process
    run, and its checkpoint loads in a single process. Batches of 11 split 5 + 6: unequal
    shares, which the ranks' loss weighting must make exact."""
    import subprocess
    import sys

    from pyae.checkpoint import model_from_checkpoint

    options = ["--device", "cpu", "--dtype", "float64", "--hidden", "16", "--limit", "60", "--batch-size", "11",
               "--epochs", "2", "--lr", "0.05", "--loss", "cross_entropy", "--sparsity-target", "0.1",
               "--sparsity-weight", "0.5", "--contractive-weight", "0.2", "--weight-decay", "0.001",
               "--threads", "1", "--quiet"]
    single = subprocess.run([sys.executable, "-m", "pyae", "train", "--out", str(tmp_path / "single"), *options],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(free_port())]
    ranked = subprocess.run([*launcher, "-m", "pyae", "train", "--out", str(tmp_path / "ranked"), *options],
                            capture_output=True, text=True, timeout=300)
    assert ranked.returncode == 0, ranked.stderr

    expected = model_from_checkpoint(tmp_path / "single" / "checkpoint.pt")
    got = model_from_checkpoint(tmp_path / "ranked" / "checkpoint.pt")
    for (name, a), (_, b) in zip(got.named_parameters(), expected.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)
