"""Decide recipes on evidence: each recipe's whole cycle (round 1, pseudo labels, the later rounds) on several
generated demos and training seeds, beside the one-file baseline (an independent recogniser, not part of this
repository: --baseline FILE; without it the other recipes run, and one line says so) on the same demos and seeds; per recipe and round, the median, the min-max and the noise of test macro AUC, and verdicts that call
a difference only beyond the noise of its median.

    python bench/decide.py --baseline ~/baseline.py          # demos 1,2,3 x seeds 1,2,3: every recipe, the baseline
    python bench/decide.py --recipes demo,baseline-recipe --demos 1,2,3,4 --seeds 1,2,3
    python bench/decide.py --add-recipe "demo-minmax=models-demo.csv|--preset demo|3|minmax"
    python bench/decide.py --add-recipe "demo-model2=models-demo.csv|--preset demo|2|floor|PL_MEMBERS=model2"
    python bench/decide.py --recipes demo,demo-nosite        # what the site's labelled soundscapes are worth
    python bench/decide.py --recipes demo,demo-nospeech --speech-share 0.3   # what the speech detector wins back
    python bench/decide.py --recipes demo,demo-sed,demo-sed20,demo-regnety   # the podiums' heads, windows, backbone
    python bench/decide.py --quick                           # smoke test (make test): one tiny demo, 1 epoch

A recipe is a models table, train.py arguments, a number of rounds, a pseudo-label normalization and, optionally,
more make variables; each run is the real make path (`make roundR` with its own WORK, sharing the demo's prep
cache) from random init, scored by infer.py's code on the demo's test soundscapes with and without neighbour
smoothing. Recipes that differ only in pseudo-label settings (PL_NORM, make's PL_* variables) train the same
round 1, and recipes that differ only in their number of rounds the same first rounds: a run takes those from a
finished run of such a recipe (same demo and seed) as hard links, not training them again. Runs live in
<work>/demo<D>/<recipe>-seed<S>/ with a result.json: a rerun reuses finished ones. Writes <work>/runs.csv (every
run and round) and <work>/report.md (the tables), and prints them.

Noise and verdicts: a run's AUC moves with the training seed (one run's seed sd: the standard deviation between
seeds on the same demo, pooled over demos) and with the demo (datasets differ in difficulty; that is not noise to
a comparison made on the same demos). The noise of a median of n runs is two standard errors of it,
2 x 1.2533 x seed sd / sqrt(n). For recipe X against --base, the paired differences of the +pp AUC (same demo,
same seed) are "helps" when their median is above the noise of that median (the differences' own seed sd),
"hurts" when below minus it, else "within noise" (nothing under 3 pairs); round gains (round R over round 1 of
the same run) likewise; the table also counts the pairs above 0.
"""
import argparse
import glob
import json
import os
import re
import shlex
import shutil
import threading
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
import demo_data  # noqa: E402
import infer  # noqa: E402
import pseudo  # noqa: E402
import prep  # noqa: E402
from tables import longest_window, read_models_table  # noqa: E402
from flags import HelpFormatter, add_flag  # noqa: E402
from errors import UserError, run_main  # noqa: E402
from metrics import macro_roc_auc  # noqa: E402
import site_score  # noqa: E402

# defaults
work = "work/decide"
demos = "1,2,3"              # demo_data.py --seed of each generated demo (make demo's is 0)
seeds = "1,2,3"              # training seeds (train.py --seed; the baseline's --seed)
epochs = 16                  # make demo's
baseline = None              # the one-file baseline script (--baseline FILE)
RECIPES = {  # name: (models table, train.py arguments, rounds, pseudo-label normalization, more make variables)
    "demo": ("models-demo.csv", "--preset demo", 3, "floor", ""),
    # the baseline's recipe in this project's code (train.py --preset baseline), and cycled as often as demo
    "baseline-recipe": ("bench/models-baseline.csv", "--preset baseline", 2, "floor", ""),
    "baseline-recipe3": ("bench/models-baseline.csv", "--preset baseline", 3, "floor", ""),
    # make demo's recipe without the site's labelled soundscapes (held out from pseudo labels as in demo, never
    # trained on): what they are worth
    "demo-nosite": ("models-demo.csv", "--preset demo --site-share 0", 3, "floor", ""),
    # make demo's recipe with no speech detector (on demos with --speech-share: what the detector wins back); a
    # recipe that sets PREP_ARGS preps a cache of its own
    "demo-nospeech": ("models-demo.csv", "--preset demo", 3, "floor", "PREP_ARGS='--speech off'"),
    # what distilling a teacher's embeddings is worth: BirdNET as the teacher of both (TEACHER=birdnet: the
    # demo's cache labelled and embedded by teacher.py once), the same labels, distilled or not
    "demo-taught": ("models-demo.csv", "--preset demo", 3, "floor", "TEACHER=birdnet"),
    "demo-distill": ("models-demo.csv", "--preset demo", 3, "floor", "TEACHER=birdnet DISTILL=0.1"),
    # the podiums' models since 2025 on make demo's table: the SED head at 5 s, the SED head on 20-s windows, and a
    # second small backbone (RegNetY-800MF, one of the 2025 1st place's, about B0's CPU cost)
    "demo-sed": ("bench/models-demo-sed.csv", "--preset demo", 3, "floor", ""),
    "demo-sed20": ("bench/models-demo-sed20.csv", "--preset demo", 3, "floor", ""),
    "demo-regnety": ("bench/models-demo-regnety.csv", "--preset demo", 3, "floor", ""),
}
ASKED_FOR_BY_NAME = ("demo-nospeech", "demo-taught", "demo-distill", "demo-sed", "demo-sed20", "demo-regnety")
BASELINE = "baseline"       # the one-file script itself: round 1 and one pseudo-label round


