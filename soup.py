"""Checkpoint soup of one trained model, validated and exported for infer.py; or bundle soups into an ensemble.

    python soup.py --model-dir work/round1/model4 --cache work/cache
    python soup.py bundle --out work/round1/ensemble work/round1/model1 work/round1/model2

The soup (the write-up, chapter 2): candidates are the saved epochs from the soup start (13 of 50 in the write-up); walk
them in order and keep an epoch when it beats the best value so far of any tracked metric (LRAP, cMAP, F1,
AUC); average the kept epochs' weights (float tensors averaged, integer buffers such as num_batches_tracked
from the last kept epoch). Writes soup.pt, export/ (the artifact infer.py loads: the network as ONNX and
TorchScript, mel settings, classes; see export.export_artifact) and, last, soup.json (kept epochs, soup
metrics, best single epoch).
"""
import argparse
import glob
import json
import os
import shutil
import sys

import numpy as np
import pandas as pd
import torch

from infer import ensemble_manifest
from common import build_model, MelFrontEnd, MelSettings, load_split, predict, window_seconds_of
from flags import HelpFormatter, add_flag
from errors import UserError, run_main
from export import export_artifact
from files import atomic_write, save_json, swap_in
from metrics import TRACKED_METRICS, all_metrics

# defaults
threads = os.cpu_count() or 2


def choose_epochs(metrics, soup_start, tracked=TRACKED_METRICS):
    """Epochs (from soup_start on, in order) that improve the best-so-far value of any tracked metric."""
    best = {m: -np.inf for m in tracked}
    kept = []
    for _, row in metrics[metrics["epoch"] >= soup_start].sort_values("epoch").iterrows():
        improved = [m for m in tracked if np.isfinite(row[m]) and row[m] > best[m]]
        for m in improved:
            best[m] = row[m]
        if improved:
            kept.append(int(row["epoch"]))
    return kept


def average_state_dicts(states):
    """Mean of floating-point tensors; other tensors (integer counters) from the last state."""
    soup = {}
    for key, last in states[-1].items():
        if torch.is_floating_point(last):
            soup[key] = torch.stack([s[key].float() for s in states]).mean(0).to(last.dtype)
        else:
            soup[key] = last.clone()
    return soup


def saved_epochs(model_dir):
    """{epoch: path} of the epochs train.py saved in model_dir/epochs (epoch_013.pt ...)."""
    return {int(os.path.basename(p)[6:9]): p for p in glob.glob(os.path.join(model_dir, "epochs", "epoch_*.pt"))}


def keep_soup_epochs(model_dir, kept):
    """KEEP_EPOCHS=soup (a user's choice, for a small disk): once the soup is written, the saved epochs it does not
    use are deleted. Returns the bytes freed."""
    freed = 0
    for epoch, path in saved_epochs(model_dir).items():
        if epoch not in kept:
            freed += os.path.getsize(path)
            os.remove(path)
    print(f"{model_dir}: kept the soup's epochs {kept}, deleted the others ({freed / 1e6:.0f} MB; --keep-epochs soup)")
    return freed


def make_soup(model_dir, cache, n_threads=threads, soup_start=None, keep_epochs="all"):
    torch.set_num_threads(max(1, n_threads))
    config_path, metrics_path = os.path.join(model_dir, "config.json"), os.path.join(model_dir, "metrics.csv")
    if not os.path.isfile(os.path.join(model_dir, "train_done.json")):
        raise UserError(f"{model_dir}: training is not finished (no train_done.json)")
    with open(config_path) as f:
        config = json.load(f)
    metrics = pd.read_csv(metrics_path)
    soup_start = soup_start or config["soup_start"]
    data = load_split(cache, config)
    if data["classes"] != config["classes"]:
        raise UserError(f"{model_dir}: the cache's classes differ from the ones the model was trained on")
    validated = len(data["valid"]) > 0
    # without validation (fold 'all') nothing can be chosen: every saved epoch from the soup start on
    on_disk = set(saved_epochs(model_dir))
    if on_disk and not set(metrics["epoch"]) <= on_disk | set(range(soup_start)):  # KEEP_EPOCHS=soup ran before
        print(f"{model_dir}: epochs {sorted(set(metrics['epoch']) - on_disk - set(range(soup_start)))} were deleted "
              f"(--keep-epochs soup): the soup is chosen from the {len(on_disk)} left")
        metrics = metrics[metrics["epoch"].isin(on_disk)]
    kept = choose_epochs(metrics, soup_start) if validated else \
        [int(e) for e in metrics["epoch"] if e >= soup_start]
    if not kept:
        raise UserError(f"{model_dir}: no saved epoch from the soup start {soup_start} on")
    states = [torch.load(os.path.join(model_dir, "epochs", f"epoch_{e:03d}.pt"), map_location="cpu")
              for e in kept]
    mel_settings = MelSettings(**config["mel_settings"])
    model = build_model(config)
    model.load_state_dict(average_state_dicts(states))
    probs = predict(model, MelFrontEnd(mel_settings), data["audio"], torch.device("cpu"), rows=data["valid"])
    soup_metrics = all_metrics(data["targets"][data["valid"]], probs)
    best = metrics.loc[metrics["auc"].idxmax()] if metrics["auc"].notna().any() else None
    atomic_write(os.path.join(model_dir, "soup.pt"), lambda tmp: torch.save(model.state_dict(), tmp))
    name = f"model{config['id']}"
    export_dir = os.path.join(model_dir, "export")
    export_artifact(model, mel_settings, config["classes"], export_dir, name, value=soup_metrics["auc"],
                    window_seconds=window_seconds_of(config))
    report = dict(kept_epochs=kept, soup=soup_metrics, validated=validated, best_single_epoch=None if best is None
                  else dict(epoch=int(best["epoch"]), **{m: float(best[m]) for m in TRACKED_METRICS}), name=name)
    save_json(report, os.path.join(model_dir, "soup.json"))
    if keep_epochs == "soup":
        keep_soup_epochs(model_dir, kept)
    print(f"{model_dir}: soup of epochs {kept}: " + " ".join(f"{k}={v:.4f}" for k, v in soup_metrics.items())
          + (f" (best single epoch {int(best['epoch'])}: auc={best['auc']:.4f})" if best is not None
             else " (no validation rows: every epoch from the soup start on)"))
    return report


