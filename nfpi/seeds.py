"""The one seed derivation: every random stream of every stage, fine-tuning round and replicate.

A seed is never made by adding an offset (``seed + 17``, ``seed + round``): sums collide (replicate ``s``,
round ``r`` drew the same numbers as replicate ``r``, round ``s``).  :func:`derive_seed` instead hashes a
tuple of keys with NumPy's ``SeedSequence``, so any two different tuples give independent streams.  A stage
derives its sub-streams with :func:`stream_seed` under a name listed in :data:`STREAMS`; a replicate run
(``seed: s`` at the top of the config) derives each section's seed with :func:`replicate_seed`.  No torch
here: the workflow's DAG imports this module.

    >>> from nfpi.seeds import derive_seed, stream_seed
    >>> derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    True
    >>> 0 <= stream_seed(0, "finetune.round", 3) < 2**31
    True
"""

from __future__ import annotations

import numpy as np

__all__ = ["STREAMS", "derive_seed", "replicate_seed", "stream_seed"]

#: Every named sub-stream a stage draws from (``stream_seed`` refuses any other name, so the collision test
#: in ``tests/test_seeds.py`` covers each stream the code uses).
STREAMS: tuple[str, ...] = (
    "finetune.round",  # the fine-tuning round r: its training loop, weight init and re-solve's dequantisation
    "classifier.rank",  # a torchrun rank's global RNGs (per-sample augmentations, mixup)
    "latent_ot.samples",  # the latent OT stage's samples of every method
    "augment.figure",  # Fig. 2's partners and mixing weights
    "flowfactor.test",  # the transformed test set of the classifier comparison
    "flowfactor.subset",  # repeat r's stratified training subset
    "flowfactor.augment",  # repeat r's augmentations
    "flowfactor.classifier",  # repeat r's logistic regression
    "flowfactor.bpd",  # the transformed images of the bits/dim comparison
    "flowfactor.adapt",  # the transformed copies the flow adapts on
)


def _words(key: int | str) -> list[int]:
    """A key as 32-bit words: an int as itself (mod 2^32, as before), a name as its UTF-8 bytes plus a tag."""
    if isinstance(key, str):
        raw = key.encode()
        # the tag (length, high bit set) keeps a name from ever equalling a run of integers
        return [0x80000000 | len(raw), *(int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw), 4))]
    return [int(key) & 0xFFFFFFFF]


def derive_seed(*keys: int | str, bits: int = 63) -> int:
    """A well-mixed ``bits``-bit seed from integers and names (NumPy's ``SeedSequence``).

    ``bits=63`` fits ``torch.Generator.manual_seed``; ``bits=31`` fits NumPy's legacy ``np.random.seed`` and
    scikit-learn's ``random_state``.  Integer-only keys give the same 63-bit seeds as the training loop always
    derived for its per-epoch and per-step streams.
    """
    if not 1 <= bits <= 64:
        raise ValueError(f"derive_seed: bits must be in 1..64, got {bits}")
    words = [w for k in keys for w in _words(k)]
    return int(np.random.SeedSequence(words).generate_state(2, np.uint64)[0] >> np.uint64(64 - bits))


def stream_seed(seed: int, stream: str, *index: int) -> int:
    """The seed (31 bits) of the named sub-stream ``stream`` (one of :data:`STREAMS`) of a stage seeded ``seed``,
    for round / repeat / rank ``index``."""
    if stream not in STREAMS:
        raise ValueError(f"stream_seed: unknown stream {stream!r}; add it to nfpi.seeds.STREAMS")
    return derive_seed(seed, stream, *index, bits=31)


def replicate_seed(seed: int, replicate: int) -> int:
    """A config section's seed in replicate run ``replicate`` (the config's top-level ``seed``; 0: unchanged)."""
    if replicate < 0:
        raise ValueError(f"replicate must be >= 0, got {replicate} (config key seed)")
    return int(seed) if replicate == 0 else derive_seed(seed, "replicate", replicate, bits=31)
