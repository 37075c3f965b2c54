"""Model pieces: GeM, augmentations, loss, overfitting one batch, loading local pretrained weights."""
import os

import numpy as np
import pytest
import torch

import common
import errors
from augmentations import AugmentChances, augment, coarse_dropout, horizontal_flip, mixup, stretch
from common import MelModel, GeM, bce_focal_loss


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
    assert torch.equal(stretch(mel, 0.0, 0.0, g), mel)
    m, t = mixup(mel, targets, 0.0, g)
    assert torch.equal(m, mel) and torch.equal(t, targets)
    m, t = augment(mel, targets, AugmentChances(0, 0, 0, 0, 0), g)
    assert torch.equal(m, mel) and torch.equal(t, targets)
    out = stretch(mel, 0.0, 1.0, g)  # local: segments of random factors (global: test below)
    assert out.shape == mel.shape and not torch.equal(out, mel)
    assert torch.equal(horizontal_flip(mel, 1.0, g), mel.flip(-1))
    m, t = mixup(mel, targets, 1.0, g)
    assert m.shape == mel.shape and t.shape == targets.shape and not torch.equal(t, targets)
    assert float(t.min()) >= 0 and float(t.max()) <= 1


def test_loss_is_mean_of_bce_and_focal():
    """By hand: logit 0 for a true label (p 0.5): BCE ln 2, focal ln 2 * 0.5**2; logit ln 3 for a false one
    (p 0.75): BCE ln 4, focal ln 4 * 0.75**2. Loss = (mean BCE + mean focal) / 2 = 1.09375 ln 2."""
    logits = torch.tensor([[0.0], [float(np.log(3.0))]])
    targets = torch.tensor([[1.0], [0.0]])
    assert float(bce_focal_loss(logits, targets)) == pytest.approx(1.09375 * np.log(2), rel=1e-6)


def test_dropout_heads_mean_in_training_and_identity_in_eval():
    """Heads with dropout 0, 0, 0, 0 and 1: in training the logits are (4 * head(f) + head(0)) / 5."""
    torch.manual_seed(0)
    model = MelModel(4, 32, 32, dropout_rates=(0.0, 0.0, 0.0, 0.0, 1.0))
    mel = torch.rand(2, 1, 16, 20)
    model.eval()
    a, b = model(mel), model(mel)
    assert a.shape == (2, 4) and torch.equal(a, b)
    with torch.no_grad():
        image = torch.nn.functional.interpolate(mel, size=(32, 32), mode="bilinear", align_corners=False)
        features = model.pool(model.backbone(torch.cat([image] * 3, dim=1)))
        by_hand = (4 * (features @ model.head.weight.T + model.head.bias) + model.head.bias) / 5
        model.train()
        model.backbone.eval()  # BatchNorm as above: only the dropouts train
        assert torch.allclose(model(mel), by_hand, atol=1e-5)
        model = MelModel(4, 32, 32).train()
        assert not torch.equal(model(mel), model(mel))  # the write-up's rates: dropout active


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = MelModel(5, 32, 32, dropout_rates=(0.0,) * 5)
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
    fresh = MelModel(3, 32, 32)
    loaded = MelModel(3, 32, 32, pretrained=str(path))
    key = "conv_stem.weight"
    assert torch.equal(loaded.backbone.state_dict()[key], donor.state_dict()[key])
    assert not torch.equal(fresh.backbone.state_dict()[key], donor.state_dict()[key])
    with pytest.raises(errors.UserError):
        MelModel(3, 32, 32, pretrained=str(tmp_path / "missing.pth"))


def test_inference_form_equals_the_model_and_leaves_it_unchanged():
    torch.manual_seed(0)
    model = MelModel(5, 48, 80).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mel = torch.rand(3, 1, 40, 157)
    twin = model.inference_form((40, 157))
    assert twin.backbone.conv_stem.weight.shape[1] == 1 and model.backbone.conv_stem.weight.shape[1] == 3
    with torch.no_grad():
        expected, got = model(mel), twin(mel)
    assert torch.abs(got - expected).max() < 1e-4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.resize_rows is None


