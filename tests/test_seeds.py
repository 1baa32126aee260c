"""Tests for nfpi.seeds: one derivation for every stage, fine-tuning round and replicate, and no collisions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nfpi.seeds import STREAMS, derive_seed, replicate_seed, stream_seed
from nfpi.training import FinetuneConfig


def test_integer_keys_keep_the_training_loops_seeds() -> None:
    """Integer-only keys give the 63-bit seeds the training loop always derived (its draws are unchanged)."""
    for keys in [(0, 0, 0), (5, 1, 123), (2**40 + 7, 3, 9)]:
        old = int(np.random.SeedSequence([int(i) & 0xFFFFFFFF for i in keys]).generate_state(2, np.uint64)[0] >> 1)
        assert derive_seed(*keys) == old


def test_bits_and_names() -> None:
    assert all(0 <= derive_seed(s, "x", bits=31) < 2**31 for s in range(50))
    assert derive_seed(0, "ab") != derive_seed(0, "ba")
    # a name never equals the integers of its bytes
    assert derive_seed(0, "a") != derive_seed(0, ord("a"))
    with pytest.raises(ValueError, match="bits"):
        derive_seed(0, bits=0)
    with pytest.raises(ValueError, match="nfpi.seeds.STREAMS"):
        stream_seed(0, "no.such.stream")
    with pytest.raises(ValueError, match="config key seed"):
        replicate_seed(0, -1)
    assert replicate_seed(7, 0) == 7  # the default run (seed 0) keeps every section's own seed


def test_no_two_replicate_round_stage_draws_collide() -> None:
    """Every (replicate, stage seed, stream, round) gives its own seed.

    With the former offsets, replicate s round r equalled replicate r round s (``seed + s + r``), and the
    flowfactor's ``seed + 1000 + r`` met ``seed + r`` of replicate 1000.  Stage seeds 0 and 1 stand for two
    sections configured alike (every section defaults to seed 0).
    """
    draws: dict[int, tuple] = {}
    for rep, base, stream, r in itertools.product(range(12), (0, 1), STREAMS, range(12)):
        seed = stream_seed(replicate_seed(base, rep), stream, r)
        assert seed not in draws, f"{(rep, base, stream, r)} collides with {draws[seed]}"
        draws[seed] = (rep, base, stream, r)
    # the stages' own (primary) streams: the replicate's section seeds are distinct from every sub-stream
    for rep, base in itertools.product(range(1, 12), (0, 1)):
        assert replicate_seed(base, rep) not in draws
    assert len(draws) == 12 * 2 * len(STREAMS) * 12


def test_finetune_rounds_swap_free() -> None:
    """The fine-tuning loop's seed of (replicate s, round r) differs from (replicate r, round s)."""
    seeds = {}
    for s, r in itertools.product(range(6), range(6)):
        cfg = FinetuneConfig(seed=replicate_seed(0, s), steps=10, rounds=6)
        seeds[(s, r)] = cfg.loop_config(r, 2, 5).seed
    assert len(set(seeds.values())) == len(seeds)
