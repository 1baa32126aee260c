"""NFPI: class-conditional Gaussian latent spaces for normalizing flows, solved by fixed-point iteration.

Reference implementation of Enescu & Sahbi, "Learning Conditionally Untangled Latent Spaces using
Fixed Point Iteration", BMVC 2024.  Library modules (one concept each): ``fpi``, ``flows``,
``density``, ``data``, ``latents``, ``training``, ``checkpoint``, ``distributed``, ``classifiers``,
``augment``, ``tables``, ``figures``, ``latent_ot``, ``flowfactor``.  Stage modules (run by the
Snakemake rules as ``python -m nfpi.<stage>``) are verbs: ``prepare``, ``pretrain``, ``extract``,
``solve``, ``finetune``, ``evaluate``, ``sample``, ...  Library modules never import stage modules.
"""

__version__ = "0.1.0"
