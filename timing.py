"""Will the ensemble finish inside Kaggle's time limit? Time infer.py's run on a few of the competition's own
soundscapes, then project it to the hidden test set and the year's budget, before you upload.

    python timing.py --ensemble work/ensemble --data data/birdclef-2026
    python timing.py --ensemble work/ensemble --data /data/bc25 --year 2025 --files 40
    python timing.py --ensemble work/ensemble --data data/birdclef-2026 --kaggle-speed 0.7   # Kaggle's cores slower
    make timing                                      # after make ensemble: the run's DATA and ensemble

In: an exported ensemble and a competition folder (its train_soundscapes/, or unlabeled_soundscapes/ in the 2024
layout: recorded where the hidden test set was). Runs infer.py's own loading and scoring (decoding, shared mels,
the networks, smoothing) on --files of them, evenly spread, at --threads (Kaggle's CPU notebooks have 4 cores).
Out: one line per model (its share of the projected time) and a verdict line: the hidden test set's projected
minutes against the budget infer.py keeps to (110 of Kaggle's 120 minutes in 2024, 80 of 90 from 2025), and
which models infer.py would drop to stay inside it. Exits 0 when the whole ensemble fits, 1 when it does not.
The projection assumes Kaggle's cores are as fast as this machine's (--kaggle-speed says otherwise) and, on a
machine with fewer than --threads cores, that the work speeds up in proportion to cores (an optimistic guess).
"""
import argparse
import os
import time

from errors import UserError, run_main
from flags import HelpFormatter, add_flag, infer_setting

# defaults
files = 20             # soundscapes timed
threads = 4            # Kaggle's CPU notebooks: 4 cores
kaggle_speed = 1.0     # Kaggle's core speed relative to this machine's
# the hidden test set by year, from the competitions' data pages: (files, seconds each). 2026's is taken as 2025's.
HIDDEN_TEST = {2024: (1100, 240), 2025: (700, 60), 2026: (700, 60)}


def competition_of(data, year=None):
    """(year, soundscape folder) of a competition folder: --year, else the folder's name (birdclef-2025), else
    its layout (train_metadata.csv: 2024; train.csv: 2025 on, counted as the newest year known)."""
    import infer
    import prep
    meta, _, soundscapes = prep.find_layout(data)
    if year is None:
        year = infer.competition_year(os.path.join(data, "test_soundscapes"))
    if year is None:
        year = 2024 if os.path.basename(meta) == "train_metadata.csv" else max(HIDDEN_TEST)
    return year, soundscapes


def spread(paths, n):
    """n of paths, evenly spread over the sorted list (the same choice every time)."""
    if len(paths) <= n:
        return list(paths)
    return [paths[round(i * (len(paths) - 1) / (n - 1))] for i in range(n)] if n > 1 else paths[:1]


def time_run(ensemble, paths, n_threads, backend="auto", precision="auto", teacher=None):
    """infer.py's loading and scoring of `paths`: (load seconds, scoring seconds, audio seconds scored,
    {model name: network seconds}, model names in infer.py's keep order: a teacher's vote, given as (model,
    mapping, weight), and the ensemble's shifted windows last, as infer.py drops them first)."""
    import torch
    import infer
    torch.set_num_threads(n_threads)
    began = time.time()
    loaded = infer.load_ensemble(ensemble, backend, n_threads, precision)
    vote = infer.TeacherVote(*teacher[:2], loaded.classes, teacher[2], n_threads) if teacher else None
    load_s = time.time() - began
    began = time.time()
    pp = infer.read_post_processing(ensemble)  # its shifted windows cost what they cost, and go first
    predictions = infer.predict_files(paths, loaded.networks, loaded.front_end, budget_s=None, teacher=vote, pp=pp)
    score_s = time.time() - began
    audio_s = sum(n or 0 for n in predictions.n_windows.values()) * infer.WINDOW_SECONDS
    if audio_s == 0:
        raise UserError("none of the timed soundscapes could be decoded")
    return load_s, score_s, audio_s, predictions.seconds, [n.name for n in loaded.networks] + (
        [vote.name] if vote else []) + ([infer.ShiftedWindows.name] if pp.tta > 0 else [])


