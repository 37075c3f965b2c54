"""The backbone's starting weights: the write-up's ImageNet/JFT weights through timm (downloaded once into the Hugging
Face cache), a local file, or none.

    make weights     # python -c "import weights; weights.save_writeup_weights('work/weights/<BACKBONE>.pth')"
"""
import os

import torch

from errors import UserError
from files import atomic_write

BACKBONE = "tf_efficientnet_b0.ns_jft_in1k"   # the write-up's tf_efficientnet_b0_ns
WEIGHTS_FILE = f"{BACKBONE}.pth"   # what `make weights` writes into the work folder
PRETRAINED_CHOICES = "timm (the write-up's weights, downloaded once by timm), none (random init) or a weights file"


def pretrained_of(value):
    """--pretrained / PRETRAINED -> None (random init), "timm" or a local file path; checked before any data is
    read, so that a run that cannot get its weights stops at once."""
    if value in (None, "", "none"):
        return None
    if value == "timm":
        return value
    if not os.path.isfile(value):
        raise UserError(f"pretrained weights file not found: {value} (PRETRAINED is {PRETRAINED_CHOICES})")
    return value


def hub_reachable(timeout=3.0):
    """Whether the Hugging Face hub (timm's source of the write-up's weights; HF_ENDPOINT moves it) answers a TCP
    connection within `timeout` seconds. Offline, timm would retry for about a minute and print each retry."""
    import socket
    from urllib.parse import urlparse
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def create_writeup_backbone(**kwargs):
    """timm's BACKBONE with the write-up's ImageNet/JFT weights: downloaded once into timm's cache (the Hugging Face
    cache) when the hub answers, else taken from that cache; neither: one UserError that names both ways out."""
    import logging
    import timm
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or not hub_reachable()
    if offline:  # the cache only, without the hub's retries and their log lines
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            import huggingface_hub.constants as hub_constants
            hub_constants.HF_HUB_OFFLINE = True
        except ImportError:
            pass
    quiet = [logging.getLogger(name) for name in ("huggingface_hub", "timm", "urllib3")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.CRITICAL)
    try:
        return timm.create_model(BACKBONE, pretrained=True, **kwargs)
    except Exception as err:
        reason = "the Hugging Face hub is unreachable and they are not in its local cache" if offline else \
            (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"cannot get the write-up's weights ({BACKBONE}): {reason}; either run `make weights` where "
                        f"there is internet and pass PRETRAINED=<work>/weights/{WEIGHTS_FILE} (train.py "
                        f"--pretrained FILE), or train from random init with PRETRAINED=none") from None
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)


def save_writeup_weights(path):
    """Fetch the write-up's weights (as train.py --pretrained timm does) and write them to `path` (written under a
    temporary name, then renamed), for an offline box: train.py --pretrained FILE reads this file."""
    backbone = create_writeup_backbone(num_classes=1000)  # the checkpoint's own layout, classifier included
    atomic_write(path, lambda tmp: torch.save(backbone.state_dict(), tmp))
    print(f"{path}: the write-up's weights ({BACKBONE}); train with PRETRAINED={path}")
