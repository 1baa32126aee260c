"""The learned potentials on disk: an :mod:`nfpi.checkpoint` of kind ``"flowfactor_potentials"``.

    >>> save_potentials("flowfactor/potentials.pt", bank, cfg)         # doctest: +SKIP
    >>> bank, cfg = load_potentials("flowfactor/potentials.pt")        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os

from nfpi.checkpoint import load_checkpoint, save_checkpoint
from nfpi.config import from_mapping
from nfpi.flowfactor.fields import FlowFactorConfig, PotentialBank

__all__ = ["save_potentials", "load_potentials"]

KIND = "flowfactor_potentials"


def save_potentials(path: str | os.PathLike[str], bank: PotentialBank, cfg: FlowFactorConfig) -> None:
    """Write ``bank`` (potential ``k`` named ``cfg.transformations[k]``) with the config that trained it."""
    save_checkpoint(path, kind=KIND, model=bank.state_dict(), config=dataclasses.asdict(cfg),
                    extra={"names": list(cfg.transformations), "num": bank.num, "dim": bank.dim})


def load_potentials(path: str | os.PathLike[str]) -> tuple[PotentialBank, FlowFactorConfig]:
    """The one loader of kind ``"flowfactor_potentials"``: the bank (eval mode, CPU) and its config."""
    ckpt = load_checkpoint(path, expected_kind=KIND)
    cfg = from_mapping(FlowFactorConfig, ckpt["config"], where=f"{path}: config")
    state = ckpt["model"]
    bank = PotentialBank(int(ckpt["extra"]["num"]), int(ckpt["extra"]["dim"]), cfg.hidden, cfg.depth,
                         quadratic=any(k.startswith("quad") for k in state))
    bank.load_state_dict(state)
    return bank.eval(), cfg
