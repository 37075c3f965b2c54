"""How a training step runs on the hardware: the eager step, the step replayed from a CUDA graph, the precision
(autocast's type, gradient scaling), and the training set held in the device's memory. train.py's recipe calls
these; every one also runs on a CPU (the code path the tests exercise).

    from steps import amp_dtype_of, train_step, GraphedStep, DeviceTrainingSet
    dtype, why = amp_dtype_of(torch.device("cuda"))          # bfloat16 from compute capability 8.0, else float16
    loss = train_step(run, waves, targets, generator, shift_samples, loss_function, dtype)   # one eager step
    step = GraphedStep(run, shift_samples, loss_function); loss = step(waves, targets)      # the same, replayed
    dataset = DeviceTrainingSet(TrainingSet(...), device)    # batches gathered and mixed on the device

`run` is train.py's Training (or step_state's stand-in): trained (the network), mel, chances, amp, amp_dtype,
optimizer, scheduler, scaler.
"""
import numpy as np
import torch

from augmentations import AugmentChances, augment, time_shift
from common import TrainingSet, distillation_loss
from errors import UserError


def make_optimizer(name, model, lr, weight_decay, device, graphed=False):
    """SGD (nesterov, momentum 0.9) or AdamW; AdamW fused on CUDA: one kernel for all parameters, and
    GradScaler's inf check stays on the device (no wait); graphed on CUDA: its step count on the device, so a
    CUDA graph can replay it."""
    capturable = graphed and device.type == "cuda"
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=device.type == "cuda",
                             capturable=capturable)


def amp_dtype_of(device, choice="auto"):
    """(autocast's type, why). --amp-dtype auto: on CUDA, bfloat16 where the GPU computes it in hardware (compute
    capability 8.0 and up: A100, L4, H100), float16 with gradient scaling before (T4 7.5, V100 7.0, P100 6.0: their
    cuDNN has no bfloat16 convolutions, and torch.cuda.is_bf16_supported() counts emulation); on CPU, bfloat16 (the
    type CPU autocast computes in). A named type is taken as it is."""
    if choice != "auto":
        return getattr(torch, choice), f"--amp-dtype {choice}"
    if device.type != "cuda":
        return torch.bfloat16, "CPU autocast computes in bfloat16"
    major, minor = torch.cuda.get_device_capability(device)
    gpu = f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
    if major >= 8:
        return torch.bfloat16, f"{gpu} has bfloat16 in hardware"
    return torch.float16, f"{gpu} has no bfloat16 in hardware (8.0 and up have)"


def make_scaler(device, amp, amp_dtype=torch.float16):
    """Gradient scaling for float16 AMP (CUDA); bfloat16's gradients need none. torch.amp.GradScaler("cuda")
    from torch 2.3 on; torch.cuda.amp's before (deprecated since)."""
    scaled = amp and device.type == "cuda" and amp_dtype == torch.float16
    return torch.amp.GradScaler("cuda", enabled=scaled) if hasattr(torch.amp, "GradScaler") \
        else torch.cuda.amp.GradScaler(enabled=scaled)


def step_state(model, mel, device, amp, chances=None, optimizer="adamw", graphed=False, schedule=lambda s: 1.0,
               amp_dtype=None, lr=1e-3, weight_decay=1e-2):
    """What train_step (graphed: GraphedStep) needs, outside a run (benchmarks, tests): the model and mel on
    `device`, the recipe's optimiser (the write-up's lr and weight decay) at lr * schedule(step), the scaler,
    autocast's type (amp_dtype_of's for the device where not given), the write-up's augmentation chances."""
    from types import SimpleNamespace
    device = torch.device(device)
    model = model.to(device).to(memory_format=torch.channels_last)
    model.channels_last = True
    model.train()
    opt = make_optimizer(optimizer, model, lr, weight_decay, device, graphed)
    amp_dtype = amp_dtype if amp_dtype is not None else amp_dtype_of(device)[0]
    return SimpleNamespace(trained=model, mel=mel.to(device), chances=chances or AugmentChances(), amp=amp,
                           optimizer=opt, scheduler=torch.optim.lr_scheduler.LambdaLR(opt, schedule),
                           scaler=make_scaler(device, amp, amp_dtype), amp_dtype=amp_dtype, graphed=graphed)


