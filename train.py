"""Train one model (one row of a models table) on prep.py's cache, saving every soup-able epoch.

    python train.py --model 4 --round 1
    python train.py --model 1 --round 2 --pseudo work/pseudo1.npz --device cuda
    python train.py --model 4 --models models-demo.csv --epochs 2 --threads 2 --out-dir /tmp/m4
    torchrun --nproc_per_node 2 train.py --model 4 --round 1

Writes into --out-dir (default <work>/round<R>/model<ID>): metrics.csv (one row per epoch: train and valid loss,
LRAP, cMAP, F1, AUC, lr, seconds), epochs/epoch_NNN.pt (weights of each epoch from the soup start on),
last.pt (everything needed to resume), config.json, and train_done.json when finished. A rerun after a crash
resumes from the last complete epoch; a finished run is not redone.
"""
import argparse
import contextlib
import json
import math
import os
import shutil
import time

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

from common import (AugmentChances, BirdNet, CachePaths, HelpFormatter, MelFrontEnd, MelSettings, PseudoWindows,
                    TrainingSet, UserError, all_metrics, assign_folds, atomic_write, augment, bce_focal_loss,
                    load_classes, read_models_table, run_main, save_json, target_matrix)

# defaults: the seed's recipe
models = "models.csv"
cache = "work/cache"
work = "work"
epochs = 50
batch_size = 64
lr = 1e-3                 # peak learning rate
warmup_epochs = 3         # linear warm-up, then cosine annealing to zero
weight_decay = 1e-2
soup_start_of_50 = 13     # the seed soups epochs 13-50; scaled to other epoch counts
threads = os.cpu_count() or 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", type=int, required=True, help="id of the row in the models table")
    p.add_argument("--round", type=int, default=1, help="cycle round (names the default output folder)")
    p.add_argument("--models", default=models, help="models table (the seed's 2nd-stage table)")
    p.add_argument("--cache", default=cache, help="prep.py's cache folder")
    p.add_argument("--work", default=work, help="root of the default output folder")
    p.add_argument("--out-dir", help="output folder (default <work>/round<R>/model<ID>)")
    p.add_argument("--pseudo", help="pseudo-label file from pseudo.py (rounds 2 and 3)")
    p.add_argument("--epochs", type=int, default=epochs, help="training epochs (no early stopping)")
    p.add_argument("--batch-size", type=int, default=batch_size, help="samples per step (per process)")
    p.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    p.add_argument("--warmup-epochs", type=float, default=warmup_epochs, help="linear warm-up, then cosine")
    p.add_argument("--weight-decay", type=float, default=weight_decay, help="AdamW weight decay")
    p.add_argument("--soup-start", type=int, help=f"first epoch saved for the soup (default: {soup_start_of_50} "
                   "of 50, scaled to --epochs)")
    p.add_argument("--threads", type=int, default=threads, help="CPU threads for torch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--pretrained", help="local file of ImageNet weights for the backbone (never downloaded)")
    p.add_argument("--max-train-files", type=int, help="use only this many training rows (quick runs)")
    for column, kind in (("seed", int), ("n_folds", int), ("fold", int), ("dataset", str), ("n_mels", int),
                         ("hop_length", int), ("image_height", int), ("image_width", int),
                         ("pseudoLabelChance", float), ("ampExpMin", float), ("ampExpMax", float)):
        p.add_argument(f"--{column}", type=kind, help="override the models table's value")
    for name, value in vars(AugmentChances()).items():
        p.add_argument(f"--aug-{name.replace('_', '-')}", type=float, default=value, help="chance per sample")
    return p.parse_args(argv)


def model_config(args):
    """The table row with command-line overrides applied."""
    table = read_models_table(args.models)
    if args.model not in table.index:
        raise UserError(f"model {args.model} is not in {args.models} (ids: {', '.join(map(str, table.index))})")
    config = table.loc[args.model].to_dict()
    for key in config:
        if getattr(args, key, None) is not None:
            config[key] = getattr(args, key)
    config = {k: (v.item() if hasattr(v, "item") else v) for k, v in config.items()}
    if config["dataset"] not in ("bc24", "bc24+"):
        raise UserError(f"dataset must be bc24 (competition data) or bc24+ (plus --extra files), "
                        f"not {config['dataset']}")
    chance = float(config["pseudoLabelChance"])
    config["pseudoLabelChance"] = chance / 100 if chance > 1 else chance  # the table says 35 (%)
    return config


