"""Pseudo-label the unlabeled 5-s windows that training draws from (prep's window cache) with one round's ensemble.

    python pseudo.py --ensemble work/round1/ensemble --cache work/cache --out work/pseudo1.npz
    python pseudo.py --ensemble work/round2/ensemble --cache work/cache --out work/pseudo2.npz --device cuda
    torchrun --nproc_per_node 4 pseudo.py --ensemble work/round1/ensemble --cache work/cache --out work/pseudo1.npz
    python pseudo.py --ensemble work/round1/ensemble --soundscapes data/site --out site.npz   # every window of files

Reads the ensemble (a folder from `soup.py bundle`) and the cache's unlabeled_windows.npy/.csv: the audio of the
windows training mixes in, so nothing is decoded and a round costs what the cache holds, not what the site
recorded. The label of a window is the mean of the models' sigmoid probabilities, then normalized per class
over the labelled windows (the write-up added a normalization in stage 2 because the pseudo labels' floor had grown
too large): --pl-norm floor (default) maps each class's median to 0 and keeps 1 at 1; minmax rescales each
class to [0, 1]; none keeps raw probabilities (docs/accuracy.md: what each did on bench/decide.py's demos).

Engines: on CPU, infer.py's (the exported networks, fastest installed backend, one STFT per n_fft); with
--device cuda (the default where CUDA is available) the round's soups run as torch models on the GPU in large
batches, with AMP, behind the same mel front end. Under torchrun the windows are split across ranks in whole
batches, and rank 0 writes the merged file. --soundscapes labels every window of the given files instead (for
inspection or a user's own use; off the training path).

Writes --out (.npz, atomically): paths (soundscape of each row), end_seconds (5, 10, ...), probs (rows x classes,
float32), classes, raw_floor (each class's median before normalization, for report.py). With the cache, one row
per cached window, in the cache's order.
"""
import argparse
import dataclasses
import json
import os

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

import infer
from common import build_model, MelFrontEnd, MelSettings, WINDOW_SECONDS
from tables import CachePaths, load_classes
from flags import HelpFormatter, add_flag
from progress import progress
from errors import UserError, run_main
from files import atomic_write, read_npy_rows
from devices import pick_device
from threads import ordered_map

# defaults
threads = os.cpu_count() or 2
pl_norm = "floor"          # removes the floor that grows from round to round (the write-up's "normalization")
batch_windows = 256        # windows per batch: a GPU's batch; on CPU infer.py's engine splits it further
PL_NORMALIZATIONS = ("floor", "minmax", "none")
teacher_weight = 1.0       # a covered class's label: max(ensemble's, weight * teacher's) (bench/teacher_blend.py)


def normalize_pseudo_labels(probs, how):
    """Per-class normalization over all labelled windows.

    none: as is. minmax: each class rescaled to [0, 1] (a constant class becomes 0). floor: each class's
    median (its floor: most windows hold no call of a given species) becomes 0 and 1 stays 1, so the
    floor that grows from round to round is removed without turning weak guesses into confident ones.
    """
    if how not in PL_NORMALIZATIONS:
        raise UserError(f"unknown pseudo-label normalization {how!r} ({', '.join(PL_NORMALIZATIONS)})")
    if how == "none":
        return probs
    if how == "floor":
        floor = np.median(probs, axis=0, keepdims=True)
        return np.clip((probs - floor) / np.maximum(1 - floor, 1e-6), 0, 1).astype(np.float32)
    low, high = probs.min(0, keepdims=True), probs.max(0, keepdims=True)
    return np.where(high > low, (probs - low) / np.maximum(high - low, 1e-12), 0.0).astype(np.float32)


