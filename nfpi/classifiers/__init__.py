"""Classifiers trained on flow samples (CNN-Acc) or on NF-augmented data (Tables 2-6).

- :mod:`nfpi.classifiers.config`: the ``cnn`` / ``swin`` / ``eva02`` config slices, their presets and the
  weights-file check (torch-free: the workflow's DAG and the config check import it).
- :mod:`nfpi.classifiers.models`: the registry of architectures, the training loop and the evaluation
  (torch); its names load on first use.

The stage ``classify`` (:mod:`nfpi.stages.classify`) runs it::

    >>> from nfpi.classifiers import classifier_config, train_classifier
    >>> model, history = train_classifier(classifier_config("cnn"), images, labels,  # doctest: +SKIP
    ...                                   image_shape=(1, 8, 8), num_classes=10)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nfpi.classifiers.config import (
    BUILTIN_CLASSIFIERS,
    DEFAULT_EVA02_FILE,
    DEFAULT_EVA02_PRETRAINED,
    PRESETS,
    ClassifierConfig,
    check_pretrained_file,
    classifier_config,
)
from nfpi.lazy import lazy_exports

if TYPE_CHECKING:
    from nfpi.classifiers.models import (
        Classifier,
        PretrainedLoadError,
        available_classifiers,
        build_classifier,
        evaluate_classifier,
        register_classifier,
        train_classifier,
    )

__all__ = [
    "ClassifierConfig",
    "PRESETS",
    "BUILTIN_CLASSIFIERS",
    "DEFAULT_EVA02_PRETRAINED",
    "DEFAULT_EVA02_FILE",
    "classifier_config",
    "check_pretrained_file",
    "Classifier",
    "PretrainedLoadError",
    "register_classifier",
    "available_classifiers",
    "build_classifier",
    "train_classifier",
    "evaluate_classifier",
]

# The torch-backed names (and every other name of the former single module) load from nfpi.classifiers.models.
__getattr__, __dir__ = lazy_exports(__name__, {}, globals(), rest="models")
