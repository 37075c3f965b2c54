"""Which blend of the teacher (BirdNET) and the ensemble makes the best pseudo labels, measured on real birds.

    python bench/teacher_blend.py                       # build the site, train, label, print the table
    python bench/teacher_blend.py --work work/teacher-blend --epochs 8 --site-soundscapes 20

The demo's species are synthetic, so BirdNET covers none of them. This builds a site that mixes them with real
recordings that pip packages ship, covered by BirdNET by scientific name:
- great tit (pykanto): training clips from two nest boxes (B32), site calls from another bird (SW83);
- European storm-petrel (pykanto): one Xeno-canto file trains, the other calls at the site;
- Bengalese finch (pykanto; Lonchura striata domestica): mapped to BirdNET's White-rumped Munia at species
  level, but a domestic bird BirdNET does not know: the case of a covered class where the teacher is wrong.
Training audio is cut into 5-s pieces (2.5-s hop); site calls are pasted into the demo's test soundscapes,
each fully inside one 5-s window, which gets the label. The same soundscapes are the site's unlabeled ones.

Then the real path: prep.py caches the unlabeled windows, train.py trains make demo's round-1 models
(models-demo.csv, the demo's preset), soup.py soups and bundles them into one ensemble, pseudo.py labels the
cached windows (ensemble alone), teacher.py scores the same windows, and pseudo.blend_teacher blends them as
pseudo.py does, max(ensemble, W * teacher) on the covered classes, for each W (0: the ensemble alone; 1: the
plain max); against it, the weighted means (1 - W) * ensemble + W * teacher, and the teacher alone. Each blend
is scored against the true labels over the covered classes (the only labels a blend changes): macro ROC-AUC,
cMAP, the squared error and the mean label on positive and on negative windows (training takes the labels'
values, not only their order), the AUC per covered class, and the AUC over all classes. Needs the teacher
extras (requirements-teacher.txt) and pykanto (pip install --no-deps pykanto).

Then distillation on the same site (--distill W, 0: skip): for each training seed, the round-1 ensemble is trained
twice, without and with train.py --distill W (BirdNET's embeddings of the cached windows, which teacher.py wrote
beside its labels), and each is scored on the site's windows by the ensemble alone: macro AUC over all classes,
over the real birds and over the synthetic species. The paired differences (with - without, one pair per seed)
get bench/decide.py's verdict: helps or hurts only beyond the noise of their median.

    python bench/teacher_blend.py --distill 0.1 --seeds 1,2,3
"""
import argparse
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
import pseudo  # noqa: E402
import teacher  # noqa: E402
from common import SAMPLE_RATE, WINDOW_SAMPLES, read_audio  # noqa: E402
from tables import CachePaths, read_models_table  # noqa: E402
from flags import HelpFormatter, add_flag  # noqa: E402
from errors import UserError, run_main  # noqa: E402
from metrics import cmap, macro_roc_auc  # noqa: E402
from demo_data import make_demo, write_ogg  # noqa: E402
from soup import bundle  # noqa: E402
from decide import median_noise, row_ids, verdict  # noqa: E402

# defaults
work = "work/teacher-blend"
models = "models-demo.csv"   # round 1 of make demo's table
epochs = 16
per_species = 30          # demo training recordings per synthetic species
n_soundscapes = 40        # one-minute site soundscapes
call_chance = 0.35        # per soundscape and real species: a call pasted into one of its windows
weights = (0.0, 0.25, 0.5, 0.75, 1.0)
distill = 0.0             # DISTILL held against none on the site (0: not run)
seeds = "1,2,3"           # training seeds of that comparison

# class, scientific name, common name, pykanto folder, training files (glob), site files (glob)
REAL_SPECIES = [
    ("gretit1", "Parus major", "Great Tit", "segmented/great_tit/WAV", "*B32*.wav", "*SW83*.wav"),
    ("eustop1", "Hydrobates pelagicus", "European Storm-Petrel", "raw/STORM-PETREL", "XC46092.wav", "XC663885.wav"),
    ("bkfmun", "Lonchura striata domestica", "Bengalese Finch", "raw/BENGALESE_FINCH/bird_3", "348.wav", "363.wav"),
]