def uses_cuda_graph(args, device, distributed, amp_dtype=torch.bfloat16):
    """--cuda-graph: whether train steps replay a CUDA graph (on CPU, `on` runs GraphedStep's code eagerly). A
    graph replays what it captured: one process, the network uncompiled, AdamW (its learning rate read from the
    device each step), a schedule that changes nothing else (onecycle also cycles AdamW's betas) and no gradient
    scaler (float16 autocast has one: it checks for infinities and skips steps on the host)."""
    if args.cuda_graph == "off":
        return False
    scaled = amp_on(args, device) and amp_dtype == torch.float16 and device.type == "cuda"
    unsupported = [why for why, found in (("torchrun", distributed), ("--compile on", args.compile == "on"),
                                          ("float16 autocast (its gradient scaler)", scaled),
                                          ("--optimizer sgd", args.optimizer != "adamw"),
                                          ("--schedule onecycle", args.schedule != "cosine")) if found]
    if args.cuda_graph == "auto":
        return device.type == "cuda" and not unsupported
    if unsupported:
        raise UserError(f"--cuda-graph on cannot replay a step with {', '.join(unsupported)}: use --cuda-graph off")
    return True


def amp_on(args, device):
    """--amp: auto is on for CUDA; on also runs CPU autocast."""
    return args.amp == "on" or (args.amp == "auto" and device.type == "cuda")


def precision_line(args, device, graphed):
    """One line: the step's precision and why, whether it replays a CUDA graph."""
    if not amp_on(args, device):
        return "precision: float32 (--amp off" + (", its default on CPU)" if args.amp == "auto" else ")")
    dtype, why = amp_dtype_of(device, args.amp_dtype)
    scaled = " with gradient scaling" if dtype == torch.float16 and device.type == "cuda" else ""
    return (f"precision: {str(dtype).replace('torch.', '')} autocast{scaled}, "
            f"{'steps replayed from a CUDA graph' if graphed else 'eager steps'}: {why}")


def cache_on_device(choice, dataset, device):
    """--cache-on-device: on, off, or auto = on for a GPU whose free memory holds the copy twice over."""
    if choice != "auto":
        return choice == "on"
    if device.type != "cuda":
        return False
    return 2 * DeviceTrainingSet.bytes_needed(dataset) < torch.cuda.mem_get_info(device)[0]


def device_step(run, waves, targets, generator, shift_samples, loss_function, amp_dtype):
    """The device's part of one optimiser step on a batch already on the device (no scheduler step): time shift,
    mel, augmentations, forward, backward, the optimiser and scaler. Returns the loss as a device tensor. Nothing
    here waits for the device (no .item(), no host-side branch on device values), and the host's work does not
    grow with the batch: every augmentation is a few operations on the whole batch. So it can be captured into
    a CUDA graph (GraphedStep)."""
    with torch.no_grad():
        images, targets = augment(run.mel(time_shift(waves, shift_samples, generator)), targets, run.chances,
                                  generator)
    # no autocast cache: each weight is cast once a step anyway, and a CUDA graph capture needs it off
    with torch.autocast(waves.device.type, dtype=amp_dtype, enabled=run.amp, cache_enabled=False):
        if getattr(run, "distill", 0):  # targets: the labels, then the teacher's embedding (TrainingSet)
            logits, projected = run.trained(images, project=True)
            n = logits.shape[-1]  # (B, classes), or the sed head's (B, 2, classes)
            distilled = distillation_loss(projected, targets[:, n:])
            loss = loss_function(logits, targets[:, :n]) + run.distill * distilled
            # kept on the run for the epoch's sum; detach shares the storage, so a graph replay refreshes it
            run.distill_loss = distilled.detach()
        else:
            loss = loss_function(run.trained(images), targets)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)   # fused AdamW on CUDA: the scaler's inf check stays on the device
    run.scaler.update()
    return loss.detach()


def train_step(run, waves, targets, generator, shift_samples, loss_function, amp_dtype):
    """One optimiser step (device_step, then the learning-rate schedule's step); returns the loss as a device
    tensor."""
    loss = device_step(run, waves, targets, generator, shift_samples, loss_function, amp_dtype)
    run.scheduler.step()
    return loss


