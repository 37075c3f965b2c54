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
import glob
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from augmentations import AugmentChances
from common import (HEADS, LOSSES, NORMALIZATIONS, SAMPLE_RATE, MelFrontEnd, PseudoWindows, TrainingSet,
                    check_backbone, window_seconds_of,
                    build_model, load_split, mel_settings_of, predict, n_batches, split_summary)
from steps import (DeviceTrainingSet, GraphedStep, amp_dtype_of, amp_on, cache_on_device, make_optimizer,
                   make_scaler, precision_line, train_step, uses_cuda_graph)
from tables import MODEL_COLUMNS, ROW_OVER_RECIPE, CachePaths, backbones_of, kebab, load_classes, read_models_table
from flags import HelpFormatter, SHARED, add_flag
from progress import progress
from errors import UserError, run_main
from files import atomic_write, file_digest, save_json
from metrics import all_metrics
from weights import PRETRAINED_CHOICES, pretrained_for, pretrained_of
from devices import claim_gpu, gpu_ids, pick_device
import disk

# defaults: the write-up's recipe
models = "models.csv"
cache = "work/cache"
work = "work"
epochs = 50
batch_size = 64
lr = 1e-3                 # peak learning rate
warmup_epochs = 3         # linear warm-up, then cosine annealing to zero
weight_decay = 1e-2
soup_start_of_50 = 13     # the write-up soups epochs 13-50; scaled to other epoch counts
threads = os.cpu_count() or 2
progress_every = 20       # steps between the progress bar's loss readings (each one waits for the device)
# the recipe's parts that are not in the models table (the write-up's; where it is silent, what measured best)
head = "gem5"             # GeM pooling + 5 dropout heads; plain: timm's average pooling + one linear layer
channels = 3              # the mel image repeated to 3 channels; 1: fed as it is
loss = "bce-focal"        # mean of BCE and focal loss; bce: BCE only
optimizer = "adamw"       # adamw; sgd (nesterov, momentum 0.9)
schedule = "cosine"       # linear warm-up then cosine; onecycle: torch's OneCycleLR
onecycle_warmup = 0.3     # onecycle's share of warm-up steps (torch's default pct_start)
head_dropout = 0.0        # the plain head's dropout (the gem5 head has five of its own)
n_fft, f_min, f_max = 2048, 20.0, 16000.0
normalize = "minmax"      # each mel image to [0, 1]; standard: mean 0 / std 1 (the write-up is silent; measured best)
time_shift_seconds = 0.5  # seconds: each sample rolled by up to +-this (the write-up is silent; measured best)
site_share = 0.1          # the site's labelled windows' share of an epoch's samples (where the dataset has them)
site_mix_chance = 0.0     # the chance that a sample is mixed with one of them (as with a pseudo-labelled window)
distill = 0.0             # weight of the teacher-embedding loss (1 - cosine); 0: off (needs --teacher-embeddings)
pretrained = "timm"       # the write-up fine-tunes tf_efficientnet_b0_ns (ImageNet/JFT weights); none: random init

# presets: other defaults for the flags (and the models table's columns); a flag given on the command line wins
AUGMENTATIONS_OFF = {f"aug_{name}": 0.0 for name in vars(AugmentChances())}
# the one-file baseline's recipe (an independent recogniser the project is held against: docs/accuracy.md) but
# for the models table's columns: small, plain, trained on every file, the last epoch, from random init
BASELINE_RECIPE = dict(head="plain", channels=1, loss="bce", optimizer="sgd", schedule="onecycle", lr=0.1,
                       weight_decay=5e-4, batch_size=32, f_min=50.0, f_max=14000.0, normalize="standard",
                       time_shift=0.5, fold="all", soup_start=-1, pretrained="none", **AUGMENTATIONS_OFF)
PRESETS = {
    "writeup": {},
    # the one-file baseline's whole recipe: its one model's mel and image size too
    "baseline": dict(BASELINE_RECIPE, n_mels=64, hop_length=1250, image_height=64, image_width=128),
    # make demo's: the recipe whose pseudo-label round paid on every demo of bench/decide.py, on a models table
    # that keeps the write-up's diversity (mel settings, image sizes, pseudo-label chances): docs/accuracy.md
    "demo": BASELINE_RECIPE,
}
RECIPE = ("head", "channels", "loss", "optimizer", "schedule", "n_fft", "f_min", "f_max", "normalize", "time_shift",
          "head_dropout")


