"""The augmentations as batch operations: each one's chance and ranges, and a training step whose work on the
host does not grow with the batch (counted with torch's profiler), with no wait for the device inside it."""
import numpy as np
import pytest
import torch
from scipy import stats

import common
from augmentations import AugmentChances, coarse_dropout, horizontal_flip, mixup, stretch

N = 4000


def chance_ok(hits, n, p):
    """hits of n within 4.5 binomial standard deviations of n * p."""
    return abs(hits - n * p) <= 4.5 * np.sqrt(n * p * (1 - p))


def ramps(n, height=8, width=60):
    """n images whose value is the column index: where a column reads from is its value."""
    return torch.arange(width, dtype=torch.float32).expand(n, 1, height, width).clone()


def test_flip_and_dropout_touch_each_sample_with_their_chance():
    g = torch.Generator().manual_seed(0)
    images = ramps(N, 8, 20)
    flipped = (horizontal_flip(images, 0.3, g)[:, 0, 0, 0] == 19).sum().item()
    assert chance_ok(flipped, N, 0.3)
    holed = (coarse_dropout(torch.ones(N, 1, 40, 60), 0.3, g) == 0).flatten(1).any(1)
    assert chance_ok(holed.sum().item(), N, 0.3)


def test_coarse_dropout_holes_are_one_to_four_rectangles_of_bounded_sides():
    g = torch.Generator().manual_seed(2)
    out = coarse_dropout(torch.ones(500, 1, 40, 60), 1.0, g)[:, 0] == 0
    side_h, side_w = int(40 * 0.15), int(60 * 0.15)
    zeroed = out.flatten(1).sum(1)
    assert zeroed.min() >= 1 and zeroed.max() <= 4 * side_h * side_w
    assert out.sum(2).max() <= 4 * side_w and out.sum(1).max() <= 4 * side_h
    # a single hole's size is uniform in 1..side: the smallest (1x1) and the largest hole both occur
    assert zeroed.min() <= 2 and zeroed.max() > 2 * side_h * side_w


def test_mixup_chance_and_beta_weights():
    g = torch.Generator().manual_seed(1)
    targets = torch.eye(N)
    _, mixed = mixup(torch.zeros(N, 1, 2, 2), targets, 0.5, g, alpha=0.5)
    own = mixed.diagonal()
    partnered = (mixed > 0).sum(1) == 2          # chosen, and the partner is another sample
    unchanged = own == 1
    assert chance_ok(N - unchanged.sum().item(), N, 0.5 * (1 - 1 / N)) or chance_ok(partnered.sum().item(), N, 0.5)
    lam = own[partnered].numpy()
    assert stats.kstest(lam, stats.beta(0.5, 0.5).cdf).pvalue > 1e-3  # Beta(0.5, 0.5), as the write-up's mixup
    assert torch.allclose(mixed.sum(1), torch.ones(N))


def test_global_stretch_chance_and_factor_range():
    g = torch.Generator().manual_seed(3)
    images = ramps(N)
    out = stretch(images, 0.4, 0.0, g)[:, 0]
    changed = ~(out == images[:, 0]).flatten(1).all(1)
    assert chance_ok(changed.sum().item(), N, 0.4)
    # the time axis read at (j + 0.5) * w / w' - 0.5: the slope of the first columns is w / w', w' in 0.9w..1.1w
    slope = (out[changed, 0, 20] - out[changed, 0, 10]) / 10
    factor = 1 / slope
    assert factor.min() >= 0.9 - 0.02 and factor.max() <= 1.1 + 0.02
    assert factor.min() < 0.93 and factor.max() > 1.07  # the whole range is drawn


