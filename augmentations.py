"""The augmentations, on batches of mel images (B, 1, n_mels, frames) on any device; each is the identity at
probability 0, and each is a few operations on the whole batch (a training step's host work does not grow with the
batch, so a CUDA graph can replay it).

    from augmentations import AugmentChances, augment, time_shift
    waves = time_shift(waves, max_samples=16000)                     # each wave rolled by up to +-0.5 s
    images, targets = augment(mel(waves), targets, AugmentChances())  # flip, coarse dropout, mixup, stretch
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F



def _uniform(shape, generator, device):
    """Uniform [0, 1) numbers from `generator` on its own device (the training device's, so nothing waits on the
    host), moved to `device`."""
    source = generator.device if generator is not None else torch.device(device)
    return torch.rand(shape, generator=generator, device=source).to(device, non_blocking=True)


def _chosen(n, p, generator, device):
    """Which of n samples an augmentation touches, each with chance p. The n numbers are drawn even at p = 0, so
    what later draws see does not depend on the chances."""
    return _uniform(n, generator, device) < p


def time_shift(waves, max_samples, generator=None):
    """(B, samples) waveforms, each rolled (circularly) by its own random shift in [-max_samples, max_samples]:
    one gather for the batch."""
    if max_samples <= 0:
        return waves
    source = generator.device if generator is not None else waves.device
    shifts = torch.randint(-max_samples, max_samples + 1, (len(waves),), generator=generator, device=source)
    n = waves.shape[1]
    index = (torch.arange(n, device=waves.device)[None, :] - shifts.to(waves.device, non_blocking=True)[:, None]) % n
    return waves.gather(1, index)


def horizontal_flip(mel, p, generator=None):
    """Reverse time for each sample with probability p."""
    chosen = _chosen(len(mel), p, generator, mel.device)
    if p <= 0:
        return mel
    return torch.where(chosen[:, None, None, None], mel.flip(-1), mel)


def coarse_dropout(mel, p, generator=None, max_holes=4, max_fraction=0.15):
    """Zero 1..max_holes random rectangles (each side 1 to max_fraction of the image) per chosen sample: one mask
    for the batch."""
    n, (h, w) = len(mel), mel.shape[-2:]
    chosen = _chosen(n, p, generator, mel.device)
    if p <= 0:
        return mel
    u = _uniform((5, n, max_holes), generator, mel.device)
    holes = 1 + (u[0, :, 0] * max_holes).long()                            # 1..max_holes per sample
    dh = 1 + (u[1] * max(1, int(h * max_fraction))).long()                 # (n, max_holes)
    dw = 1 + (u[2] * max(1, int(w * max_fraction))).long()
    y, x = (u[3] * (h - dh + 1)).long(), (u[4] * (w - dw + 1)).long()
    used = (torch.arange(max_holes, device=mel.device)[None] < holes[:, None]) & chosen[:, None]
    rows, cols = torch.arange(h, device=mel.device), torch.arange(w, device=mel.device)
    in_rows = (rows >= y[..., None]) & (rows < (y + dh)[..., None])        # (n, max_holes, h)
    in_cols = (cols >= x[..., None]) & (cols < (x + dw)[..., None])        # (n, max_holes, w)
    hole = (in_rows[..., :, None] & in_cols[..., None, :] & used[..., None, None]).any(1)
    return mel.masked_fill(hole[:, None], 0.0)


def _gamma(shape_parameter, n, generator, device, candidates=8):
    """n Gamma(shape_parameter) numbers from `generator`, on the device: Marsaglia and Tsang's method with a fixed
    number of candidates (each accepted with chance > 0.95: the first accepted one is taken; if none is, the
    mode), and shape_parameter < 1 through Gamma(a) = Gamma(a + 1) * U^(1/a)."""
    boost = shape_parameter < 1
    a = shape_parameter + 1 if boost else shape_parameter
    d = a - 1 / 3
    c = 1 / math.sqrt(9 * d)
    source = generator.device if generator is not None else torch.device(device)
    x = torch.randn((candidates, n), generator=generator, device=source).to(device, non_blocking=True)
    u = _uniform((candidates + 1, n), generator, device)
    v = (1 + c * x) ** 3
    accepted = (v > 0) & (torch.log(u[:candidates]) < 0.5 * x ** 2 + d - d * v + d * torch.log(v.clamp_min(1e-12)))
    first = accepted.float().argmax(0)                                       # the first accepted candidate
    value = torch.where(accepted.any(0), d * v.gather(0, first[None])[0], torch.full_like(v[0], d))
    return value * u[candidates] ** (1 / shape_parameter) if boost else value


def mixup(mel, targets, p, generator=None, alpha=0.5):
    """With probability p per sample, blend it with another sample of the batch by lam ~ Beta(alpha, alpha);
    targets blend alike."""
    n = len(mel)
    chosen = _chosen(n, p, generator, mel.device)
    if p <= 0:
        return mel, targets
    partner = torch.argsort(_uniform(n, generator, mel.device))            # a random permutation of the batch
    g1, g2 = _gamma(alpha, n, generator, mel.device), _gamma(alpha, n, generator, mel.device)
    lam = torch.where(chosen, g1 / (g1 + g2).clamp_min(1e-12), torch.ones_like(g1))
    mel = lam[:, None, None, None] * mel + (1 - lam[:, None, None, None]) * mel[partner]
    targets = lam[:, None] * targets + (1 - lam[:, None]) * targets[partner.to(targets.device)]
    return mel, targets


def _global_source(j, length, factor):
    """Where output position j (a float tensor) of an axis resized by `factor` (to round(length * factor)
    bins, then cropped or zero-padded back to `length`) reads the input, as F.interpolate(bilinear,
    align_corners=False) does; positions in the padding get nan."""
    resized = torch.round(length * factor).clamp_min(1)
    source = ((j + 0.5) * length / resized - 0.5).clamp(0, length - 1)
    return torch.where(j <= resized - 0.5, source, torch.full_like(source, float("nan")))


def _local_source(j, length, generator, factors, max_segments):
    """Where output position j (n, length) reads the input when the axis is cut into 2..max_segments random
    segments, each resized by its own factor, joined and cropped or zero-padded back (nan in the padding)."""
    n, device = j.shape[0], j.device
    u = _uniform((3, n, max_segments), generator, device)
    n_segments = 2 + (u[0, :, 0] * (max_segments - 1)).long()              # 2..max_segments
    cuts = 1 + (u[1, :, :max_segments - 1] * (length - 1)).long()           # in 1..length-1
    cuts = torch.where(torch.arange(max_segments - 1, device=device)[None] < (n_segments - 1)[:, None], cuts,
                       torch.full_like(cuts, length)).sort(1).values        # unused cuts at the end: empty segments
    bounds = torch.cat([torch.zeros_like(cuts[:, :1]), cuts, torch.full_like(cuts[:, :1], length)], 1)
    starts, sizes = bounds[:, :-1].float(), (bounds[:, 1:] - bounds[:, :-1]).float()
    resized = torch.where(sizes > 0, torch.round(sizes * (factors[0] + (factors[1] - factors[0]) * u[2]))
                          .clamp_min(1), torch.zeros_like(sizes))
    ends = resized.cumsum(1)
    k = torch.searchsorted(ends, j.contiguous(), right=True)                # the segment of each output position
    inside = k < max_segments
    k = k.clamp_max(max_segments - 1)
    start, size, out_start = starts.gather(1, k), sizes.gather(1, k), (ends - resized).gather(1, k)
    source = start + (j - out_start + 0.5) * size / resized.gather(1, k).clamp_min(1) - 0.5
    source = torch.minimum(torch.maximum(source, start), start + size - 1)
    return torch.where(inside, source, torch.full_like(source, float("nan")))


def _axis_source(length, n, global_chosen, local_chosen, generator, device, factors, max_segments):
    """(n, length) input positions read by each output position of one axis: the local stretch, then the global
    one (the order of their separate passes); nan for zero padding."""
    j = torch.arange(length, device=device, dtype=torch.float32).expand(n, length)
    global_factor = factors[0] + (factors[1] - factors[0]) * _uniform((n, 1), generator, device)
    position = torch.where(local_chosen[:, None], _local_source(j, length, generator, factors, max_segments), j)
    return torch.where(global_chosen[:, None], _global_source(position, length, global_factor), position)


def stretch(mel, global_chance=0.0, local_chance=0.0, generator=None, factors=(0.9, 1.1), max_segments=4):
    """Time and frequency stretching by resizing, then cropping or zero-padding back to the original size, as one
    grid_sample for the batch. Global (chance global_chance per sample): each axis resized by one random factor.
    Local (local_chance): each axis cut into 2..max_segments random segments, each resized by its own factor."""
    n, (h, w) = len(mel), mel.shape[-2:]
    global_chosen = _chosen(n, global_chance, generator, mel.device)
    local_chosen = _chosen(n, local_chance, generator, mel.device)
    if global_chance <= 0 and local_chance <= 0:
        return mel
    axes = [_axis_source(length, n, global_chosen, local_chosen, generator, mel.device, factors, max_segments)
            for length in (w, h)]
    # grid_sample's coordinates (align_corners=False): -1 and 1 are the outer edges; padding reads zeros
    x, y = [torch.nan_to_num((2 * source + 1) / length - 1, nan=2.0) for source, length in zip(axes, (w, h))]
    grid = torch.stack([x[:, None, :].expand(n, h, w), y[:, :, None].expand(n, h, w)], -1)
    stretched = F.grid_sample(mel, grid.to(mel.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    return torch.where((global_chosen | local_chosen)[:, None, None, None], stretched, mel)  # the rest exactly


@dataclass
class AugmentChances:
    """Probability of each augmentation per sample (the write-up's: flip, coarse dropout, mixup, time/freq stretch)."""
    flip: float = 0.5
    coarse_dropout: float = 0.3
    mixup: float = 0.5
    # time and frequency stretch: of segments of the image (local) or of the whole of it (global)
    local_stretch: float = 0.3
    global_stretch: float = 0.3


def augment(mel, targets, chances, generator=None):
    """The write-up's augmentations of a (B, 1, n_mels, frames) batch and its targets, each a few tensor
    operations for the whole batch, random numbers from `generator` (on the batch's device for a GPU)."""
    mel = stretch(mel, chances.global_stretch, chances.local_stretch, generator)
    mel = horizontal_flip(mel, chances.flip, generator)
    mel = coarse_dropout(mel, chances.coarse_dropout, generator)
    return mixup(mel, targets, chances.mixup, generator)
