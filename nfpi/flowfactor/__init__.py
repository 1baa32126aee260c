"""Flow-factorized latent transformations (Song, Keller, Sebe & Welling, NeurIPS 2023) in an NF latent space.

- :mod:`nfpi.flowfactor.fields`: the method: config, codecs (identity, linear, a trained flow), the potential
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

from nfpi.flowfactor.adapt import adapt_flow
from nfpi.flowfactor.evaluation import classifier_comparison, codec_bits_per_dim, flow_bpd, identification
from nfpi.flowfactor import fields as _fields
from nfpi.flowfactor.fields import *  # noqa: F403  (the method's names: listed once, in fields.__all__)
from nfpi.flowfactor.report import build_table, trajectory_figure
from nfpi.flowfactor.store import load_potentials, save_potentials

__all__ = [
    *_fields.__all__,
    "adapt_flow",
    "classifier_comparison",
    "codec_bits_per_dim",
    "flow_bpd",
    "identification",
    "build_table",
    "trajectory_figure",
    "save_potentials",
    "load_potentials",
]