def project(load_s, score_s, audio_s, model_seconds, order, test_audio_s, budget_min, scale):
    """(projected minutes of the whole ensemble, models kept, projected minutes with them): the scoring time
    per audio second, times the hidden test set's audio, plus loading; models dropped from the end of infer.py's
    order (least value for cost first) until it fits, as infer.py does while it runs."""
    other_s = max(0.0, score_s - sum(model_seconds.values()))  # decoding, mels, smoothing: every model pays it

    def minutes(names):
        per_audio_s = (other_s + sum(model_seconds[n] for n in names)) / audio_s
        return (load_s + per_audio_s * test_audio_s) * scale / 60

    kept = list(order)
    while len(kept) > 1 and minutes(kept) > budget_min:
        kept.pop()
    return minutes(order), kept, minutes(kept)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_flag(p, "--ensemble", default="work/ensemble")
    add_flag(p, "--data", required=True)
    p.add_argument("--files", type=int, default=files, help="soundscapes to time (evenly spread over the folder)")
    add_flag(p, "--threads", default=threads)
    add_flag(p, "--backend", default="auto")
    add_flag(p, "--precision", default="auto")
    p.add_argument("--year", type=int, help="the competition's year (default: from the folder's name, else its "
                   "layout)")
    p.add_argument("--test-files", type=int, help="soundscapes in the hidden test set (default: the year's, "
                   + ", ".join(f"{y}: {n} of {s} s" for y, (n, s) in HIDDEN_TEST.items()) + ")")
    p.add_argument("--test-seconds", type=float, help="seconds per hidden test soundscape (default: the year's)")
    add_flag(p, "--budget-min")
    add_flag(p, "--teacher-model")
    add_flag(p, "--teacher-mapping")
    add_flag(p, "--teacher-vote", default=infer_setting("teacher_vote"))
    p.add_argument("--kaggle-speed", type=float, default=kaggle_speed, help="Kaggle's CPU core speed relative "
                   "to this machine's (0.5: half as fast)")
    args = p.parse_args()
    import infer  # after parsing: --help does not load torch
    if not os.path.isfile(os.path.join(args.ensemble, "manifest.json")):
        raise UserError(f"no ensemble at {args.ensemble} (make ensemble writes one)")
    year, folder = competition_of(args.data, args.year)
    paths = spread(infer.list_audio(folder), args.files)
    if not paths:
        raise UserError(f"no soundscapes to time in {folder}")
    test_files, test_seconds = HIDDEN_TEST.get(year, HIDDEN_TEST[max(HIDDEN_TEST)])
    test_files, test_seconds = args.test_files or test_files, args.test_seconds or test_seconds
    budget_min = args.budget_min or infer.budget_min_by_year.get(year, infer.budget_min)
    cores = os.cpu_count() or 1
    used = min(args.threads, cores)
    if used < args.threads:
        print(f"note: {cores} cores here: timed at {used} threads, projected to {args.threads} in proportion")
    teacher = (args.teacher_model, args.teacher_mapping, args.teacher_vote) if args.teacher_model else None
    load_s, score_s, audio_s, model_seconds, order = time_run(args.ensemble, paths, used, args.backend,
                                                             args.precision, teacher)
    scale = used / args.threads / args.kaggle_speed
    test_audio_s = test_files * test_seconds
    for name in order:
        print(f"  {name}: {model_seconds[name] / audio_s * test_audio_s * scale / 60:.1f} min of the test set")
    total, kept, kept_min = project(load_s, score_s, audio_s, model_seconds, order, test_audio_s, budget_min, scale)
    head = (f"timing: {len(paths)} soundscapes ({audio_s / 60:.1f} min of audio) in {score_s:.0f} s at {used} "
            f"threads, loading {load_s:.0f} s; the hidden test set ({year}: {test_files} x {test_seconds:g} s) "
            f"projects to {total:.0f} min of infer.py's {budget_min:g}")
    if len(kept) == len(order):
        print(f"{head}: fits ({100 * (1 - total / budget_min):.0f}% to spare)")
        return
    dropped = [n for n in order if n not in kept]
    print(f"{head}: does not fit; infer.py would drop {', '.join(dropped)} to finish in {kept_min:.0f} min "
          f"(retrain with fewer or smaller models, or accept the drop)")
    raise SystemExit(1)


if __name__ == "__main__":
    run_main(main)