def add_recipe_flags(p):
    """The recipe's parts that are not in the models table: optimiser, schedule, head, loss, mel, augmentations."""
    add_flag(p, "--epochs", default=epochs)
    add_flag(p, "--batch-size", default=batch_size)
    p.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    p.add_argument("--warmup-epochs", type=float, default=warmup_epochs, help="linear warm-up, then cosine")
    p.add_argument("--weight-decay", type=float, default=weight_decay, help="AdamW weight decay")
    add_flag(p, "--soup-start")
    p.add_argument("--head", default=head, choices=HEADS, help="gem5: GeM pooling + 5 dropout heads "
                   "(the write-up's); plain: timm's average pooling + one linear layer")
    p.add_argument("--channels", type=int, default=channels, choices=[1, 3], help="image channels: the mel "
                   "repeated to 3 (the write-up's) or fed as 1")
    p.add_argument("--loss", default=loss, choices=list(LOSSES), help="mean of BCE and focal loss (the "
                   "write-up's), or BCE only")
    p.add_argument("--optimizer", default=optimizer, choices=["adamw", "sgd"], help="AdamW, or SGD (nesterov, "
                   "momentum 0.9)")
    p.add_argument("--schedule", default=schedule, choices=["cosine", "onecycle"], help="cosine: linear warm-up "
                   "(--warmup-epochs) then cosine to 0; onecycle: torch's OneCycleLR peaking at --lr")
    p.add_argument("--onecycle-warmup", type=float, default=onecycle_warmup, help="share of the steps that warm "
                   "up under --schedule onecycle (torch's pct_start)")
    p.add_argument("--head-dropout", type=float, default=head_dropout, help="dropout before the plain head's "
                   "linear layer (timm's drop_rate); the gem5 head has its own five")
    p.add_argument("--n-fft", type=int, default=n_fft, help="STFT size")
    p.add_argument("--f-min", type=float, default=f_min, help="lowest mel frequency (Hz)")
    p.add_argument("--f-max", type=float, default=f_max, help="highest mel frequency (Hz)")
    p.add_argument("--normalize", default=normalize, choices=NORMALIZATIONS, help="each mel image scaled "
                   "to [0, 1], or to mean 0 / std 1")
    p.add_argument("--time-shift", type=float, default=time_shift_seconds, help="seconds: each training sample is "
                   "rolled by a random shift of up to +-this (0: off)")
    p.add_argument("--pretrained", default=pretrained, help=f"the backbone's starting weights: {PRETRAINED_CHOICES}. "
                   "Offline, timm's cache or a file from `make weights`")
    for name, value in vars(AugmentChances()).items():
        p.add_argument(f"--aug-{name.replace('_', '-')}", type=float, default=value, help="chance per sample")


def add_table_flags(p):
    """A flag per column of the models table, to override its value (kebab-case, and the table's own name)."""
    notes = dict(fold="a fold of n_folds held out for validation, or 'all': train on every row, no validation; the "
                 "soup then averages every epoch from the soup start on", pseudoLabelChance="percent, as in the "
                 "write-up's table")
    for column, kind in MODEL_COLUMNS.items():  # --pseudo-label-chance, also --pseudoLabelChance (the table's name)
        if column != "id":
            names = list(dict.fromkeys([f"--{kebab(column)}", f"--{column}"]))
            if names[0] in SHARED:  # --seed: a random seed in every script
                add_flag(p, names[0], dest=column, aliases=names[1:])
            else:
                p.add_argument(*names, dest=column, type=kind, help="override the models table's value"
                               + (f" ({notes[column]})" if column in notes else ""))