def parse_recipes(tries):
    """--add-recipe NAME=MODELS|TRAIN_ARGS|ROUNDS|PL_NORM[|MAKE_VARIABLES] -> RECIPES plus them."""
    recipes = dict(RECIPES)
    for text in tries:
        name, _, spec = text.partition("=")
        parts = spec.split("|")
        if not name.strip() or len(parts) not in (4, 5) or not parts[2].strip().isdigit():
            raise UserError(f"--add-recipe takes NAME=MODELS|TRAIN_ARGS|ROUNDS|PL_NORM[|MAKE_VARIABLES], not {text!r}")
        recipes[name.strip()] = (parts[0].strip(), parts[1].strip(), int(parts[2]), parts[3].strip(),
                                 parts[4].strip() if len(parts) == 5 else "")
    return recipes


def shared_rounds(recipe, other):
    """How many first rounds two recipes train alike: none; round 1 when they have the same table and train.py
    arguments and no make variable but pseudo-label ones (PL_*, which act from round 2 on); every round both
    have when their pseudo-label settings are the same too."""
    if recipe[:2] != other[:2] or not all(v.startswith("PL_") for r in (recipe, other) for v in shlex.split(r[4])):
        return 0
    return min(recipe[2], other[2]) if recipe[3:] == other[3:] else 1


def reuse_rounds(name, recipes, out, seed):
    """Link the finished rounds (and the pseudo labels between them) of another recipe that trains them alike
    (same demo, seed) into `out`, as hard links: the same files, not trained again."""
    if os.path.exists(os.path.join(out, "round1")):
        return
    for other, recipe in recipes.items():
        source = os.path.join(os.path.dirname(out), f"{other}-seed{seed}")
        n = shared_rounds(recipes[name], recipe) if other != name else 0
        while n and not os.path.isfile(os.path.join(source, f"round{n}", "ensemble", "manifest.json")):
            n -= 1
        if n:
            for r in range(1, n + 1):
                shutil.copytree(os.path.join(source, f"round{r}"), os.path.join(out, f"round{r}"), symlinks=True,
                                copy_function=os.link)
                if r < n:
                    os.link(os.path.join(source, f"pseudo{r}.npz"), os.path.join(out, f"pseudo{r}.npz"))
            print(f"{name} seed {seed}: rounds 1-{n} linked from {source}", flush=True)
            return


def make_demo_data(root, demo_seed, size, threads):
    """<root>/demo<D>[-labelled<N>][-speech<P>]/data (demo_data.py --seed D at the given size; N labelled
    soundscapes; P% of the training recordings opening with speech) and its prep cache; reused when there."""
    folder = f"demo{demo_seed}" + (f"-labelled{size['n_labelled']}" if size.get("n_labelled") else "") \
        + (f"-speech{round(100 * size['speech_share'])}" if size.get("speech_share") else "")
    data = os.path.join(root, folder, "data")
    if not os.path.isfile(os.path.join(data, "train_metadata.csv")):
        demo_data.make_demo(data, demo_seed=demo_seed, processes=threads, **size)
    cache = os.path.join(root, folder, "cache")
    if not os.path.isfile(os.path.join(cache, "train_rows.csv")):
        prep.prepare(data, cache, n_threads=threads)
    return data, cache


WINDOW_CACHES_MADE = threading.Lock()  # runs side by side share a demo's cache of longer windows: made once


