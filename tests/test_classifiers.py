"""Classifiers for CNN-Acc and the augmentation tables (paper Sec. 5.1, Tables 2-6)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nfpi.classifiers import (
    BUILTIN_CLASSIFIERS,
    PRESETS,
    Classifier,
    ClassifierConfig,
    PretrainedLoadError,
    available_classifiers,
    build_classifier,
    classifier_config,
    evaluate_classifier,
    register_classifier,
    train_classifier,
)
from nfpi.config import ConfigError

SHAPES = [(1, 8, 8), (3, 32, 32)]
TINY_EVA = {"model_name": "eva02_tiny_patch14_224", "depth": 1, "img_size": 28}  # the timm arch, 1 block


def _digits(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.clip(d.images[:n] * 16, 0, 255).astype(np.uint8)[:, None]
    return x, d.target[:n].astype(np.int64)


def test_registry_lists_the_three_architectures() -> None:
    assert {"resnet18", "swin", "eva02"} <= set(available_classifiers())
    # the torch-free config names the built-in ones (the config check asks the registry only for another name)
    assert set(BUILTIN_CLASSIFIERS) == {"resnet18", "swin", "eva02"}
    with pytest.raises(ConfigError, match="unknown classifier arch 'vgg'"):
        build_classifier(ClassifierConfig(arch="vgg"), (3, 32, 32), 10)
    with pytest.raises(ValueError, match="already registered"):
        register_classifier("resnet18")(lambda *a: None)


@pytest.mark.parametrize("arch", ["resnet18", "swin", "eva02"])
@pytest.mark.parametrize("shape", SHAPES)
def test_classifiers_build_for_1_and_3_channels_and_small_images(arch: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(arch=arch), shape, 7)
    assert isinstance(model, Classifier) and model.pretrained is False
    logits = model(torch.rand(3, *shape))
    assert logits.shape == (3, 7) and torch.isfinite(logits).all()


def test_resnet18_has_the_cifar_stem_and_paper_size() -> None:
    model = build_classifier(ClassifierConfig(), (1, 8, 8), 10)
    conv1 = model.backbone.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.in_channels == 1
    assert isinstance(model.backbone.maxpool, nn.Identity)
    n_params = sum(p.numel() for p in build_classifier(ClassifierConfig(), (3, 32, 32), 10).parameters())
    assert abs(n_params / 1e6 - 11.2) < 0.1  # "The ResNet18 has 11.2M parameters"


def test_swin_for_cifar_has_the_papers_size_and_kwargs_override() -> None:
    model = build_classifier(ClassifierConfig(arch="swin"), (3, 32, 32), 10)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - 7.1) < 0.2  # "7M parameters"
    small = build_classifier(ClassifierConfig(arch="swin", model_kwargs={"embed_dim": 16, "depths": [1, 1],
                                                                         "num_heads": [1, 2]}), (1, 8, 8), 3)
    assert small.backbone.embed_dim == 16
    with pytest.raises(ConfigError, match="swin.model_kwargs"):
        build_classifier(ClassifierConfig(arch="swin", model_kwargs={"no_such_option": 1}), (1, 8, 8), 3)


def test_config_sections_overlay_the_paper_presets() -> None:
    swin = classifier_config("swin", {"epochs": 2, "aug": {"mixup_alpha": 0.0}})
    assert (swin.optimizer, swin.lr, swin.weight_decay, swin.schedule, swin.batch_size) == ("adamw", 2e-3, 5e-2,
                                                                                           "cosine", 256)
    assert swin.epochs == 2 and swin.aug.mixup_alpha == 0.0
    assert swin.aug.cutmix_alpha == PRESETS["swin"].aug.cutmix_alpha  # aug keys not given keep the preset
    eva = classifier_config("eva02", None)
    assert (eva.optimizer, eva.lr, eva.grad_clip, eva.batch_size, eva.epochs) == ("sgd", 1e-5, 1.0, 64, 3)
    cnn = classifier_config("cnn", {"hflip": False})
    assert (cnn.lr, cnn.momentum, cnn.weight_decay, cnn.max_lr, cnn.schedule) == (1e-3, 0.9, 5e-4, 0.1, "onecycle")
    assert cnn.hflip is False
    with pytest.raises(ConfigError, match="swin.lrr"):
        classifier_config("swin", {"lrr": 1.0})
    with pytest.raises(ConfigError, match="unknown classifier config section"):
        classifier_config("vit", {})


@pytest.mark.parametrize("arch,extra,ratio", [
    ("resnet18", {"epochs": 5, "batch_size": 20, "schedule": "onecycle", "lr": 1e-3, "max_lr": 0.02, "hflip": False},
     0.7),
    ("swin", {"epochs": 6, "batch_size": 10, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.0,
              "schedule": "cosine", "crop_flip": False}, 0.92),
])
def test_short_training_lowers_the_loss(arch: str, extra: dict, ratio: float, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    x, y = _digits(200)
    keep = y < 4  # four digit classes, 60 images: a few seconds on one core
    x, y = x[keep][:60], y[keep][:60]
    cfg = ClassifierConfig(arch=arch, device="cpu", **extra)
    log_path = tmp_path / "log.jsonl"
    model, hist = train_classifier(cfg, x, y, image_shape=(1, 8, 8), num_classes=4, log_path=log_path)
    epochs = extra["epochs"]
    assert len(hist["loss"]) == epochs and hist["steps"] == epochs * 60 // extra["batch_size"]
    assert hist["pretrained"] is False
    assert hist["loss"][-1] < ratio * hist["loss"][0], hist["loss"]
    assert hist["train_acc"][-1] > 0.4  # above chance (0.25)
    assert [json.loads(line)["epoch"] for line in log_path.read_text().splitlines()] == list(range(1, epochs + 1))
    assert not model.training
    if arch == "swin":  # (a 15-step ResNet's batch-norm running statistics still lag its weights)
        assert evaluate_classifier(model, x, y, batch_size=64)["top1"] > 0.4


def test_standard_augmentations_train_and_are_reproducible() -> None:
    torch.set_num_threads(1)
    x, y = _digits(64)
    cfg = ClassifierConfig(arch="swin", epochs=1, batch_size=32, optimizer="adamw", lr=1e-3, schedule="cosine",
                           standard_aug=True, hflip=False, device="cpu", seed=3)
    _, h1 = train_classifier(cfg, x, y, image_shape=(1, 8, 8), num_classes=10)
    _, h2 = train_classifier(cfg, x, y, image_shape=(1, 8, 8), num_classes=10)
    assert np.isfinite(h1["loss"][0]) and h1["loss"] == h2["loss"]


def test_train_rejects_bad_inputs() -> None:
    x, y = _digits(20)
    cfg = ClassifierConfig(epochs=1, device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        train_classifier(cfg, x.astype(np.float32), y, image_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ValueError, match="image_shape"):
        train_classifier(cfg, x, y, image_shape=(3, 8, 8), num_classes=10)
    with pytest.raises(ValueError, match=r"0\.\.4"):
        train_classifier(cfg, x, y, image_shape=(1, 8, 8), num_classes=5)


class _ReadsLabelFromPixel(nn.Module):
    """A real (non-learned) classifier: the label is written in pixel (0, 0) as 20 * label."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0, 0, 0] * 255.0 / 20.0
        return -((v[:, None] - torch.arange(self.k)) ** 2) + self.dummy


