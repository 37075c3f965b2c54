"""One HTML page of a cycle: every round, model and pseudo-label set, readable offline in a browser.

    python report.py --work work
    python report.py --work work/demo --audio data/demo/test_soundscapes --labels data/demo-test-labels.csv
    make report

Reads what the cycle left in --work: roundR/modelID/{metrics.csv, soup.json, config.json} (training curves, the
soup's kept epochs and metrics), roundR/site.json (the held-out site score, site_score.py),
rounds.json (ROUNDS=auto's decision), pseudoR.npz (pseudo labels), scores.csv (bench/score_demo.py's test scores;
computed here when --labels and --audio are given) and *.timing.json (seconds per soundscape and model, written
by infer.py beside its submission). Writes --out (default WORK/report/): index.html and the PNG figures it
shows, beside it. A missing or half-finished round or model is shown as missing. Needs matplotlib, an optional
extra (`pip install matplotlib`), never needed by the cycle or by infer.py.
"""
import argparse
import glob
import html
import json
import os
import sys

import numpy as np
import pandas as pd

from flags import HelpFormatter, add_flag
from errors import UserError, run_main
from files import swap_in

ROOT = os.path.dirname(os.path.abspath(__file__))
CURVES = (("loss", ("train_loss", "valid_loss")), ("AUC", ("auc",)), ("cMAP", ("cmap",)), ("LRAP", ("lrap",)),
          ("F1", ("f1",)), ("learning rate", ("lr",)))
METRICS = ("auc", "cmap", "lrap", "f1")


def load_plotting():
    try:
        import matplotlib
    except ImportError:
        raise UserError("report.py draws with matplotlib, an optional extra: pip install matplotlib")
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def read_json(path):
    with open(path) as f:
        return json.load(f)


def find_rounds(work):
    """{round: {model id: folder}} of every roundR/modelID folder, in order."""
    rounds = {}
    for folder in sorted(glob.glob(os.path.join(work, "round*", "model*"))):
        r, m = os.path.basename(os.path.dirname(folder))[5:], os.path.basename(folder)[5:]
        if r.isdigit() and m.isdigit():
            rounds.setdefault(int(r), {})[int(m)] = folder
    return dict(sorted((r, dict(sorted(models.items()))) for r, models in rounds.items()))


def model_state(folder):
    """What a model folder holds: metrics (DataFrame or None), soup report, config, and a status word."""
    metrics_path, soup_path, config_path = (os.path.join(folder, f) for f in ("metrics.csv", "soup.json",
                                                                             "config.json"))
    metrics = pd.read_csv(metrics_path) if os.path.isfile(metrics_path) else None
    soup = read_json(soup_path) if os.path.isfile(soup_path) else None
    config = read_json(config_path) if os.path.isfile(config_path) else {}
    if soup is not None:
        status = "finished"
    elif os.path.isfile(os.path.join(folder, "train_done.json")):
        status = "trained, no soup yet"
    elif metrics is not None:
        status = f"training: {len(metrics)} of {config.get('epochs', '?')} epochs"
    else:
        status = "missing"
    return dict(metrics=metrics, soup=soup, config=config, status=status)


