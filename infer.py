"""Score soundscapes with an exported ensemble and write a BirdCLEF submission. CPU only, self-contained:
paste this file alone into a Kaggle kernel (needs torch, numpy, soundfile, pandas; scipy only to resample).

    python infer.py --threads 4
    python infer.py --models work/ensemble --audio data/demo/test_soundscapes --out submission.csv
    python infer.py --models work/ensemble --audio my_recordings --backend torch --pp-weight 0 --budget-min 30

--models is a folder written by `make ensemble` (soup.py's export): manifest.json, and per model <name>.json,
<name>.pt2 (torch.export program: mel -> logits), optionally <name>.onnx, and the front-end programs it uses:
spectrogram_fft<n>_hop<h>.pt2 (wave -> power) and mel_<key>.pt2 (power -> mel). One STFT per n_fft serves
every mel whose hop is a multiple of the shortest; networks run in bf16 on CPUs that have it (--precision).
Each soundscape is cut into 5-s windows (the last one zero-padded); row_id is <file stem>_<end second>.
The ensemble is the mean of the models' sigmoid probabilities; then per file
p[t] + w * (p[t-1] + p[t+1]), divided by 1 + 2w (the seed's post-processing with w = 0.5; the constant divisor
keeps values in [0, 1] and changes no ranking). Models run in order of value for cost and are dropped, with a
warning, when the projected time would pass --budget-min; a complete submission is always written.
"""
import argparse
import contextlib
import glob
import json
import math
import os
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch

STARTED = time.time()
SAMPLE_RATE = 32000
WINDOW_SECONDS = 5
WINDOW_SAMPLES = SAMPLE_RATE * WINDOW_SECONDS

# defaults: a Kaggle kernel with the competition data and the exported ensemble attached
audio_dir = "/kaggle/input/birdclef-2024/test_soundscapes"
out_file = "submission.csv"
budget_min = 110.0        # Kaggle stops at 120 minutes; the seed set a 2-hour guard
pp_weight = 0.5           # neighbour smoothing weight (0 disables)
threads = 4               # Kaggle's CPU kernels have 4 vCPUs
default_seconds = 240     # windows written for a file whose length cannot even be read
mel_chunk = 4             # windows per mel call: a few windows' spectra stay in cache (~3x faster than 48 at once)
network_pixels = 8 * 256 * 256  # image pixels per network call: 8 windows of 256x256 beat 48 by ~10% (cache)


def warn(message):
    print(f"warning: {message}", file=sys.stderr, flush=True)


def find_models_dir():
    """The first attached folder holding a manifest.json (Kaggle datasets live under /kaggle/input)."""
    for pattern in ("/kaggle/input/*/manifest.json", "/kaggle/input/*/*/manifest.json", "work/ensemble/manifest.json"):
        found = sorted(glob.glob(pattern))
        if found:
            return os.path.dirname(found[0])
    return None


# ----------------------------------------------------------------------------------------------------------
# audio


def read_audio(path, max_seconds=None):
    """Decode a file (ogg, wav, flac, mp3: whatever libsndfile reads) to mono float32 at 32 kHz.

    Only the first `max_seconds` are read when given. Raises ValueError for an empty file or one that decodes
    to fewer frames than its header promises; soundfile's own errors (corrupt data) propagate as they are.
    """
    import soundfile as sf
    with sf.SoundFile(path) as f:
        rate, expected = f.samplerate, f.frames
        if expected <= 0:
            raise ValueError("empty (no audio frames)")
        wanted = expected if max_seconds is None else min(expected, int(math.ceil(max_seconds * rate)))
        audio = f.read(wanted, dtype="float32", always_2d=True)
    if len(audio) == 0:
        raise ValueError("empty (no audio frames)")
    if len(audio) < wanted:
        raise ValueError(f"truncated (decoded {len(audio)} of {wanted} frames)")
    audio = audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1)  # no copy for mono
    if rate != SAMPLE_RATE:
        from scipy.signal import resample_poly
        g = math.gcd(rate, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)
    return audio if max_seconds is None else audio[:int(max_seconds * SAMPLE_RATE)]


def windows_of(audio, n_windows=None):
    """(n_windows, WINDOW_SAMPLES): consecutive 5-s windows, the last partial one zero-padded.

    n_windows defaults to as many as the audio needs; a given count pads or cuts to it.
    """
    n = n_windows or max(1, math.ceil(len(audio) / WINDOW_SAMPLES))
    padded = np.zeros(n * WINDOW_SAMPLES, dtype=np.float32)
    kept = min(len(audio), len(padded))
    padded[:kept] = audio[:kept]
    return padded.reshape(n, WINDOW_SAMPLES)