def read_teacher(path, classes):
    """A teacher's label file (teacher.py) -> {(path, end_second): row}, (windows, classes) probs aligned to
    `classes` by name, and the covered flag of each of `classes` (a class the teacher lacks is not covered)."""
    if not os.path.isfile(path):
        raise UserError(f"teacher labels not found: {path} (make teacher writes them)")
    labels = np.load(path, allow_pickle=False)
    if "covered" not in labels:
        raise UserError(f"{path} is not a teacher's file (no 'covered' flags): teacher.py writes one")
    column = {str(c): i for i, c in enumerate(labels["classes"])}
    index = np.asarray([column.get(str(c), -1) for c in classes])
    covered = (index >= 0) & labels["covered"][np.maximum(index, 0)]
    probs = np.zeros((len(labels["probs"]), len(classes)), dtype=np.float32)
    probs[:, covered] = labels["probs"][:, index[covered]]
    rows = {(str(p), int(e)): i for i, (p, e) in enumerate(zip(labels["paths"], labels["end_seconds"]))}
    return rows, probs, covered


def blend_teacher(probs, paths, end_seconds, classes, teacher_path, weight):
    """Labels (windows x classes) with a teacher blended in: for the classes it covers, on the windows it scored,
    max(ours, weight * teacher's); every other label stays ours. The teacher can raise a label, up to `weight`
    times its own score, never lower it: where it misses a species (a class it covers by name but does not know)
    our label stands. Measured against a weighted mean on real birds: bench/teacher_blend.py, README."""
    rows, teacher, covered = read_teacher(teacher_path, classes)
    if not 0 <= weight <= 1:
        raise UserError(f"--teacher-weight must be in [0, 1], not {weight:g}")
    found = np.asarray([rows.get((str(p), int(e)), -1) for p, e in zip(paths, end_seconds)])
    hit = found >= 0
    blended = probs.copy()
    if covered.any() and hit.any():
        cols = np.flatnonzero(covered)
        ours = blended[np.ix_(hit, cols)]
        blended[np.ix_(hit, cols)] = np.maximum(ours, weight * teacher[found[hit]][:, cols])
    print(f"teacher {teacher_path}: blended into {int(covered.sum())} of {len(classes)} classes on {int(hit.sum())} "
          f"of {len(probs)} windows (weight {weight:g}); the other labels are the ensemble's")
    return blended


def write_labels(out, paths, end_seconds, raw, classes, how, covered=None, teacher=None,
                 teacher_weight=teacher_weight):
    """Normalise raw (windows x classes) probabilities, blend in a teacher's labels if given, and write the
    pseudo-label file, atomically. `covered` (one flag per class) marks a teacher's own file (teacher.py).

    The one writer of the format: every producer of pseudo labels (the ensemble here, a teacher model) calls it.
    """
    probs = normalize_pseudo_labels(np.asarray(raw, dtype=np.float32), how)
    if teacher:
        probs = blend_teacher(probs, paths, end_seconds, classes, teacher, teacher_weight)
    extra = {} if covered is None else dict(covered=np.asarray(covered, dtype=bool))

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, paths=np.asarray(paths, dtype=str), end_seconds=np.asarray(end_seconds, dtype=np.int64),
                     probs=probs, classes=np.asarray(classes, dtype=str),
                     raw_floor=np.median(raw, axis=0).astype(np.float32), **extra)
    atomic_write(out, write)
    print(f"{out}: {len(probs)} windows of {len(set(paths))} soundscapes, mean label {probs.mean():.4f} ({how})")


# ----------------------------------------------------------------------------------------------------------
# engines: (B, samples) float32 waveforms -> (B, classes) mean sigmoid probabilities


def chosen_members(available, members):
    """The members that label: all of `available` (the manifest's model names) when `members` is empty, else
    those named in `members` (a comma-separated string), checked: an unknown name is a one-line error."""
    if not members:
        return list(available)
    chosen = [m.strip() for m in members.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in available]
    if unknown or not chosen:
        raise UserError(f"--members {members!r}: not in the ensemble ({', '.join(unknown)}); "
                        f"its models: {', '.join(available)}")
    return chosen


