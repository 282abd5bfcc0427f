"""vaecuda.data: every source format, splits, binarization and clear errors on bad files (the
project's tests use only generated files and scikit-learn's bundled digits)."""

import gzip
import os
import struct

import numpy as np
import pytest
import torch

from vaecuda import data

# the digits tests need scikit-learn (installed by the README's set-up line, so CI runs them; a bare
# GPU machine may lack it)
needs_sklearn = pytest.mark.skipif(not __import__("importlib").util.find_spec("sklearn"),
                                   reason="the 'digits' source needs scikit-learn")


@needs_sklearn
def test_digits_splits_by_seed():
    a, b, c = data.load("digits", seed=0), data.load("digits", seed=0), data.load("digits", seed=1)
    assert a.train.shape == (1197, 64) and a.valid.shape == a.test.shape == (300, 64)
    assert a.image_shape == (1, 8, 8) and a.pixels == 64
    assert torch.equal(a.train, b.train) and not torch.equal(a.train, c.train)
    assert set(a.train.unique().tolist()) == {0.0, 1.0}  # fixed binarization
    assert a.train_labels.shape == (1197,)
    grey = data.load("digits", binarize="none")
    assert grey.train.max() <= 1 and len(grey.train.unique()) > 2


def test_dynamic_binarization_draws_fresh_samples(tmp_path):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "grey.npz", **{k: rng.integers(0, 256, (n, 64)) for k, n in
                                       (("train", 600), ("valid", 100), ("test", 100))})
    s = data.load(str(tmp_path / "grey.npz"), binarize="dynamic")
    assert len(s.train.unique()) > 2  # kept as probabilities
    g = torch.Generator().manual_seed(0)
    b1 = next(s.batches("train", 64, generator=g))
    b2 = next(s.batches("train", 64, generator=g))
    assert set(b1.unique().tolist()) <= {0.0, 1.0} and not torch.equal(b1, b2)
    sizes = [len(x) for x in s.batches("train", 128)]
    assert sum(sizes) == 600 and sizes[-1] == 600 - 128 * 4