def test_evaluate_reports_top1_top5_and_per_class_accuracy() -> None:
    k, n = 12, 480
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, k, (n,), generator=g)
    x = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    x[:, 0, 0, 0] = (20 * y).to(torch.uint8)
    model = Classifier(_ReadsLabelFromPixel(k), arch="oracle", mean=(0.0,), std=(1.0,))
    m = evaluate_classifier(model, x, y, batch_size=64)
    assert m["top1"] == 1.0 and m["top5"] == 1.0 and m["num_images"] == n and m["per_class_acc"] == [1.0] * k
    wrong = y.clone()
    # the neighbouring class: out of top-1, inside top-5 (the quadratic score ranks neighbours next)
    wrong[: n // 2] = torch.where(y[: n // 2] < k - 1, y[: n // 2] + 1, y[: n // 2] - 1)
    m2 = evaluate_classifier(model, x, wrong, batch_size=64)
    assert m2["top1"] == pytest.approx(0.5) and m2["top5"] == 1.0
    counts = torch.bincount(wrong, minlength=k).double()
    per_class = torch.tensor(m2["per_class_acc"], dtype=torch.float64)
    assert float((per_class * counts).sum() / n) == pytest.approx(m2["top1"])
    far = torch.where(y < k // 2, y + k // 2, y - k // 2)  # 6 classes away: outside any top-5
    assert evaluate_classifier(model, x, far)["top5"] == 0.0


# ---------------------------------------------------------------------------------------------
# pretrained EVA02 weights from a local file
# ---------------------------------------------------------------------------------------------


def _save_tiny_eva(path: Path, fmt: str, **override: object) -> Classifier:
    torch.manual_seed(1)
    src = build_classifier(ClassifierConfig(arch="eva02", model_kwargs={**TINY_EVA, **override}), (3, 32, 32), 10)
    state = {k: v.contiguous() for k, v in src.backbone.state_dict().items()}
    if fmt == "safetensors":  # the format of timm's hub weights (model.safetensors)
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:  # a training checkpoint with the state dict under "model"
        torch.save({"model": state, "epoch": 3}, path)
    return src


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_pretrained_file_loads_exactly(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"eva.{fmt}"
    src = _save_tiny_eva(path, fmt)
    cfg = ClassifierConfig(arch="eva02", model_kwargs=TINY_EVA, pretrained_file=str(path))
    model = build_classifier(cfg, (3, 32, 32), 10)
    assert model.pretrained is True and model.pretrained_file == str(path)
    for (name, a), b in zip(src.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), src.eval()(x))
    # other class count (head re-initialised) and grey images (patch conv adapted) still load the trunk
    other = build_classifier(cfg, (1, 32, 32), 4)
    torch.testing.assert_close(other.backbone.blocks[0].attn.qkv.weight, src.backbone.blocks[0].attn.qkv.weight)
    assert other.backbone.head.weight.shape == (4, 192)


def test_pretrained_flag_reaches_the_training_history(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    path = tmp_path / "eva.safetensors"
    _save_tiny_eva(path, "safetensors")
    x, y = _digits(16)
    x3 = np.repeat(np.kron(x, np.ones((1, 1, 4, 4), dtype=np.uint8)), 3, axis=1)  # 3x32x32
    cfg = dataclasses.replace(classifier_config("eva02", {"epochs": 1, "batch_size": 8, "device": "cpu"}),
                              model_kwargs=TINY_EVA, pretrained_file=str(path))
    _, hist = train_classifier(cfg, x3, y, image_shape=(3, 32, 32), num_classes=10)
    assert hist["pretrained"] is True and hist["pretrained_file"] == str(path)
    _, scratch = train_classifier(dataclasses.replace(cfg, pretrained_file=None, model_kwargs=None), x3, y,
                                  image_shape=(3, 32, 32), num_classes=10)
    assert scratch["pretrained"] is False and scratch["pretrained_file"] is None


def test_pretrained_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    cfg = ClassifierConfig(arch="eva02", model_kwargs=TINY_EVA, pretrained_file=str(missing))
    with pytest.raises(PretrainedLoadError, match=r"config key 'eva02\.pretrained_file' = '.*nope\.safetensors': weights file not found"):
        build_classifier(cfg, (3, 32, 32), 10)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedLoadError, match="cannot read .*garbage.pt"):
        build_classifier(dataclasses.replace(cfg, pretrained_file=str(garbage)), (3, 32, 32), 10)
    deeper = tmp_path / "deeper.safetensors"
    _save_tiny_eva(deeper, "safetensors", depth=2)  # one block more than the model
    with pytest.raises(PretrainedLoadError, match="unexpected in the file: blocks.1"):
        build_classifier(dataclasses.replace(cfg, pretrained_file=str(deeper)), (3, 32, 32), 10)
    wider = tmp_path / "wider.pt"
    _save_tiny_eva(wider, "pt", embed_dim=96)
    with pytest.raises(PretrainedLoadError, match="does not match"):
        build_classifier(dataclasses.replace(cfg, pretrained_file=str(wider)), (3, 32, 32), 10)


def test_a_plain_state_dict_loads_with_pos_embed_resampled_and_weights_arriving(tmp_path: Path) -> None:
    # The file `torch.save(timm.create_model(name).state_dict(), path)` writes (docs/classifiers.md), here
    # for a 1-block timm EVA02 at 28 px (2x2 patches of 14), loaded into the same arch at 42 px (3x3):
    # timm's checkpoint_filter_fn resamples the position embedding, the head is re-initialised for K=4.
    torch.manual_seed(2)
    import timm

    src = timm.create_model("eva02_tiny_patch14_224", pretrained=False, depth=1, img_size=28, num_classes=10)
    path = tmp_path / "eva02_tiny.pth"
    torch.save(src.state_dict(), path)
    cfg = ClassifierConfig(arch="eva02", model_kwargs={**TINY_EVA, "img_size": 42}, pretrained_file=str(path))
    model = build_classifier(cfg, (3, 32, 32), 4)
    assert model.pretrained is True and model.input_size == (42, 42)
    torch.testing.assert_close(model.backbone.blocks[0].mlp.fc1.weight, src.blocks[0].mlp.fc1.weight)
    torch.testing.assert_close(model.backbone.patch_embed.proj.weight, src.patch_embed.proj.weight)
    assert src.pos_embed.shape == (1, 1 + 2 * 2, 192) and model.backbone.pos_embed.shape == (1, 1 + 3 * 3, 192)
    torch.testing.assert_close(model.backbone.pos_embed[:, 0], src.pos_embed[:, 0])  # class token: not resampled
    assert model.backbone.head.weight.shape == (4, 192)
    assert torch.isfinite(model(torch.rand(2, 3, 32, 32))).all()


def test_a_missing_file_says_how_to_get_it_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "eva02_tiny.pth"
    cfg = ClassifierConfig(arch="eva02", model_kwargs=TINY_EVA, pretrained_file=str(missing))
    with pytest.raises(PretrainedLoadError) as err:
        build_classifier(cfg, (3, 32, 32), 10)
    msg = str(err.value)
    assert "\n" not in msg and "eva02.pretrained_file" in msg and str(missing) in msg
    assert "timm.create_model('eva02_tiny_patch14_224', pretrained=True)" in msg
    assert f"pretrained=True).state_dict(), '{missing}')" in msg


_DDP_SCRIPT = """
import sys, torch
from sklearn.datasets import load_digits
import numpy as np
import nfpi.classifiers.models as C  # the module whose train_classifier looks build_classifier up
from nfpi.classifiers import classifier_config, train_classifier
from nfpi import distributed as ddp

sizes = []  # the batch sizes this rank's model sees (instrumentation: the model is built inside training)
build = C.build_classifier
def counted(*a, **k):
    m = build(*a, **k)
    m.register_forward_pre_hook(lambda mod, args: sizes.append(args[0].shape[0]))
    return m
C.build_classifier = counted

torch.set_num_threads(1)
d = load_digits()
x = np.clip(d.images[:90] * 16, 0, 255).astype(np.uint8)[:, None]
y = d.target[:90].astype(np.int64)
# 90 images in global batches of 20: the last one (10) is split 5 / 5; crops drawn for the global batch.
cfg = classifier_config("swin", {"epochs": 2, "batch_size": 20, "lr": 1e-3, "max_lr": 1e-3, "warmup_epochs": 0.0,
                                 "crop_flip": True, "hflip": False, "device": "cpu", "seed": 3})
model, hist = train_classifier(cfg, x, y, image_shape=(1, 8, 8), num_classes=10, log_path=sys.argv[2])
if ddp.init_distributed("cpu").is_main:
    torch.save({"state": model.state_dict(), "loss": hist["loss"], "acc": hist["train_acc"], "steps": hist["steps"],
                "sizes": sizes}, sys.argv[1])
ddp.cleanup()
"""


def test_two_process_ddp_training_matches_one_process(tmp_path: Path) -> None:
    # torchrun with 2 gloo processes, the global batch split between them, gives the 1-process model.
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp_swin.py"
    script.write_text(_DDP_SCRIPT)
    root = Path(__file__).resolve().parent.parent
    runs = {}
    for n in (1, 2):
        out, log = tmp_path / f"swin{n}.pt", tmp_path / f"swin{n}.jsonl"
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
        proc = subprocess.run(launch + [str(script), str(out), str(log)], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[n] = torch.load(out, weights_only=True)
        assert len(log.read_text().splitlines()) == 2  # one record per epoch: rank 0 alone writes
    one, two = runs[1], runs[2]
    assert one["steps"] == two["steps"] == 10
    assert one["sizes"] == [20, 20, 20, 20, 10] * 2 and two["sizes"] == [10, 10, 10, 10, 5] * 2  # rank 0's share
    for k, a in one["state"].items():
        if a.is_floating_point():
            torch.testing.assert_close(two["state"][k], a, rtol=1e-4, atol=1e-5, msg=k)
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-5)
    assert one["acc"] == pytest.approx(two["acc"], abs=1e-9)
