"""NFPI: class-conditional Gaussian latent spaces for normalizing flows, solved by fixed-point iteration.

Reference implementation of Enescu & Sahbi, "Learning Conditionally Untangled Latent Spaces using Fixed
Point Iteration", BMVC 2024.  Library (one concept per module or package): ``fpi``, ``lampath``, ``flows``,
``density``, ``data``, ``latents``, ``training``, ``evaluation``, ``checkpoint``, ``distributed``,
``classifiers``, ``augment``, ``latent_ot``, ``flowfactor``, ``report``.  The workflow's stages live in
``nfpi.stages``, one module per Snakemake rule, run as ``python -m nfpi <stage>``; the library never imports
them.  docs/design.md maps every rule to its stage, config section, library and outputs.

    >>> from nfpi.fpi import solve_fpi
    >>> result = solve_fpi(z, y, num_classes, lam=100.0)   # doctest: +SKIP
"""

__version__ = "0.1.0"
