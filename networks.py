"""The networks: a timm backbone (the write-up's EfficientNet-B0 by default) on a mel image, with the write-up's GeM
and 5 dropout heads, timm's plain head, or the 2025 podiums' SED head.

    from networks import MelModel, build_model
    model = build_model(config)       # (B, 1, n_mels, frames) mel -> (B, classes) logits (train.py's config.json)
    twin = model.inference_form((n_mels, frames))   # what export.py traces: a sed head gives (B, T, classes) frames

common.py re-exports them for the training scripts.
"""
import copy
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from errors import UserError
from tables import HEADS
from weights import BACKBONE, create_backbone, pretrained_for


class GeM(nn.Module):
    """Generalised mean pooling with learnable exponent p: (B, C, H, W) -> (B, C). p=1 is average pooling."""

    def __init__(self, p=3.0, eps=1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x):
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class AveragePool(nn.Module):
    """(B, C, H, W) -> (B, C) mean: timm's own global pooling."""

    def forward(self, x):
        return x.mean(dim=(2, 3))




class SEDHead(nn.Module):
    """Sound-event-detection head (the 2025 podiums'): (B, C, F, T) feature map -> GeM over frequency -> per frame
    dropout, Linear(C, hidden), ReLU, dropout -> `attention` and `classifier` 1x1 convolutions over time.

    frames(x) -> (B, T, classes) framewise logits; clip(x) -> ((B, classes) clipwise probability, the sum over time
    of softmax(tanh(attention)) x sigmoid(classifier), (B, T, classes) framewise logits), and the pooled features
    (B, C) (their mean over time) for distillation.
    """

    def __init__(self, in_features, n_classes, hidden=512, dropout=0.5, gem_p=3.0):
        super().__init__()
        self.p, self.eps = nn.Parameter(torch.ones(1) * gem_p), 1e-6
        self.dense = nn.Sequential(nn.Dropout(dropout / 2), nn.Linear(in_features, hidden), nn.ReLU(),
                                   nn.Dropout(dropout))
        self.attention = nn.Conv1d(hidden, n_classes, 1)
        self.classifier = nn.Conv1d(hidden, n_classes, 1)
        self.out_features = n_classes

    def pooled(self, x):
        """(B, C, F, T) -> (B, T, C): GeM over frequency."""
        return x.clamp(min=self.eps).pow(self.p).mean(dim=2).pow(1.0 / self.p).transpose(1, 2)

    def forward(self, per_frame):
        """(B, T, C) pooled features -> (clipwise probability (B, classes), framewise logits (B, T, classes))."""
        hidden = self.dense(per_frame).transpose(1, 2)             # (B, hidden, T)
        frames = self.classifier(hidden).float()                  # (B, classes, T)
        weights = torch.softmax(torch.tanh(self.attention(hidden).float()), dim=-1)
        return (weights * torch.sigmoid(frames)).sum(-1), frames.transpose(1, 2)


def sed_logits(clipwise, frames):
    """The SED head's two training outputs as one (B, 2, classes) logits tensor: logit of the clipwise probability,
    and the max over time of the framewise logits; a loss of LOSSES on it with the targets repeated is the mean of
    the loss on each (the 2025 1st place's 0.5 x clipwise + 0.5 x framewise max)."""
    eps = 1e-6
    return torch.stack([torch.logit(clipwise.clamp(eps, 1 - eps)), frames.amax(dim=1)], dim=1)


def timm_backbone(name, channels, pretrained):
    """timm's `name` without its classifier and pooling, (B, channels, H, W) -> (B, C, H', W'); pretrained: None,
    "timm" (timm's weights, downloaded once into its cache), a local weights file or a folder of them."""
    import timm
    kwargs = dict(num_classes=0, global_pool="", in_chans=channels)  # in_chans=1: timm sums the stem's RGB weights
    pretrained = pretrained_for(pretrained, name)  # a folder of make weights' files: this backbone's
    if pretrained == "timm":
        return create_backbone(name, **kwargs)
    if pretrained:  # a local file: pretrained_cfg_overlay points timm at it, nothing is downloaded
        if not os.path.isfile(pretrained):
            raise UserError(f"pretrained weights file not found: {pretrained}")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=os.path.abspath(pretrained)))
    return timm.create_model(name, **kwargs)