def bundle(out, model_dirs):
    """Copy the exported models into one folder with a manifest.json: what infer.py and pseudo.py load."""
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    names = []
    for model_dir in model_dirs:
        report_path = os.path.join(model_dir, "soup.json")
        if not os.path.isfile(report_path):
            raise UserError(f"{model_dir}: no soup.json (run soup.py --model-dir {model_dir} first)")
        with open(report_path) as f:
            report = json.load(f)
        export_dir = os.path.join(model_dir, "export")  # beside soup.json: a moved work folder bundles its own
        for item in os.listdir(export_dir):
            shutil.copy2(os.path.join(export_dir, item), os.path.join(tmp, item))
        names.append(report["name"])
    if len(set(names)) != len(names):
        raise UserError(f"model names collide in the bundle: {names}")
    save_json(ensemble_manifest(names, [os.path.abspath(d) for d in model_dirs]), os.path.join(tmp, "manifest.json"))
    swap_in(tmp, out)
    print(f"ensemble {out}: {', '.join(names)}")


def record_post_processing(folder, kernel, boost, tta):
    """Write an ensemble's post-processing (infer.py's postprocessing.json, which it and the Kaggle cell apply):
    kernel "" for the write-up's neighbours, else comma-separated weights; checked as infer.py checks it."""
    import infer
    try:
        pp = infer.PostProcessing(**(dict(kernel=tuple(float(w) for w in kernel.split(","))) if kernel.strip()
                                     else {}), boost=float(boost), tta=float(tta)).check()
    except (ValueError, infer.InferError) as error:
        raise UserError(f"post-processing: {error}") from None
    save_json(dict(kernel=list(pp.kernel), boost=pp.boost, tta=pp.tta),
              os.path.join(folder, infer.POSTPROCESSING_FILE))
    print(f"ensemble {folder}: post-processing {pp.describe()}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "postprocessing":
        p = argparse.ArgumentParser(prog="soup.py postprocessing", description="Record an ensemble's "
                                    "post-processing (make ensemble: PP_KERNEL, PP_BOOST, PP_TTA).")
        add_flag(p, "--ensemble", required=True)
        p.add_argument("--kernel", default="", help="an odd-length smoothing kernel, comma-separated; empty: the "
                       "write-up's neighbours")
        p.add_argument("--boost", type=float, default=0.0, help="the share each row moves toward the file's maximum")
        p.add_argument("--tta", type=float, default=0.0, help="the share of the windows shifted by 2.5 s")
        args = p.parse_args(sys.argv[2:])
        return record_post_processing(args.ensemble, args.kernel, args.boost, args.tta)
    if len(sys.argv) > 1 and sys.argv[1] == "bundle":
        p = argparse.ArgumentParser(prog="soup.py bundle", description="Bundle exported soups into an ensemble.")
        add_flag(p, "--out", required=True)
        p.add_argument("model_dirs", nargs="+", help="model folders with a soup.json")
        args = p.parse_args(sys.argv[2:])
        return bundle(args.out, args.model_dirs)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model-dir", required=True, help="train.py's output folder of one model")
    add_flag(p, "--cache", default="work/cache")
    add_flag(p, "--soup-start")
    add_flag(p, "--threads", default=threads)
    add_flag(p, "--keep-epochs", default="all")
    args = p.parse_args()
    make_soup(args.model_dir, args.cache, args.threads, args.soup_start, args.keep_epochs)


if __name__ == "__main__":
    run_main(main)