def window_cache(data, cache, seconds, threads):
    """<cache>-<seconds>s: the demo's prep cache for a table whose longest window is `seconds` (prep.py
    --window-seconds), made once and reused."""
    folder = f"{cache}-{seconds}s"
    with WINDOW_CACHES_MADE:
        if not os.path.isfile(os.path.join(folder, "train_rows.csv")):
            prep.prepare(data, folder, n_threads=threads, window_seconds=seconds)
    return folder


def speech_found(data, cache):
    """How prep's speech detector did on a demo whose openings are known (demo_data.py --speech-share): a line,
    or "" for a demo without speech."""
    truth_path = demo_data.speech_path(data)
    if not os.path.isfile(truth_path) or not os.path.isfile(os.path.join(cache, "speech.csv")):
        return ""
    truth = pd.read_csv(truth_path).set_index("filename")["speech_seconds"]
    found = pd.read_csv(os.path.join(cache, "speech.csv"))
    found.index = [os.path.relpath(p, os.path.join(data, "train_audio")) for p in found["path"]]
    hit = found.index.isin(truth.index)
    late = (found.loc[hit, "speech_end_seconds"] - truth[found.index[hit]]).abs()
    return (f"{os.path.basename(os.path.dirname(data))}: the detector found {hit.sum()} of {len(truth)} spoken "
            f"openings ({(late < 1.5).sum()} ending within 1.5 s of the truth) and called {(~hit).sum()} other "
            f"recordings' openings speech")


def run_recipe(name, recipes, data, cache, seed, args, threads):
    """One recipe's cycle through make on one demo and seed; [{round, auc, auc_pp}] and minutes."""
    models, train_args, rounds, pl_norm, make_variables = recipes[name]
    out = os.path.join(os.path.dirname(cache), f"{name}-seed{seed}")
    os.makedirs(out, exist_ok=True)
    seconds = longest_window(read_models_table(os.path.join(ROOT, models)))
    if seconds > 5:  # a table of longer windows reads a cache of its own (prep --window-seconds), made once
        cache = window_cache(data, cache, seconds, threads)
    if not os.path.exists(os.path.join(out, "cache")) and "PREP_ARGS" not in make_variables:
        os.symlink(os.path.abspath(cache), os.path.join(out, "cache"))  # else make preps its own
    reuse_rounds(name, recipes, out, seed)
    extra = shlex.split(args.quick_args) if args.quick else []
    command = ["make", "--no-print-directory", "-C", ROOT, f"round{rounds}", f"DATA={data}", f"WORK={out}",
               f"MODELS={models}", f"EPOCHS={args.epochs}", "PRETRAINED=none", f"PL_NORM={pl_norm}",
               f"THREADS={threads}", "DEVICE=cpu", f"PY={sys.executable}",
               "TRAIN_ARGS=" + " ".join([train_args, "--seed", str(seed)] + extra)] + \
        [teacher_for(v, data, cache, threads) for v in shlex.split(make_variables)]
    with open(out + ".log", "a") as log:
        if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode:
            raise UserError(f"{name} seed {seed} on {data}: make failed (see {out}.log)")
    paths = infer.list_audio(os.path.join(data, "test_soundscapes"))
    labels = pd.read_csv(data.rstrip("/") + "-test-labels.csv")
    results = []
    for r in range(1, rounds + 1):
        frames, classes = site_score.predict_windows(os.path.join(out, f"round{r}", "ensemble"), paths,
                                                     infer.pp_weight, backend="auto", precision="f32")
        truth = labels.set_index("row_id").loc[frames[("ensemble", True)].index]
        site = site_score.round_report(out, r) or {}
        results.append(dict(round=r, auc=macro_roc_auc(truth[classes].values, frames[("ensemble", False)].values),
                            auc_pp=macro_roc_auc(truth[classes].values, frames[("ensemble", True)].values),
                            labels_auc=labels_auc(os.path.join(out, f"pseudo{r - 1}.npz"), data),
                            site_auc_pp=site.get("auc_pp", float("nan")), **held_out_fields(site, make_variables),
                            site_only_auc_pp=site_only_auc(truth, frames[("ensemble", True)])))
    add_best_member(results, out, cache, data)
    metrics = glob.glob(os.path.join(out, "round*", "model*", "metrics.csv"))
    minutes = sum(pd.read_csv(f)["seconds"].sum() for f in metrics) / 60
    return results, minutes


TEACHERS_MADE = threading.Lock()  # runs side by side share a demo's teacher file: made once


