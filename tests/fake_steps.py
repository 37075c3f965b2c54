"""The cycle's steps as make calls them, faked: each writes the files the next step and make look for, in
milliseconds, so that make's plan for any number of rounds is tested without training. Anything else (python -c)
runs for real.

    make ensemble PY="python tests/fake_steps.py" ROUNDS=5 ...

Every call is appended to <WORK>/steps.log (step, round, model) for the test to read.
"""
import json
import os
import sys


def value(args, flag):
    return args[args.index(flag) + 1] if flag in args else None


def log(work, *fields):
    with open(os.path.join(work, "steps.log"), "a") as f:
        f.write(" ".join(str(x) for x in fields) + "\n")


def main():
    script, args = (sys.argv[1] if len(sys.argv) > 1 else ""), sys.argv[2:]
    name = os.path.basename(script)
    if name == "prep.py":
        out = value(args, "--out")
        os.makedirs(out, exist_ok=True)
        open(os.path.join(out, "train_rows.csv"), "w").write("filename\n")
        log(os.path.dirname(out), "prep")
    elif name == "train.py":
        work, model, round_ = value(args, "--work"), value(args, "--model"), value(args, "--round")
        os.makedirs(os.path.join(work, f"round{round_}", f"model{model}"), exist_ok=True)
        log(work, "train", round_, model, value(args, "--pseudo") or "-", value(args, "--pl-power") or "1")
    elif name == "soup.py" and args and args[0] == "bundle":
        out = value(args, "--out")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "manifest.json"), "w") as f:
            json.dump(dict(models=[os.path.basename(d) for d in args[3:]], round=os.path.basename(os.path.dirname(out))), f)
    elif name == "soup.py" and args and args[0] == "postprocessing":  # what it records (tested in process)
        with open(os.path.join(value(args, "--ensemble"), "postprocessing.json"), "w") as f:
            json.dump(dict(kernel=value(args, "--kernel"), boost=value(args, "--boost"), tta=value(args, "--tta")), f)
    elif name == "soup.py" and args:
        folder = value(args, "--model-dir")
        with open(os.path.join(folder, "soup.json"), "w") as f:
            json.dump(dict(name=os.path.basename(folder)), f)
    elif name == "site_score.py" and args and args[0] == "score":
        out = value(args, "--out")
        with open(out, "w") as f:
            json.dump(dict(windows=0), f)
        log(os.path.dirname(os.path.dirname(out)), "site", os.path.basename(os.path.dirname(out)))
    elif name == "pseudo.py":
        out = value(args, "--out")
        open(out, "w").write("labels")
        log(os.path.dirname(out), "pseudo", os.path.basename(out))
    else:  # python -c ..., soup.py postprocessing: for real
        os.execv(sys.executable, [sys.executable] + sys.argv[1:])


if __name__ == "__main__":
    main()