def parse_args(argv=None):
    checking = "--check" in (sys.argv[1:] if argv is None else argv)  # make's check of its settings: one line

    def one_line(message):
        raise UserError(f"train.py's flags (make's TRAIN_ARGS, EPOCHS, PRETRAINED, KEEP_EPOCHS): {message}")
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--preset", default="writeup", choices=list(PRESETS))
    if checking:
        first.error = one_line
    preset = first.parse_known_args(argv)[0].preset
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--preset", default="writeup", choices=list(PRESETS), help="a set of defaults for the flags "
                   "below (--help after it shows them): writeup = the write-up's recipe, demo = make demo's, baseline = "
                   "the one-file baseline's recipe (1 channel, plain head, BCE, SGD one-cycle, standardised 64x128 mels, time "
                   "shift, no augmentation, every file)")
    add_flag(p, "--model")
    add_flag(p, "--check")  # the models table (every row), these flags, --pretrained
    p.add_argument("--round", type=int, default=1, help="cycle round (names the default output folder)")
    add_flag(p, "--models", default=models)
    add_flag(p, "--cache", default=cache)
    add_flag(p, "--work", default=work)
    p.add_argument("--out-dir", help="output folder (default <work>/round<R>/model<ID>)")
    p.add_argument("--pseudo", help="pseudo-label file from pseudo.py (rounds 2 and 3)")
    p.add_argument("--pl-power", type=float, default=1.0, help="the pseudo labels raised to this power before they "
                   "are mixed in (make's PL_POWER); above 1 sharpens them (confident windows count more); 1: as written")
    add_flag(p, "--distill", default=distill)
    p.add_argument("--teacher-embeddings", help="teacher.py's embeddings of the cache's windows "
                   "(<teacher>.embeddings.npz), for --distill")
    add_recipe_flags(p)
    add_flag(p, "--threads", default=threads)
    add_flag(p, "--device", default="auto")
    p.add_argument("--cycle-rounds", type=int, default=3, help="the cycle's number of rounds (make's ROUNDS; the "
                   "write-up's 3): a job that starts afresh checks that WORK's disk holds what this and the later "
                   "rounds will save")
    add_flag(p, "--keep-epochs", default="all")
    p.add_argument("--gpus", help="GPUs that a round's models share, e.g. 0,1,2,3 (make GPUS=...): this job "
                   "claims one that no other job holds (waiting while all are held) and takes --threads divided by "
                   "their number")
    p.add_argument("--amp", default="auto", choices=["auto", "on", "off"], help="mixed precision: auto = on for "
                   "CUDA; on also runs CPU autocast (bfloat16; tests the same code path)")
    p.add_argument("--amp-dtype", default="auto", choices=["auto", "bfloat16", "float16"], help="autocast's type: "
                   "auto = bfloat16 on GPUs with it in hardware (compute capability 8.0 and up) and on CPU, float16 "
                   "with gradient scaling on older GPUs (T4, V100, P100; their steps run eagerly)")
    p.add_argument("--loader-workers", default="auto", help="threads that build batches ahead: auto = 0 on CPU "
                   "(the step is the bottleneck and needs the cores), min(8, cores) on a GPU")
    p.add_argument("--cache-on-device", default="auto", choices=["auto", "on", "off"], help="hold the training "
                   "audio and pseudo-labelled windows in the device's memory and build batches there (auto: on a GPU "
                   "whose free memory holds them twice over; on CPU, on runs the same code)")
    p.add_argument("--compile", default="off", choices=["off", "on"], help="torch.compile the network (the "
                   "first steps of each image shape pay the compilation)")
    p.add_argument("--cuda-graph", default="auto", choices=["auto", "on", "off"], help="replay each training step "
                   "(augmentations, forward, backward, AdamW) from one captured CUDA graph: the host launches one "
                   "graph instead of a thousand kernels. auto: on for one process on a GPU with bfloat16 autocast "
                   "(not with float16, --compile on, --optimizer sgd or --schedule onecycle); on CPU, on runs the same code "
                   "eagerly (tests)")
    p.add_argument("--max-train-files", type=int, help="use only this many training rows (quick runs)")
    p.add_argument("--site-share", type=float, default=site_share, help="the site's labelled training windows "
                   "(where prep cached them) as samples of their own: about this share of each epoch's samples, "
                   "each window dealt a whole number of times, once at least; 0: not")
    p.add_argument("--site-mix-chance", type=float, default=site_mix_chance, help="the chance that a sample is "
                   "mixed with one of the site's labelled windows, as with a pseudo-labelled window (target: the "
                   "max of both); 0: not")
    add_table_flags(p)
    p.set_defaults(**PRESETS[preset])
    if checking:
        p.error = one_line
    args = p.parse_args(argv)
    if args.model is None and not args.check:
        p.error("the following arguments are required: --model")
    return args


