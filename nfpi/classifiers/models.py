"""Classifiers trained on flow samples (CNN-Acc) or on NF-augmented data (Tables 2-6).

Registry of architectures (``build_classifier``), one training loop (``train_classifier``) and one
evaluation (``evaluate_classifier``):

- ``"resnet18"``: torchvision ResNet18 with the CIFAR stem (3x3 conv stride 1, no max-pool) and any
  number of input channels.  CNN-Acc (paper Sec. 5.1, Tables 2-4) trains it *only* on images sampled
  from the flow, ``x = f^{-1}(z)``, ``z ~ N(mu_y, T^2 v_y)`` (spec), and tests it on the real test set,
  with the paper's optimiser: SGD lr 1e-3, momentum 0.9, weight decay 5e-4, one-cycle schedule with
  max lr 0.1, batch 100, crop + horizontal flip.
- ``"swin"``: a timm Swin transformer configured for small images (Table 5; the paper's ~7M-parameter
  model, AdamW lr 2e-3, wd 5e-2, cosine schedule, batch 256, the timm / torchvision augmentation set).
- ``"eva02"``: a timm EVA02 (Table 6), fine-tuned from a local pretrained file (SGD lr 1e-5, gradient
  clipping at norm 1, batch 64, 3 epochs).  Without a file a small EVA02-style model is trained from
  scratch and every result carries ``pretrained = False``.

Every model is wrapped in :class:`Classifier`, which takes images as float ``[0, 1]`` and does its own
resizing and normalisation, so callers only ever pass uint8 images (``x / 255``).  Nothing is
downloaded: timm models are built with ``pretrained=False`` and weights are read from
``pretrained_file``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from nfpi.augment.transforms import build_batch_mixer, build_sample_transform, random_crop_flip
from nfpi.classifiers.config import (
    DEFAULT_EVA02_PRETRAINED,
    ClassifierConfig,
    _missing_weights,
)
from nfpi.config import ConfigError
from nfpi.io import append_jsonl
from nfpi.progress import progress
from nfpi.runtime import autocast, seed_everything, select_device
from nfpi.seeds import stream_seed

# The public names are listed once, in nfpi.classifiers.__all__ (the package loads this module on first use of one).

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


class PretrainedLoadError(RuntimeError):
    """A pretrained weights file is missing, unreadable or does not match the architecture."""


class Classifier(nn.Module):
    """Any backbone behind one input convention: images as float ``[0, 1]``, ``[B, C, H, W]``.

    The wrapper resizes to the backbone's input size (EVA02 pretrained at 448 px) and normalises with
    the backbone's mean / std, so training and evaluation code never needs to know the architecture.

    Attributes:
        arch: registry name.
        pretrained: whether weights came from ``pretrained_file`` (Table 6 results must say so).
        pretrained_file: the file the weights came from, or ``None``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        arch: str,
        input_size: tuple[int, int] | None = None,
        mean: tuple[float, ...] = (0.5,),
        std: tuple[float, ...] = (0.5,),
        pretrained: bool = False,
        pretrained_file: str | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.arch = arch
        self.input_size = input_size
        self.pretrained = pretrained
        self.pretrained_file = pretrained_file
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, K]`` of images ``x`` in ``[0, 1]``."""
        if self.input_size is not None and tuple(x.shape[-2:]) != tuple(self.input_size):
            x = nn.functional.interpolate(x, size=self.input_size, mode="bicubic", align_corners=False)
        return self.backbone((x - self.mean) / self.std)


_REGISTRY: dict[str, Callable[[ClassifierConfig, tuple[int, int, int], int], Classifier]] = {}


def register_classifier(name: str) -> Callable[[Callable[..., Classifier]], Callable[..., Classifier]]:
    """Decorator registering ``builder(cfg, image_shape, num_classes) -> Classifier`` under ``name``."""

    def deco(fn: Callable[..., Classifier]) -> Callable[..., Classifier]:
        if name in _REGISTRY:
            raise ValueError(f"classifier '{name}' is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def available_classifiers() -> list[str]:
    """Registered architecture names (values of ``arch``)."""
    return sorted(_REGISTRY)


def build_classifier(cfg: ClassifierConfig, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build the :class:`Classifier` for ``cfg.arch`` on images ``image_shape = (C, H, W)``.

    Raises:
        ConfigError: unknown ``arch``.
        PretrainedLoadError: ``pretrained_file`` missing or not matching the architecture.
    """
    if cfg.arch not in _REGISTRY:
        raise ConfigError(f"unknown classifier arch '{cfg.arch}'; use one of {available_classifiers()}")
    if len(image_shape) != 3 or num_classes < 1:
        raise ValueError(f"image_shape must be (C, H, W) and num_classes >= 1; got {image_shape}, {num_classes}")
    c, h, w = (int(v) for v in image_shape)
    return _REGISTRY[cfg.arch](cfg, (c, h, w), int(num_classes))