class GraphedStep:
    """train_step with the device's part replayed from one CUDA graph: per step the host copies the batch into
    the graph's input buffers, sets the learning rate and launches the graph, where the eager step dispatches
    the network's forward and backward kernel by kernel (what bound the step on an H200: bench/gpu.py). The first
    steps run eagerly on a side stream (cuDNN's search, the optimiser's state) until one shape has run `warmup`
    times; the graph is captured on it, and a batch of another shape (an epoch's partial last one) runs eagerly. Random numbers come
    from the device's default generator (a graph replays it safely; torch.manual_seed seeds it). On a CPU the
    "graph" is the same step called again on the same buffers: the code path tests can run.

    step = GraphedStep(run, shift_samples, loss_function); loss = step(waves, targets)  # loss: a device tensor
    """

    def __init__(self, run, shift_samples, loss_function, warmup=3):
        self.run, self.warmup, self.eager_shapes = run, warmup, {}
        self.step_args = (None, shift_samples, loss_function, run.amp_dtype)
        self.graph = self.inputs = self.loss = self.lr = self.shape = None

    def __call__(self, waves, targets):
        shape = (tuple(waves.shape), tuple(targets.shape))
        # captured on a shape that ran eagerly `warmup` times: cuDNN has chosen its kernels for it (a search
        # inside a capture fails)
        if self.graph is None and self.eager_shapes.get(shape, 0) >= self.warmup:
            self._capture(waves, targets)
        if self.graph not in (None, "failed") and shape == self.shape:
            self.inputs[0].copy_(waves, non_blocking=True)
            self.inputs[1].copy_(targets, non_blocking=True)
            if self.lr is not None:
                self.lr.fill_(self.run.optimizer.param_groups[0]["lr"])
            self._replay()
            loss = self.loss.clone()  # the next replay overwrites the graph's own
        else:
            loss = self._eager(waves, targets)
            self.eager_shapes[shape] = self.eager_shapes.get(shape, 0) + 1
        self.run.scheduler.step()
        return loss

    def _eager(self, waves, targets):
        if waves.device.type != "cuda":
            return device_step(self.run, waves, targets, *self.step_args)
        side, main = torch.cuda.Stream(waves.device), torch.cuda.current_stream(waves.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):  # eager steps before a capture run off the capturing stream, as torch asks
            loss = device_step(self.run, waves, targets, *self.step_args)
        main.wait_stream(side)
        return loss

    def _capture(self, waves, targets):
        self.inputs, self.shape = (waves.clone(), targets.clone()), (tuple(waves.shape), tuple(targets.shape))
        if waves.device.type != "cuda":
            self.graph = "eager"
            return
        groups = self.run.optimizer.param_groups
        if len({g["lr"] for g in groups}) > 1:
            raise UserError("a CUDA graph replays one learning rate: use --cuda-graph off")
        # the graph reads the learning rate from a device tensor that each step fills: the schedule goes on
        self.lr = torch.tensor(float(groups[0]["lr"]), device=waves.device)
        floats = [g["lr"] for g in groups]
        for g in groups:
            g["lr"] = self.lr
        self.run.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(waves.device)
        self.graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the loader's threads may pin memory while the main thread captures
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.loss = device_step(self.run, *self.inputs, *self.step_args)
        except Exception as error:  # a capture computes nothing (an older torch may lack what it needs): eager on
            print(f"CUDA graph capture failed ({(str(error).splitlines() or [type(error).__name__])[0]}): the steps "
                  f"run eagerly (--cuda-graph off skips the attempt)", flush=True)
            self.graph, self.lr = "failed", None
        finally:
            for g, value in zip(groups, floats):
                g["lr"] = value  # the scheduler writes floats; each step fills self.lr from them

    def _replay(self):
        if self.graph == "eager":
            self.loss = device_step(self.run, *self.inputs, *self.step_args)
        else:
            self.graph.replay()


