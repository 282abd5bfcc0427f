"""Backend choice: the compiled kernels, the reference fallback (with one warning), and the switch."""

import json
import os
import subprocess
import sys

import torch

import vaecuda

from conftest import requires_compiled

# Runs the three ops on fixed inputs and prints the results and the backend report as JSON.
PROBE = """
import json, sys, warnings
{prelude}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch, vaecuda
    g = torch.Generator().manual_seed(0)
    mu, lv = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    lg, x = torch.randn(4, 9, generator=g), (torch.rand(4, 9, generator=g) < 0.5).float()
    out = [vaecuda.gaussian_kl(mu, lv), vaecuda.reparameterize(mu, lv, seed=3, n_samples=2),
           vaecuda.bernoulli_log_prob(lg, x), vaecuda.gaussian_kl(mu, lv)]
print(json.dumps({{"out": [o.tolist() for o in out], "info": vaecuda.backend_info(),
                  "warnings": [str(w.message) for w in caught if "vaecuda" in str(w.message)]}}))
"""


def _probe(env=None, prelude=""):
    res = subprocess.run([sys.executable, "-c", PROBE.format(prelude=prelude)], capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    return res


def _close(a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(torch.tensor(x), torch.tensor(y), rtol=1e-5, atol=1e-5)


def test_backend_info_reports_the_build():
    info = vaecuda.backend_info()
    assert info["mode"] in ("auto", "compiled", "reference")
    assert set(info["devices"]) == {"cpu", "cuda"}
    if info["extension_loaded"]:
        assert info["build"]["torch_version"] == torch.__version__
        assert info["build"]["cpu_isa"] in ("avx2", "default")
        assert isinstance(info["build"]["cuda"], bool)


@requires_compiled
def test_reference_backend_switch_gives_the_same_results():
    compiled = json.loads(_probe().stdout)
    forced = json.loads(_probe({"VAECUDA_BACKEND": "reference"}).stdout)
    assert compiled["info"]["devices"]["cpu"]["backend"] == "compiled"
    assert forced["info"]["devices"]["cpu"] == {"backend": "reference", "reason": "VAECUDA_BACKEND=reference"}
    assert forced["warnings"] == []  # asked for: no warning
    _close(compiled["out"], forced["out"])


def test_missing_extension_falls_back_with_one_warning():
    # a broken or absent build: importing vaecuda._C fails
    res = _probe({"VAECUDA_BACKEND": "auto"}, prelude="sys.modules['vaecuda._C'] = None")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert not out["info"]["extension_loaded"]
    assert out["info"]["devices"]["cpu"]["backend"] == "reference"
    assert "did not load" in out["info"]["devices"]["cpu"]["reason"]
    assert len(out["warnings"]) == 1 and "running the reference ops" in out["warnings"][0]
    if vaecuda.backend_info()["extension_loaded"]:
        _close(out["out"], json.loads(_probe().stdout)["out"])


def test_forcing_compiled_without_the_extension_fails_at_import():
    res = _probe({"VAECUDA_BACKEND": "compiled"}, prelude="sys.modules['vaecuda._C'] = None")
    assert res.returncode != 0
    assert "VAECUDA_BACKEND=compiled but the compiled extension vaecuda._C did not load" in res.stderr


def test_unknown_backend_is_refused():
    res = _probe({"VAECUDA_BACKEND": "fastest"})
    assert res.returncode != 0 and "VAECUDA_BACKEND must be one of auto, compiled, reference" in res.stderr


@requires_compiled
def test_meta_tensors_take_the_compiled_ops_without_a_warning():
    """On the meta device (a model built for shapes only) the compiled ops answer through their fake
    kernels: no fallback warning, the CPU results' shapes and dtypes, and gradients of the inputs'."""
    import warnings
    g = torch.Generator().manual_seed(0)
    mu, lv = torch.randn(4, 6, generator=g), torch.randn(6, generator=g)
    logits, x = torch.randn(2, 4, 10, generator=g), torch.rand(4, 10, generator=g) < 0.5
    calls = [lambda m, l, lo, t: vaecuda.gaussian_kl(m, l, reduction="sum"),
             lambda m, l, lo, t: vaecuda.gaussian_kl(m, l, torch.zeros_like(l), l, free_bits=0.1, reduction="mean"),
             lambda m, l, lo, t: vaecuda.reparameterize(m, l, n_samples=3),
             lambda m, l, lo, t: vaecuda.reparameterize_with_kl(m, l, seed=1)[0],
             lambda m, l, lo, t: vaecuda.bernoulli_log_prob(lo, t),
             lambda m, l, lo, t: vaecuda.bernoulli_log_prob_from_probs(lo.sigmoid(), t, event_dims=2)]
    for call in calls:
        results = {}
        for dev in ("cpu", "meta"):
            ins = [t.to(dev).requires_grad_(t.is_floating_point()) for t in (mu, lv, logits, x)]
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                out = call(*ins)
            grads = torch.autograd.grad(out.sum(), ins[:3], allow_unused=True)
            results[dev] = [(t.shape, t.dtype) if t is not None else None for t in (out, *grads)]
            assert all(t is None or t.device.type == dev for t in (out, *grads))
        assert results["meta"] == results["cpu"]
