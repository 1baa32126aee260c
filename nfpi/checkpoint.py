"""Self-describing checkpoints: atomic save, ``weights_only=True`` load, clear errors.

A checkpoint is one ``torch.save`` file holding a plain dictionary::

    {"format": "nfpi-checkpoint", "version": 1, "nfpi_version": ..., "torch_version": ..., "time": ...,
     "kind": "flow" | "resume" | ..., "model": state_dict, "ema": state_dict | None,
     "optimizer": ..., "scheduler": ..., "step": int, "rng": ..., "gaussians": ..., "config": ..., "extra": ...}

Everything in it is a tensor, a number, a string, or a list / tuple / dict of those, so it loads with
``torch.load(..., weights_only=True)``: a checkpoint from an untrusted source cannot run code on load
(the pickle default can).  Non-tensor state that would otherwise need pickle (Python's and NumPy's
RNG states, config dataclasses) is converted to tensors and JSON-style lists by
:func:`capture_rng_state` and :func:`nfpi.io.to_jsonable` before saving.

Every ``.pt`` the workflow writes is one of these kinds, each with one writer and one loader:

=========================  ===============================  ==========================================
kind                       file                             loader
=========================  ===============================  ==========================================
``flow``                   ``flows/<flow>.pt``              :func:`nfpi.training.load_trained_flow`
``resume``                 ``flows/<flow>.pt.resume/``      :mod:`nfpi.training` (resuming a run)
``gaussians``              ``gaussians/<setting>.pt``       :func:`nfpi.density.load_gaussians`
``latent_ot_prior``        ``latent_ot/prior.pt``           :meth:`nfpi.latent_ot.LatentOTPrior.load`
``flowfactor_potentials``  ``flowfactor/potentials.pt``     :func:`nfpi.flowfactor.load_potentials`
=========================  ===============================  ==========================================

Files are written through :func:`nfpi.io.atomic_path`, so a job killed while saving leaves the
previous checkpoint intact; a truncated or corrupt file (copied half-way, disk full) is reported by
:func:`load_checkpoint` as a :class:`CheckpointError` naming the file and the fix.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import nfpi
from nfpi.io import atomic_path, to_jsonable

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
]

FORMAT_NAME = "nfpi-checkpoint"
#: Bumped when the layout changes incompatibly; files with a newer version are refused on load.
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated/corrupt, not an nfpi checkpoint, too new, or of the wrong kind."""


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    kind: str,
    model: dict[str, Any],
    ema: dict[str, Any] | None = None,
    optimizer: dict[str, Any] | None = None,
    scheduler: dict[str, Any] | None = None,
    step: int = 0,
    rng: dict[str, Any] | None = None,
    gaussians: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a self-describing checkpoint to ``path`` atomically.

    Stamps the format name and version, ``nfpi.__version__``, the torch version and the UTC time.
    ``config`` and ``extra`` are converted to plain JSON values (dataclasses, paths, tuples) so the
    file loads with ``weights_only=True``.  Tensors are moved to CPU first so a GPU checkpoint loads on
    a CPU-only machine without ``map_location`` surprises.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"{path}: checkpoint kind must be a non-empty string, got {kind!r}")
    payload: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "nfpi_version": nfpi.__version__,
        "torch_version": str(torch.__version__),  # TorchVersion is a str subclass that weights_only refuses
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kind": kind,
        "model": _to_cpu(model),
        "ema": _to_cpu(ema),
        "optimizer": _to_cpu(optimizer),
        "scheduler": _to_cpu(scheduler),
        "step": int(step),
        "rng": _to_cpu(rng),
        "gaussians": _to_cpu(gaussians),
        "config": to_jsonable(config) if config is not None else None,
        "extra": to_jsonable(extra) if extra is not None else None,
    }
    _check_loadable(payload, f"{path}")
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


_SAFE_SCALARS = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size)


def _check_loadable(obj: Any, where: str) -> None:
    """Refuse to write what ``weights_only=True`` could not read back (names the offending key)."""
    if isinstance(obj, torch.Tensor) or type(obj) in _SAFE_SCALARS:
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if type(k) not in _SAFE_SCALARS:
                raise TypeError(f"{where}: key {k!r} of type {type(k).__name__} cannot be stored in a checkpoint")
            _check_loadable(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_loadable(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where}: value of type {type(obj).__module__}.{type(obj).__name__} cannot be loaded with "
        "weights_only=True; convert it to tensors, numbers, strings, lists or dicts before saving"
    )


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    map_location: str | torch.device | None = "cpu",
    expected_kind: str | None = None,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises :class:`CheckpointError`, naming the file and the fix, when the file is missing, truncated
    or corrupt, not an nfpi checkpoint, written by a newer format version, or (with
    ``expected_kind``) of another kind (e.g. a resume state where a trained flow was expected).
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file not found (was the training stage that writes it run?)")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for bad files
        size = p.stat().st_size
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        # torch's weights-only refusal buries the reason ("Unsupported global: ...") in a long text.
        reason = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else "")
        raise CheckpointError(
            f"{p}: cannot read checkpoint ({size} bytes): truncated, corrupt, or not a weights-only torch file "
            f"({type(exc).__name__}: {reason[:300]}). Delete it and rerun the stage that writes it."
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{p}: not an nfpi checkpoint (no 'format': '{FORMAT_NAME}' entry); "
            "point to a file written by nfpi.checkpoint.save_checkpoint"
        )
    version = ckpt.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{p}: checkpoint format version {version!r} is newer than this nfpi ({nfpi.__version__}) reads "
            f"(<= {FORMAT_VERSION}); upgrade nfpi (file written by nfpi {ckpt.get('nfpi_version')})"
        )
    if expected_kind is not None and ckpt.get("kind") != expected_kind:
        raise CheckpointError(
            f"{p}: checkpoint kind is {ckpt.get('kind')!r}, expected {expected_kind!r}; check the path "
            "(e.g. a resume state passed where a trained flow was expected)"
        )
    return ckpt


def capture_rng_state() -> dict[str, Any]:
    """All global RNG states as tensors and lists (loadable with ``weights_only=True``).

    Python's ``random`` state is a nested tuple of ints and NumPy's a tuple holding an ndarray; both are
    converted to an int64 tensor plus small lists, so no pickle is needed to store them.
    """
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states are restored only when the device count matches)."""
    torch.set_rng_state(state["torch"].cpu())
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["gauss"])
    )
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _to_cpu(obj: Any) -> Any:
    """Recursively move tensors to CPU (containers rebuilt as plain dict / list / tuple)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return obj
