"""Evaluation of a trained flow: NF-Acc, confusion, bits/dim, latent extraction, sampling.

- NF-Acc (Section 5.1): the label ``argmax_y log N(f(x); mu_y, v_y)`` (equal class priors), i.e.
  the class Gaussian with the highest likelihood; per-class accuracy and the confusion matrix come
  from the same predictions.
- bits/dim of the 8-bit data under uniform dequantisation (spec, "training loss"):
  conditional ``-log p(x | y)`` and marginal ``-log p(x) = -log (1/K) sum_y p(x | y)``.
- Latents ``z = f(x)`` for the latents writer (forward only, ``torch.inference_mode``, batched).
- Samples at temperature ``T``: ``z ~ N(mu_y, T^2 v_y)``, ``x = f^{-1}(z)``, as uint8 images.

All functions take the flow as given (load it with :func:`nfpi.training.load_trained_flow`, which
puts the EMA weights in and switches to eval mode) and do not change its mode or weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from nfpi.progress import progress
from nfpi.training import dequantize_batch, load_batch

log = logging.getLogger(__name__)

__all__ = ["EvaluateConfig", "ExtractConfig", "SampleConfig", "evaluate_flow", "extract_latents", "latent_class_stats", "sample_images", "decode_latents", "iterate_batches"]


def _flow_device(flow: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(iter(flow.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def iterate_batches(
    dataset: Dataset, batch_size: int, *, dequantize: bool, seed: int = 0, n_bits: int = 8
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The dataset in order, as preprocessed float batches ``[B, C, H, W]`` in [-0.5, 0.5) and int64 labels.

    With ``dequantize`` the uniform noise comes from one generator seeded by ``seed`` and drawn in
    dataset order, so the result depends neither on ``batch_size`` nor on the device.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(dataset)
    gen = torch.Generator().manual_seed(seed) if dequantize else None
    for start in range(0, n, batch_size):
        x, y = load_batch(dataset, torch.arange(start, min(start + batch_size, n)))
        noise = torch.rand(x.shape, generator=gen) if gen is not None and not x.is_floating_point() else None
        yield dequantize_batch(x, noise, n_bits=n_bits), y


@torch.inference_mode()
def evaluate_flow(
    flow: nn.Module,
    prior: Any,
    dataset: Dataset,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    dequantize: bool = True,
    seed: int = 0,
    n_bits: int = 8,
    classify_centres: bool = True,
) -> dict[str, Any]:
    """NF-Acc, per-class accuracy, confusion matrix and bits/dim of ``flow`` under ``prior`` on ``dataset``.

    Returns ``{"nf_acc", "per_class_acc" (list, NaN -> None for classes absent from the split),
    "confusion" (list of lists, rows = true class, columns = predicted), "bpd_conditional",
    "bpd_marginal", "num_images"}``.  Predictions follow Section 5.1 (``argmax_y log N(f(x); mu_y, v_y)``,
    one matrix product for all classes); bits/dim use uniform dequantisation noise drawn from a
    generator seeded by ``seed`` (so repeated evaluations agree), ``dequantize=False`` uses the bin
    centres.  With ``classify_centres`` (default) the predictions are those of the image itself (its
    bin centres, a deterministic classifier) while bits/dim keep the noise (the variational bound
    needs it): a second forward pass when ``dequantize``.  Sums are accumulated in float64.
    """
    from nfpi.density import bits_per_dim

    dev = _flow_device(flow, device)
    prior = prior.to(dev)  # a copy (K x D): callers need not move it themselves
    k = int(prior.means.shape[0])
    num_dims = int(np.prod(flow.image_shape))
    confusion = torch.zeros(k * k, dtype=torch.int64)
    nll_cond = torch.zeros((), dtype=torch.float64)
    nll_marg = torch.zeros((), dtype=torch.float64)
    count = 0
    second_pass = classify_centres and dequantize
    centres = iterate_batches(dataset, batch_size, dequantize=False, n_bits=n_bits) if second_pass else None
    bar = progress(total=len(dataset), desc="evaluate flow", unit="img", logger=log)  # type: ignore[arg-type]
    for x, y in iterate_batches(dataset, batch_size, dequantize=dequantize, seed=seed, n_bits=n_bits):
        bar.update(int(y.numel()))
        x, y = x.to(dev), y.to(dev)
        z, logdet = flow(x)
        z, logdet = z.float(), logdet.float()
        lp_all = prior.log_prob_all(z)  # [B, K]
        if centres is not None:  # the same images in the same order, at their bin centres
            xc, _ = next(centres)
            pred = prior.log_prob_all(flow(xc.to(dev))[0].float()).argmax(dim=1)
        else:
            pred = lp_all.argmax(dim=1)
        lp_y = lp_all.gather(1, y.view(-1, 1)).squeeze(1)
        lp_marg = torch.logsumexp(lp_all, dim=1) - math.log(k)  # equal class priors
        nll_cond -= (lp_y + logdet).double().sum().cpu()  # -log p(x|y), Eq. 1
        nll_marg -= (lp_marg + logdet).double().sum().cpu()  # -log p(x)
        confusion += torch.bincount((y * k + pred).cpu(), minlength=k * k)
        count += int(y.numel())
    bar.close()
    if count == 0:
        raise ValueError("evaluate_flow: the dataset is empty")
    conf = confusion.view(k, k)
    per_class_total = conf.sum(dim=1)
    per_class = conf.diagonal().double() / per_class_total.double()
    return {
        "nf_acc": float(conf.diagonal().sum()) / count,
        "per_class_acc": [None if math.isnan(v) else v for v in per_class.tolist()],
        "confusion": conf.tolist(),
        "bpd_conditional": float(bits_per_dim(-nll_cond / count, num_dims, n_bits)),
        "bpd_marginal": float(bits_per_dim(-nll_marg / count, num_dims, n_bits)),
        "num_images": count,
    }


def extract_latents(
    flow: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    dequantize: bool = False,
    seed: int = 0,
    n_bits: int = 8,
    desc: str = "extract latents",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(z float32 [B, D], y int64 [B])`` numpy batches of ``z = f(x)`` in dataset order.

    Forward only, under ``torch.inference_mode``; by default without dequantisation noise (the bin
    centre: the latent of the image itself, so latents are a deterministic function of the data).  A generator: the
    caller (the latents writer) streams it to disk without holding all latents in memory.  ``desc``
    names the loop in the progress bar / log lines.
    """
    dev = _flow_device(flow, device)
    with progress(total=len(dataset), desc=desc, unit="img", logger=log) as bar:  # type: ignore[arg-type]
        for x, y in iterate_batches(dataset, batch_size, dequantize=dequantize, seed=seed, n_bits=n_bits):
            with torch.inference_mode():
                z, _ = flow(x.to(dev))
            yield z.float().cpu().numpy(), y.numpy().astype(np.int64, copy=False)
            bar.update(int(y.numel()))


