"""Flow-factorized latent transformations (Song, Keller, Sebe & Welling, NeurIPS 2023) in an NF latent space.

- :mod:`nfpi.flowfactor.config`: the ``flowfactor`` config slice (torch-free: the config check imports it).
- :mod:`nfpi.flowfactor.fields`: the method: codecs (identity, linear, a trained flow), the potential
  bank and its fields, Euler rollouts with their density change, the loss and training, and the errors
  (equivariance, composition, sequence likelihood); the reconstruction is documented in docs/flowfactor.md.
- :mod:`nfpi.flowfactor.adapt`: a transformation-aware copy of a trained flow (the pipeline's training loop).
- :mod:`nfpi.flowfactor.evaluation`: identification, held-out bits/dim, the augmentation classifier comparison.
- :mod:`nfpi.flowfactor.report`: the table and the trajectory figure.
- :mod:`nfpi.flowfactor.store`: the potentials on disk (:mod:`nfpi.checkpoint` kind ``"flowfactor_potentials"``).

The stage ``flowfactor`` (:mod:`nfpi.stages.flowfactor`) runs them::

    >>> from nfpi import flowfactor as ff
    >>> cfg = ff.FlowFactorConfig()
    >>> codec = ff.IdentityCodec((1, 8, 8))
    >>> lat = ff.encode_sequences(codec, ff.make_sequences(images, cfg.transformations, cfg.steps, cfg.params()))  # doctest: +SKIP
    >>> res = ff.train_potentials(lat, cfg)                                                                      # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nfpi.flowfactor.config import TRANSFORMATIONS, FlowFactorConfig
from nfpi.lazy import lazy_exports

if TYPE_CHECKING:
    from nfpi.flowfactor.adapt import adapt_flow
    from nfpi.flowfactor.evaluation import classifier_comparison, codec_bits_per_dim, flow_bpd, identification
    from nfpi.flowfactor.report import build_table, trajectory_figure
    from nfpi.flowfactor.store import load_potentials, save_potentials
    from nfpi.flowfactor.fields import (
        AsinhCodec,
        FieldEval,
        FlowCodec,
        IdentityCodec,
        LatentCodec,
        LinearCodec,
        LossTerms,
        PotentialBank,
        PotentialFit,
        Rollout,
        apply_flow_images,
        augment_along_fields,
        codec_from_trained,
        composition_errors,
        encode_sequences,
        equivariance_errors,
        field,
        flowfactor_loss,
        hessian,
        hj_residual,
        images_to_unit,
        infer_transformation,
        logdet_exact,
        logdet_hutchinson,
        make_sequences,
        move_latents,
        numpy_images,
        permute_bank,
        pixel_augment,
        random_transform_copies,
        rollout,
        sequence_likelihood,
        step_logdet,
        train_potentials,
        transform_images,
        unit_to_images,
    )

__all__ = [
    "TRANSFORMATIONS",
    "FlowFactorConfig",
    "LatentCodec",
    "IdentityCodec",
    "LinearCodec",
    "FlowCodec",
    "AsinhCodec",
    "codec_from_trained",
    "PotentialBank",
    "permute_bank",
    "FieldEval",
    "field",
    "hessian",
    "logdet_exact",
    "logdet_hutchinson",
    "step_logdet",
    "Rollout",
    "rollout",
    "hj_residual",
    "transform_images",
    "make_sequences",
    "encode_sequences",
    "LossTerms",
    "flowfactor_loss",
    "PotentialFit",
    "train_potentials",
    "infer_transformation",
    "move_latents",
    "apply_flow_images",
    "equivariance_errors",
    "composition_errors",
    "sequence_likelihood",
    "augment_along_fields",
    "pixel_augment",
    "random_transform_copies",
    "images_to_unit",
    "unit_to_images",
    "numpy_images",
    "adapt_flow",
    "classifier_comparison",
    "codec_bits_per_dim",
    "flow_bpd",
    "identification",
    "build_table",
    "trajectory_figure",
    "load_potentials",
    "save_potentials",
]

# name -> submodule for the names that need torch
_LAZY: dict[str, str] = {
    **{n: "fields" for n in __all__[2:38]},
    **{n: "adapt" for n in ('adapt_flow',)},
    **{n: "evaluation" for n in ('classifier_comparison', 'codec_bits_per_dim', 'flow_bpd', 'identification')},
    **{n: "report" for n in ('build_table', 'trajectory_figure')},
    **{n: "store" for n in ('load_potentials', 'save_potentials')},
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())  # torch-backed names load on first use (PEP 562)