def feature_channels(backbone, name, image_size, channels):
    """Channels of the backbone's (B, C, H', W') feature map, from one forward of a zero image of the model's size;
    a backbone whose output is not such a map (a vision transformer's tokens, a fixed input size) is a UserError."""
    try:
        with torch.no_grad():
            was = backbone.training
            out = backbone.eval()(torch.zeros(1, channels, *image_size))
            backbone.train(was)
    except Exception as err:
        raise UserError(f"backbone {name} does not take a {image_size[0]}x{image_size[1]} mel image "
                        f"({(str(err).splitlines() or [type(err).__name__])[0][:120]}): choose a convolutional "
                        f"timm model") from None
    if out.dim() != 4:
        raise UserError(f"backbone {name} gives {tuple(out.shape)} features, not a (B, C, H, W) map the heads pool "
                        f"over frequency and time: choose a convolutional timm model") from None
    return int(out.shape[1])


class MelModel(nn.Module):
    """(B, 1, n_mels, frames) mel -> (B, n_classes) logits, over a timm backbone (default the write-up's
    EfficientNet-B0).

    The mel is resized to (image_height, image_width) inside the network (and repeated to 3 channels, the write-up's
    input; channels=1 feeds it as it is), so models that differ only in image size share one mel.
    head "gem5" (the write-up's): features -> GeM -> 5 dropout heads: in training the logits are
    the mean of one classifier applied to 5 differently dropped copies; in eval the dropouts are the identity and
    the 5 copies agree. head "plain": timm's own head, average pooling and one linear layer. head "sed": SEDHead;
    in training it gives (B, 2, classes) (sed_logits), in eval the max over time of its framewise logits, and with
    `framewise` set (the export's form) the framewise logits (B, T, classes) themselves.
    """

    def __init__(self, n_classes, image_height=256, image_width=256, pretrained=None,
                 dropout_rates=(0.1, 0.2, 0.3, 0.4, 0.5), gem_p=3.0, head="gem5", channels=3, head_dropout=0.0,
                 distill_dim=0, backbone=None):
        super().__init__()
        if head not in HEADS or channels not in (1, 3):
            raise UserError(f"head must be one of {', '.join(HEADS)} and channels 1 or 3, not {head!r}, {channels!r}")
        self.backbone_name = backbone or BACKBONE
        self.backbone = timm_backbone(self.backbone_name, channels, pretrained)
        self.image_size, self.channels, self.head_kind, self.n_classes = (image_height, image_width), channels, \
            head, n_classes
        # the write-up's backbone keeps its construction exactly as before (same runs); any other is measured
        features = self.backbone.num_features if self.backbone_name == BACKBONE else \
            feature_channels(self.backbone, self.backbone_name, self.image_size, channels)
        self.pool = GeM(gem_p) if head == "gem5" else AveragePool()
        # gem5: 5 dropout heads; plain: timm's head, one dropout of head_dropout (timm's drop_rate) when above 0
        rates = dropout_rates if head == "gem5" else [head_dropout] if head_dropout > 0 and head == "plain" else []
        self.dropouts = nn.ModuleList(nn.Dropout(r) for r in rates)
        if head == "sed":  # dropout 0.25 then 0.5 around the hidden layer (the 2025 1st place's), or head_dropout's
            self.head = SEDHead(features, n_classes, dropout=head_dropout if head_dropout > 0 else 0.5, gem_p=gem_p)
        else:
            self.head = nn.Linear(features, n_classes)
        if head == "plain":  # timm's init of its own head: uniform(+-1/sqrt(classes)), zero bias; torch's default
            # (+-1/sqrt(features)) starts the logits 1/30th as large, and the network then learnt slower from random
            # init and gained nothing from a pseudo-label round on the demos (bench/decide.py, docs/accuracy.md)
            bound = 1.0 / math.sqrt(n_classes)
            nn.init.uniform_(self.head.weight, -bound, bound)
            nn.init.zeros_(self.head.bias)
        # distillation: a linear map from the pooled features to the teacher's embedding, read only in training
        # (forward(mel, project=True)); the export traces forward(mel), so it leaves the projection out
        self.projection = nn.Linear(features, distill_dim) if distill_dim else None
        self.channels_last = False  # set on CUDA: NHWC convolutions are faster there
        self.framewise = False      # set by inference_form for the sed head: the export gives frames
        self.register_buffer("resize_rows", None, persistent=False)  # set by inference_form
        self.register_buffer("resize_cols", None, persistent=False)

    def inference_form(self, mel_shape):
        """An eval-mode float32 CPU copy for export, equal to this model on (n_mels, frames) = mel_shape mels,
        that runs faster on CPU (OpenVINO's Interpolate and 3-channel Concat were 14% of a 256x256 model):
        the bilinear resize becomes two fixed matrices (F.interpolate of identity columns: the same resize,
        since bilinear is separable), and the stem convolution's weights are summed over its 3 input channels,
        which all see the same image, so the network takes the 1-channel image as it is (where timm names the
        stem: pretrained_cfg's first_conv). A sed head gives its framewise logits (B, T, classes).
        """
        twin = copy.deepcopy(self).float().cpu().eval()
        twin.channels_last, twin.projection, twin.framewise = False, None, self.head_kind == "sed"
        stem = first_convolution(twin.backbone)
        if stem is not None and twin.channels == 3:
            stem.weight = nn.Parameter(stem.weight.detach().sum(1, keepdim=True), requires_grad=False)
            stem.in_channels = twin.channels = 1

        def resize_matrix(n_in, n_out):  # (n_out, n_in)
            return F.interpolate(torch.eye(n_in)[None, None], size=(n_out, n_in), mode="bilinear",
                                 align_corners=False)[0, 0]
        twin.resize_rows = resize_matrix(mel_shape[0], self.image_size[0])
        twin.resize_cols = resize_matrix(mel_shape[1], self.image_size[1]).T.contiguous()
        return twin

    def forward(self, mel, project=False):
        """(B, 1, n_mels, frames) -> logits; project=True: (logits, the features' projection to the teacher's
        embedding)."""
        if self.resize_rows is not None:  # inference_form: 1-channel stem
            x = self.resize_rows @ mel @ self.resize_cols
        else:
            x = F.interpolate(mel, size=self.image_size, mode="bilinear", align_corners=False)
        if self.channels == 3:
            x = torch.cat([x, x, x], dim=1)  # 3 channels (expand breaks OpenVINO conversion of the program)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.head_kind == "sed":
            per_frame = self.head.pooled(self.backbone(x))
            features = per_frame.mean(1)
            clipwise, frames = self.head(per_frame)
            if self.framewise:
                return frames
            logits = sed_logits(clipwise, frames) if self.training else frames.amax(dim=1)
        else:
            features = self.pool(self.backbone(x))
            if self.training and len(self.dropouts):
                logits = torch.stack([self.head(d(features)) for d in self.dropouts]).mean(0)
            else:
                logits = self.head(features)
        return (logits, self.projection(features)) if project else logits


