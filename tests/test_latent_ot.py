"""Tests of nfpi.latent_ot: exact batch OT, the closed-form map, the semi-discrete map, the eight-Gaussian toy
of Liu et al. (2018), determinism, error messages and the metrics (float64 where numerics matter)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from nfpi.config import ConfigError, from_mapping
from nfpi.latent_ot import (
    LatentOTConfig,
    LatentOTPrior,
    PotentialNetworks,
    TooFewLatentsError,
    batch_ot,
    eight_gaussians,
    eight_gaussians_centres,
    fit_latent_ot,
    group_by_class,
    median_bandwidth,
    mmd2,
    mode_coverage,
    nearest_neighbour_distance,
    ot_map,
    semi_discrete_assign,
    source_sample,
    wasserstein2,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def toy() -> tuple[LatentOTPrior, torch.Tensor]:
    """The eight-Gaussian toy fitted once (single class, raw coordinates as in the paper's figure)."""
    z, _ = eight_gaussians(800, torch.Generator().manual_seed(1))
    cfg = LatentOTConfig(standardize=False, batch_size=256, steps=250, lr=1e-2, semi_discrete_samples=4096, seed=3)
    prior, report = fit_latent_ot(z, torch.zeros(len(z), dtype=torch.long), 1, cfg)
    assert math.isfinite(report.loss)
    return prior, z


def test_eight_gaussians_modes_covered_and_w2_far_below_identity(toy: tuple[LatentOTPrior, torch.Tensor]) -> None:
    prior, _ = toy
    gen = torch.Generator().manual_seed(11)
    held_out, _ = eight_gaussians(800, torch.Generator().manual_seed(2), balanced=True)
    z, labels = prior.sample(800, gen)
    assert z.shape == (800, 2) and labels.eq(0).all()
    source = source_sample("gaussian", (800, 2), torch.Generator().manual_seed(7), torch.float64)
    w2_map, w2_id = wasserstein2(z, held_out), wasserstein2(source, held_out)
    assert w2_map < 0.5 * w2_id, (w2_map, w2_id)
    covered, share = mode_coverage(z, eight_gaussians_centres(), torch.full((8,), 1 / 8), 0.5)
    assert covered.all(), share
    # the identity map (the source itself) covers the circle's modes far worse: W2 ~ 1
    assert w2_id > 0.8
    # most generated points land on a mode (within 4 std), not in the empty disc inside the circle
    d = torch.cdist(z, eight_gaussians_centres()).min(1).values
    assert (d < 0.4).double().mean() > 0.4


def test_semi_discrete_map_lands_on_training_latents_and_balances_cells(toy: tuple[LatentOTPrior, torch.Tensor]) -> None:
    prior, train = toy
    z, _ = prior.sample_semi_discrete(1000, torch.Generator().manual_seed(4))
    nn = nearest_neighbour_distance(z, train)
    assert nn.max() < 1e-6  # every sample is a training latent: the memorisation the evaluation measures
    # the fitted weights g give every training latent's power cell about its share 1/m of the source
    # mass; the nearest-neighbour map (g = 0) gives the innermost training points most of it
    x = source_sample("gaussian", (1, 40000, 2), torch.Generator().manual_seed(5), torch.float64)
    m = len(train)

    def tv(w: torch.Tensor) -> float:
        idx = semi_discrete_assign(x, prior.targets, prior.target_mask, w)[0]
        return float(0.5 * (torch.bincount(idx, minlength=m) / x.shape[1] - 1 / m).abs().sum())

    tv_fit, tv_nn = tv(prior.sd_weights), tv(torch.zeros_like(prior.sd_weights))
    assert tv_fit < 0.3 * tv_nn and tv_fit < 0.25, (tv_fit, tv_nn)
    held_out, _ = eight_gaussians(800, torch.Generator().manual_seed(2), balanced=True)
    source = source_sample("gaussian", (800, 2), torch.Generator().manual_seed(7), torch.float64)
    assert wasserstein2(z[:800], held_out) < 0.5 * wasserstein2(source, held_out)


def _blobs(k: int, n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(k, d, generator=g, dtype=torch.float64)
    labels = torch.arange(k).repeat_interleave(n)
    z = centres[labels] + torch.randn(k * n, d, generator=g, dtype=torch.float64) * (0.5 + torch.arange(k)[labels, None])
    return z, labels


def test_map_is_deterministic_given_seed() -> None:
    z, y = _blobs(3, 40, 4, 0)
    cfg = LatentOTConfig(steps=15, batch_size=32, hidden=16, semi_discrete_samples=64, seed=7)
    outs = []
    for _ in range(2):
        prior, _ = fit_latent_ot(z, y, 3, cfg)
        outs.append((prior.sample(20, torch.Generator().manual_seed(1))[0],
                     prior.sample_semi_discrete(20, torch.Generator().manual_seed(1))[0]))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    other, _ = fit_latent_ot(z, y, 3, dataclasses.replace(cfg, seed=8))
    assert not torch.allclose(other.sample(20, torch.Generator().manual_seed(1))[0], outs[0][0])


def test_class_with_too_few_latents_fails_with_clear_message() -> None:
    z, y = _blobs(3, 30, 2, 0)
    keep = (y != 1) | (torch.arange(len(y)) % 30 < 4)  # class 1 keeps 4 latents
    with pytest.raises(TooFewLatentsError, match=r"train\.parquet.*class 1: 4.*latent_ot\.min_class_size"):
        fit_latent_ot(z[keep], y[keep], 3, LatentOTConfig(min_class_size=10, steps=1), where="train.parquet")
    with pytest.raises(TooFewLatentsError, match="class 2: 0"):  # an empty class is named too
        group_by_class(z[y < 2], y[y < 2], 3, min_class_size=2)


def test_group_by_class_round_trips() -> None:
    z, y = _blobs(4, 7, 3, 1)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    g = group_by_class(z[perm], y[perm], 4)
    assert g.counts.tolist() == [7] * 4 and g.mask.all()
    for k in range(4):  # each class's rows are exactly that class's latents (as sets)
        a = g.points[k][g.mask[k]]
        b = z[y == k]
        assert torch.allclose(a[torch.argsort(a[:, 0])], b[torch.argsort(b[:, 0])])


def test_batch_ot_duals_are_feasible_and_optimal() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, generator=g, dtype=torch.float64)
    t = torch.randn(30, 3, generator=g, dtype=torch.float64) + 2
    sol = batch_ot(x, t)
    cost = 0.5 * torch.cdist(x, t) ** 2
    assert torch.allclose(sol.plan.sum(1), torch.full((30,), 1 / 30, dtype=torch.float64))
    assert (sol.u[:, None] + sol.v[None, :] <= cost + 1e-8).all()  # dual feasibility
    # strong duality: the dual objective equals the primal cost
    assert sol.cost == pytest.approx(float(sol.u.mean() + sol.v.mean()), rel=1e-9)
    assert sol.cost == pytest.approx(float((sol.plan * cost).sum()), rel=1e-9)
    # equal sizes: the plan is a permutation, so the barycentres are the matched targets
    assert torch.allclose(torch.sort(sol.barycentre[:, 0]).values, torch.sort(t[:, 0]).values)
    # exact W2 from the same solver
    assert wasserstein2(x, t) == pytest.approx(math.sqrt(2 * sol.cost), rel=1e-9)


def test_ot_map_of_a_quadratic_potential_is_its_closed_form() -> None:
    # phi(x) = a |x|^2 / 2 is exactly representable with depth 1 only approximately; build it by hand
    g = torch.Generator().manual_seed(0)
    net = PotentialNetworks(2, 3, 4, 1, g, torch.float64)
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    _, grad = net.value_and_grad(x)
    eps = 1e-6  # finite differences agree with the autograd gradient used by the map
    e0 = torch.zeros_like(x)
    e0[..., 0] = eps
    fd = (net(x + e0) - net(x - e0)) / (2 * eps)
    assert torch.allclose(grad[..., 0], fd, atol=1e-7)
    assert torch.allclose(ot_map(net, x, 0.5), x - 0.5 * grad)
    assert torch.allclose(ot_map(net, x, 0.0), x)  # scale 0: no transport


def test_semi_discrete_assign_is_nearest_neighbour_at_zero_weights() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    x = torch.randn(2, 50, 3, generator=g, dtype=torch.float64)
    idx = semi_discrete_assign(x, t, mask, torch.zeros(2, 6, dtype=torch.float64))
    d = torch.cdist(x, t).masked_fill(~mask[:, None, :], float("inf"))
    assert torch.equal(idx, d.argmin(-1))
    big = torch.zeros(2, 6, dtype=torch.float64)
    big[:, 2] = 1e6  # a huge weight wins every cell
    assert semi_discrete_assign(x, t, mask, big).eq(2).all()


def test_mmd_and_coverage_and_nn_properties() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 2, generator=g, dtype=torch.float64)
    b = torch.randn(200, 2, generator=g, dtype=torch.float64)
    c = torch.randn(200, 2, generator=g, dtype=torch.float64) + 3
    bw = median_bandwidth(a)
    assert abs(mmd2(a, b, bw)) < 0.02 < mmd2(a, c, bw)
    centres = torch.tensor([[0.0, 0.0], [3.0, 3.0]], dtype=torch.float64)
    covered, share = mode_coverage(a, centres, torch.tensor([0.5, 0.5]), 0.25)
    assert covered.tolist() == [True, False] and share.sum() == pytest.approx(1.0)
    nn = nearest_neighbour_distance(a, torch.cat([a[:10], c]), chunk=7)
    assert nn[:10].abs().max() == 0 and (nn[10:] > 0).all()