def lr_factor(step, warmup_steps, total_steps):
    """Linear warm-up to 1, then cosine annealing to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked, but torch sees no CUDA device")
    return torch.device(name)


def predict(model, mel, waves, device, batch=64, amp=False):
    """Sigmoid probabilities of model over (N, samples) float waveforms, in batches."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(waves), batch):
            x = torch.as_tensor(np.asarray(waves[start:start + batch], dtype=np.float32)).to(device)
            images = mel(x)  # float32 outside autocast: fp16 power overflows (as in training)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                out.append(torch.sigmoid(model(images).float()).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.head.out_features), np.float32)


def load_split(cache_dir, config, max_train_files=None):
    """Training rows, validation rows (the model's fold, competition data only), audio memmap, targets."""
    paths = CachePaths(cache_dir)
    for f in (paths.audio, paths.rows, paths.classes):
        if not os.path.isfile(f):
            raise UserError(f"cache file missing: {f} (run prep.py / make prep first)")
    rows = pd.read_csv(paths.rows)
    classes = load_classes(paths.classes)
    audio = np.load(paths.audio, mmap_mode="r")
    targets = target_matrix(rows, classes)
    usable = np.flatnonzero(rows["source"].eq("base") | (config["dataset"] == "bc24+"))
    folds = np.full(len(rows), -1)
    folds[usable] = assign_folds(rows["primary_label"].values[usable], int(config["n_folds"]), int(config["seed"]))
    valid = np.flatnonzero((folds == int(config["fold"])) & rows["source"].eq("base").values)
    train = np.setdiff1d(usable, valid)
    if max_train_files:
        train = np.random.default_rng(int(config["seed"])).permutation(train)[:max_train_files]
    return dict(rows=rows, classes=classes, audio=audio, targets=targets, train=np.sort(train), valid=valid)


def input_signature(args, config):
    """What a finished run depends on: settings and the identity (size, mtime) of the cache and pseudo labels.

    A rerun with the same signature is skipped; a changed one (new pseudo labels from `make`) trains again.
    """
    def identity(path):
        return [os.path.abspath(path), os.path.getsize(path), os.stat(path).st_mtime_ns] if path else None
    settings = {k: v for k, v in vars(args).items() if k not in ("threads", "device", "out_dir", "work")}
    return json.loads(json.dumps(dict(config=config, settings=settings, cache=identity(CachePaths(args.cache).rows),
                                      pseudo=identity(args.pseudo)), default=str))


def clear_run(out_dir, keep_last=True):
    """Remove a previous run's results (not last.pt unless asked: it may be a resumable run of these inputs)."""
    for name in ("train_done.json", "metrics.csv", "soup.json") + (() if keep_last else ("last.pt",)):
        with contextlib.suppress(FileNotFoundError):  # under torchrun every rank clears
            os.remove(os.path.join(out_dir, name))
    if not keep_last:
        shutil.rmtree(os.path.join(out_dir, "epochs"), ignore_errors=True)