def first_convolution(backbone):
    """The stem convolution that takes the image (timm's pretrained_cfg first_conv), or None."""
    name = (getattr(backbone, "pretrained_cfg", None) or {}).get("first_conv")
    try:
        module = backbone.get_submodule(name) if name else None
    except AttributeError:
        return None
    return module if isinstance(module, nn.Conv2d) else None


def build_model(config, pretrained=None):
    """The MelModel of a train.py config (config.json): size and, where the table gives them, backbone, head and
    window from the models table; the head (where the table leaves it), channels from the recipe (an older config
    without them: the write-up's)."""
    return MelModel(len(config["classes"]), int(config["image_height"]), int(config["image_width"]), pretrained,
                    head=config.get("head", "gem5"), channels=int(config.get("channels", 3)),
                    head_dropout=float(config.get("head_dropout", 0.0)), distill_dim=int(config.get("distill_dim", 0)),
                    backbone=config.get("backbone") or None)


def check_backbone(config):
    """A config's backbone, before anything trains: a timm model (else a UserError naming the closest timm names)
    whose features the heads can pool (feature_channels). The write-up's is not built: it always can."""
    name = config.get("backbone") or BACKBONE
    if name == BACKBONE:
        return
    import difflib
    import timm
    known = name in set(timm.list_pretrained()) if "." in name else timm.is_model(name)
    if not known:
        close = difflib.get_close_matches(name, timm.list_pretrained() if "." in name else timm.list_models(), n=3,
                                          cutoff=0.5)
        raise UserError(f"model {config['id']}: backbone {name!r} is no timm model" +
                        (f" (closest: {', '.join(close)})" if close else " (timm.list_models() lists them)"))
    channels = int(config.get("channels", 3))
    backbone = timm.create_model(name, pretrained=False, num_classes=0, global_pool="", in_chans=channels)
    feature_channels(backbone, name, (int(config["image_height"]), int(config["image_width"])), channels)