def test_config_round_trip_and_validation() -> None:
    cfg = from_mapping(LatentOTConfig, {"steps": 5, "source": "uniform"}, where="latent_ot")
    assert cfg.steps == 5 and cfg.source == "uniform"
    with pytest.raises(ConfigError, match="latent_ot.step"):
        from_mapping(LatentOTConfig, {"step": 5}, where="latent_ot")
    with pytest.raises(ValueError, match="latent_ot.batch_size"):
        LatentOTConfig(batch_size=1)
    with pytest.raises(ConfigError, match="latent_ot.source"):
        from_mapping(LatentOTConfig, {"source": "laplace"}, where="latent_ot")


def test_uniform_source_has_unit_variance_and_state_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    u = source_sample("uniform", (20000, 3), torch.Generator().manual_seed(0), torch.float64)
    assert torch.allclose(u.var(0), torch.ones(3, dtype=torch.float64), atol=0.05)
    z, y = _blobs(2, 30, 3, 2)
    prior, _ = fit_latent_ot(z, y, 2, LatentOTConfig(steps=5, batch_size=16, hidden=8, semi_discrete_samples=64,
                                                      source="uniform"))
    prior.save(tmp_path / "ot.pt")
    again = LatentOTPrior.load(tmp_path / "ot.pt")
    a = prior.sample(10, torch.Generator().manual_seed(3))[0]
    b = again.sample(10, torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b)
    sd_a = prior.sample_semi_discrete(10, torch.Generator().manual_seed(3))[0]
    assert torch.equal(sd_a, again.sample_semi_discrete(10, torch.Generator().manual_seed(3))[0])
    # semi-discrete samples are training latents of their own class
    labels = torch.arange(2).repeat_interleave(10)
    nn = torch.stack([nearest_neighbour_distance(sd_a[labels == k], z[y == k]).max() for k in range(2)])
    assert nn.max() < 1e-6
    assert np.isfinite(a.numpy()).all()