def test_npz(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {k: (rng.random((n, 784)) < 0.3).astype(np.uint8) for k, n in (("train", 50), ("valid", 20), ("test", 10))}
    np.savez(tmp_path / "bm.npz", **arrays)
    s = data.load(str(tmp_path / "bm.npz"), image_size=28)
    assert s.image_shape == (1, 28, 28) and s.train.shape == (50, 784)
    assert torch.equal(s.test, torch.from_numpy(arrays["test"]).float())
    with pytest.raises(data.DataError, match="images are 28x28, expected 8x8"):
        data.load(str(tmp_path / "bm.npz"), image_size=8)
    np.savez(tmp_path / "bad.npz", train=arrays["train"], test=arrays["test"])
    with pytest.raises(data.DataError, match="expected arrays 'train', 'valid' and 'test'"):
        data.load(str(tmp_path / "bad.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(data.DataError, match="not a readable .npz file"):
        data.load(str(tmp_path / "junk.npz"))
    np.savez(tmp_path / "odd.npz", train=np.zeros((4, 10)), valid=np.zeros((4, 10)), test=np.zeros((4, 10)))
    with pytest.raises(data.DataError, match="not a square image"):
        data.load(str(tmp_path / "odd.npz"))


def test_amat_folder(tmp_path):
    rng = np.random.default_rng(1)
    for s, n in (("train", 6), ("valid", 3), ("test", 2)):
        np.savetxt(tmp_path / f"binarized_mnist_{s}.amat", (rng.random((n, 16)) < 0.5).astype(int), fmt="%d")
    s = data.load(str(tmp_path))
    assert s.train.shape == (6, 16) and s.image_shape == (1, 4, 4)
    # a split of another image size is refused at load time, not after an epoch
    np.savetxt(tmp_path / "binarized_mnist_valid.amat", (rng.random((3, 9)) < 0.5).astype(int), fmt="%d")
    with pytest.raises(data.DataError, match=r"the .amat splits differ in pixels per image \(16, 9, 16\)"):
        data.load(str(tmp_path))


def _write_idx(path, arr, gz=True):
    head = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with (gzip.open if gz else open)(path, "wb") as f:  # closed here: Python 3.12's gzip buffers writes
        f.write(head + arr.astype(np.uint8).tobytes())


def test_idx_folder(tmp_path):
    rng = np.random.default_rng(2)
    xtr, xte = rng.integers(0, 256, (60, 28, 28)), rng.integers(0, 256, (10, 28, 28))
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", xtr)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(60) % 10)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", xte, gz=False)
    s = data.load(str(tmp_path), binarize="none")
    assert s.train.shape == (50, 784) and s.valid.shape == (10, 784) and s.test.shape == (10, 784)
    torch.testing.assert_close(s.test, torch.from_numpy(xte.reshape(10, -1) / 255.0).float())
    assert s.train_labels.tolist() == (np.arange(50) % 10).tolist() and s.test_labels is None
    # a truncated file is reported, not half-read
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz") as f:
        raw = f.read()
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(data.DataError, match="header says"):
        data.load(str(tmp_path))


def test_idx_folder_checks_sizes(tmp_path):
    """Train and test images of one size, as many labels as images, enough images to hold out a sixth."""
    rng = np.random.default_rng(3)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (30, 8, 8)))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (5, 12, 12)))
    with pytest.raises(data.DataError, match="train images are 8x8 but test images 12x12"):
        data.load(str(tmp_path))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (5, 8, 8)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(7) % 10)
    with pytest.raises(data.DataError, match=r"30 train images but \(7,\) train labels"):
        data.load(str(tmp_path))
    os.remove(tmp_path / "train-labels-idx1-ubyte.gz")
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (5, 8, 8)))
    with pytest.raises(data.DataError, match="5 training images; at least 6"):
        data.load(str(tmp_path))


def test_missing_and_unknown_sources(tmp_path):
    with pytest.raises(data.DataError, match="no such file or folder"):
        data.load(str(tmp_path / "nope.npz"))
    with pytest.raises(data.DataError, match="found neither"):
        data.load(str(tmp_path))
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(data.DataError, match="expected a .npz file"):
        data.load(str(tmp_path / "x.csv"))
    with pytest.raises(ValueError, match="binarize must be one of"):
        data.load(str(tmp_path / "x.csv"), binarize="otsu")


def test_download_fetches_whole_files(tmp_path, monkeypatch):
    """The opt-in download (no network in tests: urlretrieve serves generated IDX files)."""
    import urllib.error
    import urllib.request
    src = tmp_path / "mirror"
    src.mkdir()
    rng = np.random.default_rng(4)
    _write_idx(src / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (24, 28, 28)))
    _write_idx(src / "train-labels-idx1-ubyte.gz", np.arange(24) % 10)
    _write_idx(src / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (6, 28, 28)))
    _write_idx(src / "t10k-labels-idx1-ubyte.gz", np.arange(6) % 10)
    fetched = []

    def fake(url, dest):
        fetched.append(url)
        with open(dest, "wb") as f:
            f.write((src / url.rsplit("/", 1)[1]).read_bytes())
    monkeypatch.setattr(urllib.request, "urlretrieve", fake)
    folder = data.download(str(tmp_path / "mnist"))
    assert len(fetched) == 4 and all(u.startswith("https://") for u in fetched)
    s = data.load(folder)
    assert s.train.shape == (20, 784) and s.test.shape == (6, 784)
    data.download(folder)  # present files are not fetched again
    assert len(fetched) == 4

    def offline(url, dest):
        with open(dest, "wb") as f:
            f.write(b"partial")
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(urllib.request, "urlretrieve", offline)
    with pytest.raises(data.DataError, match="could not download"):
        data.download(str(tmp_path / "empty"))
    assert not any((tmp_path / "empty").iterdir())  # no half file left behind
