"""Write the one folder a user uploads to Kaggle (as a Dataset or a Model) to score the competition offline.

    python kaggle.py --ensemble work/ensemble --out work/kaggle
    python kaggle.py --ensemble work/ensemble --out work/kaggle --python-version 3.10
    python kaggle.py --ensemble work/ensemble --out work/kaggle --wheels none      # no backend wheels
    make kaggle

Reads an exported ensemble (`make ensemble`). Writes --out (built under a temporary name, then swapped in):
ensemble/ (the ensemble as it is), infer.py (this repo's, unchanged), wheels/ (the optional inference backends,
OpenVINO and ONNX Runtime, with their dependencies, for the kernel's Python and platform, downloaded with pip;
skipped with --wheels none) and KERNEL.md: the notebook cells to paste, an offline `pip install --no-index` of
those wheels, then infer.py. Kaggle mounts the upload under /kaggle/input; infer.py finds the ensemble there.
"""
import argparse
import os
import shutil
import subprocess
import sys

from flags import HelpFormatter, add_flag, infer_setting
from errors import UserError, run_main
from files import swap_in

# defaults: Kaggle's CPU notebooks (Python 3.11 on x86_64 Linux, glibc 2.35, in 2025)
python_version = "3.11"
platform = "manylinux_2_28_x86_64,manylinux_2_17_x86_64"  # newer wheels first; manylinux2014 = 2_17
wheels = "openvino onnxruntime"

ROOT = os.path.dirname(os.path.abspath(__file__))

# both cells find the upload the same way: the attached folder whose ensemble/manifest.json is ours (other
# datasets may ship a manifest.json or an infer.py of their own), as a Kaggle Dataset or a Kaggle Model version
FIND_UPLOAD = '''import glob, json, os
root = os.environ.get("BIRDCLEF_KAGGLE_ROOT", "/kaggle/input")
def ours(manifest):
    try:
        return json.load(open(manifest)).get("format") == {format!r}
    except Exception:
        return False
uploads = sorted({{os.path.dirname(os.path.dirname(m)) for m in glob.glob(f"{{root}}/*/ensemble/manifest.json")
                  + glob.glob(f"{{root}}/*/*/*/*/ensemble/manifest.json") if ours(m)}})
if len(uploads) != 1:
    raise SystemExit(f"attach exactly one folder made by make kaggle; found {{len(uploads)}}: {{uploads}}")
upload = uploads[0]'''.format(format=infer_setting("ENSEMBLE_FORMAT"))

INSTALL_CELL = FIND_UPLOAD + '''
import subprocess, sys
packages = {packages}
if packages and os.path.isdir(f"{upload}/wheels"):  # the backends' wheels, offline
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", f"{upload}/wheels",
                    *packages], check=False)
else:
    print("no wheels in the upload: infer.py runs on its torch backend")'''

INFER_CELL = FIND_UPLOAD + '''
# the upload's infer.py, on the upload's ensemble: writes submission.csv
infer = {"__name__": "infer_of_upload", "__file__": f"{upload}/infer.py"}
exec(compile(open(f"{upload}/infer.py").read(), f"{upload}/infer.py", "exec"), infer)
teacher = sorted(glob.glob(f"{upload}/teacher/*.onnx"))  # the teacher's vote, where the upload has one
vote = ["--teacher-model", teacher[0], "--teacher-mapping", f"{upload}/teacher/mapping.csv", "--teacher-vote",
        open(f"{upload}/teacher/weight.txt").read().strip()] if teacher else []
infer["main"](["--ensemble", f"{upload}/ensemble", *vote])'''

KERNEL_MD = '''# Scoring BirdCLEF offline with this folder

Upload this folder as a Kaggle Dataset (or a Kaggle Model), attach it and the competition to a CPU notebook,
turn the internet off, and paste the two cells below. They find this folder under /kaggle/input (by its
ensemble's manifest, whatever else is attached); infer.py scores the newest competition's `test_soundscapes` in
the column order of its `sample_submission.csv` and writes `submission.csv` within the competition's time
budget ({budget_2024} minutes for BirdCLEF 2024, whose limit was 120; {budget} from 2025 on, limit 90).

Cell 1: install the optional backends offline (OpenVINO is about 10x faster than plain torch on Kaggle's CPUs;
skip this cell and infer.py runs on torch alone). Wheels for Python {python_version}, {platform}.

```python
{install_cell}
```

Cell 2: run this folder's infer.py on its ensemble (and, where this folder has a teacher/, the teacher's vote:
its ONNX file, its mapping of the classes and its weight; infer.py drops it first if time runs short). Pasting
the whole of infer.py into a cell does the same when this is the one ensemble attached; a later cell can call
`infer["main"](["--budget-min", "60"])` with any of `python infer.py --help`'s flags, e.g. `--teacher-model` of
a public Perch v2 ONNX file attached to the notebook, with `--teacher-mapping` of this folder's teacher/.

```python
{infer_cell}
```
'''


