"""python -m vaecuda train / evaluate: exact resume, fused and reference ops learning alike, the run
folder's files, the KDE baseline, and clear failures that overwrite nothing."""

import json
import math
import os

import pytest
import torch

from vaecuda import kde
from vaecuda import train as T
from vaecuda.__main__ import main

DATA = None  # the toy .npz of conftest.binary_npz, set per test


@pytest.fixture(autouse=True)
def _toy_data(binary_npz):
    global DATA
    DATA = binary_npz


def _cfg(**kw):
    base = dict(data=DATA, hidden=[64], latent=8, epochs=3, batch_size=128, seed=3)
    base.update(kw)
    return T.Config(**base)


def _weights(run):
    return torch.load(os.path.join(run, "checkpoint.pt"), weights_only=False)["model"]


def test_resume_continues_exactly(tmp_path):
    quiet = dict(progress=False, log=lambda *_: None)
    for schedule in ("cosine", "exponential"):
        whole, parts = str(tmp_path / f"whole-{schedule}"), str(tmp_path / f"parts-{schedule}")
        cfg = _cfg(warmup_epochs=2, lr_schedule=schedule, binarize="dynamic")
        T.train(cfg, whole, **quiet)
        if schedule == "cosine":  # stopped after epoch 2 of 3, then resumed
            T.train(cfg, parts, stop_after=2, **quiet)
            with pytest.raises(T.RunError, match="resume it with --epochs 3"):
                T.train(_cfg(epochs=5), parts, resume=True, **quiet)
        else:  # trained for 2 epochs, then extended to 3
            T.train(_cfg(warmup_epochs=2, lr_schedule=schedule, binarize="dynamic", epochs=2), parts, **quiet)
        T.train(cfg, parts, resume=True, **quiet)  # epoch 3
        _same_run(whole, parts)


def _same_run(whole, parts):
    a, b = _weights(whole), _weights(parts)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma = [json.loads(line) for line in open(os.path.join(whole, "metrics.jsonl"))]
    mb = [json.loads(line) for line in open(os.path.join(parts, "metrics.jsonl"))]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(ma) == strip(mb) and len(ma) == 3


def test_resume_with_fewer_epochs_changes_nothing(tmp_path):
    """Asked for fewer epochs than the run has: nothing to train, and its config keeps its epochs."""
    run, quiet = str(tmp_path / "run"), dict(progress=False, log=lambda *_: None)
    T.train(_cfg(epochs=2), run, **quiet)
    before = open(os.path.join(run, "config.json")).read()
    assert len(T.train(_cfg(epochs=1), run, resume=True, **quiet)) == 2
    assert open(os.path.join(run, "config.json")).read() == before


def test_evaluate_limit_is_a_fixed_random_subset(tmp_path):
    run, quiet = str(tmp_path / "run"), dict(progress=False, log=lambda *_: None)
    T.train(_cfg(epochs=1), run, **quiet)
    a = T.evaluate(run, k=5, limit=7, kde=False, **quiet)
    b = T.evaluate(run, k=5, limit=7, kde=False, **quiet)
    assert a["test_images"] == 7 and a == b  # the same subset (and keys) every time
    cfg, model, splits = T.load_run(run)
    pick = torch.randperm(len(splits.test), generator=torch.Generator().manual_seed(0))[:7].sort().values
    assert pick.tolist() != list(range(7))  # not the first seven
    view = T._data.Splits(splits.train, splits.valid, splits.test[pick], splits.image_shape, splits.name, "fixed")
    assert a["test_elbo"] == T.mean_elbo(model, view, "test", T.device_of(cfg))


