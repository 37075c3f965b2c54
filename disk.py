"""The disk plan: what the cycle will write, held against the free space of the folder it writes to, before hours
of work. prep.py checks the cache; a training job that starts afresh checks what the rest of the cycle saves in
WORK. Each stops in one line that names a setting that fits.

    python -c "import disk; print(disk.cycle_plan(6, 3, 50, 13, 4.3e6 * 4, keep='all'))"

Sizes: a cached window is 5 s of 32-kHz float16 (320 kB). A model's weights are P bytes (EfficientNet-B0 with
the write-up's 182 classes: 17 MB in float32); a run saves each epoch from the soup start (P each), last.pt while
it trains (weights, AdamW's two moments: 3P, removed when it ends), the soup (P), its export (TorchScript and ONNX:
2P) and the copies of that export in the round's ensemble and the final one (2P each).
"""
import os
import shutil

from common import WINDOW_SAMPLES
from errors import UserError

WINDOW_BYTES = WINDOW_SAMPLES * 2
RUN_FILES_P = 1 + 2 + 2 + 2      # soup, export, the round's ensemble's copy, the final ensemble's (at most)
TRAINING_FILES_P = 3             # last.pt while a run trains
SOUP_SHARE = 0.5                 # KEEP_EPOCHS=soup: the share of saved epochs the plan counts for a soup (it keeps
#                                  those that improve a tracked metric; not measured at full size: half, to be safe)
MARGIN = 1.1                     # 10 % more than the plan, for logs, metrics and the file system


def free_bytes(folder):
    """Free bytes of the disk that holds `folder`, or would hold it (its nearest existing parent)."""
    folder = os.path.abspath(folder)
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return shutil.disk_usage(folder).free


def cache_plan(n_train, n_windows, n_site=0, seconds=5):
    """Bytes of prep's cache: the training files' first `seconds` (the models table's longest window), the unlabeled
    windows, the site's labelled ones (each with seconds - 5 of audio on either side)."""
    k = seconds // 5
    return (n_train * k + n_windows + n_site * (2 * k - 1)) * WINDOW_BYTES


def check_cache(folder, n_train, n_windows, n_site=0, seconds=5):
    """Stop before prep writes anything when the cache will not fit in `folder`'s disk: one line naming a cache
    elsewhere and the --max-unlabeled-windows that fits."""
    need, free = cache_plan(n_train, n_windows, n_site, seconds) * MARGIN, free_bytes(folder)
    if need <= free:
        return
    fits = int(free / MARGIN / WINDOW_BYTES) - (cache_plan(n_train, 0, n_site, seconds) // WINDOW_BYTES)
    raise UserError(f"not enough disk for the cache: {need / 1e9:.1f} GB needed in {folder} ({n_train} training files,"
                    f" of {seconds} s, {n_windows} unlabeled windows, {n_site} labelled ones; 0.32 MB per 5 s), "
                    f"{free / 1e9:.1f} GB free: "
                    f"put the cache on a larger disk (make CACHE=/path/cache)"
                    + (f" or cache fewer unlabeled windows (PREP_ARGS=\"--max-unlabeled-windows {fits}\")"
                       if fits > 0 else ""))


def cycle_plan(runs, saved_epochs, weights_bytes, keep="all", training_now=1):
    """Bytes that `runs` model runs still to train will leave in WORK (keep: all epochs, or soup: those the soup
    uses), `training_now` of them at their peak (every epoch and last.pt) at once."""
    kept = saved_epochs if keep == "all" else saved_epochs * SOUP_SHARE
    peak = training_now * (saved_epochs - kept + TRAINING_FILES_P) * weights_bytes
    return runs * (kept + RUN_FILES_P) * weights_bytes + peak


def check_cycle(folder, runs, saved_epochs, weights_bytes, keep="all", training_now=1):
    """Stop before a training job starts when the rest of the cycle will not fit in `folder`'s disk: one line
    naming a larger disk, or KEEP_EPOCHS=soup where that fits (a user's choice: never the default)."""
    need = cycle_plan(runs, saved_epochs, weights_bytes, keep, training_now) * MARGIN
    free = free_bytes(folder)
    if need <= free:
        return
    pruned = cycle_plan(runs, saved_epochs, weights_bytes, "soup", training_now) * MARGIN
    hint = (f", or keep only the epochs each soup uses once it is written (KEEP_EPOCHS=soup: about "
            f"{pruned / 1e9:.1f} GB)" if keep == "all" and pruned <= free else "")
    raise UserError(f"not enough disk for the cycle in {folder}: {need / 1e9:.1f} GB needed ({runs} model runs to "
                    f"go, {saved_epochs} saved epochs each of {weights_bytes / 1e6:.0f} MB, with soups and exports), "
                    f"{free / 1e9:.1f} GB free: put WORK on a larger disk{hint}")