def test_coarse_dropout_zeroes_a_few_small_rectangles():
    g = torch.Generator().manual_seed(1)
    ones = torch.ones(20, 1, 40, 60)
    out = coarse_dropout(ones, 1.0, g, max_holes=4, max_fraction=0.15)
    assert out.shape == ones.shape and set(out.unique().tolist()) == {0.0, 1.0}
    side_h, side_w = int(40 * 0.15), int(60 * 0.15)
    for image in out[:, 0]:
        holes = image == 0
        rows, cols = holes.any(1).nonzero().flatten(), holes.any(0).nonzero().flatten()
        assert 1 <= holes.sum() <= 4 * side_h * side_w  # at least one hole, at most 4 of the largest
        assert holes.sum(1).max() <= 4 * side_w and holes.sum(0).max() <= 4 * side_h
        assert len(rows) <= 4 * side_h and len(cols) <= 4 * side_w


def test_global_stretch_of_a_ramp():
    """A time ramp (value = column index) stretched by 1.1 reads (j + 0.5) * w / w' - 0.5 at column j (bilinear,
    half-pixel centres; w' = round(1.1 w)), cropped back to its width; shrunk by 0.9, the columns past w' are
    zero padding. Constant along frequency, so the frequency stretch only moves where the padding starts."""
    width = 50
    ramp = torch.arange(width, dtype=torch.float32).expand(1, 1, 8, width).clone()
    for factor in (1.1, 0.9):
        out = stretch(ramp, 1.0, 0.0, torch.Generator().manual_seed(0), factors=(factor, factor))[0, 0]
        resized = round(width * factor)
        kept = min(width, resized)
        j = torch.arange(kept, dtype=torch.float32)
        expected = ((j + 0.5) * width / resized - 0.5).clamp(0, width - 1)
        rows = min(8, round(8 * factor))  # the frequency axis is stretched alike: shrunk, it is padded too
        assert torch.allclose(out[:rows, :kept], expected.expand(rows, kept), atol=1e-3), factor
        assert torch.all(out[:, kept:] == 0) and torch.all(out[rows:] == 0)


def fake_hub_cache(home):
    """A Hugging Face cache holding timm's file of the write-up's weights (random values): what a box that fetched
    them once has. Returns the donor model."""
    import timm
    from safetensors.torch import save_file
    torch.manual_seed(7)
    donor = timm.create_model(common.BACKBONE, num_classes=1000)
    repo = home / "hub" / f"models--timm--{common.BACKBONE}"
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(donor.state_dict(), str(repo / "snapshots" / ("0" * 40) / "model.safetensors"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return donor


def test_writeup_weights_offline_from_the_cache_and_make_weights_file(tmp_path):
    """With the hub unreachable, the write-up's weights come from timm's cache when they are there; `make weights`
    writes them to a file that --pretrained FILE loads."""
    import subprocess
    import sys
    donor = fake_hub_cache(tmp_path / "hf")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")
    env.pop("HF_HUB_OFFLINE", None)
    out = tmp_path / "weights" / f"{common.BACKBONE}.pth"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(["make", "--no-print-directory", "-C", root, "weights", f"WORK={tmp_path}",
                           f"PY={sys.executable}"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and out.is_file(), done.stdout + done.stderr
    loaded = MelModel(3, 32, 32, pretrained=str(out))
    key = "conv_stem.weight"
    assert torch.equal(loaded.backbone.state_dict()[key], donor.state_dict()[key])
    # PRETRAINED=<the folder>: each row's backbone reads its own file there
    from_folder = MelModel(3, 32, 32, pretrained=str(out.parent))
    assert torch.equal(from_folder.backbone.state_dict()[key], donor.state_dict()[key])
