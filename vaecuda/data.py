"""Binary image data sets for the reference VAEs, from files on disk or bundled with scikit-learn.

    splits = vaecuda.data.load("digits")                         # works offline on any machine
    splits = vaecuda.data.load("path/to/binarized_mnist.npz")    # train / valid / test arrays
    splits = vaecuda.data.load("path/to/mnist_dir")              # the IDX .gz files, binarized
    splits.train, splits.valid, splits.test                      # float32 [N, P] in [0, 1]

Sources:
  "digits"       scikit-learn's bundled 8x8 handwritten digits (1,797 images, 64 pixels), grey levels
                 scaled to [0, 1]; split train / valid / test by ``seed``.
  a .npz file    arrays named train, valid (or validation / val) and test: the statically binarized
                 MNIST of Larochelle & Murray as commonly distributed (784 pixels, values {0, 1}).
  a folder       either binarized_mnist_{train,valid,test}.amat (text, one image per line), or the
                 standard MNIST IDX files (train-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz],
                 and the label files if present); the last 10,000 training images are the validation
                 split. ``download(folder)`` fetches the IDX files for users who are online.

Binarization (``binarize``): "fixed" thresholds grey levels at 0.5 once (already-binary data is left
as it is); "dynamic" keeps grey levels as probabilities and ``Splits.batches`` draws a fresh binary
sample each time (Salakhutdinov & Murray 2008); "none" keeps grey levels as soft targets.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Splits", "load", "download", "DataError"]

BINARIZE = ("fixed", "dynamic", "none")
_IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"


class DataError(ValueError):
    """A data file is missing, malformed or of the wrong size."""


@dataclass
class Splits:
    train: torch.Tensor            # float32 [N, P] in [0, 1]
    valid: torch.Tensor
    test: torch.Tensor
    image_shape: tuple             # (C, H, W) of one image
    name: str
    binarize: str = "fixed"
    train_labels: torch.Tensor | None = None
    valid_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None

    @property
    def pixels(self) -> int:
        return int(np.prod(self.image_shape))

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False, generator=None):
        """Mini-batches of one split, ``[b, P]`` float32; binary samples drawn afresh for "dynamic"."""
        data = getattr(self, split)
        n = data.shape[0]
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for i in range(0, n, batch_size):
            x = data[order[i:i + batch_size]]
            if self.binarize == "dynamic":
                x = torch.bernoulli(x, generator=generator)
            yield x


def load(source: str, *, seed: int = 0, binarize: str = "fixed", image_size: int | None = None) -> Splits:
    """The train / valid / test splits of ``source`` ("digits", a .npz file or a folder; see the module
    docstring). ``image_size`` (e.g. 28) checks the images are image_size x image_size."""
    if binarize not in BINARIZE:
        raise ValueError(f"binarize must be one of {', '.join(BINARIZE)}, got {binarize!r}")
    if source == "digits":
        splits = _digits(seed)
    elif os.path.isdir(source):
        splits = _folder(source)
    elif os.path.isfile(source):
        if not source.endswith(".npz"):
            raise DataError(f"{source}: expected a .npz file, a folder of .amat or IDX files, or 'digits'")
        splits = _npz(source)
    else:
        raise DataError(f"{source}: no such file or folder (sources: 'digits', a .npz file, a folder)")
    if image_size is not None and splits.image_shape[1:] != (image_size, image_size):
        raise DataError(f"{source}: images are {splits.image_shape[1]}x{splits.image_shape[2]}, "
                        f"expected {image_size}x{image_size}")
    splits.binarize = binarize
    if binarize == "fixed":
        for name in ("train", "valid", "test"):
            setattr(splits, name, (getattr(splits, name) > 0.5).float())
    return splits


# ---------------------------------------------------------------------------------------------------
def _split(x: np.ndarray, y: np.ndarray | None, seed: int, n_valid: int, n_test: int):
    order = np.random.default_rng(seed).permutation(len(x))
    parts = np.split(order, [len(x) - n_valid - n_test, len(x) - n_test])
    return [(x[i], None if y is None else y[i]) for i in parts]


def _digits(seed: int) -> Splits:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError("the 'digits' data set needs scikit-learn (pip install scikit-learn)") from e
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    (tr, ytr), (va, yva), (te, yte) = _split(x, d.target, seed, 300, 300)
    t = torch.from_numpy
    return Splits(t(tr), t(va), t(te), (1, 8, 8), "digits", train_labels=t(ytr), valid_labels=t(yva),
                  test_labels=t(yte))


def _as_images(name: str, x: np.ndarray) -> torch.Tensor:
    if x.ndim == 3:
        x = x.reshape(len(x), -1)
    if x.ndim != 2:
        raise DataError(f"{name}: expected images as [N, pixels] or [N, H, W], got shape {x.shape}")
    x = x.astype(np.float32)
    if x.size and x.max() > 1.0:
        x = x / 255.0
    if x.size and (x.min() < 0.0 or x.max() > 1.0):
        raise DataError(f"{name}: pixel values must lie in [0, 1] or [0, 255]")
    return torch.from_numpy(np.ascontiguousarray(x))


def _square_shape(name: str, pixels: int) -> tuple:
    side = int(round(pixels ** 0.5))
    if side * side != pixels:
        raise DataError(f"{name}: {pixels} pixels per image is not a square image")
    return (1, side, side)


def _npz(path: str) -> Splits:
    try:
        d = np.load(path)
        keys = set(d.files)
    except Exception as e:  # zipfile / pickle errors: a file that is not an npz
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    valid_key = next((k for k in ("valid", "validation", "val") if k in keys), None)
    if "train" not in keys or "test" not in keys or valid_key is None:
        raise DataError(f"{path}: expected arrays 'train', 'valid' and 'test', found {sorted(keys)}")
    tr, va, te = (_as_images(f"{path}[{k}]", d[k]) for k in ("train", valid_key, "test"))
    if not tr.shape[1] == va.shape[1] == te.shape[1]:
        raise DataError(f"{path}: splits differ in pixels per image ({tr.shape[1]}, {va.shape[1]}, {te.shape[1]})")
    return Splits(tr, va, te, _square_shape(path, tr.shape[1]), os.path.basename(path))


def _folder(folder: str) -> Splits:
    amat = {s: os.path.join(folder, f"binarized_mnist_{s}.amat") for s in ("train", "valid", "test")}
    if all(os.path.exists(p) for p in amat.values()):
        parts = []
        for s, p in amat.items():
            try:
                parts.append(_as_images(p, np.loadtxt(p, dtype=np.float32, ndmin=2)))
            except ValueError as e:
                raise DataError(f"{p}: not a text matrix of pixel values ({e})") from None
        tr, va, te = parts
        if not tr.shape[1] == va.shape[1] == te.shape[1]:
            raise DataError(f"{folder}: the .amat splits differ in pixels per image "
                            f"({tr.shape[1]}, {va.shape[1]}, {te.shape[1]})")
        return Splits(tr, va, te, _square_shape(amat["train"], tr.shape[1]), "binarized_mnist (amat)")
    found = {k: _find(folder, names) for k, names in _IDX.items()}
    if found["train"][0] is None or found["test"][0] is None:
        raise DataError(f"{folder}: found neither binarized_mnist_{{train,valid,test}}.amat nor the MNIST IDX "
                        f"files (train-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz])")
    xtr, ytr = (_read_idx(p) if p else None for p in found["train"])
    xte, yte = (_read_idx(p) if p else None for p in found["test"])
    if xtr.ndim != 3 or xte.ndim != 3:
        raise DataError(f"{folder}: the image files must hold [N, H, W] arrays")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(f"{folder}: train images are {xtr.shape[1]}x{xtr.shape[2]} but test images "
                        f"{xte.shape[1]}x{xte.shape[2]}")
    for kind, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        if y is not None and (y.ndim != 1 or len(y) != len(x)):
            raise DataError(f"{folder}: {len(x)} {kind} images but {y.shape} {kind} labels")
    if len(xtr) < 6:
        raise DataError(f"{folder}: {len(xtr)} training images; at least 6 are needed (a sixth is held out "
                        "for validation)")
    n_valid = 10000 if len(xtr) > 20000 else len(xtr) // 6
    t = (lambda a: None if a is None else torch.from_numpy(a.astype(np.int64)))  # noqa: E731
    return Splits(_as_images("train images", xtr[:-n_valid]), _as_images("valid images", xtr[-n_valid:]),
                  _as_images("test images", xte), (1, *xtr.shape[1:]), "mnist (idx)",
                  train_labels=t(ytr[:-n_valid]) if ytr is not None else None,
                  valid_labels=t(ytr[-n_valid:]) if ytr is not None else None, test_labels=t(yte))


def _find(folder: str, names) -> list:
    out = []
    for n in names:
        hit = next((os.path.join(folder, c) for c in (n, n + ".gz", n.replace("-idx", ".idx"),
                                                      n.replace("-idx", ".idx") + ".gz")
                    if os.path.exists(os.path.join(folder, c))), None)
        out.append(hit)
    return out


def _read_idx(path: str) -> np.ndarray:
    """An IDX file (the MNIST format): magic 0x0000 08 <ndim>, big-endian dims, then uint8 data."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes) but the file holds {data.size}")
    return data.reshape(dims)


def download(folder: str) -> str:
    """Fetch the four MNIST IDX .gz files into ``folder`` (needs network access); returns the folder."""
    import urllib.error
    import urllib.request
    os.makedirs(folder, exist_ok=True)
    for names in _IDX.values():
        for n in names:
            dest = os.path.join(folder, n + ".gz")
            if not os.path.exists(dest):
                tmp = dest + ".part"
                try:
                    urllib.request.urlretrieve(_MNIST_URL + n + ".gz", tmp)
                except (urllib.error.URLError, OSError) as e:
                    if os.path.exists(tmp):
                        os.remove(tmp)
                    raise DataError(f"could not download {_MNIST_URL + n}.gz ({e}); put the MNIST IDX files "
                                    f"in {folder} by hand") from None
                os.replace(tmp, dest)  # a file appears only when it is whole
    return folder
