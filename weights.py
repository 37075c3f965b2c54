"""The backbones' starting weights: timm's pretrained weights (the write-up's ImageNet/JFT ones for its
EfficientNet-B0), downloaded once into the Hugging Face cache; a local file or a folder of them; or none.

    make weights                                        # every backbone of MODELS into WORK/weights
    python weights.py --models models-2025.csv --out work/weights   # the same; then PRETRAINED=work/weights
"""
import argparse
import os

import torch

from errors import UserError, run_main
from flags import HelpFormatter
from files import atomic_write
from tables import WRITEUP_BACKBONE as BACKBONE

PRETRAINED_CHOICES = ("timm (timm's weights, downloaded once), none (random init), a weights file, or a folder of "
                      "<backbone>.pth files (make weights)")


def pretrained_of(value):
    """--pretrained / PRETRAINED -> None (random init), "timm" or a local file path; checked before any data is
    read, so that a run that cannot get its weights stops at once."""
    if value in (None, "", "none"):
        return None
    if value == "timm":
        return value
    if not os.path.exists(value):
        raise UserError(f"pretrained weights file or folder not found: {value} (PRETRAINED is {PRETRAINED_CHOICES})")
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


def create_backbone(name=BACKBONE, **kwargs):
    """timm's `name` with its pretrained weights (the write-up's ImageNet/JFT ones for its backbone): downloaded
    once into timm's cache (the Hugging Face cache) when the hub answers, else taken from that cache; neither: one
    UserError that names the backbone and both ways out."""
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
    quiet = [logging.getLogger(n) for n in ("huggingface_hub", "timm", "urllib3")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.CRITICAL)
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as err:
        reason = "the Hugging Face hub is unreachable and they are not in its local cache" if offline else \
            (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"cannot get the pretrained weights of {name}: {reason}; either run `make weights` where "
                        f"there is internet and pass PRETRAINED=<work>/weights (train.py --pretrained FOLDER), or "
                        f"train from random init with PRETRAINED=none") from None
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)


def weights_file(folder, name):
    """The file `make weights` writes for backbone `name` in `folder`: <folder>/<name>.pth."""
    return os.path.join(folder, f"{name}.pth")


def pretrained_for(pretrained, name):
    """One backbone's starting weights from --pretrained's value (pretrained_of's): None, "timm", a file (as given)
    or, for a folder, the backbone's file in it; a folder without it is one UserError naming both."""
    if pretrained and os.path.isdir(pretrained):
        path = weights_file(pretrained, name)
        if not os.path.isfile(path):
            raise UserError(f"no weights for backbone {name} in {pretrained}: {path} is missing (make weights "
                            f"MODELS=<your table> writes one file per backbone)")
        return path
    return pretrained


def save_weights(name, path):
    """Fetch backbone `name`'s pretrained weights (as train.py --pretrained timm does) and write them to `path`
    (under a temporary name, then renamed), for an offline box: train.py --pretrained FOLDER reads this file."""
    backbone = create_backbone(name)  # the checkpoint's own layout, classifier included
    atomic_write(path, lambda tmp: torch.save(backbone.state_dict(), tmp))
    print(f"{path}: the pretrained weights of {name}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--models", default="models.csv", help="the models table: every backbone it names (its "
                        f"backbone column; a row without one: {BACKBONE})")
    parser.add_argument("--out", default="work/weights", help="the folder of <backbone>.pth files")
    args = parser.parse_args(argv)
    from tables import backbones_of, read_models_table
    for name in backbones_of(read_models_table(args.models)):
        path = weights_file(args.out, name)
        if os.path.isfile(path):
            print(f"{path}: already there")
        else:
            save_weights(name, path)
    print(f"train offline with PRETRAINED={args.out}")


if __name__ == "__main__":
    run_main(main)