def model_config(args):
    """The table row with command-line overrides applied."""
    table = read_models_table(args.models)
    if args.model not in table.index:
        raise UserError(f"model {args.model} is not in {args.models} (ids: {', '.join(map(str, table.index))})")
    config = table.loc[args.model].to_dict()
    # the row's head and mel settings where it gives them, before the recipe's flags of the same names apply
    from_row = {k: config[k] for k in ROW_OVER_RECIPE if config.get(k) not in (None, "")}
    for key in config:
        if getattr(args, key, None) is not None:
            config[key] = getattr(args, key)
    config = {k: (v.item() if hasattr(v, "item") else v) for k, v in config.items()}
    if config["dataset"] not in ("bc24", "bc24+"):
        raise UserError(f"dataset must be bc24 (competition data) or bc24+ (plus --extra files), "
                        f"not {config['dataset']}")
    config["fold"] = str(config["fold"]).strip()
    if config["fold"] != "all" and not (config["fold"].isdigit() and int(config["fold"]) < int(config["n_folds"])):
        raise UserError(f"fold must be 0..{int(config['n_folds']) - 1} or all, not {config['fold']!r}")
    chance = float(config["pseudoLabelChance"])
    if not 0 <= chance <= 100:
        raise UserError(f"pseudoLabelChance is a percent (the write-up's 35 means 35 %), 0 to 100, not {chance:g}")
    config["pseudoLabelChance"] = chance / 100
    config.update({name: getattr(args, name) for name in RECIPE})
    config.update({k: type(getattr(args, k))(v) for k, v in from_row.items()})  # the recipe's where the row is empty
    if args.distill:  # the projection's size: the teacher's embedding's
        config["distill_dim"] = int(read_teacher_embeddings(args.teacher_embeddings, args.cache)["train"].shape[1])
    return config


def read_teacher_embeddings(path, cache):
    """{train, unlabeled, site}: a teacher's float16 embeddings of the cache's windows (teacher.py), rows in the
    order of the cache's tables; one line where the file is missing or was made from another cache."""
    if not path or not os.path.isfile(path):
        raise UserError(f"--distill needs the teacher's embeddings: {path or '--teacher-embeddings'} does not exist "
                        f"(make teacher writes them beside TEACHER)")
    with np.load(path) as f:
        got = {k: f[k] for k in f.files}
    paths = CachePaths(cache)
    tables = [("rows_digest", paths.rows), ("unlabeled_digest", paths.unlabeled_rows)]
    if len(got["site"]):
        tables.append(("site_digest", paths.site_labels))
    for key, table in tables:
        if not os.path.isfile(table) or str(got[key]) != file_digest(table):
            raise UserError(f"{path} was made from another cache than {cache} ({os.path.basename(table)} differs): "
                            f"make teacher again")
    return got


def lr_factor(step, warmup_steps, total_steps):
    """Linear warm-up to 1, then cosine annealing to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def input_signature(args, config):
    """What a run's results depend on: the settings and the content of the training rows, class list and pseudo
    labels (digests). Paths, file times, threads, the device and the number of processes (the batch is global,
    so the schedule is the same on any) are not part of it: a copied or moved work folder resumes and is reused,
    and a run resumes on another number of GPUs."""
    cache = CachePaths(args.cache)
    where = ("threads", "device", "out_dir", "work", "cache", "pseudo", "models", "round", "pretrained", "gpus",
             "loader_workers", "compile", "cache_on_device", "cuda_graph", "amp_dtype",
             "cycle_rounds", "keep_epochs", "teacher_embeddings")
    settings = {k: v for k, v in vars(args).items() if k not in where}
    pretrained = args.pretrained and (file_digest(args.pretrained) if os.path.isfile(args.pretrained)
                                      else args.pretrained)
    signature = dict(config=config, settings=settings, pretrained=pretrained,
                     rows=file_digest(cache.rows), classes=file_digest(cache.classes),
                     pseudo=args.pseudo and [file_digest(args.pseudo), file_digest(cache.unlabeled_rows)])
    # the site's labelled windows count where they train; a cache without them keeps its runs' identity
    share, mix_chance = settings.pop("site_share", 0), settings.pop("site_mix_chance", 0)
    if (share > 0 or mix_chance > 0) and os.path.isfile(cache.site_audio):
        signature.update(site=file_digest(cache.site_labels), **({"site_share": share} if share > 0 else {}),
                         **({"site_mix_chance": mix_chance} if mix_chance > 0 else {}))
    if settings.pop("pl_power", 1.0) != 1.0:  # as distillation: the identity changes only where the labels do
        signature.update(pl_power=args.pl_power)
    if settings.pop("distill", 0):  # a run without distillation keeps the identity it had before the setting
        signature.update(distill=args.distill, teacher_embeddings=file_digest(args.teacher_embeddings))
    return json.loads(json.dumps(signature, default=str))


TRAINED_FILES = ("train_done.json", "last.pt", "metrics.csv", "epochs", "soup.pt", "soup.json", "export")


def run_state(out_dir, inputs):
    """'done' (finished on these inputs), 'resume' (last.pt of these inputs), 'fresh' (nothing there), or
    'other' (work of other inputs: it must be moved aside, never deleted)."""
    done_path, last_path = os.path.join(out_dir, "train_done.json"), os.path.join(out_dir, "last.pt")
    if os.path.exists(done_path):
        with open(done_path) as f:
            return "done" if json.load(f).get("inputs") == inputs else "other"
    if os.path.exists(last_path):
        state = torch.load(last_path, map_location="cpu", weights_only=False)
        return "resume" if state.get("inputs") == inputs else "other"
    return "other" if any(os.path.exists(os.path.join(out_dir, f)) for f in TRAINED_FILES) else "fresh"


def move_aside(out_dir):
    """Rename a run of other inputs to <out_dir>.replaced-N (the first free N) and say so; returns the name."""
    n = 1
    while os.path.exists(f"{out_dir.rstrip('/')}.replaced-{n}"):
        n += 1
    aside = f"{out_dir.rstrip('/')}.replaced-{n}"
    os.replace(out_dir, aside)
    print(f"{out_dir}: holds a run of other settings or inputs; moved it to {aside} (delete it when you no "
          f"longer need it)", flush=True)
    return aside


@dataclass
class Processes:
    """Where this process trains: its device, its rank among torchrun's processes (0 of 1 without torchrun)."""
    device: torch.device
    rank: int = 0
    world_size: int = 1
    distributed: bool = False
    gpu_lock: object = None   # the lock file of the GPU this job claimed (make GPUS=...), held until the end

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def close(self):
        if self.distributed:
            dist.destroy_process_group()