def count_windows(path):
    """Number of windows of a file from its header alone (for the rows of an undecodable file)."""
    try:
        import soundfile as sf
        info = sf.info(path)
        return max(1, math.ceil(info.frames / info.samplerate / WINDOW_SECONDS))
    except Exception:
        return default_seconds // WINDOW_SECONDS


def smooth_neighbours(probs, weight=pp_weight):
    """(windows, classes) of one file -> (p[t] + w*(p[t-1] + p[t+1])) / (1 + 2w); a missing neighbour is 0."""
    if weight == 0 or len(probs) == 0:
        return probs
    padded = np.pad(probs, ((1, 1), (0, 0)))
    return (probs + weight * (padded[:-2] + padded[2:])) / (1 + 2 * weight)


# ----------------------------------------------------------------------------------------------------------
# models


def load_program(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.load(path).module()


class Network:
    """One exported model: run(mel (B, 1, n_mels, frames) float32 tensor) -> (B, classes) logits numpy."""

    def __init__(self, folder, spec, backend, n_threads, precision="f32"):
        self.name, self.mel_key, self.classes = spec["name"], spec["mel_key"], spec["classes"]
        self.value, self.cost = float(spec.get("value") or 0.0), float(spec.get("cost") or 1.0)
        self.windows_per_call = max(1, network_pixels // (int(spec["image_height"]) * int(spec["image_width"])))
        if math.isnan(self.value):
            self.value = 0.0
        self.backend, self.precision = backend, "f32"   # the precision it computes in
        onnx_path = os.path.join(folder, spec["name"] + ".onnx")
        if backend == "openvino":
            import openvino as ov
            core = ov.Core()
            if os.path.exists(onnx_path):
                model = core.read_model(onnx_path)
            else:
                model = ov.convert_model(torch.export.load(os.path.join(folder, spec["network"])))
            # explicit, since OpenVINO would pick bf16 by itself on some CPUs; bf16 only where it is native
            native_bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if precision == "bf16" and not native_bf16:
                warn("this CPU has no native bf16; running in f32")
            float_precision = "bf16" if precision in ("bf16", "auto") and native_bf16 else "f32"
            compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": n_threads,
                                                         "PERFORMANCE_HINT": "LATENCY",
                                                         "INFERENCE_PRECISION_HINT": float_precision})
            self.precision = float_precision
            self.request = compiled.create_infer_request()
            self.run = lambda mel: self.request.infer([mel.numpy()])[0]  # logits() copies it out
        elif backend == "onnx":
            import onnxruntime as ort
            options = ort.SessionOptions()
            options.intra_op_num_threads = n_threads
            session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            self.run = lambda mel: session.run(None, {name: mel.numpy()})[0]
        else:
            program = load_program(os.path.join(folder, spec["network"]))
            self.run = lambda mel: program(mel).numpy()

    def logits(self, mel):
        """(B, classes) float32 logits, computed windows_per_call windows at a time."""
        parts = [self.run(part) for part in mel.split(self.windows_per_call)]
        return np.concatenate(parts).astype(np.float32, copy=False)


def available_backends(folder, specs):
    found = ["torch"]
    try:
        import openvino  # noqa: F401
        found.insert(0, "openvino")
    except ImportError:
        pass
    try:
        import onnxruntime  # noqa: F401
        if all(os.path.exists(os.path.join(folder, s["name"] + ".onnx")) for s in specs):
            found.insert(1 if found[0] == "openvino" else 0, "onnx")
    except ImportError:
        pass
    return found  # fastest first: OpenVINO, ONNX Runtime, torch


class FrontEnd:
    """Every distinct mel of an ensemble from one batch of 5-s windows, each STFT computed once.

    Exported per model: spectrogram_<fft/hop>.pt2 (wave -> power) and mel_<key>.pt2 (power -> mel image), from
    the code that trained it. A mel whose hop is a multiple m of another's with the same n_fft takes frames [::m]
    of that power spectrogram (frame k is centred on sample k * hop): the same numbers, one STFT.
    __call__((B, samples) tensor) -> {mel_key: (B, 1, n_mels, frames) tensor}.
    """

    def __init__(self, folder, specs):
        distinct = {s["mel_key"]: s for s in specs}
        self.spectrograms, self.mels = {}, {}   # file -> program; mel_key -> (spectrogram file, stride, program)
        for key, spec in distinct.items():
            n_fft, hop = spec["mel_settings"]["n_fft"], spec["mel_settings"]["hop_length"]
            source = min((s for s in distinct.values() if s["mel_settings"]["n_fft"] == n_fft
                          and hop % s["mel_settings"]["hop_length"] == 0),
                         key=lambda s: s["mel_settings"]["hop_length"])
            if source["spectrogram"] not in self.spectrograms:
                self.spectrograms[source["spectrogram"]] = load_program(os.path.join(folder, source["spectrogram"]))
            self.mels[key] = (source["spectrogram"], hop // source["mel_settings"]["hop_length"],
                              load_program(os.path.join(folder, spec["mel"])))

    def __call__(self, windows):
        parts = {key: [] for key in self.mels}
        with torch.no_grad():
            for chunk in windows.split(mel_chunk):
                powers = {file: program(chunk) for file, program in self.spectrograms.items()}
                for key, (file, stride, mel) in self.mels.items():
                    parts[key].append(mel(powers[file][..., ::stride]))
        return {key: torch.cat(p) for key, p in parts.items()}


