"""Which device a step runs on: --device names, and one GPU per training job when a round's models share GPUs.

    python -c "import devices; print(devices.pick_device('auto'))"

make GPUS=0,1,2,3 runs as many training jobs as there are GPUs; each job's train.py claims a GPU that no other
job holds (an exclusive lock file per GPU id, machine-wide, released when the process ends, crash included) and
trains on it alone; GPUS=0,0,1,1 gives each GPU two slots, two jobs side by side. So a job that starts when another ends takes the GPU that job gave back, never one still
busy.
"""
import os
import sys
import tempfile
import time

import torch

from errors import UserError

# defaults
lock_dir = os.environ.get("BIRDCLEF_GPU_LOCKS", os.path.join(tempfile.gettempdir(), "birdclef-gpu-locks"))
poll_seconds = 1.0


def pick_device(name):
    """--device: auto (CUDA, then Apple's MPS, then CPU), cpu, cuda, cuda:1, mps."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked, but torch sees no CUDA device")
    if name == "mps" and not mps:
        raise UserError("--device mps asked, but torch sees no Apple GPU")
    return torch.device(name)


def gpu_ids(gpus):
    """"0,1, 2" -> ["0", "1", "2"]."""
    ids = [g.strip() for g in str(gpus).split(",") if g.strip()]
    if not ids:
        raise UserError(f"--gpus takes comma-separated GPU ids such as 0,1,2,3, not {gpus!r}")
    return ids


def gpu_slots(gpus):
    """The job slots of `gpus` in the order they are taken: an id named twice ("0,0,1,1") has two slots, and
    every GPU's first slot comes before any GPU's second, so jobs spread over the GPUs before they share one.
    "0,0,1,1" -> [("0", 0), ("1", 0), ("0", 1), ("1", 1)]."""
    seen, slots = {}, []
    for gpu in gpu_ids(gpus):
        seen[gpu] = seen.get(gpu, -1) + 1
        slots.append((gpu, seen[gpu]))
    return sorted(slots, key=lambda s: s[1])


def claim_gpu(gpus, folder=lock_dir, log=True):
    """Take the first slot of `gpus` ("0,1,2,3"; "0,0,1,1": two jobs per GPU) that no other process holds and keep it until this process ends
    (or `release` is called on what this returns). Waits while all are held. Returns (gpu id, lock file)."""
    import fcntl  # POSIX only, like make GPUS=...
    os.makedirs(folder, exist_ok=True)
    waited = False
    while True:
        for gpu, slot in gpu_slots(gpus):
            handle = open(os.path.join(folder, f"gpu{gpu}.lock" if slot == 0 else f"gpu{gpu}.slot{slot}.lock"), "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            return gpu, handle
        if log and not waited:
            print(f"every GPU of {gpus} is held by another job; waiting for one", file=sys.stderr, flush=True)
        waited = True
        time.sleep(poll_seconds)


def release(handle):
    """Give a GPU of `claim_gpu` back before the process ends."""
    import fcntl
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()