def _kwargs(cfg: ClassifierConfig, defaults: dict[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    out.update(cfg.model_kwargs or {})
    return out


def _data_stats(c: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # Fixed, data-independent normalisation: the classifier sees generated images whose statistics
    # differ from the real ones, so statistics computed on either would favour one of them.
    return (0.5,) * c, (0.25,) * c


@register_classifier("resnet18")
def _build_resnet18(cfg: ClassifierConfig, image_shape: tuple[int, int, int], num_classes: int) -> Classifier:
    """torchvision ResNet18 with the CIFAR stem: 3x3 stride-1 first conv and no max-pool (11.2M params)."""
    from torchvision.models import resnet18

    c, _, _ = image_shape
    kw = _kwargs(cfg, {})
    model = resnet18(num_classes=num_classes, **kw)
    model.conv1 = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()  # keep resolution for 8x8 / 32x32 inputs
    mean, std = _data_stats(c)
    return Classifier(model, arch="resnet18", mean=mean, std=std)


def _swin_defaults(image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """Swin for small images (paper [20]-style, ~7M params at 32x32; a tiny one for 8x8 digits)."""
    _, h, _ = image_shape
    if h >= 16:
        # 32x32: patch 2 -> 16x16 tokens, windows of 4, three stages (16, 8, 4): 7.1M params at K=10.
        return dict(patch_size=2, window_size=4, embed_dim=96, depths=(2, 6, 4), num_heads=(3, 6, 12),
                    mlp_ratio=2.0, drop_path_rate=0.1)
    # 8x8 digits: one token per pixel, windows of 4, two stages (8, 4).
    return dict(patch_size=1, window_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4), mlp_ratio=2.0,
                drop_path_rate=0.0)


@register_classifier("swin")
def _build_swin(cfg: ClassifierConfig, image_shape: tuple[int, int, int], num_classes: int) -> Classifier:
    """timm ``SwinTransformer`` at the image's own resolution (no upsampling); see ``_swin_defaults``."""
    from timm.models.swin_transformer import SwinTransformer

    c, h, w = image_shape
    kw = _kwargs(cfg, _swin_defaults(image_shape))
    for key in ("depths", "num_heads"):
        if key in kw:
            kw[key] = tuple(kw[key])
    try:
        model = SwinTransformer(img_size=(h, w), in_chans=c, num_classes=num_classes, **kw)
    except (TypeError, AssertionError, ValueError) as exc:
        raise ConfigError(f"swin.model_kwargs {cfg.model_kwargs} do not build a Swin for images {image_shape}: "
                          f"{exc}") from None
    out = Classifier(model, arch="swin", mean=_data_stats(c)[0], std=_data_stats(c)[1])
    if cfg.pretrained_file:
        from timm.models.swin_transformer import checkpoint_filter_fn

        _load_pretrained(model, cfg.pretrained_file, key="swin.pretrained_file", filter_fn=checkpoint_filter_fn)
        out.pretrained, out.pretrained_file = True, cfg.pretrained_file
    return out


def _eva02_scratch_defaults(image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """A small EVA02-style ViT (SwiGLU MLP, rotary position embedding) at the image's resolution."""
    _, h, _ = image_shape
    patch = 2 if h <= 16 else 4
    grid = h // patch
    return dict(patch_size=patch, embed_dim=64 if h <= 16 else 192, depth=4 if h <= 16 else 6,
                num_heads=2 if h <= 16 else 3, mlp_ratio=4 * 2 / 3, swiglu_mlp=True, use_rot_pos_emb=True,
                ref_feat_shape=(grid, grid))


@register_classifier("eva02")
def _build_eva02(cfg: ClassifierConfig, image_shape: tuple[int, int, int], num_classes: int) -> Classifier:
    """EVA02 from a local pretrained file (timm architecture ``model_name``), else a small one from scratch.

    With a file the model is the timm architecture ``model_kwargs["model_name"]`` (default
    :data:`DEFAULT_EVA02_PRETRAINED`) at its pretrained input size (or ``model_kwargs["img_size"]``);
    images are resized to it and normalised with its mean / std.  The classifier head is kept when it
    matches ``num_classes`` (ImageNet fine-tuning) and re-initialised otherwise.
    """
    import timm

    c, h, w = image_shape
    kw = dict(cfg.model_kwargs or {})
    model_name = kw.pop("model_name", None)
    if cfg.pretrained_file is None and model_name is None:
        model = timm.models.eva.Eva(img_size=(h, w), in_chans=c, num_classes=num_classes,
                                    **(_eva02_scratch_defaults(image_shape) | kw))
        return Classifier(model, arch="eva02", mean=_data_stats(c)[0], std=_data_stats(c)[1])
    model_name = model_name or DEFAULT_EVA02_PRETRAINED
    try:
        model = timm.create_model(model_name, pretrained=False, num_classes=num_classes, in_chans=c, **kw)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"eva02.model_kwargs: cannot build timm model '{model_name}' with {kw}: {exc}") from None
    pcfg = getattr(model, "pretrained_cfg", {}) or {}
    size = kw.get("img_size", pcfg.get("input_size", (c, h, w))[-1])
    size_hw = (size, size) if isinstance(size, int) else tuple(size)
    mean = tuple(pcfg.get("mean", (0.5,) * 3))
    std = tuple(pcfg.get("std", (0.5,) * 3))
    if c != len(mean):  # grey images: the mean of the RGB statistics (timm adapts the patch conv the same way)
        mean, std = (float(np.mean(mean)),) * c, (float(np.mean(std)),) * c
    out = Classifier(model, arch="eva02", input_size=size_hw, mean=mean, std=std)
    if cfg.pretrained_file is not None:
        from timm.models.eva import checkpoint_filter_fn

        _load_pretrained(model, cfg.pretrained_file, key="eva02.pretrained_file", filter_fn=checkpoint_filter_fn,
                         model_name=model_name)
        out.pretrained, out.pretrained_file = True, cfg.pretrained_file
    return out


def _load_pretrained(
    model: nn.Module,
    path: str,
    *,
    key: str,
    filter_fn: Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]] | None = None,
    model_name: str | None = None,
) -> None:
    """Load a local weights file into ``model``, adapting what timm adapts and refusing any other mismatch.

    Accepts ``.safetensors`` and torch files holding a state dict (optionally under ``model`` /
    ``state_dict`` / ``model_ema``; loaded with ``weights_only=True``).  ``filter_fn`` (timm's
    ``checkpoint_filter_fn``) converts original EVA checkpoints and resamples position embeddings to
    the model's grid; input convolutions are adapted to the channel count; a classifier head whose
    shape differs (other ``num_classes``) is dropped and re-initialised.  Any other missing or
    unexpected key raises :class:`PretrainedLoadError` naming the file and the config key.
    """
    p = Path(path)
    if not p.is_file():
        raise PretrainedLoadError(_missing_weights(key, p, model_name))
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(p), device="cpu")
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise PretrainedLoadError(f"{key}: cannot read '{p}' as a weights file ({type(exc).__name__}: {exc}); "
                                  f"expected a .safetensors or torch state-dict file") from None
    if isinstance(state, Mapping):
        for wrap in ("model_ema", "model", "module", "state_dict"):
            if wrap in state and isinstance(state[wrap], Mapping):
                state = state[wrap]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PretrainedLoadError(f"{key}: '{p}' does not hold a state dict of tensors")
    state = dict(state)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as exc:  # noqa: BLE001
            raise PretrainedLoadError(f"{key}: '{p}' does not match the architecture "
                                      f"({type(exc).__name__}: {exc}); set model_kwargs.model_name to the "
                                      f"timm architecture the file was saved from") from None
    own = model.state_dict()
    from timm.models import adapt_input_conv

    for name, value in list(state.items()):
        if name in own and value.ndim == 4 and own[name].ndim == 4 and value.shape[1] != own[name].shape[1] \
                and value.shape[0] == own[name].shape[0] and value.shape[2:] == own[name].shape[2:]:
            state[name] = adapt_input_conv(own[name].shape[1], value)  # e.g. RGB weights on grey images
    head = getattr(model, "get_classifier", lambda: None)()
    head_names = {f"head.{n}" for n, _ in head.named_parameters()} if isinstance(head, nn.Module) else set()
    dropped = [n for n in head_names if n in state and state[n].shape != own[n].shape]
    for n in dropped:
        del state[n]
    mismatched = [f"{n}: file {tuple(v.shape)} vs model {tuple(own[n].shape)}"
                  for n, v in state.items() if n in own and v.shape != own[n].shape]
    learned = {n for n, _ in model.named_parameters()}  # buffers (rotary tables, indices) rebuild themselves
    missing = [n for n in own if n not in state and n not in dropped and n in learned]
    unexpected = [n for n in state if n not in own]
    if mismatched or missing or unexpected:
        detail = "; ".join(filter(None, [
            f"shape mismatch: {', '.join(mismatched[:5])}" if mismatched else "",
            f"missing from the file: {', '.join(missing[:5])}" if missing else "",
            f"unexpected in the file: {', '.join(unexpected[:5])}" if unexpected else "",
        ]))
        raise PretrainedLoadError(f"{key}: '{p}' does not match the model ({detail}); set "
                                  f"model_kwargs.model_name / img_size to the architecture the file was saved from")
    model.load_state_dict(state, strict=False)
    log.info("loaded pretrained weights from %s (%d tensors; re-initialised head: %s)", p, len(state), bool(dropped))