def load_ensemble(folder, backend, n_threads, precision="f32"):
    """manifest.json -> (networks sorted by value for cost, their FrontEnd, classes, backend)."""
    manifest_path = os.path.join(folder or "", "manifest.json")
    if not folder or not os.path.isfile(manifest_path):
        raise SystemExit(f"error: no ensemble found (manifest.json) in {folder!r}; pass --models DIR")
    with open(manifest_path) as f:
        manifest = json.load(f)
    specs = []
    for name in manifest["models"]:
        with open(os.path.join(folder, f"{name}.json")) as f:
            specs.append(json.load(f))
    for s in specs:
        if "spectrogram" not in s:
            raise SystemExit(f"error: {s['name']}.json comes from an older export (no spectrogram program); "
                             f"export it again with this version's soup.py")
    backends = available_backends(folder, specs)
    if backend == "auto":
        backend = backends[0]
    elif backend not in backends:
        raise SystemExit(f"error: backend {backend} is not available here (available: {', '.join(backends)})")
    classes = specs[0]["classes"]
    if any(s["classes"] != classes for s in specs):
        raise SystemExit("error: the ensemble's models disagree on the class list")
    if backend != "openvino" and precision == "bf16":
        warn(f"--precision {precision} applies to OpenVINO only; {backend} runs in f32")
    networks = [Network(folder, s, backend, n_threads, precision) for s in specs]
    networks.sort(key=lambda n: n.value / n.cost, reverse=True)
    front_end = FrontEnd(folder, specs)
    print(f"{len(networks)} models ({backend}, {networks[0].precision}): " + ", ".join(n.name for n in networks),
          flush=True)
    return networks, front_end, classes, backend


# ----------------------------------------------------------------------------------------------------------
# the run


def prepare(path, front_end):
    """Decode one file and compute each distinct mel once: (n_windows, {mel_key: mel tensor}) or an error."""
    try:
        windows = torch.from_numpy(windows_of(read_audio(path)))
        return len(windows), front_end(windows), None
    except Exception as err:
        return count_windows(path), None, f"{type(err).__name__}: {err}"


