"""Which implementation serves each device: the compiled kernels (vaecuda._C) or vaecuda.reference.

VAECUDA_BACKEND (environment, read at import):
  auto       (default) compiled kernels where the extension has them for the device, else the
             reference, with a warning the first time each device falls back;
  compiled   always the compiled kernels: import fails if the extension is missing, and a call on a
             device the extension was not built for raises;
  reference  always the reference (plain torch ops), even where kernels exist.
"""

from __future__ import annotations

import os
import warnings

import torch

_MODES = ("auto", "compiled", "reference")
MODE = os.environ.get("VAECUDA_BACKEND", "auto").strip().lower() or "auto"
if MODE not in _MODES:
    raise ImportError(f"VAECUDA_BACKEND must be one of {', '.join(_MODES)}; got {MODE!r}")

_C = None
LOAD_ERROR: str | None = None
try:
    from vaecuda import _C  # noqa: F811  (importing it registers torch.ops.vaecuda.*)
except ImportError as e:  # not built, or built against another torch
    LOAD_ERROR = f"{type(e).__name__}: {e}"

if MODE == "compiled" and _C is None:
    raise ImportError(
        "VAECUDA_BACKEND=compiled but the compiled extension vaecuda._C did not load "
        f"({LOAD_ERROR}). Build it with `pip install --no-build-isolation -e .`."
    )

BUILD = _C.build_info() if _C is not None else None
# device types with compiled kernels; "meta" (shapes only, e.g. a model built on the meta device) is
# served by the ops' fake kernels, which torch.library registers as their meta kernels
_KERNEL_DEVICES = set() if _C is None else ({"cpu", "cuda", "meta"} if BUILD["cuda"] else {"cpu", "meta"})
_warned: set[str] = set()


def _why_reference(device_type: str) -> str:
    if MODE == "reference":
        return "VAECUDA_BACKEND=reference"
    if _C is None:
        return f"the compiled extension did not load ({LOAD_ERROR})"
    return f"the compiled extension has no {device_type} kernels (built with cuda={BUILD['cuda']})"


def use_compiled(device: torch.device) -> bool:
    """True if the compiled kernels serve this device; warns once per device type on fallback."""
    kind = device.type
    if MODE != "reference" and kind in _KERNEL_DEVICES:
        return True
    if MODE == "compiled":
        raise RuntimeError(f"VAECUDA_BACKEND=compiled but {_why_reference(kind)}")
    if MODE == "auto" and kind not in _warned:
        _warned.add(kind)
        warnings.warn(f"vaecuda: running the reference ops (plain torch) on {kind}: {_why_reference(kind)}",
                      RuntimeWarning, stacklevel=4)  # the user's call
    return False


def backend_info() -> dict:
    """Which backend serves which device, and why; how the extension was built."""
    devices = {}
    for kind in ("cpu", "cuda"):
        compiled = MODE != "reference" and kind in _KERNEL_DEVICES
        devices[kind] = {"backend": "compiled" if compiled else "reference",
                         "reason": "compiled kernels present" if compiled else _why_reference(kind)}
    return {"mode": MODE, "extension_loaded": _C is not None, "load_error": LOAD_ERROR, "build": BUILD,
            "devices": devices, "torch_version": torch.__version__}