def teacher_for(variable, data, cache, threads):
    """A make variable as given, but TEACHER=birdnet: BirdNET's labels and embeddings of the demo's cache
    (teacher.py, made once per demo cache), as TEACHER=<that file>."""
    if variable != "TEACHER=birdnet":
        return variable
    import teacher
    path = os.path.join(os.path.dirname(cache), "teacher-birdnet.npz")
    with TEACHERS_MADE:
        if not os.path.isfile(teacher.embeddings_path(path)):
            teacher.teach(data, path, cache=cache, n_threads=threads)
    return f"TEACHER={path}"


def held_out_fields(site, make_variables):
    """A round's result columns of its held-out site score (site_score's report, {} without one): the score's
    noise and windows, and the recipe's PREP_ARGS (its own prep cache, so its own held-out files; "" for the
    demo's cache)."""
    prep_args = next((v.split("=", 1)[1] for v in shlex.split(make_variables) if v.startswith("PREP_ARGS=")), "")
    return dict(site_noise=site.get("noise", float("nan")), site_windows=site.get("windows", 0), prep=prep_args)


def site_only_auc(truth, predicted):
    """Test ROC-AUC (+pp) of the demo's site-only species (no training recording); NaN where the demo has none."""
    name = demo_data.SITE_ONLY_SPECIES[0]
    if name not in truth or name not in predicted or not 0 < truth[name].sum() < len(truth):
        return float("nan")
    return macro_roc_auc(truth[[name]].values, predicted[[name]].values)


def ranking_table(runs):
    """How well the held-out site score ranks what the test score ranks: of every two rounds of a run, and of every
    two recipes' same round on the same demo and seed, the share where the higher held-out score is the higher
    test score (pairs whose test scores differ by under 0.001 left out; recipes with other prep arguments hold
    out other files, so they are not paired)."""
    if "site_auc_pp" not in runs or runs.site_auc_pp.isna().all():
        return ""
    scored = runs[runs.site_auc_pp.notna()].assign(prep=runs.get("prep", pd.Series("", runs.index)).fillna(""))
    lines = ["| pairs | compared | held-out score picks the better | share |", "|---|---|---|---|"]
    for what, keys, differ in (("two rounds of one run", ["recipe", "demo", "seed"], "round"),
                               ("two recipes, same round, demo and seed", ["round", "demo", "seed", "prep"],
                                "recipe")):
        agree = total = 0
        for _, g in scored.groupby(keys):
            rows = g.to_dict("records")
            for i in range(len(rows)):
                for j in range(i + 1, len(rows)):
                    test = rows[i]["auc_pp"] - rows[j]["auc_pp"]
                    if abs(test) >= 0.001:
                        total += 1
                        agree += np.sign(rows[i]["site_auc_pp"] - rows[j]["site_auc_pp"]) == np.sign(test)
        if total:
            lines.append(f"| {what} | {total} | {agree} | {agree / total:.2f} |")
    return "\n".join(lines)


def add_best_member(results, out, cache, data):
    """Rounds 2 on: the AUC of the best member's labels beside the labels' AUC of the ensemble that made them
    (both raw), where the labelling ensemble has more than one model."""
    for row in results:
        row.setdefault("best_member_labels_auc", float("nan"))
        row.setdefault("ensemble_labels_auc", float("nan"))
        ensemble = os.path.join(out, f"round{row['round'] - 1}", "ensemble")
        if row["round"] > 1 and os.path.isdir(ensemble) and n_members(ensemble) > 1:
            scores = members_labels_auc(ensemble, cache, data)
            if len(scores) > 2:
                row["ensemble_labels_auc"] = scores.pop("ensemble")
                row["best_member_labels_auc"] = max(scores.values())


def n_members(ensemble_dir):
    with open(os.path.join(ensemble_dir, "manifest.json")) as f:
        return len(json.load(f)["models"])


def row_ids(paths, end_seconds):
    """The labels' row ids (<file stem>_<end second>) of windows given by soundscape path and end second."""
    return [f"{os.path.splitext(os.path.basename(p))[0]}_{int(e)}" for p, e in zip(paths, end_seconds)]


def labels_auc(pseudo_path, data):
    """Macro AUC of a pseudo-label file against the demo's unlabeled-window labels; NaN without either."""
    truth_path = demo_data.labels_paths(data)[1]
    if not (os.path.isfile(pseudo_path) and os.path.isfile(truth_path)):
        return float("nan")
    labels = np.load(pseudo_path, allow_pickle=False)
    truth = pd.read_csv(truth_path).set_index("row_id")
    truth = truth.loc[row_ids(labels["paths"], labels["end_seconds"]), list(labels["classes"])]
    return macro_roc_auc(truth.values, labels["probs"])


