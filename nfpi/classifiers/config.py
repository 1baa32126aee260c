"""The classifier config slices (``cnn``, ``swin``, ``eva02``), their presets and the weights-file check, without
torch (the workflow's DAG and the config check read them here; :mod:`nfpi.classifiers.models` trains).

    >>> classifier_config("swin", {"epochs": 5}).optimizer
    'adamw'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nfpi.augment.config import StandardAugConfig
from nfpi.config import ConfigError, from_mapping

__all__ = [
    "ClassifierConfig",
    "PRESETS",
    "BUILTIN_CLASSIFIERS",
    "DEFAULT_EVA02_PRETRAINED",
    "DEFAULT_EVA02_FILE",
    "classifier_config",
    "check_pretrained_file",
]

# The architectures nfpi.classifiers.models registers itself (more can be added with register_classifier).
BUILTIN_CLASSIFIERS: tuple[str, ...] = ("resnet18", "swin", "eva02")


@dataclass(frozen=True)
class ClassifierConfig:
    """Options of one classifier run (config slices ``cnn``, ``swin``, ``eva02``).

    The defaults are the paper's ResNet18 (CNN-Acc) settings; :data:`PRESETS` holds the recipe of each
    config section (``cnn``: ResNet18, ``swin``: Swin, ``eva02``: EVA02 fine-tuning) and
    :func:`classifier_config` overlays a config slice on the preset of its section.
    """

    arch: str = "resnet18"  # registry name: ``"resnet18"``, ``"swin"``, ``"eva02"`` (see :func:`available_classifiers`).
    epochs: int = 30  # passes over the training set.
    batch_size: int = 100  # images per optimiser step.
    optimizer: Literal["sgd", "adamw"] = "sgd"  # ``"sgd"`` (momentum, L2 weight decay) or ``"adamw"`` (decoupled weight decay).
    lr: float = 1e-3  # base learning rate; the one-cycle schedule starts here (``div_factor = max_lr / lr``).
    momentum: float = 0.9  # SGD momentum (ignored by AdamW).
    weight_decay: float = 5e-4  # weight decay.
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"  # ``"onecycle"`` (to ``max_lr`` and down, per step), ``"cosine"`` (from ``lr`` to 0 per step, after ``warmup_epochs`` of linear warm-up) or ``"constant"`` (after the warm-up).
    max_lr: float = 0.1  # peak learning rate of the one-cycle schedule.
    warmup_epochs: float = 0.0  # linear warm-up length for ``cosine`` / ``constant`` (0: none; capped at a tenth of the run so a shortened run still trains at the base lr).
    grad_clip: float | None = None  # global gradient-norm clipping (``None``: off; EVA02 uses 1).
    crop_flip: bool = True  # random crop (zero padding ``H // 8``) + flip, batched on the device (the CNN's set).
    hflip: bool = True  # include the horizontal flip (false for digits, which must not be mirrored).
    standard_aug: bool = False  # the transformer set (crop, flip, auto-augment, rand-augment, random erasing per sample; mixup / cutmix per batch) from ``aug``; replaces ``crop_flip`` when true.
    aug: StandardAugConfig = StandardAugConfig()  # parameters of the standard augmentations (``nfpi.augment.StandardAugConfig``).
    label_smoothing: float = 0.0  # label smoothing of the cross-entropy when mixup / cutmix are off.
    pretrained_file: str | None = None  # local weights file (``.safetensors``, ``.pth``/``.pt`` state dict, or a timm / EVA checkpoint dict) for ``eva02`` (or any timm arch); ``None``: train from scratch.
    model_kwargs: dict[str, Any] | None = None  # arch-specific overrides (e.g. Swin ``embed_dim`` / ``depths``; EVA02 ``model_name`` of the timm architecture matching the file, ``img_size``).
    num_workers: int = 0  # DataLoader workers for the per-sample standard augmentations.
    seed: int = 0  # seeds initialisation, batch order and augmentations.
    device: str = "auto"  # ``"auto"`` (CUDA if visible), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    precision: Literal["fp32", "bf16"] = "fp32"  # ``"bf16"`` autocasts on CUDA and bf16-capable CPUs (:func:`nfpi.runtime.autocast`), ``"fp32"`` otherwise.
    log_every: int = 0  # log a progress line every this many steps (0: per epoch only).


#: The paper's EVA02 (87.12M params with the 1000-class head, MIM in22k, fine-tuned in22k -> in1k, 448 px):
#: timm's ``eva02_base_patch14_448.mim_in22k_ft_in22k_in1k`` is the only EVA02 of that size.
DEFAULT_EVA02_PRETRAINED = "eva02_base_patch14_448.mim_in22k_ft_in22k_in1k"
#: Where the EVA02 preset expects its weights (relative to the working directory); see
#: :func:`check_pretrained_file` for how to get the file.
DEFAULT_EVA02_FILE = f"checkpoints/{DEFAULT_EVA02_PRETRAINED}.pth"

#: Paper settings per config section (Sec. 5.2, "Implementation Details"); each section of a config is
#: parsed on top of its own preset (:func:`classifier_config`) and the schema shows these as the
#: sections' defaults.  ``swin`` trains 1000 epochs in the paper; the workflow's configs shorten it
#: where the paper has no Swin result (ImageNet, MNIST).  ``eva02`` fine-tunes the ImageNet-pretrained
#: timm EVA02 from ``pretrained_file``: SGD at lr 1e-5 for 3 epochs only adjusts an already trained
#: model, it cannot train one from scratch (the digits config sets its own from-scratch recipe).
PRESETS: dict[str, ClassifierConfig] = {
    "cnn": ClassifierConfig(),
    "swin": ClassifierConfig(
        arch="swin", epochs=1000, batch_size=256, optimizer="adamw", lr=2e-3, max_lr=2e-3, weight_decay=5e-2,
        schedule="cosine", warmup_epochs=10.0, crop_flip=True, standard_aug=False,
    ),
    "eva02": ClassifierConfig(
        arch="eva02", epochs=3, batch_size=64, optimizer="sgd", lr=1e-5, max_lr=1e-5, momentum=0.9,
        weight_decay=0.0, schedule="constant", grad_clip=1.0, crop_flip=False, standard_aug=False,
        pretrained_file=DEFAULT_EVA02_FILE,
    ),
}


def classifier_config(section: str, mapping: Mapping[str, Any] | None = None) -> ClassifierConfig:
    """The config slice ``section`` (``cnn``, ``swin``, ``eva02``) overlaid on that section's preset.

    Unknown keys and wrong types raise :class:`nfpi.config.ConfigError` naming ``section.key``.
    """
    if section not in PRESETS:
        raise ConfigError(f"unknown classifier config section '{section}'; use one of {sorted(PRESETS)}")
    mapping = dict(mapping or {})
    base = PRESETS[section]
    parsed = from_mapping(ClassifierConfig, mapping, where=section)
    kwargs: dict[str, Any] = {key: getattr(parsed, key) for key in mapping}
    if isinstance(mapping.get("aug"), Mapping):  # only the aug keys given override the preset's aug
        kwargs["aug"] = dataclasses.replace(base.aug, **{k: getattr(parsed.aug, k) for k in mapping["aug"]})
    return dataclasses.replace(base, **kwargs)


def _missing_weights(key: str, path: str | Path, model_name: str | None) -> str:
    """One line for a missing weights file: the key, the path and how to get the file without network."""
    if model_name is None:
        how = "put the state-dict file there"
    else:  # the command saves exactly the state dict _load_pretrained reads (timm names, no wrapper)
        how = (f"on a machine with internet run python -c \"import timm, torch; torch.save(timm.create_model("
               f"'{model_name}', pretrained=True).state_dict(), '{path}')\" and copy the file here")
    return (f"config key '{key}' = '{path}': weights file not found (nothing is downloaded at run time); {how} "
            f"(.safetensors works too), or set it to null in your --configfile (docs/classifiers.md)")


def check_pretrained_file(config: Mapping[str, Any]) -> None:
    """Fail at workflow start-up when a classifier section the run uses names a missing weights file.

    ``config`` is the workflow config (the sections ``cnn``, ``swin``, ``eva02`` and ``experiments``);
    each section is resolved on its preset, and ``swin`` / ``eva02`` count only when their experiment
    (Tables 5 / 6) is on.  Called from ``workflow/rules/common.smk`` so a Table 6 run without its EVA02
    checkpoint stops before any job starts instead of hours later in the ``eva02`` jobs.

    Raises:
        ConfigError: one line naming ``<section>.pretrained_file``, the path and how to get the file.
    """
    experiments = config.get("experiments") or {}
    for section in PRESETS:
        if section != "cnn" and not experiments.get(section, True):
            continue
        cfg = classifier_config(section, config.get(section))
        if cfg.pretrained_file is None or Path(cfg.pretrained_file).is_file():
            continue
        default_name = DEFAULT_EVA02_PRETRAINED if cfg.arch == "eva02" else None
        model_name = (cfg.model_kwargs or {}).get("model_name", default_name)
        raise ConfigError(_missing_weights(f"{section}.pretrained_file", cfg.pretrained_file, model_name))