class ExportedEngine:
    """infer.py's engine on CPU: the exported networks with the fastest installed backend."""

    def __init__(self, models_dir, backend, n_threads, members=None):
        self.networks, self.front_end, self.classes, self.backend = infer.load_ensemble(models_dir, backend,
                                                                                        n_threads)
        if members:  # only the chosen networks, and only the mels they read
            keep = chosen_members([n.name for n in self.networks], members)
            self.networks = [n for n in self.networks if n.name in keep]
            self.front_end = infer.FrontEnd([n.mel_settings for n in self.networks],
                                            [n.window_seconds for n in self.networks])

    def __call__(self, waves, run_ids=None):
        """(B, samples) tensor, float16 as cached -> (B, classes) mean probabilities. A network of W > 5 s scores
        each run of consecutive windows (run_ids: the same id for the windows of one run; prep caches runs of the
        table's longest window) as infer.py scores a file: W-s windows centred on each 5-s row, its frames on the
        run's timeline (silence around the run)."""
        waves = waves.float()
        mels = self.front_end(waves)
        probs = [infer.network_probs(n, mels) for n in self.networks if n.window_seconds == WINDOW_SECONDS]
        long = [n for n in self.networks if n.window_seconds > WINDOW_SECONDS]
        if long:
            run_ids = np.arange(len(waves)) if run_ids is None else np.asarray(run_ids)
            runs = np.split(np.arange(len(waves)), np.flatnonzero(np.diff(run_ids)) + 1)
            lengths = sorted({n.window_seconds for n in long})
            run_mels = [self.front_end.of_audio(waves[r].reshape(-1).numpy(), len(r), lengths) for r in runs]
            for n in long:
                probs.append(np.concatenate([infer.network_probs(n, mels) for mels in run_mels]))
        return np.mean(probs, axis=0)


def soup_dirs(models_dir, members=None):
    """The model folders an ensemble was bundled from (those of `members` only, when given): beside the ensemble
    folder (a moved work folder keeps working), else where the manifest says they were."""
    with open(os.path.join(models_dir, "manifest.json")) as f:
        manifest = json.load(f)
    keep = chosen_members(manifest["models"], members)
    found = []
    for source, name in zip(manifest.get("sources") or [None] * len(manifest["models"]), manifest["models"]):
        if name not in keep:
            continue
        beside = os.path.join(os.path.dirname(os.path.abspath(models_dir)), name)
        for folder in (beside, source):
            if folder and os.path.isfile(os.path.join(folder, "soup.pt")):
                found.append(folder)
                break
        else:
            raise UserError(f"{models_dir}: the soup of {name} is not beside it nor at {source}; "
                            f"--device cpu uses the exported networks instead")
    return found


class SoupEngine:
    """The round's soups as torch models on a device (a GPU; the same code runs on CPU for the tests): one mel
    per distinct setting, computed in float32, the networks under AMP (float16 autocast) on CUDA."""

    def __init__(self, soups, device):
        """soups: [(train.py's config, its model)]."""
        self.device, self.amp = device, device.type == "cuda"
        self.models, self.front_ends = [], {}
        for config, model in soups:
            model = model.to(device).eval()
            if self.amp:  # NHWC convolutions are faster on CUDA
                model = model.to(memory_format=torch.channels_last)
                model.channels_last = True
            settings = MelSettings(**config["mel_settings"])
            self.front_ends.setdefault(settings.key, MelFrontEnd(settings).to(device).eval())
            self.models.append((settings.key, model))
            self.classes = [str(c) for c in config["classes"]]

    @classmethod
    def of_ensemble(cls, models_dir, device, members=None):
        """The soups an ensemble folder was bundled from (of `members` only, when given)."""
        soups = []
        for folder in soup_dirs(models_dir, members):
            with open(os.path.join(folder, "config.json")) as f:
                config = json.load(f)
            model = build_model(config)
            model.load_state_dict(torch.load(os.path.join(folder, "soup.pt"), map_location="cpu"))
            soups.append((config, model))
        return cls(soups, device)

    def __call__(self, waves):
        """(B, samples) tensor, float16 as cached -> (B, classes) mean probabilities. The batch crosses to the
        device as float16 from pinned memory (half the bytes, no wait) and becomes float32 there."""
        with torch.no_grad():
            if self.device.type == "cuda":
                waves = waves.pin_memory()
            waves = waves.to(self.device, non_blocking=True).float()
            mels = {key: front_end(waves) for key, front_end in self.front_ends.items()}  # float32, no autocast
            total = 0
            for key, model in self.models:
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                    total = total + torch.sigmoid(model(mels[key]).float())
        return (total / len(self.models)).cpu().numpy()