def latent_class_stats(
    flow: nn.Module,
    dataset: Dataset,
    num_classes: int,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    dequantize: bool = True,
    seed: int = 0,
    n_bits: int = 8,
    full: bool = False,
) -> Any:
    """Class statistics ``(n_y, m_y, q_y)`` (float64) of ``z = f(x)`` over ``dataset``, streamed in one pass.

    What the FPI of Proposition 1 needs from the current flow (the extract + solve stages in one
    pass, without writing latents): the fine-tuning stage re-solves the Gaussians with it between
    rounds.  Dequantised with seeded noise by default, as the extract stage does.
    """
    from nfpi.fpi import StatsAccumulator

    dim = int(np.prod(flow.image_shape))
    acc = StatsAccumulator(num_classes, dim, full=full)  # full: second moments for fpi_full
    for z, y in extract_latents(flow, dataset, batch_size=batch_size, device=device, dequantize=dequantize,
                                seed=seed, n_bits=n_bits, desc="latent class statistics"):
        acc.update(torch.from_numpy(z), torch.from_numpy(y))
    return acc.finalize()


@torch.inference_mode()
def sample_images(
    flow: nn.Module,
    prior: Any,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
    n_bits: int = 8,
) -> torch.Tensor:
    """Class-conditional samples: ``z ~ N(mu_y, T^2 v_y)``, ``x = f^{-1}(z)``, as uint8 ``[N, C, H, W]`` on CPU.

    ``generator`` (a CPU generator) makes the samples reproducible; the latents are drawn on the CPU
    in label order and moved to the flow's device, so the images do not depend on ``batch_size``
    or the device beyond float rounding.
    """

    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    dev = _flow_device(flow, device)
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
    cpu_prior = prior.to("cpu")
    out = []
    for start in progress(range(0, labels.numel(), batch_size), desc="sample", unit="batch", logger=log):
        y = labels[start : start + batch_size]
        z = cpu_prior.sample(y, temperature=temperature, generator=generator)
        out.append(_decode_batch(flow, z, dev, n_bits))
    if not out:
        return torch.empty((0, *flow.image_shape), dtype=torch.uint8)
    return torch.cat(out)