def test_local_stretch_reads_forward_in_segments_then_pads():
    g = torch.Generator().manual_seed(4)
    images = ramps(500, 8, 80)
    out = stretch(images, 0.0, 1.0, g)[:, 0, 0]
    # each starts at its first column (half a pixel in, at most, where a short segment rounds to fewer bins)
    assert (out[:, 0] >= 0).all() and (out[:, 0] <= 0.25).all()
    for row in out:
        zeros = (row == 0).nonzero().flatten()
        valid = row[:int(zeros[zeros > 0][0])] if (zeros > 0).any() else row   # up to the padding, if any
        steps = valid[1:] - valid[:-1]
        assert (steps >= -1e-5).all()                   # read forward only
        assert steps.max() <= 1.5                       # squeezed by the range (short segments: by rounding)
        assert 1 / 1.1 - 0.02 <= steps.median() <= 1 / 0.9 + 0.02
    differs = ~(out == images[:, 0, 0]).all(1)
    assert differs.float().mean() > 0.9


def tiny_run(chances, device=torch.device("cpu"), amp=False):
    """train.py's step state for a small model: AdamW at a constant rate, the scaler, the mel."""
    import steps
    torch.manual_seed(0)
    return steps.step_state(common.MelModel(5, 32, 32),
                            common.MelFrontEnd(common.MelSettings(n_mels=32, hop_length=1024)), device, amp, chances)


def ops_of_one_step(batch):
    import steps
    from torch.profiler import ProfilerActivity, profile
    run = tiny_run(AugmentChances(0.5, 0.5, 0.5, 0.5, 0.5))
    g = torch.Generator().manual_seed(0)
    waves, targets = torch.randn(batch, common.WINDOW_SAMPLES), (torch.rand(batch, 5) > 0.7).float()
    step = (run, waves, targets, g, 8000, common.bce_focal_loss, torch.bfloat16)
    steps.train_step(*step)  # the optimiser's state is made on the first step
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        steps.train_step(*step)
    return sorted((e.key, e.count) for e in prof.key_averages())