def set_up_processes(args):
    """The device (with make GPUS=...: a GPU no other job holds, and this job's share of the CPU threads) and,
    under torchrun, the process group: one process per device, gradients averaged by DDP."""
    gpu_lock = None
    if args.gpus:
        gpu, gpu_lock = claim_gpu(args.gpus)
        args.device = f"cuda:{gpu}"
        args.threads = max(1, args.threads // len(gpu_ids(args.gpus)))
        print(f"model {args.model}: GPU {gpu} (claimed: no other job trains on it), {args.threads} CPU threads",
              flush=True)
    procs = Processes(pick_device(args.device), distributed=int(os.environ.get("WORLD_SIZE", "1")) > 1,
                      gpu_lock=gpu_lock)
    if procs.distributed:
        dist.init_process_group("nccl" if procs.device.type == "cuda" else "gloo")
        procs.rank, procs.world_size = dist.get_rank(), dist.get_world_size()
        if procs.device.type == "cuda":
            procs.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(procs.device)
    if args.batch_size % procs.world_size:
        raise UserError(f"--batch-size {args.batch_size} is the batch of all {procs.world_size} processes "
                        f"together: make it a multiple of {procs.world_size}")
    torch.set_num_threads(max(1, args.threads))
    if procs.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN times its kernels once and keeps the fastest
    return procs


def claim_run_folder(args, config, procs):
    """The run's folder and state ('done', 'resume' or 'fresh'): a run of other inputs is moved aside (never
    deleted), and a run of these inputs moved aside before is taken back. Returns (out_dir, inputs, state)."""
    out_dir = args.out_dir or os.path.join(args.work, f"round{args.round}", f"model{args.model}")
    cache = CachePaths(args.cache)
    for path in (cache.audio, cache.rows, cache.classes) + ((args.pseudo,) if args.pseudo else ()):
        if not os.path.isfile(path):
            raise UserError(f"file not found: {path}" + ("" if path == args.pseudo else " (run make prep first)"))
    inputs = input_signature(args, config)
    state = run_state(out_dir, inputs)  # every rank reads it before rank 0 changes anything
    procs.barrier()
    if state == "other" and procs.rank == 0:
        move_aside(out_dir)
        earlier = [d for d in sorted(glob.glob(f"{out_dir.rstrip('/')}.replaced-*"))
                   if run_state(d, inputs) in ("done", "resume")]
        if earlier:  # a run of these very inputs was moved aside before: take it back
            os.replace(earlier[-1], out_dir)
            print(f"{out_dir}: took back {earlier[-1]}, a run of these settings and inputs", flush=True)
    procs.barrier()
    return out_dir, inputs, run_state(out_dir, inputs)  # after a run was moved aside or taken back


@dataclass
class Training:
    """What one epoch needs: the model (and its DDP wrapper), the mel, the data, the optimiser and schedule."""
    model: torch.nn.Module
    trained: torch.nn.Module   # the model, or its DistributedDataParallel wrapper
    mel: torch.nn.Module
    data: dict
    dataset: TrainingSet
    chances: AugmentChances
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    amp: bool
    amp_dtype: torch.dtype
    graphed: bool              # steps replay a CUDA graph (GraphedStep)
    steps_per_epoch: int
    soup_start: int
    graph_step: object = None  # the GraphedStep, captured once and replayed in every epoch
    distill: float = 0.0       # the teacher-embedding loss's weight (steps.device_step reads it)
    distill_loss: object = None  # that loss of the last step, a device tensor


def build_training(args, config, procs, graphed=False):
    """Model (the write-up's weights first: offline without them it stops before any data is read), data,
    optimiser, schedule and gradient scaler."""
    device, seed = procs.device, int(config["seed"])
    torch.manual_seed(seed)
    classes = load_classes(CachePaths(args.cache).classes)
    model = build_model(dict(config, classes=classes), pretrained=args.pretrained).to(device)
    # NHWC convolutions: faster on CUDA and about 2x faster on CPU here (bench/train_speed.py)
    model = model.to(memory_format=torch.channels_last)
    model.channels_last = True
    data = load_split(args.cache, config, args.max_train_files, args.site_share, args.site_mix_chance)
    if procs.rank == 0:
        print(split_summary(data, config), flush=True)
    pseudo = PseudoWindows(args.cache, args.pseudo, data["classes"], args.pl_power, window_seconds_of(config)) \
        if args.pseudo else None
    embeddings = teacher_embeddings_of(args, data, pseudo) if args.distill else None
    dataset = TrainingSet(data["audio"], data["targets"], data["train"], pseudo, config["pseudoLabelChance"],
                          (config["ampExpMin"], config["ampExpMax"]), seed, data["site"], data["site_mix_chance"],
                          embeddings)
    if cache_on_device(args.cache_on_device, dataset, device):
        dataset = DeviceTrainingSet(dataset, device)
        if procs.rank == 0:
            print(f"model {args.model}: the training audio and pseudo-labelled windows in {device}'s memory "
                  f"({DeviceTrainingSet.bytes_needed(dataset) / 1e9:.1f} GB)", flush=True)
    optimizer = make_optimizer(args.optimizer, model, args.lr, args.weight_decay, device, graphed)
    steps_per_epoch = n_batches(len(dataset), args.batch_size)  # the same for any number of processes
    total_steps = steps_per_epoch * args.epochs
    if args.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total_steps,
                                                        pct_start=args.onecycle_warmup)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, int(args.warmup_epochs * steps_per_epoch), total_steps))
    amp = amp_on(args, device)
    amp_dtype = amp_dtype_of(device, args.amp_dtype)[0]
    scaler = make_scaler(device, amp, amp_dtype)
    soup_start = max(1, args.epochs + 1 + args.soup_start) if args.soup_start and args.soup_start < 0 \
        else args.soup_start or max(1, round(args.epochs * soup_start_of_50 / 50))
    trained = model if not procs.distributed else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None)
    if args.compile == "on":  # the graph compiled once per image shape; the weights stay `model`'s
        trained = torch.compile(trained)
    chances = AugmentChances(**{k: getattr(args, f"aug_{k}") for k in vars(AugmentChances())})
    return Training(model, trained, MelFrontEnd(mel_settings_of(config)).to(device), data, dataset, chances,
                    optimizer, scheduler, scaler, amp, amp_dtype, graphed, steps_per_epoch, soup_start,
                    distill=args.distill)


