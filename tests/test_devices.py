"""One model per free GPU: make GPUS=... runs as many jobs as GPUs, and each job's train.py claims a GPU that no
other job holds. Checked on CPU with fake GPU ids: the real make, a fake python that claims as train.py does."""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from devices import claim_gpu, gpu_ids, release

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a stand-in for python that make calls: train.py claims a GPU (devices.claim_gpu, as the real one does) and
# "trains" for a time that depends on the model (256x256 models take longest); soup.py writes soup.json
FAKE_PYTHON = textwrap.dedent("""\
    #!{python}
    import json, os, sys, time
    sys.path.insert(0, {root!r})
    script, args = sys.argv[1], sys.argv[2:]
    def flag(name):
        return args[args.index(name) + 1] if name in args else None
    if script == "train.py":
        import devices
        gpu, lock = devices.claim_gpu(flag("--gpus"))
        began = time.time()
        time.sleep({{"1": 2.5, "2": 2.5, "3": 1.2}}.get(flag("--model"), 0.7))
        with open(os.path.join({log!r}, f"model{{flag('--model')}}.json"), "w") as f:
            json.dump(dict(gpu=gpu, start=began, end=time.time(), threads=flag("--threads")), f)
    elif script == "soup.py" and args[0] != "bundle":
        with open(os.path.join(flag("--model-dir"), "soup.json"), "w") as f:
            json.dump(dict(threads=flag("--threads")), f)
    elif script == "soup.py":
        out = flag("--out")
        os.makedirs(out, exist_ok=True)
        open(os.path.join(out, "manifest.json"), "w").write("{{}}")
""")


def overlaps(jobs):
    """Pairs of jobs that held the same GPU at the same time."""
    return [(a, b) for i, a in enumerate(jobs) for b in jobs[i + 1:]
            if a["gpu"] == b["gpu"] and a["start"] < b["end"] and b["start"] < a["end"]]


def test_make_gpus_never_shares_a_gpu_while_another_is_free(tmp_path):
    work, log, locks = tmp_path / "work", tmp_path / "log", tmp_path / "locks"
    log.mkdir()
    (work / "cache").mkdir(parents=True)
    (work / "cache" / "train_rows.csv").write_text("filename\n")
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON.format(python=sys.executable, root=ROOT, log=str(log)))
    python.chmod(0o755)
    env = dict(os.environ, BIRDCLEF_GPU_LOCKS=str(locks))
    for model in range(1, 7):
        (work / "round1" / f"model{model}").mkdir(parents=True)
    subprocess.run(["make", "-C", ROOT, "round1", f"WORK={work}", f"PY={python}", "GPUS=0,1,2,3", "THREADS=8",
                    "PRETRAINED=none"], check=True, env=env, capture_output=True, text=True)
    jobs = [json.loads((log / f"model{m}.json").read_text()) for m in range(1, 7)]
    assert not overlaps(jobs), jobs
    assert {job["gpu"] for job in jobs} == {"0", "1", "2", "3"}
    # make ran four at a time (so the test is not passing by running them one by one)
    assert max(sum(j["start"] <= job["start"] < j["end"] for j in jobs) for job in jobs) == 4
    assert all(job["threads"] == "8" for job in jobs)  # train.py divides them itself, after claiming
    soups = [json.loads((work / "round1" / f"model{m}" / "soup.json").read_text()) for m in range(1, 7)]
    assert all(s["threads"] == "2" for s in soups)    # each job's share of THREADS


def test_claims_wait_for_a_free_gpu_and_release(tmp_path):
    first, lock_a = claim_gpu("0,1", str(tmp_path), log=False)
    second, lock_b = claim_gpu("0,1", str(tmp_path), log=False)
    assert {first, second} == {"0", "1"}
    release(lock_a)
    third, lock_c = claim_gpu("0,1", str(tmp_path), log=False)
    assert third == first   # the one given back
    # a claim in another process while both are held waits until one is given back
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); import devices; "
            f"print(devices.claim_gpu('0,1', {str(tmp_path)!r})[0])")
    waiting = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    assert "waiting" in waiting.stderr.readline()   # it says so once, and waits
    time.sleep(1.5)
    assert waiting.poll() is None
    release(lock_b)
    out, _ = waiting.communicate(timeout=60)
    assert out.strip() == second
    release(lock_c)
    with pytest.raises(Exception):
        gpu_ids(" , ")


def test_make_bench_gpu_on_cpu_prints_its_figures():
    """make bench-gpu DEVICE=cpu, small: a line per model, pseudo-labelling, the projection, then the last line."""
    small = "--steps 1 --repeats 2 --batches 2 --batch-size 8 --pseudo-batches 1 --pseudo-batch-size 8 --n-gpus 2"
    result = subprocess.run(["make", "--no-print-directory", "-C", ROOT, "bench-gpu", "DEVICE=cpu", "THREADS=2",
                             f"PY={sys.executable}", "MODELS=models-demo.csv", f"BENCH_GPU_ARGS={small}"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    models = [line for line in lines if line.startswith("model ") and "loader/train" in line]
    assert len(models) == 3 and all("ms on the host" in line and "median" in line for line in models)
    assert any("on 2 x cpu" in line for line in lines)
    last = dict(field.split("=", 1) for field in lines[-1].split()[1:])
    assert lines[-1].startswith("gpu ") and last["device"] == "cpu"
    assert len(last["train_samples_per_s"].split("/")) == 3
    assert all(float(v) > 0 for v in last["train_samples_per_s"].split("/"))
    assert float(last["loader_ratio"]) > 0 and float(last["pseudo_windows_per_s"]) > 0
    assert float(last["cycle_hours"]) > 0


def test_bench_gpu_measures_jobs_sharing_a_device():
    """bench/gpu.py --slots: each of several processes steps its own model on one device, all together; their
    samples/s are summed (on CPU, two processes sharing 2 cores)."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import gpu
    row = {"image_height": 64, "image_width": 64, "n_mels": 64, "hop_length": 1024}
    together = gpu.slots_speed(row, "cpu", 4, 2, seconds=1.0)
    assert together > 0


def test_a_gpu_named_twice_has_two_slots_taken_after_every_gpus_first(tmp_path):
    from devices import gpu_slots
    assert gpu_slots("0,0,1,1") == [("0", 0), ("1", 0), ("0", 1), ("1", 1)]
    held = [claim_gpu("0,0,1,1", str(tmp_path), log=False) for _ in range(4)]
    assert [gpu for gpu, _ in held] == ["0", "1", "0", "1"]  # spread first, then shared
    release(held[0][1])
    assert claim_gpu("0,0,1,1", str(tmp_path), log=False)[0] == "0"  # the slot given back