# --------------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------------


def _to_uint8_tensor(images: np.ndarray | Tensor, name: str) -> Tensor:
    t = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(t, Tensor) or t.dtype != torch.uint8 or t.ndim != 4:
        raise ValueError(f"{name} must be uint8 [N, C, H, W] (the prepared data format); got "
                         f"{getattr(t, 'dtype', type(t))} {tuple(getattr(t, 'shape', ()))}")
    return t


def _to_labels(labels: np.ndarray | Tensor, n: int, num_classes: int, name: str) -> Tensor:
    t = torch.as_tensor(np.asarray(labels) if isinstance(labels, np.ndarray) else labels).to(torch.long)
    if t.shape != (n,):
        raise ValueError(f"{name} must be [N] = [{n}] labels; got shape {tuple(t.shape)}")
    if n and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(f"{name} must be in 0..{num_classes - 1}; got {int(t.min())}..{int(t.max())}")
    return t


def _make_optimizer(cfg: ClassifierConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"config key 'optimizer': {cfg.optimizer!r} is not one of ('sgd', 'adamw')")


def _make_scheduler(cfg: ClassifierConfig, opt: torch.optim.Optimizer, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "onecycle":
        if cfg.max_lr < cfg.lr:
            raise ConfigError(f"config key 'max_lr' ({cfg.max_lr}) must be >= 'lr' ({cfg.lr}) for the one-cycle "
                              f"schedule")
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.max_lr, total_steps=max(total_steps, 2),
                                                   div_factor=cfg.max_lr / cfg.lr)
    # A warm-up meant for a 1000-epoch run must not swallow a short one: at most a tenth of the steps.
    warm = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total_steps // 10)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        t = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    if cfg.schedule not in ("cosine", "constant"):
        raise ConfigError(f"config key 'schedule': {cfg.schedule!r} is not one of ('onecycle', 'cosine', 'constant')")
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class _SampleAugDataset(torch.utils.data.Dataset):
    """uint8 images with a per-sample torchvision transform (the transformer's standard augmentations)."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor]) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.images[i]), self.labels[i]


def _soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    return torch.sum(-target * torch.log_softmax(logits.float(), dim=-1), dim=-1).mean()


# Long (171 lines): one training loop whose DDP, AMP, mixup / cutmix, schedule and logging share loop state;
# to be split into a loop object with the flow training loop's (nfpi.training) structure (docs/design.md).
def train_classifier(
    cfg: ClassifierConfig,
    train_images: np.ndarray | Tensor,
    train_labels: np.ndarray | Tensor,
    *,
    image_shape: tuple[int, int, int],
    num_classes: int,
    log_path: str | Path | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``cfg.arch`` on uint8 images ``[N, C, H, W]`` (flow samples for CNN-Acc; real + NF-augmented
    images for Tables 5-6) with the paper's optimiser settings in ``cfg``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1; :mod:`nfpi.distributed`) every rank calls this with the same
    data: ``batch_size`` stays the global batch, each rank trains on its contiguous share of every
    global batch (drawn, with its crops, by all ranks from the same generator), DDP averages the
    gradients, and only rank 0 writes ``log_path``; the result matches one process up to float
    summation order (per-sample ``standard_aug`` draws differ per rank).

    Args:
        cfg: the run's options (see :class:`ClassifierConfig`, :func:`classifier_config`).
        train_images: uint8 ``[N, C, H, W]``.
        train_labels: ``[N]`` ints in ``0..num_classes-1``.
        image_shape: ``(C, H, W)``; must match the images.
        num_classes: ``K``.
        log_path: optional JSONL file; one record per epoch (loss, accuracy, lr, seconds) is appended.

    Returns:
        ``(model, history)``: the trained :class:`Classifier` in eval mode on ``cfg.device`` and a dict
        with per-epoch lists ``epoch``, ``loss``, ``train_acc``, ``lr``, ``seconds`` plus ``arch``,
        ``num_params``, ``steps``, ``pretrained`` (False for an EVA02 trained from scratch: label
        Table 6 rows with it) and ``pretrained_file``.
    """
    images = _to_uint8_tensor(train_images, "train_images")
    if tuple(images.shape[1:]) != tuple(image_shape):
        raise ValueError(f"train_images have shape {tuple(images.shape[1:])} per image but image_shape is "
                         f"{tuple(image_shape)}")
    n = images.shape[0]
    labels = _to_labels(train_labels, n, num_classes, "train_labels")
    if n == 0:
        raise ValueError("train_images is empty; the classifier needs training images")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ConfigError(f"config keys 'epochs' and 'batch_size' must be >= 1; got {cfg.epochs}, {cfg.batch_size}")

    from nfpi import distributed as ddp

    gen = seed_everything(cfg.seed)
    # Under torchrun (resources.gpus > 1) every rank runs this function: one code path, the global
    # batch split across ranks, gradients averaged by DDP; a plain run is world 1 and unchanged.
    info = ddp.init_distributed(cfg.device)
    device, world, rank = info.device, info.world_size, info.rank
    if cfg.batch_size % world:
        raise ConfigError(f"config key 'batch_size' ({cfg.batch_size}, the global batch) must be divisible by the "
                          f"{world} processes (resources.gpus)")
    model = build_classifier(cfg, tuple(image_shape), num_classes).to(device)
    num_params = sum(p.numel() for p in model.parameters())
    net: nn.Module = model
    if world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # ResNet18: batch statistics over all ranks
        ddp.broadcast_module(model)  # identical start on every rank (timm inits draw from the global RNG)
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        # Per-sample augmentations and mixup draw from the global RNGs: a different stream per rank.
        torch.manual_seed(stream_seed(cfg.seed, "classifier.rank", rank))
        np.random.seed(stream_seed(cfg.seed, "classifier.rank", rank))
    opt = _make_optimizer(cfg, model)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = _make_scheduler(cfg, opt, total, steps_per_epoch)
    mixer = build_batch_mixer(cfg.aug, num_classes) if cfg.standard_aug else None
    label_smoothing = cfg.aug.label_smoothing if cfg.standard_aug else cfg.label_smoothing
    padding = max(1, image_shape[1] // 8)

    if cfg.standard_aug:
        aug_cfg = dataclasses.replace(cfg.aug, hflip=cfg.aug.hflip and cfg.hflip)
        dataset = _SampleAugDataset(images, labels, build_sample_transform(aug_cfg, tuple(image_shape)))
        sampler = (torch.utils.data.distributed.DistributedSampler(dataset, num_replicas=world, rank=rank,
                                                                   shuffle=True, seed=cfg.seed)
                   if world > 1 else None)
        loader: Any = torch.utils.data.DataLoader(
            dataset, batch_size=cfg.batch_size // world, shuffle=sampler is None, sampler=sampler,
            num_workers=cfg.num_workers, generator=gen, pin_memory=device.type == "cuda",
            persistent_workers=cfg.num_workers > 0,
        )
    else:
        images_dev = images.to(device)  # uint8 on the device: 1 byte/pixel, batches are gathered there
        labels_dev = labels.to(device)

    history: dict[str, Any] = {"epoch": [], "loss": [], "train_acc": [], "lr": [], "seconds": [],
                               "arch": cfg.arch, "num_params": num_params,
                               "pretrained": bool(getattr(model, "pretrained", False)),
                               "pretrained_file": getattr(model, "pretrained_file", None), "steps": 0}
    log.info("training %s (%.2fM params, pretrained=%s) on %d images for %d epochs (%d steps) on %s x %d",
             cfg.arch, num_params / 1e6, history["pretrained"], n, cfg.epochs, total, device, world)
    step = 0
    bar = progress(total=total, desc=f"classifier {cfg.arch}", unit="step", logger=log)
    for epoch in range(cfg.epochs):
        net.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        if cfg.standard_aug:
            if world > 1:
                loader.sampler.set_epoch(epoch)
            batches: Any = ((x.to(device, non_blocking=True), y.to(device, non_blocking=True)) for x, y in loader)
        else:
            perm = torch.randperm(n, generator=gen).to(device)
            batches = ((images_dev[perm[s:s + cfg.batch_size]], labels_dev[perm[s:s + cfg.batch_size]])
                       for s in range(0, n, cfg.batch_size))
        for xb, yb in batches:
            if cfg.crop_flip and not cfg.standard_aug:
                xb = random_crop_flip(xb, padding=padding, hflip=cfg.hflip, generator=gen)
            # Every rank draws the permutation and crops of the whole global batch (the same stream, so
            # the ranks stay in step and 2 processes see what 1 process sees) and keeps its contiguous
            # share; the loss is weighted so DDP's mean over ranks is the global batch's mean.
            scale = 1.0
            if world > 1 and not cfg.standard_aug:
                if xb.shape[0] < world:  # a last batch smaller than the ranks: skipped by all of them
                    continue
                bounds = [len(c) for c in torch.arange(xb.shape[0]).tensor_split(world)]
                start = sum(bounds[:rank])
                scale = bounds[rank] * world / xb.shape[0]
                xb, yb = xb[start:start + bounds[rank]], yb[start:start + bounds[rank]]
            x = xb.float().div_(255.0)
            if mixer is not None and x.shape[0] % 2 == 0:
                x, target = mixer(x, yb)
            else:
                target = None
            with autocast(device, cfg.precision):
                logits = net(x)
            if target is not None:
                loss = _soft_cross_entropy(logits, target)
            else:
                loss = nn.functional.cross_entropy(logits.float(), yb, label_smoothing=label_smoothing)
            # All ranks take the same decision (one rank raising alone would leave the others waiting).
            finite = bool(torch.isfinite(loss)) if world == 1 else \
                not float(ddp.all_reduce_max((~torch.isfinite(loss)).float().reshape(1)))
            if not finite:
                raise FloatingPointError(f"classifier loss became {loss.item()} at step {step} (epoch {epoch}); "
                                         f"lower lr / max_lr or set grad_clip")
            opt.zero_grad(set_to_none=True)
            (loss * scale if world > 1 else loss).backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if step < total:  # OneCycleLR refuses to step past total_steps
                sched.step()
            step += 1
            loss_sum += loss.detach().double() * xb.shape[0]
            correct += (logits.argmax(-1) == yb).sum()
            seen += xb.shape[0]
            bar.update()
            if cfg.log_every and step % cfg.log_every == 0:
                log.info("step %d/%d loss %.4f lr %.3g", step, total, loss.item(), opt.param_groups[0]["lr"])
        if world > 1:  # the epoch's figures over all ranks' shares
            totals = torch.stack([loss_sum, correct.double(), torch.tensor(float(seen), dtype=torch.float64,
                                                                           device=device)])
            torch.distributed.all_reduce(totals)
            loss_sum, correct, seen = totals[0], totals[1], int(totals[2])
        rec = {"epoch": epoch + 1, "loss": float(loss_sum) / seen, "train_acc": float(correct) / seen,
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        for k, v in rec.items():
            history[k].append(v)
        history["steps"] = step
        bar.set(epoch=f"{epoch + 1}/{cfg.epochs}", loss=rec["loss"], train_acc=rec["train_acc"])
        log.info("epoch %d/%d loss %.4f train_acc %.4f (%.1fs)", epoch + 1, cfg.epochs, rec["loss"],
                 rec["train_acc"], rec["seconds"])
        if log_path is not None and info.is_main:
            append_jsonl(log_path, {"arch": cfg.arch, **rec})
    bar.close()
    model.eval()
    return model, history


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    images: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    num_classes: int | None = None,
    precision: Literal["fp32", "bf16"] = "fp32",
) -> dict[str, Any]:
    """Accuracy of ``model`` on real uint8 images (CNN-Acc and Tables 5-6: top-1, top-5).

    Args:
        model: a :class:`Classifier` (input float ``[0, 1]``).
        images: uint8 ``[N, C, H, W]``; labels ``[N]``.
        device: where to run (default: the model's device).
        num_classes: ``K`` (default: the model's output width).

    Returns:
        ``{"top1", "top5", "per_class_acc" (list of K, NaN for a class absent from the test set),
        "num_images", "loss"}``; top-5 is top-``min(5, K)``.
    """
    imgs = _to_uint8_tensor(images, "images")
    n = imgs.shape[0]
    if device is None:
        device = next(model.parameters()).device
    dev = select_device(device) if isinstance(device, str) else device
    model = model.to(dev).eval()
    correct1 = torch.zeros((), dtype=torch.long)
    correct5 = torch.zeros((), dtype=torch.long)
    loss_sum = 0.0
    k_out: int | None = num_classes
    hits_per_class: Tensor | None = None
    count_per_class: Tensor | None = None
    lab_all = None
    for s in progress(range(0, n, batch_size), desc="classifier accuracy", unit="batch", logger=log, leave=False):
        x = imgs[s:s + batch_size].to(dev).float().div_(255.0)
        with autocast(dev, precision):
            logits = model(x).float()
        if k_out is None:
            k_out = logits.shape[1]
        if lab_all is None:
            lab_all = _to_labels(labels, n, k_out, "labels")
        y = lab_all[s:s + batch_size].to(dev)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit1 = top[:, 0] == y
        correct1 += hit1.sum().cpu()
        correct5 += (top == y[:, None]).any(1).sum().cpu()
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        if hits_per_class is None:
            hits_per_class = torch.zeros(k_out, dtype=torch.long)
            count_per_class = torch.zeros(k_out, dtype=torch.long)
        hits_per_class += torch.bincount(y[hit1].cpu(), minlength=k_out)
        count_per_class += torch.bincount(y.cpu(), minlength=k_out)  # type: ignore[operator]
    if n == 0 or hits_per_class is None or count_per_class is None:
        raise ValueError("images is empty; nothing to evaluate")
    per_class = torch.where(count_per_class > 0, hits_per_class.double() / count_per_class.clamp(min=1).double(),
                            torch.full_like(hits_per_class, float("nan"), dtype=torch.float64))
    return {"top1": float(correct1) / n, "top5": float(correct5) / n, "per_class_acc": per_class.tolist(),
            "num_images": n, "loss": loss_sum / n}
