"""Every CUDA kernel once, forward and backward, for compute-sanitizer (run by gpu_check.sh):

    compute-sanitizer --tool memcheck --error-exitcode 1 python3 benchmarks/sanitize_ops.py [cuda [dtype ...]]

Shapes cover the row-size classes the kernels pick between (sub-warp, warp, block rows), vector tails
(widths that are not a multiple of 4 or 8), strided and broadcast inputs, sample dims, the four float
dtypes and the three target dtypes. Each result is checked against the reference so a run that reads
out of bounds but happens to survive still has to give the right numbers."""

import sys

import torch

import vaecuda
from vaecuda import reference as ref

TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def close(a, b, dtype, what):
    torch.testing.assert_close(a.float(), b.float(), rtol=TOL[dtype], atol=TOL[dtype], msg=lambda m: f"{what}: {m}")


def grads(out, *leaves):
    return torch.autograd.grad(out.float().sum(), leaves)


def main(dev="cuda", dtypes=("float32", "float64", "bfloat16", "float16")):
    g = torch.Generator(device=dev).manual_seed(0)
    count = 0
    for dtype in (getattr(torch, name) for name in dtypes):
        # widths: multiples of 4 (quads, vector loads) and not, for 8 and 16 lanes, a warp and a block per row
        for rows, width in ((7, 3), (33, 20), (17, 32), (11, 64), (5, 131), (6, 784), (9, 797), (4, 1024), (3, 3072),
                            (2, 12288), (3, 12291)):
            def make(*shape):
                return torch.randn(*shape, generator=g, device=dev).to(dtype).requires_grad_()
            mu, lv = make(rows, width), make(rows, width)
            wide = make(rows, 2 * width)
            strided = wide[:, ::2]
            shifted = make(rows, width + 1)  # contiguous columns, unaligned rows: strided loads
            lv = lv if width % 8 else shifted[:, 1:]
            # sampling (one and K samples) and sampling with KL
            for n in (None, 3):
                z = vaecuda.reparameterize(mu, strided, n_samples=n, seed=5)
                zr = ref.reparameterize(mu, strided, vaecuda.rng_state(5, device=dev), n_samples=n)
                close(z, zr, dtype, f"reparameterize {dtype} {rows}x{width} n={n}")
                grads(z, mu, wide)
            for n in (None, 3):
                z, kl = vaecuda.reparameterize_with_kl(mu, lv, n_samples=n, seed=3)
                close(kl, ref.gaussian_kl(mu, lv), dtype, f"sample+kl {dtype} {rows}x{width} n={n}")
                grads(z.float().sum() + kl.sum(), mu, lv)
            grads(vaecuda.reparameterize_with_kl(mu, lv, seed=3)[1], mu, lv)  # the KL's gradient alone
            grads(vaecuda.reparameterize(mu, lv, n_samples=3, seed=3), mu)  # no d_logvar wanted
            # the backward op itself with both gradients of one sample (autograd passes d mu through)
            torch.ops.vaecuda.reparameterize_backward(z[0].detach(), None, mu.detach(), lv.detach(),
                                                      vaecuda.rng_state(3, device=dev), None, [True, True])
            # KL to N(0, I) and between two Gaussians, with a broadcast prior row
            pm, plv = make(1, width), make(width)
            for args in ((mu, strided), (mu, lv, pm, plv)):
                kl = vaecuda.gaussian_kl(*args)
                close(kl, ref.gaussian_kl(*args), dtype, f"kl {dtype} {rows}x{width} {len(args)} args")
                grads(kl, *[a for a in args if a.is_leaf] or [mu])
            # free bits: the elementwise KL, forward and backward, to N(0, I) and to the prior
            for args in ((mu, lv), (mu, lv, pm, plv)):
                grads(vaecuda.gaussian_kl(*args, reduction="mean", free_bits=0.3), *args)
            # Bernoulli from logits (targets float, bool, uint8; broadcast over 2 samples) and probs
            logits = make(2, rows, width)
            bits = torch.rand(rows, width, generator=g, device=dev) < 0.5
            for target in (bits.to(dtype), bits, bits.to(torch.uint8)):
                ll = vaecuda.bernoulli_log_prob(logits, target)
                close(ll, ref.bernoulli_log_prob(logits, target), dtype, f"bernoulli {dtype} {rows}x{width}")
                grads(ll, logits)
            probs = torch.sigmoid(logits.detach()).requires_grad_()
            ll = vaecuda.bernoulli_log_prob_from_probs(probs, bits)
            close(ll, ref.bernoulli_log_prob(probs, bits, probs=True), dtype, f"probs {dtype} {rows}x{width}")
            grads(ll, probs)
            # the backward op itself (float32/float64 logits otherwise scale the forward's saved
            # gradient), with d/dtarget of a float target, from logits and from probabilities, and the
            # event spanning two dims
            soft = torch.rand(rows, width, generator=g, device=dev).to(dtype).requires_grad_()
            for inp, as_probs in ((logits, False), (probs, True)):
                for event_dims in (1, 2):
                    out = torch.ops.vaecuda.bernoulli_log_prob(inp.detach(), soft.detach(), event_dims, as_probs)
                    gout = torch.randn(out.shape, generator=g, device=dev).to(out.dtype)
                    for target, mask in ((soft.detach(), [True, True]), (soft.detach(), [False, True]),
                                         (bits.to(torch.uint8), [True, False])):
                        torch.ops.vaecuda.bernoulli_log_prob_backward(gout, inp.detach(), target, event_dims,
                                                                      as_probs, mask)
            grads(vaecuda.bernoulli_log_prob(logits, soft), logits, soft)
            count += 1
    if dev != "cpu":
        torch.cuda.synchronize()
    print(f"sanitize_ops: {count} shape/dtype groups, every op fwd+bwd, all matched the reference")


if __name__ == "__main__":  # sanitize_ops.py [device [dtype ...]]
    main(*sys.argv[1:2], *([sys.argv[2:]] if len(sys.argv) > 2 else []))
