"""Model pieces: GeM, augmentations, loss, overfitting one batch, loading local pretrained weights."""
import numpy as np
import pytest
import torch

import common
from common import (AugmentChances, BirdNet, GeM, augment, bce_focal_loss, coarse_dropout, horizontal_flip, mixup,
                    stretch)


def test_gem_p1_is_average_pooling_and_p_is_learnable():
    x = torch.rand(2, 5, 4, 3) + 0.1
    gem = GeM(p=1.0)
    assert torch.allclose(gem(x), x.mean(dim=(2, 3)), atol=1e-6)
    assert gem.p.requires_grad
    assert torch.allclose(GeM(p=100.0)(x), x.amax(dim=(2, 3)), rtol=0.05)


def test_augmentations_identity_at_zero_and_keep_shapes():
    g = torch.Generator().manual_seed(0)
    mel = torch.rand(6, 1, 32, 40)
    targets = torch.rand(6, 5)
    assert torch.equal(horizontal_flip(mel, 0.0, g), mel)
    assert torch.equal(coarse_dropout(mel, 0.0, g), mel)
    assert torch.equal(stretch(mel, 0.0, g), mel) and torch.equal(stretch(mel, 0.0, g, local=True), mel)
    m, t = mixup(mel, targets, 0.0, g)
    assert torch.equal(m, mel) and torch.equal(t, targets)
    m, t = augment(mel, targets, AugmentChances(0, 0, 0, 0, 0), g)
    assert torch.equal(m, mel) and torch.equal(t, targets)
    for fn in (lambda x: horizontal_flip(x, 1.0, g), lambda x: coarse_dropout(x, 1.0, g),
               lambda x: stretch(x, 1.0, g), lambda x: stretch(x, 1.0, g, local=True)):
        out = fn(mel)
        assert out.shape == mel.shape and not torch.equal(out, mel)
    assert torch.equal(horizontal_flip(mel, 1.0, g), mel.flip(-1))
    m, t = mixup(mel, targets, 1.0, g)
    assert m.shape == mel.shape and t.shape == targets.shape and not torch.equal(t, targets)
    assert float(t.min()) >= 0 and float(t.max()) <= 1


def test_loss_is_mean_of_bce_and_focal():
    logits, targets = torch.randn(4, 3), torch.rand(4, 3)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_true = p * targets + (1 - p) * (1 - targets)
    expected = 0.5 * (bce.mean() + (bce * (1 - p_true) ** 2).mean())
    assert torch.allclose(bce_focal_loss(logits, targets), expected)


def test_dropout_heads_mean_in_training_and_identity_in_eval():
    torch.manual_seed(0)
    model = BirdNet(4, 32, 32)
    mel = torch.rand(2, 1, 16, 20)
    model.eval()
    a, b = model(mel), model(mel)
    assert a.shape == (2, 4) and torch.equal(a, b)
    model.train()
    assert not torch.equal(model(mel), model(mel))  # dropout active


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = BirdNet(5, 32, 32, dropout_rates=(0.0,) * 5)
    mel = torch.rand(8, 1, 16, 32)
    targets = (torch.rand(8, 5) < 0.3).float()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = bce_focal_loss(model(mel), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_pretrained_loads_local_file(tmp_path):
    import timm
    torch.manual_seed(123)
    donor = timm.create_model(common.BACKBONE, num_classes=1000)  # the layout of an ImageNet checkpoint
    path = tmp_path / "imagenet.pth"
    torch.save(donor.state_dict(), path)
    torch.manual_seed(0)
    fresh = BirdNet(3, 32, 32)
    loaded = BirdNet(3, 32, 32, pretrained=str(path))
    key = "conv_stem.weight"
    assert torch.equal(loaded.backbone.state_dict()[key], donor.state_dict()[key])
    assert not torch.equal(fresh.backbone.state_dict()[key], donor.state_dict()[key])
    with pytest.raises(common.UserError):
        BirdNet(3, 32, 32, pretrained=str(tmp_path / "missing.pth"))


def test_inference_form_equals_the_model_and_leaves_it_unchanged():
    torch.manual_seed(0)
    model = BirdNet(5, 48, 80).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mel = torch.rand(3, 1, 40, 157)
    twin = model.inference_form((40, 157))
    assert twin.backbone.conv_stem.weight.shape[1] == 1 and model.backbone.conv_stem.weight.shape[1] == 3
    with torch.no_grad():
        expected, got = model(mel), twin(mel)
    assert torch.abs(got - expected).max() < 1e-4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.resize_rows is None
