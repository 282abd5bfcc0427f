"""examples/: the canonical PyTorch VAE loop with its usual loss and with vaecuda, trained side by
side, learns the same (its loss curves agree)."""

import importlib.util
import os

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pytorch_vae_example_side_by_side(capsys, binary_npz):
    ex = _load("pytorch_vae_example")
    assert ex.main(["--epochs", "2", "--device", "cpu", "--data", binary_npz]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "2"]
    usual_train, usual_test, fused_train, fused_test = map(float, rows[-1][1:5])
    assert abs(usual_train - fused_train) < 1.0 and abs(usual_test - fused_test) < 1.0
    assert usual_train < float(rows[0][1])  # it learns
    assert "time per training step" in out


def test_fused_loss_equals_usual_loss():
    """Given the same sample, the two loss functions are the same number."""
    import torch
    ex = _load("pytorch_vae_example")
    torch.manual_seed(0)
    model = ex.VAE(64)
    x = (torch.rand(16, 64) < 0.3).float()
    mu, logvar = model.encode(x)
    recon = model.decode(mu)
    torch.testing.assert_close(ex.fused_loss_function(recon, x, mu, logvar), ex.loss_function(recon, x, mu, logvar))