def curves_figure(plt, state, title, path):
    """Training curves of one model, the soup-kept epochs marked with dots and a shaded band."""
    metrics, kept = state["metrics"], (state["soup"] or {}).get("kept_epochs", [])
    fig, axes = plt.subplots(1, len(CURVES), figsize=(3.0 * len(CURVES), 2.6))
    for ax, (name, columns) in zip(axes, CURVES):
        for column in columns:
            if column in metrics and metrics[column].notna().any():
                ax.plot(metrics["epoch"], metrics[column], marker="o", markersize=2.5,
                        label=column.replace("_", " "))
                marked = metrics[metrics["epoch"].isin(kept)]
                ax.scatter(marked["epoch"], marked[column], s=14, color="black", zorder=3)
        if not any(c in metrics and metrics[c].notna().any() for c in columns):  # fold 'all': nothing held out
            ax.text(0.5, 0.5, "no validation rows\n(fold all)", ha="center", va="center", fontsize=8,
                    color="gray", transform=ax.transAxes)
        if kept:
            ax.axvspan(min(kept) - 0.5, max(kept) + 0.5, color="tab:green", alpha=0.08)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(columns) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(f"{title} (dots: epochs in the soup)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def label_figure(plt, probs, title, path):
    fig, ax = plt.subplots(figsize=(4.5, 2.6))
    ax.hist(probs.ravel(), bins=50, color="tab:blue")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("pseudo label", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fmt(value, digits=4):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "&ndash;"
    return f"{value:.{digits}f}" if isinstance(value, (float, np.floating)) else html.escape(str(value))


def table(header, rows):
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def pseudo_sections(plt, work, out):
    """One section per pseudoR.npz: coverage, mean label, floors, histogram, the classes that moved most."""
    parts, previous = [], None
    for path in sorted(glob.glob(os.path.join(work, "pseudo*.npz"))):
        name = os.path.splitext(os.path.basename(path))[0]
        labels = np.load(path, allow_pickle=False)
        probs, classes = labels["probs"], [str(c) for c in labels["classes"]]
        floor_after = np.median(probs, axis=0)
        floor_before = labels["raw_floor"] if "raw_floor" in labels.files else None
        label_figure(plt, probs, f"{name}: label values", os.path.join(out, f"{name}_hist.png"))
        rows = [["windows", f"{len(probs):,}"], ["soundscapes", f"{len(set(labels['paths'])):,}"],
                ["mean label", fmt(float(probs.mean()))],
                ["per-class floor (median) before normalization, mean over classes",
                 fmt(float(floor_before.mean())) if floor_before is not None else "not recorded"],
                ["per-class floor after normalization, mean over classes", fmt(float(floor_after.mean()))]]
        section = f"<h3>{name}</h3>" + table(["", name], rows)
        section += f'<img src="{name}_hist.png" alt="{name} histogram">'
        mass = pd.Series(probs.mean(0), index=classes)
        if previous is not None:
            change = (mass - previous).dropna().sort_values(key=np.abs, ascending=False).head(10)
            section += "<p>Classes whose mean pseudo label changed most from the previous set:</p>" + table(
                ["class", "before", "after", "change"],
                [[html.escape(c), fmt(previous[c]), fmt(mass[c]), f"{change[c]:+.4f}"] for c in change.index])
        previous = mass
        parts.append(section)
    return parts


def test_scores(work, audio, labels_path):
    """bench/score_demo.py's table: computed when labels are given, else its scores.csv if a run left one."""
    if labels_path and audio:
        sys.path.insert(0, os.path.join(ROOT, "bench"))
        import infer
        from score_demo import score_round
        labels, paths, rows = pd.read_csv(labels_path, dtype={"row_id": str}), infer.list_audio(audio), []
        for r in sorted(find_rounds(work)):
            ensemble = os.path.join(work, f"round{r}", "ensemble")
            if os.path.isfile(os.path.join(ensemble, "manifest.json")):
                for (name, pp), auc in score_round(ensemble, paths, labels, infer.pp_weight).items():
                    rows.append(dict(round=r, model=name, post_processing=pp, macro_auc=auc))
        return pd.DataFrame(rows)
    path = os.path.join(work, "scores.csv")
    return pd.read_csv(path) if os.path.isfile(path) else None


def test_auc(scores, r, name):
    """{post-processing: test AUC or None} of a model ("model3" or "ensemble") in round r, from scores.csv."""
    out = {}
    if scores is not None and len(scores):
        for pp in (False, True):
            hit = scores[(scores["round"] == r) & (scores["model"] == name) & (scores["post_processing"] == pp)]
            out[pp] = float(hit["macro_auc"].iloc[0]) if len(hit) else None
    return out


def site_report(work, r):
    """Round r's score on the site's held-out labelled soundscapes (site_score.py's site.json), or {}."""
    path = os.path.join(work, f"round{r}", "site.json")
    report = read_json(path) if os.path.isfile(path) else {}
    return report if report.get("windows") else {}


def model_section(plt, state, r, m, tmp, scores, site=None):
    """(the round table's row, the model's section: curves and the soup against the best epoch)."""
    soup, metrics = state["soup"] or {}, state["metrics"]
    best = soup.get("best_single_epoch") or (
        metrics.loc[metrics["auc"].idxmax()].to_dict() if metrics is not None
        and metrics["auc"].notna().any() else {})
    chance = state["config"].get("pseudoLabelChance")
    test = test_auc(scores, r, f"model{m}")
    row = [f"model{m}", html.escape(state["status"]),
           fmt(best.get("auc")) + (f" (epoch {int(best['epoch'])})" if best.get("epoch") else ""),
           fmt((soup.get("soup") or {}).get("auc")),
           f"{100 * chance:.0f} %" if chance is not None and r > 1 else "&ndash;",
           fmt(test.get(False)), fmt(test.get(True))] + (
        [fmt(site["members"].get(f"model{m} +pp"))] if site else [])
    if metrics is None or not len(metrics):
        return row, f"<h3>round {r}, model{m}</h3><p>{html.escape(state['status'])}</p>"
    image = f"round{r}_model{m}.png"
    curves_figure(plt, state, f"round {r}, model{m}", os.path.join(tmp, image))
    soup_row = table(["", *METRICS], [
        ["soup of epochs " + ", ".join(map(str, soup.get("kept_epochs", []))) if soup else "no soup yet",
         *[fmt((soup.get("soup") or {}).get(k)) for k in METRICS]],
        [f"best single epoch ({int(best['epoch'])})" if best.get("epoch") else "best single epoch",
         *[fmt(best.get(k)) for k in METRICS]]])
    return row, f'<h3>round {r}, model{m}</h3><img src="{image}" alt="round {r} model{m}">' + soup_row


def round_sections(plt, work, r, models, ids, tmp, scores):
    """A round's heading, its table (every model, then the ensemble) and each model's section."""
    ensemble = os.path.isfile(os.path.join(work, f"round{r}", "ensemble", "manifest.json"))
    site = site_report(work, r)
    rows, sections = [], []
    for m in ids:
        state = model_state(models[m]) if m in models else dict(metrics=None, soup=None, config={},
                                                                  status="missing")
        row, section = model_section(plt, state, r, m, tmp, scores, site)
        rows.append(row)
        sections.append(section)
    test = test_auc(scores, r, "ensemble")
    rows.append(["ensemble", "bundled" if ensemble else "missing", "&ndash;", "&ndash;", "&ndash;",
                 fmt(test.get(False)), fmt(test.get(True))] + ([fmt(site.get("auc_pp"))] if site else []))
    site_line = (f"<p>held-out site: the site's labelled soundscapes that prep held out ({site['files']} files, "
                 f"{site['windows']} windows, {site['classes_with_positive']} classes with a positive); the "
                 f"ensemble's macro AUC {fmt(site['auc'])}, +pp {fmt(site['auc_pp'])}, noise "
                 f"&plusmn;{fmt(site['noise'])}</p>" if site else "")
    return [f"<h2>Round {r}</h2><p>ensemble: {'bundled' if ensemble else 'missing'}</p>", site_line,
            table(["model", "status", "valid AUC, best epoch", "valid AUC, soup", "pseudo-label chance",
                   "test AUC", "test AUC +pp"] + (["held-out site AUC +pp"] if site else []), rows)] + sections


def rounds_section(work):
    """ROUNDS=auto's decision (site_score.py rounds' rounds.json), or nothing."""
    path = os.path.join(work, "rounds.json")
    if not os.path.isfile(path):
        return ""
    decision = read_json(path)
    return (f"<h2>Rounds (ROUNDS=auto)</h2><p>final ensemble: round {decision['final']}</p><ul>"
            + "".join(f"<li>{html.escape(line)}</li>" for line in decision["reasons"]) + "</ul>")


def speech_section(work, examples=5):
    """The training files whose opening prep found to be speech (cache/speech.csv): the count, a few to listen to."""
    path = os.path.join(work, "cache", "speech.csv")
    if not os.path.isfile(path):
        return ""
    spoken = pd.read_csv(path)
    if spoken.empty:
        return "<h2>Speech in the recordings' openings</h2><p>none found (prep.py --speech)</p>"
    kept = spoken["kept"].astype(bool)
    rows = [[html.escape(str(p)), fmt(end, 1), "from where it ends" if k else "left out: speech almost throughout"]
            for p, end, k in zip(spoken["path"][:examples], spoken["speech_end_seconds"][:examples], kept[:examples])]
    return (f"<h2>Speech in the recordings' openings</h2><p>{len(spoken)} training file(s) open with speech "
            f"(median {spoken['speech_end_seconds'].median():.1f} s): {int(kept.sum())} trained on from where it ends, "
            f"{int((~kept).sum())} left out; every one in {html.escape(path)}. The first {len(rows)}:</p>"
            + table(["file", "speech ends (s)", "training window"], rows))


def timing_section(work):
    """Network seconds per soundscape of each model that an infer.py run left (<out>.timing.json)."""
    timing_rows = []
    for path in sorted(glob.glob(os.path.join(work, "*.timing.json"))):
        timing = read_json(path)
        for name, seconds in timing["seconds_per_soundscape"].items():
            timing_rows.append([html.escape(os.path.basename(path)), html.escape(name), fmt(seconds, 3),
                                html.escape(str(timing.get("backend", "")))])
    return "<h2>Inference time</h2>" + (table(["run", "model", "s per soundscape (network)", "backend"],
                                             timing_rows) if timing_rows else "<p>no infer.py run here</p>")


STYLE = ("body{font-family:sans-serif;margin:1.5em;max-width:1900px}table{border-collapse:collapse;margin:.5em 0}"
         "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#f2f2f2}img{max-width:100%}")


def write_report(work, out=None, audio=None, labels=None):
    """WORK -> <out or WORK/report>/index.html (and its figures), swapped in whole; returns its path."""
    plt = load_plotting()
    out = out or os.path.join(work, "report")
    tmp = out.rstrip("/") + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    rounds, scores = find_rounds(work), test_scores(work, audio, labels)
    ids = sorted({m for models in rounds.values() for m in models})
    body = [f"<h1>Cycle report: {html.escape(os.path.abspath(work))}</h1>"]
    if not rounds:
        body.append("<p>No round has started yet (no roundR/modelID folder).</p>")
    for r in range(1, max(rounds or [0]) + 1):
        body += round_sections(plt, work, r, rounds.get(r, {}), ids, tmp, scores)
    body.append(rounds_section(work))
    body.append(speech_section(work))
    pseudo = pseudo_sections(plt, work, tmp)
    body.append("<h2>Pseudo labels</h2>" + ("".join(pseudo) if pseudo else "<p>none yet</p>"))
    body.append(timing_section(work))
    with open(os.path.join(tmp, "index.html"), "w") as f:
        f.write(f"<!doctype html><html><head><meta charset='utf-8'><title>Cycle report</title><style>{STYLE}"
                f"</style></head><body>{''.join(body)}</body></html>")
    swap_in(tmp, out)
    path = os.path.join(out, "index.html")
    print(f"report: {path}")
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_flag(p, "--work", default="work")
    add_flag(p, "--out")
    add_flag(p, "--audio")
    add_flag(p, "--labels")
    args = p.parse_args()
    if not os.path.isdir(args.work):
        raise UserError(f"no work folder: {args.work}")
    write_report(args.work, args.out, args.audio, args.labels)


if __name__ == "__main__":
    run_main(main)