def _decode_batch(flow: nn.Module, z: torch.Tensor, device: torch.device, n_bits: int) -> torch.Tensor:
    """One batch of ``x = f^{-1}(z)`` as uint8 images on the CPU (``n_bits``: the bits the flow was trained on)."""
    from nfpi.density import postprocess

    x = flow.inverse(z.to(device, torch.float32))
    return postprocess(x.float().cpu(), n_bits=n_bits)


@torch.inference_mode()
def decode_latents(flow: nn.Module, z: torch.Tensor, *, batch_size: int = 256,
                   device: str | torch.device | None = None, n_bits: int = 8) -> torch.Tensor:
    """``x = f^{-1}(z)`` for latents ``z [B, D]`` as uint8 images ``[B, C, H, W]`` on the CPU (spec, "Sampling").

    >>> images = decode_latents(trained.flow, prior.sample(labels), n_bits=trained.n_bits)  # doctest: +SKIP
    """
    dev = _flow_device(flow, device)
    out = [_decode_batch(flow, z[s:s + batch_size], dev, n_bits)
           for s in progress(range(0, len(z), batch_size), desc="decode latents", unit="batch", logger=log)]
    return torch.cat(out) if out else torch.empty((0, *flow.image_shape), dtype=torch.uint8)


# The config slices of the stages that run this module's loops (extract, evaluate, sample).


@dataclass(frozen=True)
class ExtractConfig:
    """The ``extract`` config slice."""

    batch_size: int = 256  # images per forward pass
    format: Literal["parquet", "npy"] = "parquet"  # npy: numpy memmap, for large d (ImageNet64: d = 12288)
    row_group_size: int = 4096  # Parquet rows per row group (the streaming unit of the FPI's statistics pass)
    dequantize: bool = True  # latents of x + u, u ~ U[0, 2^-n_bits): the density the flow models (see module doc)
    seed: int = 0  # dequantisation noise seed (the same latents on every rerun)
    device: str = "auto"  # "auto" (CUDA if visible), "cpu", "cuda", "cuda:1"...



@dataclass(frozen=True)
class EvaluateConfig:
    """The ``evaluate`` config slice."""

    batch_size: int = 256  # images per forward pass
    splits: tuple[str, ...] = ("val", "test")  # val selects hyperparameters; test is only reported
    device: str = "auto"  # "auto" (CUDA if visible), "cpu", "cuda", "cuda:1"...



@dataclass(frozen=True)
class SampleConfig:
    """The ``sample`` config slice."""

    per_class: int = 200  # images generated per class (the CNN's whole training set)
    temperature: float = 0.8  # T in z ~ N(mu_y, T^2 v_y)
    seed: int = 0  # seed of the sampling noise (the same images on every rerun)
    batch_size: int = 256  # latents decoded per inverse pass
    grid_per_class: int = 10  # columns of the per-class image grid
    device: str = "auto"  # "auto" (CUDA if visible), "cpu", "cuda", "cuda:1"...