def pykanto_data():
    spec = importlib.util.find_spec("pykanto")
    if not spec or not spec.submodule_search_locations:
        raise UserError("pykanto's recordings are needed: pip install --no-deps pykanto")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def pieces(audio, seconds=5.0, hop=2.5):
    """5-s training pieces of a recording every `hop` seconds (one piece if shorter)."""
    size, step = int(seconds * SAMPLE_RATE), int(hop * SAMPLE_RATE)
    starts = range(0, max(1, len(audio) - size + step), step)
    return [audio[s:s + size] for s in starts if len(audio[s:s + size]) >= SAMPLE_RATE]


def site_calls(audio, rng, n=6, longest=4.0):
    """Excerpts of up to `longest` seconds (whole clips when shorter), scaled to peak 1."""
    size = int(longest * SAMPLE_RATE)
    if len(audio) <= size:
        out = [audio]
    else:
        out = [audio[s:s + int(rng.uniform(1.5, longest) * SAMPLE_RATE)]
               for s in rng.integers(0, len(audio) - size, n)]
    return [c / max(1e-6, float(np.abs(c).max())) for c in out]


def build_site(site, args):
    """The demo's synthetic species plus REAL_SPECIES; returns the path of the labels (row_id + classes)."""
    labels_path = site.rstrip("/") + "-test-labels.csv"
    if os.path.isfile(os.path.join(site, "taxonomy.csv")) and os.path.isfile(labels_path):
        return labels_path
    make_demo(site, per_species=args.per_species, n_unlabeled=0, n_test=args.site_soundscapes)
    rng = np.random.default_rng(0)
    data = pykanto_data()
    meta = pd.read_csv(os.path.join(site, "train_metadata.csv"))
    labels = pd.read_csv(labels_path).set_index("row_id")
    demo_classes = list(labels.columns)
    calls = {}
    for label, _, _, folder, train_glob, site_glob in REAL_SPECIES:
        os.makedirs(os.path.join(site, "train_audio", label), exist_ok=True)
        rows = []
        for path in sorted(glob.glob(os.path.join(data, folder, train_glob))):
            for k, piece in enumerate(pieces(read_audio(path))):
                name = f"{label}/{os.path.splitext(os.path.basename(path))[0]}_{k}.ogg"
                write_ogg(os.path.join(site, "train_audio", name), piece)
                rows.append(dict(primary_label=label, secondary_labels="[]", type="['call']", filename=name,
                                 rating=5.0, author="pykanto", license="see pykanto"))
        meta = pd.concat([meta, pd.DataFrame(rows)], ignore_index=True)
        calls[label] = [c for path in sorted(glob.glob(os.path.join(data, folder, site_glob)))
                        for c in site_calls(read_audio(path), rng)]
        labels[label] = 0.0
    for path in sorted(glob.glob(os.path.join(site, "test_soundscapes", "*.ogg"))):
        audio = read_audio(path)
        stem = os.path.splitext(os.path.basename(path))[0]
        for label, clips in calls.items():
            if rng.random() >= args.call_chance:
                continue
            window = int(rng.integers(0, len(audio) // WINDOW_SAMPLES))
            clip = clips[int(rng.integers(len(clips)))][:WINDOW_SAMPLES]
            start = window * WINDOW_SAMPLES + int(rng.integers(0, WINDOW_SAMPLES - len(clip) + 1))
            audio[start:start + len(clip)] += clip * rng.uniform(0.1, 0.5)
            labels.loc[f"{stem}_{5 * (window + 1)}", label] = 1.0
        write_ogg(path, np.clip(audio, -1, 1))
        shutil.copy(path, os.path.join(site, "unlabeled_soundscapes", os.path.basename(path)))
    meta.to_csv(os.path.join(site, "train_metadata.csv"), index=False)
    classes = demo_classes + [s[0] for s in REAL_SPECIES]
    pd.DataFrame([[f"soundscape_0_{5 * (w + 1)}"] + [1.0 / len(classes)] * len(classes) for w in range(3)],
                 columns=["row_id"] + classes).to_csv(os.path.join(site, "sample_submission.csv"), index=False)
    labels.reset_index().to_csv(labels_path, index=False)
    # last: its presence marks a finished site (an interrupted build is redone from make_demo)
    pd.DataFrame(dict(primary_label=classes,
                      scientific_name=[f"Synthetica {c}" for c in demo_classes] + [s[1] for s in REAL_SPECIES],
                      common_name=[f"synthetic {c}" for c in demo_classes] + [s[2] for s in REAL_SPECIES])
                 ).to_csv(os.path.join(site, "taxonomy.csv"), index=False)
    return labels_path


def train_ensemble(work_dir, cache, args, extra=()):
    """Round 1 of the demo's models table (the demo's preset and `extra` train.py flags), souped and bundled in
    work_dir; returns the ensemble folder."""
    ensemble = os.path.join(work_dir, "ensemble")
    if os.path.isfile(os.path.join(ensemble, "manifest.json")):
        return ensemble
    rows = read_models_table(os.path.join(ROOT, args.models)).index.tolist()
    jobs = max(1, min(2, args.threads))

    def train(row):
        model_dir = os.path.join(work_dir, f"model{row}")
        for command in ([sys.executable, "train.py", "--model", str(row), "--models", args.models, "--preset", "demo",
                         "--cache", cache, "--out-dir", model_dir, "--epochs", str(args.epochs), "--threads",
                         str(max(1, args.threads // jobs)), *extra],
                        [sys.executable, "soup.py", "--model-dir", model_dir, "--cache", cache, "--threads",
                         str(max(1, args.threads // jobs))]):
            if subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL).returncode:
                raise UserError(f"{' '.join(command[1:3])} failed for model {row}")
        return model_dir
    with ThreadPoolExecutor(jobs) as pool:  # side by side, the threads shared
        bundle(ensemble, list(pool.map(train, rows)))
    return ensemble


def score(probs, truth, columns):
    """Macro AUC and cMAP over `columns` (indices), and per column AUC."""
    per_class = [macro_roc_auc(truth[:, [c]], probs[:, [c]]) for c in columns]
    return macro_roc_auc(truth[:, columns], probs[:, columns]), cmap(truth[:, columns], probs[:, columns]), per_class


def site_truth(labels, labels_path):
    """The true labels (rows of a pseudo-label file `labels`, its classes as columns) from the site's labels CSV."""
    rows = row_ids(labels["paths"], labels["end_seconds"])
    return pd.read_csv(labels_path).set_index("row_id").loc[rows, list(labels["classes"])].to_numpy()


def distillation_runs(args, cache, teacher_path, labels_path):
    """Per seed, the round-1 ensemble without and with --distill, scored on the site's windows: a frame of seed,
    distill, all_auc, real_auc (REAL_SPECIES), synthetic_auc."""
    embeddings = teacher.embeddings_path(teacher_path)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for weight in (0.0, args.distill):
            folder = os.path.join(args.work, f"distill{weight:g}-seed{seed}")
            extra = ["--seed", str(seed)] + (["--distill", f"{weight:g}", "--teacher-embeddings", embeddings]
                                             if weight else [])
            began = time.time()
            ensemble = train_ensemble(folder, cache, args, extra)
            out = os.path.join(folder, "labels.npz")
            if not os.path.isfile(out):
                pseudo.pseudo_label(ensemble, cache, out, n_threads=args.threads)
            labels = np.load(out)
            truth, probs, classes = site_truth(labels, labels_path), labels["probs"], list(labels["classes"])
            real = [classes.index(s[0]) for s in REAL_SPECIES]
            synthetic = [c for c in range(len(classes)) if c not in real]
            rows.append(dict(seed=seed, distill=weight, all_auc=macro_roc_auc(truth, probs),
                             real_auc=macro_roc_auc(truth[:, real], probs[:, real]),
                             synthetic_auc=macro_roc_auc(truth[:, synthetic], probs[:, synthetic])))
            print(f"seed {seed}, distill {weight:g}: AUC {rows[-1]['all_auc']:.4f} (real birds "
                  f"{rows[-1]['real_auc']:.4f}), {(time.time() - began) / 60:.1f} min", flush=True)
    return pd.DataFrame(rows)


def distillation_table(runs):
    """Medians of each column without and with distillation, and the paired differences' median, min-max and
    decide.py's verdict (one pair per seed, on one site)."""
    without, taught = (runs[runs.distill == w].set_index("seed") for w in (0.0, runs.distill.max()))
    lines = [f"| AUC on the site's windows | no distillation | DISTILL={runs.distill.max():g} | median difference | "
             "noise of the median | min-max | pairs above 0 | verdict |", "|---|---|---|---|---|---|---|---|"]
    both = without.index.intersection(taught.index)
    for column, name in (("all_auc", "all classes"), ("real_auc", "the real birds"),
                         ("synthetic_auc", "the synthetic species")):
        differences = (taught.loc[both, column] - without.loc[both, column]).values
        same_site = [1] * len(differences)
        lines.append(f"| {name} | {without[column].median():.4f} | {taught[column].median():.4f} | "
                     f"{np.median(differences):+.4f} | {median_noise(differences, same_site):.4f} | "
                     f"{differences.min():+.4f} to {differences.max():+.4f} | {(differences > 0).sum()} of "
                     f"{len(differences)} | {verdict(differences, same_site)} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_flag(p, "--work", default=work)
    add_flag(p, "--models", default=models)
    add_flag(p, "--epochs", default=epochs)
    add_flag(p, "--per-species", default=per_species)
    p.add_argument("--site-soundscapes", type=int, default=n_soundscapes, help="one-minute site soundscapes")
    p.add_argument("--call-chance", type=float, default=call_chance, help="chance of a real call per soundscape "
                   "and species")
    add_flag(p, "--threads", default=os.cpu_count() or 2)
    add_flag(p, "--distill", default=distill)  # > 0: each seed's ensemble with it and without, on the site
    add_flag(p, "--seeds", default=seeds)
    args = p.parse_args(argv)
    began = time.time()
    teacher.birdnet_files()  # fails early, with how to install, when BirdNET is missing
    site, cache = os.path.join(args.work, "site"), os.path.join(args.work, "cache")
    labels_path = build_site(site, args)
    if not os.path.isfile(CachePaths(cache).rows):
        subprocess.run([sys.executable, "prep.py", "--data", site, "--out", cache, "--threads", str(args.threads)],
                       cwd=ROOT, check=True)
    ensemble = train_ensemble(args.work, cache, args)
    alone, teacher_path = os.path.join(args.work, "ensemble-labels.npz"), os.path.join(args.work, "teacher.npz")
    if not os.path.isfile(alone):
        pseudo.pseudo_label(ensemble, cache, alone, n_threads=args.threads)
    if not os.path.isfile(teacher_path):
        teacher.teach(site, teacher_path, cache=cache, n_threads=args.threads)

    labels = np.load(alone)
    classes, paths, ends = list(labels["classes"]), list(labels["paths"]), list(labels["end_seconds"])
    truth = site_truth(labels, labels_path)
    found, aligned, covered = pseudo.read_teacher(teacher_path, classes)  # the teacher's labels, on our classes
    teacher_probs = aligned[[found[(str(p), int(e))] for p, e in zip(paths, ends)]]  # and on our rows
    columns = list(np.flatnonzero(covered))
    ours = labels["probs"]
    blends = {}
    for w in weights:  # pseudo.py's rule, as it runs
        blends[f"max(ours, {w:g} x teacher)"] = pseudo.blend_teacher(ours, paths, ends, classes, teacher_path, w)
    for w in weights[1:-1]:  # the alternative: a weighted mean
        mean = ours.copy()
        mean[:, columns] = (1 - w) * ours[:, columns] + w * teacher_probs[:, columns]
        blends[f"{1 - w:g} ours + {w:g} teacher"] = mean
    blends["teacher alone"] = np.where(covered[None, :], teacher_probs, ours)
    rows = []
    for name, probs in blends.items():
        auc, average_precision, per_class = score(probs, truth, columns)
        ours, true = probs[:, columns], truth[:, columns] > 0.5
        # training takes the labels' values (target = max(label, pseudo)), not only their order: the squared
        # error and the mean label on positive and negative windows say how far the values are from the truth
        rows.append(dict(rule=name, covered_auc=auc, covered_cmap=average_precision,
                         covered_squared_error=float(np.mean((ours - true) ** 2)),
                         mean_on_positives=float(ours[true].mean()), mean_on_negatives=float(ours[~true].mean()),
                         **{f"auc_{classes[c]}": v for c, v in zip(columns, per_class)},
                         all_auc=macro_roc_auc(truth, probs)))
    table = pd.DataFrame(rows)
    table.to_csv(os.path.join(args.work, "blend.csv"), index=False)
    positives = {str(classes[c]): int(truth[:, c].sum()) for c in columns}
    print(f"\n{len(truth)} site windows; covered classes and their positive windows: {positives}; ensemble of "
          f"{args.models}'s round-1 models ({args.epochs} epochs); {(time.time() - began) / 60:.1f} min")
    with pd.option_context("display.width", 200):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.distill:
        runs = distillation_runs(args, cache, teacher_path, labels_path)
        runs.to_csv(os.path.join(args.work, "distill.csv"), index=False)
        print(f"\ndistillation from BirdNET's embeddings on the site, {args.models}'s round-1 models "
              f"({args.epochs} epochs), training seeds {args.seeds}; {(time.time() - began) / 60:.1f} min in all")
        print(distillation_table(runs))


if __name__ == "__main__":
    run_main(main)