def teacher_embeddings_of(args, data, pseudo):
    """The teacher's embeddings aligned with what training reads: one row per row of data["audio"] (the
    recordings, then the site's windows where they are samples of their own), and on each mixed-in set of
    windows (pseudo-labelled, the site's) theirs."""
    teacher = read_teacher_embeddings(args.teacher_embeddings, args.cache)
    embeddings = teacher["train"]
    if data["site_repeats"]:  # load_split stacked the site's training windows (or clips of them) after the recordings
        embeddings = np.concatenate([embeddings, teacher["site"][data["site_rows"]]])
    if pseudo is not None:  # a W-s clip: its first window's
        pseudo.embeddings = teacher["unlabeled"][pseudo.source_rows].astype(np.float32)
    if data["site"] is not None:
        data["site"].embeddings = teacher["site"][data["site"].source_rows].astype(np.float32)
    return embeddings


def check_disk_for_the_cycle(args, run, out_dir):
    """Before a fresh run trains: WORK's disk against what this run and every model run after it to the last
    round will save (disk.check_cycle)."""
    table = read_models_table(args.models)
    to_go = [(r, i) for r in range(args.round, max(args.round, args.cycle_rounds) + 1) for i in table.index
             if not os.path.isfile(os.path.join(args.work, f"round{r}", f"model{i}", "soup.json"))]
    weights = sum(t.numel() * t.element_size() for t in run.model.state_dict().values())
    disk.check_cycle(os.path.dirname(os.path.abspath(out_dir)), max(1, len(to_go)),
                     args.epochs - run.soup_start + 1, weights, args.keep_epochs,
                     len(gpu_ids(args.gpus)) if args.gpus else 1)