def test_resume_after_a_stop_between_metrics_and_checkpoint(tmp_path, monkeypatch):
    """Killed after epoch 2's metrics line but before its checkpoint: the resumed run redoes epoch 2
    and the metrics file has each epoch once; plain --resume keeps the run's own epoch count."""
    run = str(tmp_path / "run")
    real = T._save_atomic
    calls = []

    def dies_on_second(obj, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(obj, path)
    monkeypatch.setattr(T, "_save_atomic", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        T.train(_cfg(), run, progress=False, log=lambda *_: None)
    monkeypatch.setattr(T, "_save_atomic", real)
    # and a run stopped before its first checkpoint restarts from epoch 1 with its own config
    early = str(tmp_path / "early")
    calls.clear()
    monkeypatch.setattr(T, "_save_atomic", lambda obj, path: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        T.train(_cfg(epochs=2), early, progress=False, log=lambda *_: None)
    monkeypatch.setattr(T, "_save_atomic", real)
    assert len(T.train(T.Config(epochs=None), early, resume=True, progress=False, log=lambda *_: None)) == 2
    with pytest.raises(T.RunError, match="no run to resume"):
        T.train(T.Config(), str(tmp_path / "nothing"), resume=True, progress=False, log=lambda *_: None)
    T.train(T.Config(epochs=None), run, resume=True, progress=False, log=lambda *_: None)
    epochs = [json.loads(line)["epoch"] for line in open(os.path.join(run, "metrics.jsonl"))]
    assert epochs == [1, 2, 3]
    whole = str(tmp_path / "whole")
    T.train(_cfg(), whole, progress=False, log=lambda *_: None)
    _same_run(whole, run)
    # --resume --epochs 4 extends the run and records the new length
    assert main(["train", "--out", run, "--resume", "--epochs", "4", "--quiet", "--no-plots"]) == 0
    assert json.load(open(os.path.join(run, "config.json")))["epochs"] == 4
    assert main(["train", "--out", run, "--resume", "--quiet", "--no-plots"]) == 0  # nothing left to do
    assert len(open(os.path.join(run, "metrics.jsonl")).readlines()) == 4


def test_one_latent_dim_and_dynamic_binarization(tmp_path):
    run = str(tmp_path / "run")
    assert main(["train", "--out", run, "--data", DATA, "--epochs", "1", "--latent", "1", "--hidden", "16",
                 "--binarize", "dynamic", "--quiet"]) == 0
    assert os.path.exists(os.path.join(run, "latent.png"))
    assert main(["evaluate", run, "--k", "20", "--quiet"]) == 0


def test_fused_and_reference_ops_learn_alike(tmp_path):
    """Same seed, data and epochs: the fused ops and the reference ops end within noise of each other."""
    out = {}
    for ops in ("fused", "reference"):
        run = str(tmp_path / ops)
        T.train(_cfg(ops=ops, epochs=4), run, progress=False, log=lambda *_: None)
        out[ops] = T.evaluate(run, k=200, kde=False, progress=False, log=lambda *_: None)
    for key in ("test_elbo", "test_log_likelihood"):
        assert math.isfinite(out["fused"][key])
        assert abs(out["fused"][key] - out["reference"][key]) < 0.5, (key, out)
    assert out["fused"]["test_log_likelihood"] > out["fused"]["test_elbo"]


def test_iwae_objective_and_conv(tmp_path):
    hist = T.train(_cfg(objective="iwae", k=5, epochs=2), str(tmp_path / "iwae"), progress=False, log=lambda *_: None)
    assert hist[1]["train_loss"] < hist[0]["train_loss"]
    assert all(row["beta"] is None for row in hist)  # the IWAE bound has no beta to log
    hist = T.train(_cfg(arch="conv", channels=4, epochs=1), str(tmp_path / "conv"), progress=False, log=lambda *_: None)
    assert math.isfinite(hist[0]["valid_elbo"])


def test_cli_train_evaluate_and_files(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--out", run, "--data", DATA, "--epochs", "2", "--hidden", "32", "--latent", "4",
                 "--quiet"]) == 0
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "samples.png", "reconstructions.png",
                 "latent.png", "curves.png"):
        assert os.path.getsize(os.path.join(run, name)) > 0, name
    assert json.load(open(os.path.join(run, "config.json")))["latent"] == 4
    assert main(["evaluate", run, "--k", "50", "--quiet"]) == 0
    ev = json.load(open(os.path.join(run, "evaluation.json")))
    assert ev["k"] == 50 and 0 <= ev["active_units"] <= 4 and ev["test_nll"] == -ev["test_log_likelihood"]
    assert 0 < ev["kde"]["bandwidth"] <= 0.5 and math.isfinite(ev["kde"]["test_log_likelihood"])
    assert "pixel-space KDE" in capsys.readouterr().out
    assert main(["bench", "--list", "--device", "cpu"]) == 0


def test_cli_errors_overwrite_nothing(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--out", run, "--data", DATA, "--epochs", "1", "--hidden", "32", "--latent", "4", "--quiet",
                 "--no-plots"]) == 0
    before = open(os.path.join(run, "config.json")).read(), _weights(run)
    # a second train into the same folder
    assert main(["train", "--out", run, "--data", DATA, "--epochs", "1", "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert open(os.path.join(run, "config.json")).read() == before[0]
    # missing / malformed data
    assert main(["train", "--out", str(tmp_path / "x"), "--data", str(tmp_path / "none.npz"), "--quiet"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    assert main(["train", "--out", str(tmp_path / "y"), "--data", str(tmp_path / "bad.npz"), "--quiet"]) == 2
    assert "not a readable .npz" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "y" / "config.json")
    # a checkpoint from another architecture
    cfg = json.load(open(os.path.join(run, "config.json")))
    cfg["latent"] = 6
    json.dump(cfg, open(os.path.join(run, "config.json"), "w"))
    assert main(["train", "--out", run, "--resume", "--epochs", "2", "--quiet", "--no-plots"]) == 2
    assert "does not fit the run's architecture" in capsys.readouterr().err
    assert all(torch.equal(before[1][k], v) for k, v in _weights(run).items())
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "z"), "--data", DATA, "--lr", "-1", "--quiet"]) == 2
    assert "lr and lr_decay must be > 0" in capsys.readouterr().err
    # options out of range, or that the objective does not take, fail before anything is written
    for args, msg in ((["--seed", "-1"], "seed must be an integer in [0, 2^32)"),
                      (["--seed", str(2**50)], "seed must be an integer in [0, 2^32)"),
                      (["--device", "foo"], "device must be auto, cpu or cuda[:n], got 'foo'"),
                      (["--device", "cuda:7"], "no such CUDA device here"),
                      (["--objective", "iwae", "--beta", "0.5"], "the IWAE bound takes none of them"),
                      (["--objective", "iwae", "--warmup-epochs", "2"], "the IWAE bound takes none of them"),
                      (["--stop-after", "0"], "stop_after must be >= 1"),
                      (["--hidden", "-5"], "hidden widths and channels must be integers >= 1"),
                      (["--hidden", "32,0"], "hidden widths and channels must be integers >= 1"),
                      (["--arch", "conv", "--channels", "0"], "hidden widths and channels must be integers >= 1"),
                      (["--lr-schedule", "exponential", "--lr-decay", "-1"], "lr and lr_decay must be > 0"),
                      (["--lr-decay", "0"], "lr and lr_decay must be > 0")):
        assert main(["train", "--out", str(tmp_path / "w"), "--data", DATA, "--quiet", *args]) == 2, args
        assert msg in capsys.readouterr().err, args
        assert not os.path.exists(tmp_path / "w" / "config.json"), args
    for args, msg in ((["--limit", "0"], "limit must be >= 1"), (["--device", "foo"], "device must be")):
        assert main(["evaluate", run, "--quiet", *args]) == 2, args
        assert msg in capsys.readouterr().err, args


def test_kde_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    centres = (torch.rand(7, 5, generator=g) < 0.4).float()
    x = torch.cat([(torch.rand(3, 5, generator=g) < 0.4).float(), torch.rand(2, 5, generator=g)])
    lam = 0.1
    got = kde.log_likelihood(x, centres, lam, chunk=2)
    q = (1 - lam) * centres.double() + lam * (1 - centres.double())
    per = (x.double()[:, None] * q.log() + (1 - x.double()[:, None]) * (1 - q).log()).sum(-1)  # [B, N]
    torch.testing.assert_close(got, torch.logsumexp(per, 1) - math.log(7))
    best, scores = kde.fit_bandwidth(centres, x[:3], (0.05, 0.1, 0.3))
    assert scores[best] == max(scores.values())
    with pytest.raises(ValueError, match="bandwidth"):
        kde.log_likelihood(x, centres, 0.7)