# --------------------------------------------------------------------------------------------- the stage
def _fake_run(root, cap: int):  # type: ignore[no-untyped-def]
    """A run folder as the pipeline lays it out: prepared digits (``cap`` training images per class), a
    data-initialised but untrained flow (invertible, so decoding works), its latents and class Gaussians."""
    from nfpi.checkpoint import save_checkpoint
    from nfpi.data import DataConfig, PreparedData, prepare_dataset
    from nfpi.density import ClassGaussianPrior, save_gaussians, preprocess
    from nfpi.flows import FlowConfig, build_flow
    from nfpi.latents import write_latents

    torch.manual_seed(0)
    prepare_dataset(DataConfig(name="digits", max_train_per_class=cap, max_test_per_class=12), root / "data",
                    size_multiple=4)
    data = PreparedData(root / "data")
    fcfg = FlowConfig(preset="digits", steps=1, hidden=8)
    flow = build_flow(fcfg, data.image_shape)
    lat = {}
    for split in ("train", "test"):
        x = preprocess(torch.from_numpy(np.array(data.images(split))), dequantize=False)
        flow.train(split == "train")  # the first (training-mode) call initialises the data-dependent layers
        with torch.no_grad():
            z, _ = flow(x)
        y = torch.from_numpy(data.labels(split))
        lat[split] = (z, y)
        write_latents(root / f"latents/nfpi/{split}.parquet", [(z.numpy(), y.numpy())], dim=z.shape[1], split=split)
    flow.eval()
    z, y = lat["train"]
    k = data.num_classes
    prior = ClassGaussianPrior(torch.stack([z[y == c].mean(0) for c in range(k)]),
                               torch.stack([z[y == c].var(0) for c in range(k)]) + 1e-4)
    save_checkpoint(root / "flows/nfpi.pt", kind="flow", model=flow.state_dict(), ema=flow.state_dict(),
                    gaussians=prior.state_dict(), config={"flow": fcfg, "image_shape": list(data.image_shape)})
    (root / "gaussians").mkdir()
    save_gaussians(root / "gaussians/nfpi.pt", prior, {"setting": "nfpi"})
    return data