def test_one_steps_host_work_does_not_grow_with_the_batch():
    """Every operation a step dispatches, by name and count, at batch 8 and at batch 64. Our code's are the same;
    torch's own CPU convolutions and STFT take slightly different internal paths by batch size (a few view,
    copy and allocation operations: the model's forward and backward alone differ so), so the test allows those
    few and nothing that grows with the batch: 8 times the samples may not add 1% to the operations."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # on one thread torch's CPU convolutions take a slower path for small batches
    try:
        small, large = dict(ops_of_one_step(8)), dict(ops_of_one_step(64))
    finally:
        torch.set_num_threads(before)
    assert sum(small.values()) > 1000  # the step itself was counted (forward, backward, optimiser)
    differing = {name: large.get(name, 0) - small.get(name, 0) for name in set(small) | set(large)
                 if small.get(name) != large.get(name)}
    assert set(differing) <= INTERNAL_PATHS, differing
    assert all(abs(d) <= 20 for d in differing.values()), differing
    assert sum(large.values()) <= 1.01 * sum(small.values())
    assert small["aten::grid_sampler_2d"] == 1 and small["aten::gather"] >= 1  # the stretches and the time shift


# view and bookkeeping operations whose count torch's kernels vary with the batch size (no compute of ours)
INTERNAL_PATHS = {"aten::view", "aten::_reshape_alias", "aten::as_strided", "aten::narrow", "aten::slice",
                  "aten::select", "aten::unsqueeze", "aten::squeeze", "aten::reshape", "aten::copy_", "aten::empty",
                  "aten::empty_strided", "aten::expand", "aten::alias", "aten::detach", "aten::resize_"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the step's syncs are checked on one")
def test_a_step_never_waits_for_the_gpu():
    import steps
    device = torch.device("cuda")
    run = tiny_run(AugmentChances(0.5, 0.5, 0.5, 0.5, 0.5), device, amp=True)
    g = torch.Generator(device=device).manual_seed(0)
    waves, targets = torch.randn(16, common.WINDOW_SAMPLES, device=device), torch.rand(16, 5, device=device)
    steps.train_step(run, waves, targets, g, 8000, common.bce_focal_loss, torch.float16)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        steps.train_step(run, waves, targets, g, 8000, common.bce_focal_loss, torch.float16)
    finally:
        torch.cuda.set_sync_debug_mode("default")



def graphed_and_eager_losses(device, batches=(16, 16, 10, 16, 16, 16, 10, 16)):
    """Losses and final weights of train.py's GraphedStep and of the eager train_step on the same batches and
    seeds (both from the device's default generator, autocast alike), the learning rate changing every step; a
    partial batch comes before the capture (on the 5th batch, the third full one) and after it."""
    import steps
    runs, results = [], []
    for graphed_step in (True, False):
        torch.manual_seed(0)
        run = steps.step_state(common.MelModel(5, 32, 32),
                               common.MelFrontEnd(common.MelSettings(n_mels=32, hop_length=1024)), device,
                               amp=device.type == "cuda", chances=AugmentChances(0.5, 0.5, 0.5, 0.5, 0.5),
                               graphed=True, schedule=lambda s: 1.0 / (1 + s))
        step = steps.GraphedStep(run, 8000, common.bce_focal_loss) if graphed_step else \
            (lambda w, t: steps.train_step(run, w, t, None, 8000, common.bce_focal_loss, run.amp_dtype))
        data = torch.Generator().manual_seed(1)
        torch.manual_seed(2)
        losses = []
        for n in batches:
            waves = torch.randn(n, common.WINDOW_SAMPLES, generator=data).to(device)
            targets = (torch.rand(n, 5, generator=data) > 0.7).float().to(device)
            losses.append(step(waves, targets))
        runs.append(run)
        results.append((torch.stack(losses).float().cpu(), {k: v.detach().float().cpu().clone()
                                                             for k, v in run.trained.state_dict().items()}))
        if graphed_step:  # captured on the full batch, after three eager steps of it, never on the partial one
            assert step.shape[0] == (16, common.WINDOW_SAMPLES) and step.eager_shapes[step.shape] == 3
    assert runs[0].optimizer.param_groups[0]["lr"] == runs[1].optimizer.param_groups[0]["lr"] == pytest.approx(1.0e-3 / (1 + len(batches)))
    return results


def test_the_graphed_step_on_cpu_is_the_eager_step():
    """On a CPU, GraphedStep runs the code a GPU replays (warm-up, capture into fixed buffers, a partial batch
    eagerly, the schedule): the same losses and weights as the eager step, to the bit."""
    (graphed_losses, graphed), (eager_losses, eager) = graphed_and_eager_losses(torch.device("cpu"))
    assert torch.equal(graphed_losses, eager_losses)
    assert all(torch.equal(graphed[k], eager[k]) for k in eager)
    assert not torch.equal(eager["head.weight"], tiny_run(AugmentChances()).trained.state_dict()["head.weight"]
                           .float())  # it trained


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the graph is checked on one")
def test_the_cuda_graph_trains_as_the_eager_step_and_never_waits():
    import steps
    device = torch.device("cuda")
    (graphed_losses, graphed), (eager_losses, eager) = graphed_and_eager_losses(device)
    assert torch.allclose(graphed_losses, eager_losses, rtol=0.02, atol=1e-3), (graphed_losses, eager_losses)
    assert max(float((graphed[k] - eager[k]).abs().max()) for k in eager) < 0.05
    torch.manual_seed(0)
    run = steps.step_state(common.MelModel(5, 32, 32),
                           common.MelFrontEnd(common.MelSettings(n_mels=32, hop_length=1024)), device, True,
                           AugmentChances(0.5, 0.5, 0.5, 0.5, 0.5), graphed=True)
    step = steps.GraphedStep(run, 8000, common.bce_focal_loss, warmup=1)
    waves, targets = torch.randn(16, common.WINDOW_SAMPLES, device=device), torch.rand(16, 5, device=device)
    for _ in range(2):  # the warm-up step, then the capture
        step(waves, targets)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(waves, targets)
    finally:
        torch.cuda.set_sync_debug_mode("default")