def resume(run, last_path, device):
    """(first epoch, history so far): after the last complete epoch of last.pt, else (1, [])."""
    if not os.path.exists(last_path):
        return 1, []
    state = torch.load(last_path, map_location=device, weights_only=False)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    print(f"resuming {os.path.dirname(last_path)} at epoch {state['epoch'] + 1}")
    return state["epoch"] + 1, state["history"]


def train_one_epoch(run, args, config, procs, epoch):
    """One pass over this rank's batches; returns the mean training loss (read from the device once, at the end;
    the progress bar reads it every progress_every steps)."""
    device, seed = procs.device, int(config["seed"])
    # dropout and augmentations repeat exactly after a resume; each rank draws its own, on its own device
    torch.manual_seed(seed * 1000 + epoch + 7919 * procs.rank)
    generator = torch.Generator(device=device).manual_seed(seed * 1000 + epoch + 7919 * procs.rank)
    workers = (0 if device.type == "cpu" else min(8, os.cpu_count() or 1)) if args.loader_workers == "auto" \
        else int(args.loader_workers)
    shift_samples = int(round(args.time_shift * SAMPLE_RATE))
    loss_function = LOSSES[args.loss]
    if run.graphed:  # on CPU one warm-up step is enough to reach the captured path
        if run.graph_step is None:  # replays draw from the default generator, reseeded above each epoch
            run.graph_step = GraphedStep(run, shift_samples, loss_function, warmup=3 if device.type == "cuda" else 1)
        step = run.graph_step
    else:
        def step(waves, targets):
            return train_step(run, waves, targets, generator, shift_samples, loss_function, run.amp_dtype)
    run.trained.train()
    loss_sum, distill_sum, steps = torch.zeros((), device=device), torch.zeros((), device=device), 0
    batches = run.dataset.epoch(epoch, args.batch_size, procs.rank, procs.world_size, workers,
                                pin=device.type == "cuda")
    bar = progress(batches, total=run.steps_per_epoch, desc=f"model {args.model} epoch {epoch}/{args.epochs}",
               unit="batch", disable=procs.rank != 0)
    for waves, targets in bar:
        waves, targets = waves.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        loss_sum += step(waves, targets)
        if run.distill:
            distill_sum += run.distill_loss  # before the next step (a graph replay) overwrites it
        steps += 1
        if steps % progress_every == 0 or steps == run.steps_per_epoch:
            bar.set_postfix(loss=f"{float(loss_sum) / steps:.4f}", refresh=False)
    return float(loss_sum) / max(1, steps), float(distill_sum) / max(1, steps)