def members_labels_auc(ensemble_dir, cache, data):
    """{member or "ensemble": macro AUC of its labels of the cached unlabeled windows} (raw mean sigmoid, before
    normalization) against the demo's unlabeled-window labels: does the whole ensemble label better than its best
    member? {} without those labels."""
    truth_path = demo_data.labels_paths(data)[1]
    if not os.path.isfile(truth_path):
        return {}
    table = pd.read_csv(os.path.join(cache, "unlabeled_windows.csv"))
    audio_path = os.path.join(cache, "unlabeled_windows.npy")
    names = [spec["name"] for spec in infer.read_specs(ensemble_dir)]
    probs = {}
    for name in names:  # each member as pseudo.py labels with it alone (--members)
        engine = pseudo.ExportedEngine(ensemble_dir, "auto", torch.get_num_threads(), members=name)
        probs[name] = pseudo.label_windows(engine, audio_path, np.arange(len(table)), show=False,
                                           run_ids=pseudo.run_ids_of(table))
    truth = pd.read_csv(truth_path).set_index("row_id").loc[row_ids(table["path"], table["end_second"]),
                                                            engine.classes].values
    scores = {name: macro_roc_auc(truth, p) for name, p in probs.items()}
    scores["ensemble"] = macro_roc_auc(truth, np.mean(list(probs.values()), axis=0))
    return scores


def run_baseline(data, seed, args, threads):
    """The baseline script (--baseline) on one demo and seed: [{round 1}, {round 2}] from its SUMMARY line."""
    command = [sys.executable, args.baseline, "--data", data, "--epochs", str(args.epochs), "--seed", str(seed),
               "--threads", str(threads)]
    truth_path = demo_data.labels_paths(data)[1]
    where_baseline_looks = os.path.join(data.rstrip("/") + "_solution", "unlabeled_solution.csv")
    if os.path.isfile(truth_path) and not os.path.isfile(where_baseline_looks):
        os.makedirs(os.path.dirname(where_baseline_looks), exist_ok=True)
        shutil.copyfile(truth_path, where_baseline_looks)
    done = subprocess.run(command, capture_output=True, text=True)
    summary = [line for line in done.stdout.splitlines() if line.startswith("SUMMARY")]
    if done.returncode or not summary:
        raise UserError(f"the baseline failed on {data} seed {seed}: {(done.stderr or done.stdout)[-300:]}")
    numbers = [float(x) for x in re.findall(r"\d+\.\d{4}", summary[0])]
    seconds = float(re.findall(r"\| (\d+) s", summary[0])[0])
    label_lines = re.findall(r"pseudo-label macro AUC on unlabeled windows: (\d+\.\d+)", done.stdout)
    labels = float(label_lines[0]) if label_lines else float("nan")
    return [dict(round=1, auc=numbers[0], auc_pp=numbers[1], labels_auc=float("nan")),
            dict(round=2, auc=numbers[2], auc_pp=numbers[3], labels_auc=labels)], seconds / 60


def run_one(task, recipes, args, threads, demos_of):
    """A task (recipe, demo, seed) -> rows; reuses <run>/result.json."""
    name, demo, seed = task
    data, cache = demos_of[demo]
    out = os.path.join(os.path.dirname(cache), f"{name}-seed{seed}")
    done_path = os.path.join(out, "result.json")
    if os.path.isfile(done_path):
        with open(done_path) as f:
            rows = json.load(f)
        if name != BASELINE and any("best_member_labels_auc" not in row for row in rows):  # from before labels
            for row in rows:                                                             # were scored
                row["labels_auc"] = labels_auc(os.path.join(out, f"pseudo{row['round'] - 1}.npz"), data)
            add_best_member(rows, out, cache, data)
            with open(done_path, "w") as f:
                json.dump(rows, f)
        for row in rows if name != BASELINE else []:  # from before the site score's noise was kept
            if "site_noise" not in row:
                row.update(held_out_fields(site_score.round_report(out, row["round"]) or {},
                                           recipes[name][4] if name in recipes else ""))
        return rows
    began = time.time()
    if name == BASELINE:
        results, minutes = run_baseline(data, seed, args, threads)
    else:
        results, minutes = run_recipe(name, recipes, data, cache, seed, args, threads)
    rows = [dict(recipe=name, demo=demo, seed=seed, minutes=minutes, wall_minutes=(time.time() - began) / 60, **r)
            for r in results]
    os.makedirs(out, exist_ok=True)
    with open(done_path, "w") as f:
        json.dump(rows, f)
    print(f"{name} demo {demo} seed {seed}: " + ", ".join(f"round {r['round']} {r['auc_pp']:.4f}" for r in rows)
          + f" (+pp), {rows[0]['wall_minutes']:.1f} min", flush=True)
    return rows