def main(argv=None):
    args = parse_args(argv)
    config = model_config(args)
    out_dir = args.out_dir or os.path.join(args.work, f"round{args.round}", f"model{args.model}")
    done_path = os.path.join(out_dir, "train_done.json")
    inputs = input_signature(args, config)
    if os.path.exists(done_path):
        with open(done_path) as f:
            if json.load(f).get("inputs") == inputs:
                print(f"{out_dir}: already trained on the same inputs ({done_path})")
                return
        print(f"{out_dir}: inputs changed since the last run; training again")
        clear_run(out_dir, keep_last=False)
    else:
        clear_run(out_dir)

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world_size = 0, 1
    device = pick_device(args.device)
    if distributed:  # torchrun: one process per device, gradients averaged by DDP
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world_size = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    torch.set_num_threads(max(1, args.threads))
    seed = int(config["seed"])
    torch.manual_seed(seed)

    data = load_split(args.cache, config, args.max_train_files)
    pseudo = None
    if args.pseudo:
        if not os.path.isfile(args.pseudo):
            raise UserError(f"pseudo-label file not found: {args.pseudo}")
        pseudo = PseudoWindows(args.cache, args.pseudo, data["classes"])
    dataset = TrainingSet(data["audio"], data["targets"], data["train"], pseudo, config["pseudoLabelChance"],
                          (config["ampExpMin"], config["ampExpMax"]), seed)
    chances = AugmentChances(**{k: getattr(args, f"aug_{k}") for k in vars(AugmentChances())})
    mel_settings = MelSettings(n_mels=int(config["n_mels"]), hop_length=int(config["hop_length"]))
    mel = MelFrontEnd(mel_settings).to(device)
    model = BirdNet(len(data["classes"]), int(config["image_height"]), int(config["image_width"]),
                    pretrained=args.pretrained).to(device)
    amp = device.type == "cuda"  # mixed precision on CUDA
    # NHWC convolutions: faster on CUDA and about 2x faster on CPU here (bench/train_speed.py)
    model = model.to(memory_format=torch.channels_last)
    model.channels_last = True
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = max(1, len(dataset) // world_size // args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, int(args.warmup_epochs * steps_per_epoch), total_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    soup_start = args.soup_start or max(1, round(args.epochs * soup_start_of_50 / 50))

    start_epoch, history = 1, []
    last_path = os.path.join(out_dir, "last.pt")
    state = torch.load(last_path, map_location=device, weights_only=False) if os.path.exists(last_path) else None
    if state is not None and state.get("inputs") != inputs:
        print(f"{out_dir}: last.pt was trained on other inputs; starting over")
        clear_run(out_dir, keep_last=False)
        state = None
    if state is not None:  # resume after the last complete epoch
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        print(f"resuming {out_dir} at epoch {start_epoch}")
    if rank == 0:
        save_json(dict(config, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       soup_start=soup_start, pseudo=args.pseudo, mel_settings=vars(mel_settings),
                       augment=vars(chances), classes=data["classes"]), os.path.join(out_dir, "config.json"))
    trained = model
    if distributed:
        trained = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if amp else None)

    for epoch in range(start_epoch, args.epochs + 1):
        began = time.time()
        torch.manual_seed(seed * 1000 + epoch)  # dropout and augmentations repeat exactly after a resume
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        trained.train()
        losses = []
        bar = tqdm(dataset.epoch(epoch, args.batch_size, rank, world_size), total=steps_per_epoch,
                   desc=f"model {args.model} epoch {epoch}/{args.epochs}", unit="batch", disable=rank != 0)
        for waves, targets in bar:
            waves, targets = waves.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with torch.no_grad():
                images, targets = augment(mel(waves), targets, chances, generator)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                loss = bce_focal_loss(trained(images), targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        if rank != 0:
            continue
        probs = predict(model, mel, data["audio"][data["valid"]], device, amp=amp)
        valid_targets = data["targets"][data["valid"]]
        valid_loss = float(bce_focal_loss(torch.logit(torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6)),
                                          torch.from_numpy(valid_targets))) if len(probs) else float("nan")
        row = dict(epoch=epoch, train_loss=float(np.mean(losses)), valid_loss=valid_loss,
                   **all_metrics(valid_targets, probs), lr=optimizer.param_groups[0]["lr"],
                   seconds=round(time.time() - began, 2))
        history.append(row)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if epoch >= soup_start:
            atomic_write(os.path.join(out_dir, "epochs", f"epoch_{epoch:03d}.pt"),
                         lambda tmp: torch.save(model.state_dict(), tmp))
        atomic_write(os.path.join(out_dir, "metrics.csv"), lambda tmp: pd.DataFrame(history).to_csv(tmp, index=False))
        atomic_write(last_path, lambda tmp: torch.save(dict(
            model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict(), epoch=epoch, history=history, inputs=inputs), tmp))
    if rank == 0:
        best = max(history, key=lambda r: r["auc"]) if history else None
        save_json(dict(inputs=inputs, epochs=args.epochs, soup_start=soup_start, best=best), done_path)
        if os.path.exists(last_path):
            os.remove(last_path)  # optimizer state is only needed to resume; the epochs stay for the soup
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    run_main(main)