def _stage_args(root, cfg: dict) -> list[str]:  # type: ignore[no-untyped-def]
    import json

    return ["--config", json.dumps({"latent_ot": cfg}), "--threads", "1", "--flow", str(root / "flows/nfpi.pt"),
            "--latents-train", str(root / "latents/nfpi/train.parquet"),
            "--latents-test", str(root / "latents/nfpi/test.parquet"), "--gaussians", str(root / "gaussians/nfpi.pt"),
            "--data-dir", str(root / "data"), "--out-dir", str(root / "latent_ot"), "--tables-dir", str(root / "tables"),
            "--grid", str(root / "figures/samples_latent_ot.png")]


def test_transport_stage_end_to_end(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import csv

    from nfpi.io import read_json
    from nfpi.stages.latent_ot import main

    _fake_run(tmp_path, cap=24)
    cfg = {"steps": 8, "batch_size": 16, "hidden": 16, "semi_discrete_samples": 200, "samples_per_class": 12,
           "mode_clusters": 2, "grid_per_class": 4}
    main(_stage_args(tmp_path, cfg))
    m = read_json(tmp_path / "latent_ot/metrics.json")
    assert set(m["methods"]) == {"nfpi", "ot_map", "ot_semi_discrete", "real_train"}
    for name, v in m["methods"].items():
        assert v["w2"] > 0 and 0 <= v["mode_coverage"] <= 1 and 0 <= v["classifier_acc"] <= 1, name
        assert len(v["per_class"]["w2"]) == 10
    # real training images are their own nearest neighbours; semi-discrete samples decode to training
    # images (the map lands on training latents exactly); the OT map and the Gaussians do not copy
    assert m["methods"]["real_train"]["copy_fraction"] == 1.0
    assert m["methods"]["ot_semi_discrete"]["copy_fraction"] > 0.95
    assert m["methods"]["ot_map"]["copy_fraction"] < 0.5 and m["methods"]["nfpi"]["copy_fraction"] < 0.5
    assert m["real_test"]["copy_fraction"] < 0.5 and m["real_test"]["classifier_acc"] > 0.5
    assert read_json(tmp_path / "latent_ot/config.json")["latent_ot"]["steps"] == 8
    rows = list(csv.reader((tmp_path / "tables/latent_ot.csv").open()))
    assert rows[0][0] == "Method" and len([r for r in rows if r and not r[0].startswith("#")]) == 6
    assert (tmp_path / "tables/latent_ot.md").read_text().count("\n| ") >= 6
    assert (tmp_path / "figures/samples_latent_ot.png").stat().st_size > 1000
    s = np.load(tmp_path / "latent_ot/samples.npz")
    assert s["images_ot_map"].shape == (120, 1, 8, 8) and s["images_ot_map"].dtype == np.uint8
    again = LatentOTPrior.load(tmp_path / "latent_ot/prior.pt")
    assert again.num_classes == 10 and again.dim == 64


def test_transport_stage_too_few_latents_names_file_and_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from nfpi.stages.latent_ot import main

    _fake_run(tmp_path, cap=9)  # 9 per class minus the validation carve: below min_class_size=10
    with pytest.raises(TooFewLatentsError, match=r"train\.parquet: too few latents.*latent_ot\.min_class_size"):
        main(_stage_args(tmp_path, {"steps": 2}))
    assert not (tmp_path / "latent_ot/metrics.json").exists()