def seed_sd(values, demos):
    """One run's seed-to-seed noise: the standard deviation of `values` between training seeds on the same demo,
    pooled over the demos that have two seeds or more (the demos' own difficulty is left out: it is not noise
    to a paired comparison); NaN without such a demo."""
    frame = pd.DataFrame(dict(value=np.asarray(values, float), demo=np.asarray(demos)))
    groups = [g.value.values for _, g in frame.groupby("demo") if len(g) > 1]
    if not groups:
        return float("nan")
    squares = sum(((g - g.mean()) ** 2).sum() for g in groups)
    return float(np.sqrt(squares / sum(len(g) - 1 for g in groups)))


def median_noise(values, demos):
    """The noise of a median of n runs: two standard errors, 2 x 1.2533 x seed_sd / sqrt(n) (1.2533: a median's
    standard error over a mean's, for normal noise). An effect is told from noise only beyond it."""
    return 2 * 1.2533 * seed_sd(values, demos) / np.sqrt(len(values))


def spread_table(runs, models_of):
    """Per recipe and round: median, min-max and runs of the +pp AUC (and without pp); one run's seed-to-seed
    noise (seed_sd) and the noise of the median (median_noise); the median AUC of the pseudo labels that trained
    the round (on the unlabeled windows' labels), minutes per run and per model trained (models_of: {recipe:
    models per round}; a run trains that many in each of its rounds)."""
    lines = ["| recipe | round | +pp median | +pp min-max | one run's seed sd | noise of the median | no-pp median | "
             "its labels' AUC | runs | minutes per run | per model |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    rounds = runs.groupby("recipe")["round"].max()
    for (recipe, r), g in runs.groupby(["recipe", "round"], sort=False):
        labels = g.labels_auc.median() if "labels_auc" in g and g.labels_auc.notna().any() else None
        minutes = g.minutes.median()
        lines.append(f"| {recipe} | {r} | {g.auc_pp.median():.4f} | {g.auc_pp.min():.4f}-{g.auc_pp.max():.4f} | "
                     f"{seed_sd(g.auc_pp, g.demo):.4f} | {median_noise(g.auc_pp, g.demo):.4f} | "
                     f"{g.auc.median():.4f} | {'' if labels is None else f'{labels:.4f}'} | {len(g)} | {minutes:.1f} | "
                     f"{minutes / (models_of.get(recipe, 1) * rounds[recipe]):.1f} |")
    return "\n".join(lines)


min_pairs = 3               # fewer paired runs than this decide nothing


def verdict(differences, demos):
    """"helps" / "hurts" when the median paired difference is beyond the noise of that median (median_noise of
    the differences: the pairing's own seed-to-seed noise), else "within noise"."""
    differences = np.asarray(differences, float)
    if len(differences) < min_pairs:
        return f"too few runs (under {min_pairs})"
    noise = median_noise(differences, demos)
    if np.isnan(noise):
        return "no noise estimate (one seed per demo)"
    median = np.median(differences)
    return "helps" if median > noise else "hurts" if median < -noise else "within noise"


def paired(runs, recipe, base, round_of, base_round_of, column="auc_pp", base_column=None):
    """Differences recipe(round_of) - base(base_round_of) of a column (+pp AUC) on the (demo, seed) pairs both
    ran: (differences, their demos)."""
    a = runs[(runs.recipe == recipe) & (runs["round"] == round_of)].set_index(["demo", "seed"])[column]
    b = runs[(runs.recipe == base) & (runs["round"] == base_round_of)].set_index(["demo", "seed"])[
        base_column or column]
    both = a[a.notna()].index.intersection(b[b.notna()].index)
    return (a[both] - b[both]).values, both.get_level_values("demo").values


def verdict_table(runs, bases):
    """Each recipe's round gains, and its rounds against each base's same round and final round (paired)."""
    last = runs.groupby("recipe")["round"].max()
    lines = ["| comparison | pairs | median difference | noise of the median | min-max | pairs above 0 | verdict |",
             "|---|---|---|---|---|---|---|"]

    shown = set()  # a comparison of rounds that recipes share (reuse_rounds) is shown once, under its first name

    def add(text, pair):
        d, demos = pair
        key = tuple(np.round(d, 6))
        if len(d) and d.any() and key not in shown:  # all zeros: the same rounds, shared
            shown.add(key)
            lines.append(f"| {text} | {len(d)} | {np.median(d):+.4f} | {median_noise(d, demos):.4f} | "
                         f"{d.min():+.4f} to {d.max():+.4f} | {int((d > 0).sum())} of {len(d)} | "
                         f"{verdict(d, demos)} |")
    for recipe in last.index:
        for r in range(2, int(last[recipe]) + 1):
            add(f"{recipe}: round {r} over round 1", paired(runs, recipe, recipe, r, 1))
            if r > 2:  # does one more round pay: the stop rule (make's ROUNDS)
                add(f"{recipe}: round {r} over round {r - 1}", paired(runs, recipe, recipe, r, r - 1))
        if "best_member_labels_auc" in runs:
            for r in range(2, int(last[recipe]) + 1):
                add(f"{recipe}: the labels that trained round {r}, the whole ensemble's over its best member's "
                    "(labels' AUC)",
                    paired(runs, recipe, recipe, r, r, "ensemble_labels_auc", "best_member_labels_auc"))
    for i, base in enumerate(bases):  # each pair of recipes once: a base is not held against an earlier base
        for recipe in (r for r in last.index if r != base and r not in bases[:i] and base in last.index):
            add(f"{recipe} vs {base}, round 1", paired(runs, recipe, base, 1, 1))
            final = int(last[base])
            for r in range(2, int(last[recipe]) + 1):  # each later round against the base's same and final one
                if r <= final:
                    add(f"{recipe} round {r} vs {base} round {r}" + (" (its final)" if r == final else ""),
                        paired(runs, recipe, base, r, r))
                if r != final:
                    add(f"{recipe} round {r} vs {base} round {final} (its final)", paired(runs, recipe, base, r, final))
    return "\n".join(lines)


def site_tables(runs):
    """Where the demos have labelled soundscapes: the site-only species' test AUC and the ranking table."""
    if "site_only_auc_pp" not in runs or runs.site_only_auc_pp.isna().all():
        return ""
    lines = ["\nThe species only the site has (no training recording): its test ROC-AUC (+pp)\n",
             "| recipe | round | median | min-max | runs |", "|---|---|---|---|---|"]
    for (recipe, r), g in runs[runs.site_only_auc_pp.notna()].groupby(["recipe", "round"], sort=False):
        lines.append(f"| {recipe} | {r} | {g.site_only_auc_pp.median():.4f} | {g.site_only_auc_pp.min():.4f}-"
                     f"{g.site_only_auc_pp.max():.4f} | {len(g)} |")
    lines += ["\nThe held-out site score: its windows and its noise (two bootstrap sds over the held-out files)\n",
              "| recipe | round | windows median | noise median | noise min-max | runs |", "|---|---|---|---|---|---|"]
    held_out = runs[runs.get("site_windows", pd.Series(0, runs.index)).fillna(0) > 0]
    for (recipe, r), g in held_out.groupby(["recipe", "round"], sort=False):
        noise = g.site_noise.dropna()  # NaN where one file was held out: no bootstrap over one file
        spread = (f"{noise.median():.4f} | {noise.min():.4f}-{noise.max():.4f}" if len(noise)
                  else "unknown | one held-out file")
        lines.append(f"| {recipe} | {r} | {g.site_windows.median():.0f} | {spread} | {len(g)} |")
    ranking = ranking_table(runs)
    return "\n".join(lines) + ("\n\nThe held-out site score against the test score\n\n" + ranking if ranking
                               else "") + "\n"


def without_a_missing_baseline(names, script):
    """The recipes to run: the baseline left out, with one line, where its script is not given or not there (it is
    not part of this repository)."""
    if BASELINE in names and not (script and os.path.isfile(script)):
        print(f"decide: no baseline script {'at ' + script if script else 'given'} (--baseline FILE): running "
              f"without it", flush=True)
        return [n for n in names if n != BASELINE]
    return names


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_flag(p, "--work", default=work)
    p.add_argument("--recipes", default=",".join([r for r in RECIPES if r not in ASKED_FOR_BY_NAME] + [BASELINE]),
                   help="comma-separated, from: "
                   + ", ".join(list(RECIPES) + [BASELINE]) + " and --add-recipe names")
    p.add_argument("--add-recipe", dest="tries", action="append", default=[],
                   metavar="NAME=MODELS|ARGS|ROUNDS|PL_NORM[|MAKE_VARIABLES]", help="another recipe, e.g. "
                   "\"demo-minmax=models-demo.csv|--preset demo|3|minmax\" or "
                   "\"demo-model2=models-demo.csv|--preset demo|2|floor|PL_MEMBERS=model2\"")
    p.add_argument("--base", default=f"{BASELINE},baseline-recipe,baseline-recipe3", help="the recipes the others are held against, "
                   "comma-separated")
    p.add_argument("--demos", default=demos, help="demo_data.py seeds of the generated demos")
    add_flag(p, "--seeds", default=seeds)
    add_flag(p, "--epochs", default=epochs)
    add_flag(p, "--per-species", default=30)
    add_flag(p, "--test", default=60)
    add_flag(p, "--unlabeled", default=60)
    add_flag(p, "--labelled-soundscapes", default=10)
    add_flag(p, "--speech-share", default=0.0)
    p.add_argument("--baseline", default=baseline, help="the one-file baseline script (an independent recogniser "
                   "that takes --data --epochs --seed --threads and prints a SUMMARY line); not given: run without it")
    add_flag(p, "--threads", default=os.cpu_count() or 2)
    add_flag(p, "--jobs")
    add_flag(p, "--quick")
    p.add_argument("--quick-args", default="--max-train-files 16 --image-height 32 --image-width 32 --n-mels 32 "
                   "--batch-size 8 --soup-start 1", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.demos, args.seeds, args.epochs = "1", "1", 1
        args.per_species, args.test, args.unlabeled = 2, 2, 4
        args.labelled_soundscapes = min(args.labelled_soundscapes, 3)
    recipes = parse_recipes(args.tries)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in recipes and n != BASELINE]
    if unknown:
        raise UserError(f"unknown recipe(s): {', '.join(unknown)} (known: {', '.join(list(recipes) + [BASELINE])})")
    names = without_a_missing_baseline(names, args.baseline)
    jobs = args.jobs or max(1, min(2, args.threads))
    threads = max(1, args.threads // jobs)
    size = dict(per_species=args.per_species, n_test=args.test, n_unlabeled=args.unlabeled,
                n_labelled=args.labelled_soundscapes, speech_share=args.speech_share)
    demo_seeds = [int(d) for d in args.demos.split(",")]
    demos_of = {d: make_demo_data(os.path.abspath(args.work), d, size, args.threads) for d in demo_seeds}
    # the quick recipes first: partial results come early
    order = sorted(names, key=lambda n: {BASELINE: 0}.get(n, recipes[n][2] if n in recipes else 9))
    tasks = [(n, d, int(s)) for n in order for s in args.seeds.split(",") for d in demo_seeds]
    print(f"{len(tasks)} runs ({len(names)} recipes x {len(demo_seeds)} demos x {len(args.seeds.split(','))} "
          f"seeds), {jobs} at a time with {threads} thread(s) each; {args.epochs} epochs", flush=True)
    began = time.time()
    with ThreadPoolExecutor(jobs) as pool:
        rows = [r for part in pool.map(lambda t: run_one(t, recipes, args, threads, demos_of), tasks) for r in part]
    runs = pd.DataFrame(rows)
    models_of = {name: len(read_models_table(os.path.join(ROOT, recipe[0]))) for name, recipe in recipes.items()
                 if os.path.isfile(os.path.join(ROOT, recipe[0]))}
    os.makedirs(args.work, exist_ok=True)
    runs.to_csv(os.path.join(args.work, "runs.csv"), index=False)
    windows = len(pd.read_csv(demos_of[demo_seeds[0]][0].rstrip("/") + "-test-labels.csv"))
    report = (f"{len(tasks)} runs: demos {args.demos} (demo_data.py --seed; {args.per_species} recordings per "
              f"species, {windows} test windows each), training seeds {args.seeds}, {args.epochs} epochs, random "
              f"init; test macro AUC of each round's ensemble, +pp = neighbour smoothing; "
              f"{(time.time() - began) / 60:.1f} minutes in all. One run's seed sd: how far training seeds on the "
              f"same demo scatter (pooled over demos); noise of the median: two standard errors of a median of that "
              f"many runs; a difference helps or hurts only when its median is beyond its own noise\n\n"
              + spread_table(runs, models_of) + "\n\n"
              + verdict_table(runs, [b for b in args.base.split(",") if b in names] or names[:1]) + "\n"
              + site_tables(runs)
              + "".join(f"\n{line}" for line in (speech_found(*demos_of[d]) for d in demo_seeds) if line))
    with open(os.path.join(args.work, "report.md"), "w") as f:
        f.write(report)
    print("\n" + report)


if __name__ == "__main__":
    run_main(main)