# ----------------------------------------------------------------------------------------------------------
# the runs


def label_windows(engine, audio_path, rows, batch=batch_windows, show=True, run_ids=None):
    """(len(rows), classes) probabilities of the windows `rows` (ascending, in runs of whole batches) of the
    (M, samples) float16 .npy file, read and scored a batch at a time: memory holds one batch of audio. run_ids
    (one per row of the file): which windows are consecutive audio of one file, for networks of W > 5 s."""
    def read(start):  # on a thread, a batch ahead of the engine
        part = rows[start:start + batch]
        return torch.from_numpy(np.ascontiguousarray(read_npy_rows(audio_path, int(part[0]), int(part[-1]) + 1)
                                                     [part - part[0]])), part
    starts = range(0, len(rows), batch)
    out = [engine(waves) if run_ids is None else engine(waves, run_ids[part])
           for waves, part in progress(ordered_map(read, starts, n_threads=1, ahead=2), total=len(starts),
                                       desc="pseudo-label batches", unit="batch", disable=not show)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def run_ids_of(table):
    """One id per row of the cache's unlabeled_windows.csv, the same for consecutive windows of one file."""
    path_code, ends = pd.factorize(table["path"])[0], table["end_second"].to_numpy()
    return np.cumsum(np.r_[True, (path_code[1:] != path_code[:-1]) | (ends[1:] != ends[:-1] + WINDOW_SECONDS)])


def rank_batches(n_rows, batch, rank, world_size):
    """The rows of this rank: whole batches k with k % world_size == rank, so that every window is scored in
    the same batch whatever the number of processes (the merged file equals a single process's)."""
    starts = range(rank * batch, n_rows, world_size * batch)
    return np.concatenate([np.arange(s, min(s + batch, n_rows)) for s in starts]) if len(starts) \
        else np.zeros(0, dtype=np.int64)


def pseudo_label(models_dir, cache, out, how=pl_norm, n_threads=threads, backend="auto", device="cpu",
                 batch=batch_windows, teacher=None, teacher_weight=teacher_weight, members=None):
    """Label every window of the cache's unlabeled_windows.npy and write `out` (see the module docstring);
    `members` (comma-separated model names) labels with those of the ensemble only."""
    paths_of = CachePaths(cache)
    for path in (paths_of.unlabeled_rows, paths_of.unlabeled_audio, paths_of.classes):
        if not os.path.isfile(path):
            raise UserError(f"cache file missing: {path} (run make prep first)")
    table = pd.read_csv(paths_of.unlabeled_rows)
    if len(table) == 0:
        raise UserError(f"{paths_of.unlabeled_rows} lists no unlabeled window to pseudo-label")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world_size = 0, 1
    device = pick_device(device)
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world_size = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    torch.set_num_threads(max(1, n_threads))
    long = [spec["name"] for spec in infer.read_specs(models_dir)
            if int(spec.get("window_seconds", WINDOW_SECONDS)) > WINDOW_SECONDS]
    if device.type == "cuda" and long:
        print(f"pseudo.py: {', '.join(long)} score windows longer than 5 s, which the GPU engine does not: the "
              f"exported networks label on the CPU", flush=True)
    engine = SoupEngine.of_ensemble(models_dir, device, members) if device.type == "cuda" and not long \
        else ExportedEngine(models_dir, backend, n_threads, members)
    if engine.classes != load_classes(paths_of.classes):
        raise UserError(f"{models_dir}: the ensemble's classes differ from the cache's")
    n_audio = len(np.load(paths_of.unlabeled_audio, mmap_mode="r"))
    if n_audio != len(table):
        raise UserError(f"{paths_of.unlabeled_audio} has {n_audio} windows, its table {len(table)}: run make prep")
    rows = rank_batches(len(table), batch, rank, world_size)
    probs = label_windows(engine, paths_of.unlabeled_audio, rows, batch, show=rank == 0, run_ids=run_ids_of(table))
    if distributed:
        parts = [None] * world_size
        dist.all_gather_object(parts, (rows, probs))
        dist.destroy_process_group()
        if rank != 0:
            return
        rows = np.concatenate([p[0] for p in parts])
        probs = np.concatenate([p[1] for p in parts if len(p[1])] or [np.zeros((0, len(engine.classes)), np.float32)])
        probs = probs[np.argsort(rows, kind="stable")]
    write_labels(out, table["path"].tolist(), table["end_second"].tolist(), probs, engine.classes, how,
                 teacher=teacher, teacher_weight=teacher_weight)


def pseudo_label_soundscapes(models_dir, folder, out, how=pl_norm, n_threads=threads, backend="auto"):
    """Every 5-s window of every audio file in `folder`, through infer.py's run (decoding included)."""
    files = infer.list_audio(folder)
    if not files:
        raise UserError(f"no audio files in {folder}")
    torch.set_num_threads(max(1, n_threads))
    engine = ExportedEngine(models_dir, backend, n_threads)
    # whole files: the ensemble's shifted windows and boost toward the file's maximum apply; the smoothing stays off,
    # as on the cache's windows (isolated windows, where none of the three applies: no neighbours, file or audio
    # around them)
    pp = dataclasses.replace(infer.read_post_processing(models_dir), kernel=(1.0,))
    results = infer.predict_files(files, engine.networks, engine.front_end, budget_s=None, pp=pp).probs
    names, ends, blocks = [], [], []
    for path in files:
        if results[path] is None:  # unreadable: infer.py warned; its windows get no pseudo label
            continue
        names += [path] * len(results[path])
        ends += [(w + 1) * WINDOW_SECONDS for w in range(len(results[path]))]
        blocks.append(results[path])
    if not blocks:
        raise UserError(f"no file in {folder} could be decoded")
    write_labels(out, names, ends, np.concatenate(blocks), engine.classes, how)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_flag(p, "--ensemble")
    add_flag(p, "--cache", default="work/cache")
    add_flag(p, "--soundscapes")
    add_flag(p, "--out", required=True)
    p.add_argument("--pl-norm", default=pl_norm, choices=PL_NORMALIZATIONS,
                   help="per class over all windows: floor maps the median to 0 and keeps 1 at 1; minmax rescales "
                   "to [0, 1]; none keeps raw probabilities")
    add_flag(p, "--threads", default=threads)
    add_flag(p, "--device", default="auto")
    add_flag(p, "--backend", default="auto")
    add_flag(p, "--batch-size", default=batch_windows)
    p.add_argument("--teacher", help="a teacher's labels of the same windows (teacher.py): blended in for the "
                   "classes it covers")
    p.add_argument("--teacher-weight", type=float, default=teacher_weight, help="trust in the teacher: a covered "
                   "class's label is max(ensemble, w * teacher); 0 leaves the ensemble's labels")
    p.add_argument("--members", default="", help="the ensemble's models that label, comma-separated names "
                   "(model1,model3: the manifest's); empty: all of them (docs/accuracy.md: what one did)")
    args = p.parse_args()
    if not args.ensemble:
        p.error("the following arguments are required: --ensemble")
    if args.soundscapes:
        return pseudo_label_soundscapes(args.ensemble, args.soundscapes, args.out, args.pl_norm, args.threads,
                                        args.backend)
    pseudo_label(args.ensemble, args.cache, args.out, args.pl_norm, args.threads, args.backend, args.device,
                 args.batch_size, args.teacher, args.teacher_weight, args.members)


if __name__ == "__main__":
    run_main(main)