def to_device_in_chunks(array, rows, device, chunk=4096):
    """array[rows] (a float16 memmap's rows) as one float16 tensor on `device`, copied a chunk at a time so the
    host never holds the whole of it."""
    out = torch.empty((len(rows),) + tuple(array.shape[1:]), dtype=torch.float16, device=device)
    for start in range(0, len(rows), chunk):
        part = np.asarray(rows[start:start + chunk])
        out[start:start + len(part)] = torch.from_numpy(np.ascontiguousarray(array[part], dtype=np.float16)).to(device)
    return out


class DeviceTrainingSet(TrainingSet):
    """A TrainingSet whose first-5-s audio and mixed-in windows (pseudo-labelled, the site's) live in device
    memory (a GPU's, where they fit): a batch is a gather and a mix on the device, and the host only draws the
    batch's few random numbers, vectorised. Its randomness comes from (seed, epoch, batch) as TrainingSet's,
    drawn in another order: the same mixing (chance, gains, max of the targets; the gains' sum of the teacher's
    embeddings where they are distilled), not the same numbers."""

    def __init__(self, base, device):
        super().__init__(base.audio, base.targets, base.rows, base.pseudo, base.pseudo_mix_chance,
                         base.amp_exp_range, base.seed, base.site, base.site_mix_chance, base.embeddings)
        self.device = torch.device(device)
        distinct = np.unique(self.rows)  # a site window dealt several times an epoch is copied once
        self.position = np.full(len(base.audio), -1, dtype=np.int64)  # cache row -> row of the device copy
        self.position[distinct] = np.arange(len(distinct))
        self.audio_on_device = to_device_in_chunks(base.audio, distinct, self.device)
        self.n_labels = base.targets.shape[1]  # targets on the device: the labels, then any teacher embedding

        def with_embeddings(targets, embeddings, rows):
            targets = np.asarray(targets[rows], np.float32)
            if base.embeddings is not None:
                targets = np.concatenate([targets, np.asarray(embeddings[rows], np.float32)], axis=1)
            return torch.from_numpy(targets).to(self.device)
        self.targets_on_device = with_embeddings(base.targets, base.embeddings, distinct)
        # per mix: (windows' audio, their targets, chance) on the device
        self.mixes_on_device = [(to_device_in_chunks(w.audio, w.index, self.device),
                                 with_embeddings(w.targets, w.embeddings, slice(None)), c) for w, c in self.mixes()]

    @staticmethod
    def bytes_needed(base):
        """Device bytes the copy takes: the training rows' audio and the mixed-in windows, float16 (and the
        teacher's embeddings of them, float32, where they are distilled)."""
        windows = sum(len(w.index) for w, _ in base.mixes())
        per_row = base.audio.shape[1] * 2 + (base.embeddings.shape[1] * 4 if base.embeddings is not None else 0)
        return (len(np.unique(base.rows)) + windows) * per_row

    def batch(self, rows, rng):
        take = torch.from_numpy(self.position[np.asarray(rows)]).to(self.device)
        waves, targets = self.audio_on_device[take].float(), self.targets_on_device[take]
        n, (lo, hi) = len(rows), self.amp_exp_range
        for windows, window_targets, chance in self.mixes_on_device:
            chosen = torch.from_numpy(rng.random(n) < chance).to(self.device)
            window = torch.from_numpy(rng.integers(len(windows), size=n)).to(self.device)
            gains = torch.from_numpy((10.0 ** rng.uniform(lo, hi, size=(n, 2))).astype(np.float32)).to(self.device)
            mixed = gains[:, :1] * waves + gains[:, 1:] * windows[window].float()
            waves = torch.where(chosen[:, None], mixed, waves)
            theirs, n = window_targets[window], self.n_labels
            mixed_targets = torch.cat([torch.maximum(targets[:, :n], theirs[:, :n]),
                                       gains[:, :1] * targets[:, n:] + gains[:, 1:] * theirs[:, n:]], dim=1)
            targets = torch.where(chosen[:, None], mixed_targets, targets)
        return waves, targets

    def build(self, plan, pin=False):
        rows, seed = plan
        return self.batch(rows, np.random.default_rng(seed))

    def epoch(self, epoch, batch_size, rank=0, world_size=1, workers=0, pin=False):
        """This rank's batches, built in order as the step asks (no worker threads: building is the device's)."""
        for plan in self.epoch_plan(epoch, batch_size, rank, world_size):
            yield self.build(plan)
