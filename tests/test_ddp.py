"""DistributedDataParallel: two CPU processes (gloo) train a small VAE with vaecuda's ops; after a
step their gradients equal a single process's on the combined batch, given the same noise.

Noise per rank: each rank keys its noise with its own (seed, offset) — here (1234, rank). A single
process reproduces it exactly by computing each half of the batch with that rank's key."""

import datetime
import gc
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import vaecuda
from vaecuda.models import VAE

WORLD, B, P = 2, 16, 64


def _data():
    g = torch.Generator().manual_seed(0)
    return (torch.rand(WORLD * B, P, generator=g) < 0.3).float()


def _model():
    torch.manual_seed(0)
    return VAE(P, (32,), 8)


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # a bounded wait: a rank that cannot reach the other fails the test instead of hanging it
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        model = torch.nn.parallel.DistributedDataParallel(_model())
        x = _data()[rank * B:(rank + 1) * B]
        model(x, seed=vaecuda.rng_state(1234, rank)).backward()  # DDP averages gradients over ranks
        torch.save([p.grad for p in model.parameters()], os.path.join(out_dir, f"grads{rank}.pt"))
        # Let the DDP reducer go while the process group is still registered, after every rank is done:
        # had it held the group's last reference when the worker returns, the group's destructor would
        # run inside a Python dealloc holding the GIL and could deadlock with a gloo thread that needs
        # the GIL to release a finished all-reduce (torch's teardown race; seen once in CI here).
        dist.barrier()
        del model
        gc.collect()
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gradients_equal_single_process(tmp_path):
    workers = mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 180  # a hung worker fails the test instead of hanging the suite
    while not workers.join(timeout=5):  # (join raises if a worker failed)
        if time.monotonic() > deadline:
            for p in workers.processes:
                p.kill()
            pytest.fail("the DDP workers did not finish within 180 s")
    grads = [torch.load(tmp_path / f"grads{r}.pt") for r in range(WORLD)]
    for a, b in zip(*grads):  # every rank holds the same averaged gradients
        torch.testing.assert_close(a, b)
    model = _model()
    x = _data()
    loss = sum(model(x[r * B:(r + 1) * B], seed=vaecuda.rng_state(1234, r)) for r in range(WORLD)) / WORLD
    loss.backward()
    for got, want in zip(grads[0], [p.grad for p in model.parameters()]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # and the noise really differs between ranks (a shared key would correlate their samples)
    assert not torch.equal(vaecuda.reparameterize(torch.zeros(B, 8), torch.zeros(B, 8), seed=1234, offset=0),
                           vaecuda.reparameterize(torch.zeros(B, 8), torch.zeros(B, 8), seed=1234, offset=1))