@contextlib.contextmanager
def torch_threads(n):
    """torch's intra-op threads are n inside the block, as before after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def predict_files(paths, networks, front_end, budget_s=None, pp=pp_weight, prefetch=2, log=True):
    """Ensemble probabilities for each file: {path: (n_windows, classes) array, or None if unreadable}.

    Decoding and mels run in a thread pool ahead of the networks. When `budget_s` is given and the projected
    end passes it, the least valuable-for-cost models are dropped (their predictions discarded everywhere).
    """
    try:
        from tqdm import tqdm
    except ImportError:
        def tqdm(x, **_):
            return x
    active = list(networks)
    per_model = {n.name: {} for n in networks}   # name -> {path: probs}
    seconds = {n.name: 0.0 for n in networks}   # network time so far
    prep_seconds, n_windows_of, results = 0.0, {}, {}
    # OpenVINO and ONNX Runtime have thread pools of their own; torch then only computes mels, one file per
    # prefetching worker, and more torch threads would contend with the networks' (~6% slower, measured)
    mel_threads = torch.get_num_threads() if any(n.backend == "torch" for n in networks) else 1
    with ThreadPoolExecutor(max(1, prefetch)) as pool, torch_threads(mel_threads):
        futures = [pool.submit(prepare, p, front_end) for p in paths[:prefetch]]
        for i, path in enumerate(tqdm(paths, desc="soundscapes", unit="file", disable=not log)):
            began = time.time()
            n_windows, mel_batches, error = futures[i].result()
            futures[i] = None
            if i + prefetch < len(paths):
                futures.append(pool.submit(prepare, paths[i + prefetch], front_end))
            prep_seconds += time.time() - began
            n_windows_of[path] = n_windows
            if error:
                warn(f"{path}: unreadable ({error}); its {n_windows} rows get neutral values")
                continue
            with torch.no_grad():
                for net in active:
                    t = time.time()
                    logits = torch.from_numpy(net.logits(mel_batches[net.mel_key]))
                    per_model[net.name][path] = torch.sigmoid(logits).numpy()
                    seconds[net.name] += time.time() - t
            if budget_s is not None:
                done = i + 1
                remaining = len(paths) - done
                elapsed = time.time() - STARTED
                while len(active) > 1 and elapsed + remaining * (
                        prep_seconds + sum(seconds[n.name] for n in active)) / done > budget_s:
                    dropped = active.pop()
                    per_model.pop(dropped.name)
                    warn(f"time budget: dropping model {dropped.name} (projected end past {budget_s / 60:.0f} min)")
                if elapsed > budget_s:
                    warn(f"time budget spent after {done} files; the remaining {remaining} get neutral rows")
                    for rest in paths[done:]:
                        n_windows_of[rest] = count_windows(rest)
                    break
    for path in paths:
        preds = [per_model[n.name][path] for n in active if path in per_model[n.name]]
        results[path] = smooth_neighbours(np.mean(preds, axis=0), pp) if len(preds) == len(active) else None
    return results, n_windows_of, [n.name for n in active], seconds


def submission_frame(paths, results, n_windows_of, classes):
    """Rows <stem>_<end second> for every window of every file; unreadable files get the mean prediction."""
    known = [r for r in results.values() if r is not None]
    neutral = np.concatenate(known).mean(0) if known else np.full(len(classes), 0.5)
    row_ids, blocks = [], []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        probs = results.get(path)
        n = len(probs) if probs is not None else n_windows_of.get(path, default_seconds // WINDOW_SECONDS)
        blocks.append(probs if probs is not None else np.tile(neutral, (n, 1)))
        row_ids += [f"{stem}_{(w + 1) * WINDOW_SECONDS}" for w in range(n)]
    values = np.concatenate(blocks).astype(np.float32) if blocks else np.zeros((0, len(classes)), np.float32)
    frame = pd.DataFrame(np.clip(values, 0, 1), columns=classes)
    frame.insert(0, "row_id", row_ids)
    return frame


def list_audio(folder):
    extensions = (".ogg", ".wav", ".flac", ".mp3", ".oga", ".opus")
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(extensions))


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the docstring's examples and shows every default."""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--models", default=None, help="exported ensemble folder (default: the first attached "
                   "/kaggle/input/*/ folder with a manifest.json, else work/ensemble)")
    p.add_argument("--audio", default=audio_dir, help="folder of soundscapes to score")
    p.add_argument("--out", default=out_file, help="submission CSV to write")
    p.add_argument("--sample-submission", help="its columns give the class order (default: "
                   "sample_submission.csv beside the audio folder, if there)")
    p.add_argument("--threads", type=int, default=threads, help="CPU threads")
    p.add_argument("--backend", default="auto", choices=["auto", "openvino", "onnx", "torch"],
                   help="auto takes the fastest installed: openvino, then onnx (if .onnx files), then torch")
    p.add_argument("--precision", default="auto", choices=["auto", "f32", "bf16"],
                   help="OpenVINO's float precision. auto: bf16 on CPUs that compute it natively (AVX512-BF16, "
                   "AMX; on the demo it changed the ensemble's AUC by less than 0.001), else f32; f32: exact")
    p.add_argument("--budget-min", type=float, default=budget_min, help="time budget in minutes")
    p.add_argument("--pp-weight", type=float, default=pp_weight, help="neighbour smoothing weight; 0 disables")
    args = p.parse_args(argv)

    torch.set_num_threads(max(1, args.threads))
    networks, front_end, classes, _ = load_ensemble(args.models or find_models_dir(), args.backend, args.threads,
                                                    args.precision)
    paths = list_audio(args.audio)
    if not paths:
        warn(f"no audio files in {args.audio}; writing a submission with no rows")
    results, n_windows_of, used, seconds = predict_files(paths, networks, front_end, args.budget_min * 60,
                                                         args.pp_weight)
    frame = submission_frame(paths, results, n_windows_of, classes)
    sample = args.sample_submission or os.path.join(os.path.dirname(os.path.abspath(args.audio)),
                                                    "sample_submission.csv")
    if os.path.isfile(sample):
        order = [c for c in pd.read_csv(sample, nrows=0).columns if c != "row_id"]
        if set(order) == set(classes):
            frame = frame[["row_id"] + order]
        else:
            warn(f"{sample}: its columns differ from the models' classes; keeping the models' order")
    tmp = args.out + ".tmp"
    frame.to_csv(tmp, index=False)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {len(frame)} rows, {len(paths)} files, models {', '.join(used)}, "
          f"{time.time() - STARTED:.1f} s", flush=True)


if __name__ == "__main__":
    main()