def download_wheels(packages, folder, python_version, platform):
    """pip download the packages and their dependencies as binary wheels for another Python and platform."""
    tags = [flag for tag in platform.split(",") for flag in ("--platform", tag.strip())]
    command = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", *tags,
               "--python-version", python_version, "--implementation", "cp", "-d", folder, *packages]
    print(" ".join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        raise UserError(f"pip could not download wheels of {' '.join(packages)} for Python {python_version} "
                        f"({platform}); pass --wheels none to skip them")


def kernel_markdown(packages, python_version, platform):
    install = INSTALL_CELL.replace("{packages}", repr(list(packages)))
    return KERNEL_MD.format(budget=int(infer_setting("budget_min")),
                            budget_2024=int(infer_setting("budget_min_by_year")[2024]),
                            python_version=python_version, platform=platform,
                            install_cell=install, infer_cell=INFER_CELL)


def write_kaggle_folder(models, out, packages, python_version=python_version, platform=platform,
                        teacher=None):
    """teacher: (model .onnx, mapping .csv, weight) of a teacher's vote, copied into teacher/ (the cell passes
    them to infer.py), or None."""
    if not os.path.isfile(os.path.join(models, "manifest.json")):
        raise UserError(f"no ensemble in {models} (manifest.json); run make ensemble first")
    if teacher:
        for path in teacher[:2]:
            if not os.path.isfile(path):
                raise UserError(f"the teacher's file {path} does not exist (make teacher writes the mapping)")
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(models, os.path.join(tmp, "ensemble"))
    shutil.copy2(os.path.join(ROOT, "infer.py"), os.path.join(tmp, "infer.py"))
    if teacher:  # Perch v2's ONNX file is about 409 MB: the upload holds it once, beside the ensemble
        os.makedirs(os.path.join(tmp, "teacher"))
        shutil.copy2(teacher[0], os.path.join(tmp, "teacher", os.path.basename(teacher[0])))
        shutil.copy2(teacher[1], os.path.join(tmp, "teacher", "mapping.csv"))
        with open(os.path.join(tmp, "teacher", "weight.txt"), "w") as f:
            f.write(f"{teacher[2]:g}\n")
        if packages and "onnxruntime" not in packages:
            packages = list(packages) + ["onnxruntime"]  # the teacher's runtime
    if packages:
        download_wheels(packages, os.path.join(tmp, "wheels"), python_version, platform)
    with open(os.path.join(tmp, "KERNEL.md"), "w") as f:
        f.write(kernel_markdown(packages, python_version, platform))
    swap_in(tmp, out)
    print(f"{out}: upload this folder to Kaggle; {os.path.join(out, 'KERNEL.md')} has the cells to paste")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_flag(p, "--ensemble", default="work/ensemble")
    add_flag(p, "--out", default="work/kaggle")
    p.add_argument("--wheels", default=wheels, help="packages to ship as wheels, space-separated; none skips")
    p.add_argument("--python-version", default=python_version, help="the kernel's Python")
    p.add_argument("--platform", default=platform, help="the kernel's wheel platform tags, comma-separated")
    add_flag(p, "--teacher-model")  # copied into the upload's teacher/, with its mapping and vote
    add_flag(p, "--teacher-mapping")
    add_flag(p, "--teacher-vote", default=infer_setting("teacher_vote"))
    args = p.parse_args()
    packages = [] if args.wheels.strip() in ("", "none") else args.wheels.split()
    teacher = (args.teacher_model, args.teacher_mapping, args.teacher_vote) if args.teacher_model else None
    write_kaggle_folder(args.ensemble, args.out, packages, args.python_version, args.platform, teacher)


if __name__ == "__main__":
    run_main(main)