def validate_and_save(run, args, procs, epoch, losses, seconds, history, out_dir, inputs):
    """Validation metrics of the epoch (a row of metrics.csv), the epoch's weights from the soup start on, and
    last.pt (everything a resume needs), each written under a temporary name and renamed."""
    probs = predict(run.model, run.mel, run.data["audio"], procs.device, amp=run.amp, rows=run.data["valid"])
    valid_targets = run.data["targets"][run.data["valid"]]
    valid_loss = float(LOSSES[args.loss](torch.logit(torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6)),
                                         torch.from_numpy(valid_targets))) if len(probs) else float("nan")
    train_loss, distill_loss = losses
    distilled = dict(distill_loss=distill_loss) if run.distill else {}  # the teacher-embedding part of train_loss
    row = dict(epoch=epoch, train_loss=train_loss, **distilled, valid_loss=valid_loss, **all_metrics(valid_targets, probs),
               lr=run.optimizer.param_groups[0]["lr"], seconds=round(seconds, 2))
    history.append(row)
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if epoch >= run.soup_start:
        atomic_write(os.path.join(out_dir, "epochs", f"epoch_{epoch:03d}.pt"),
                     lambda tmp: torch.save(run.model.state_dict(), tmp))
    atomic_write(os.path.join(out_dir, "metrics.csv"), lambda tmp: pd.DataFrame(history).to_csv(tmp, index=False))
    atomic_write(os.path.join(out_dir, "last.pt"), lambda tmp: torch.save(dict(
        model=run.model.state_dict(), optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
        scaler=run.scaler.state_dict(), epoch=epoch, history=history, inputs=inputs), tmp))


def finish(run, args, procs, history, out_dir, inputs):
    """train_done.json (the inputs, the best epoch); last.pt goes, the epochs stay for the soup."""
    best = max(history, key=lambda r: r["auc"]) if history else None
    save_json(dict(inputs=inputs, epochs=args.epochs, soup_start=run.soup_start, best=best,
                   world_size=procs.world_size, steps=run.scheduler.last_epoch),
              os.path.join(out_dir, "train_done.json"))
    last_path = os.path.join(out_dir, "last.pt")
    if os.path.exists(last_path):
        os.remove(last_path)  # optimizer state is only needed to resume; the epochs stay for the soup


def check_run(args):
    """--check: every row of the models table with these flags applied, and the starting weights, as training would
    read them (a UserError, one line, at the first wrong one); the teacher's embeddings are made later, not read."""
    if not args.pl_power > 0:
        raise UserError(f"--pl-power must be above 0, not {args.pl_power:g}")
    table = read_models_table(args.models)
    configs = [model_config(argparse.Namespace(**dict(vars(args), model=int(model), distill=0.0)))
               for model in table.index]
    for config in configs:
        check_backbone(config)
    pretrained = pretrained_of(args.pretrained)
    backbones = backbones_of(table)
    if pretrained and os.path.isfile(pretrained) and len(backbones) > 1:
        raise UserError(f"--pretrained {pretrained} is one backbone's weights, and {args.models} names "
                        f"{len(backbones)} ({', '.join(backbones)}): pass the folder make weights writes")
    for name in backbones:
        pretrained_for(pretrained, name)
    print(f"checked: the {len(table)} models of {args.models}, the recipe's flags and --pretrained {args.pretrained}",
          flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.check:
        return check_run(args)
    config = model_config(args)
    args.pretrained = pretrained_of(args.pretrained)
    procs = set_up_processes(args)
    graphed = uses_cuda_graph(args, procs.device, procs.distributed, amp_dtype_of(procs.device, args.amp_dtype)[0])
    if procs.rank == 0:
        print(precision_line(args, procs.device, graphed), flush=True)
    out_dir, inputs, state = claim_run_folder(args, config, procs)
    if state == "done":
        print(f"{out_dir}: already trained on the same inputs ({os.path.join(out_dir, 'train_done.json')})")
        return procs.close()
    run = build_training(args, config, procs, graphed)
    if state != "resume" and procs.rank == 0:
        check_disk_for_the_cycle(args, run, out_dir)
    start_epoch, history = resume(run, os.path.join(out_dir, "last.pt"), procs.device) if state == "resume" \
        else (1, [])
    if procs.rank == 0:
        save_json(dict(config, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       soup_start=run.soup_start, pseudo=args.pseudo, mel_settings=vars(mel_settings_of(config)),
                       augment=vars(run.chances), classes=run.data["classes"]), os.path.join(out_dir, "config.json"))
    for epoch in range(start_epoch, args.epochs + 1):
        began = time.time()
        losses = train_one_epoch(run, args, config, procs, epoch)
        if procs.rank == 0:
            validate_and_save(run, args, procs, epoch, losses, time.time() - began, history, out_dir, inputs)
    if procs.rank == 0:
        finish(run, args, procs, history, out_dir, inputs)
    procs.close()


if __name__ == "__main__":
    run_main(main)
