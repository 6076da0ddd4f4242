"""Scaling a run up: several processes (torchrun, DistributedDataParallel), CUDA graphs (--fast)
and bf16 autocast (--amp).

Nothing here changes the method; it changes where and how a training step runs (with --amp, in
lower precision). common.py imports this module only when a run asks for it: when torchrun
started the process (RANK and WORLD_SIZE in the environment; common.setup joins the process
group here), or when --fast or --amp is given (common.Run.prepare, Run.fast_step). A plain
`python dcgan.py` never loads it, and a reader of a script or of common.py can leave it aside.
It needs torch alone: what it refuses it raises as ValueError (a launch the flags cannot run
in), or as the exception class common.py passes in (a step that cannot be captured), and
common.py says it in one sentence.

Several processes. `torchrun --nproc_per_node=N script.py ...` starts N copies of the script
with RANK, LOCAL_RANK and WORLD_SIZE set. Each copy trains on its share of every batch
(--batch-size is the global batch), DistributedDataParallel averages the gradients in
backward(), and rank 0 alone writes the run folder.

CUDA graphs. A GAN step at these sizes is a few hundred small kernels, and the GPU idles while
Python launches them one by one. `Graphed` captures the whole step once (forward passes,
backward passes, optimiser updates, the latents drawn inside it) and replays it with a single
launch.
"""
from __future__ import annotations

import inspect
import os
import sys
import types
import warnings

import torch
import torch.distributed as dist


# ----------------------------------------------------------------------------------------------
# Several processes: torchrun and DistributedDataParallel
# ----------------------------------------------------------------------------------------------
def active() -> bool:
    """True once this process has joined a process group (join)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def join(device: torch.device, alone: str | None = None, sync_bn: bool = False) -> torch.device:
    """Join the process group torchrun set up: on CUDA one GPU per process (LOCAL_RANK) and
    NCCL, on the CPU gloo. Returns this process's device. A launch the flags cannot run in
    (`alone`: what runs in one process only) raises ValueError, before anything is joined."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if alone:
        raise ValueError(f"{alone} runs in one process; start it with python, not torchrun.")
    if device.type == "mps":
        raise ValueError("torchrun needs CUDA GPUs or the CPU; --device mps runs in one process.")
    if sync_bn and device.type != "cuda":
        raise ValueError("--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU kernel).")
    if device.type == "cuda" and local >= torch.cuda.device_count():
        raise ValueError(f"--nproc_per_node asks for {local + 1} or more processes on this node, "
                         f"but it has {torch.cuda.device_count()} GPU(s).")
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not active():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if rank() > 0:  # one copy of every message: rank 0's (errors still reach stderr)
        sys.stdout = open(os.devnull, "w")
    return device


def shutdown() -> None:
    """Leave the process group (at the end of a torchrun run, or on an error)."""
    if active():
        dist.destroy_process_group()


class _Trained(torch.nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that a loop can call wherever it calls the network. A forward that
    computes no gradient for the network (grad mode off, or its parameters frozen for another
    network's step) runs the network itself, outside DDP: there is nothing to average, and rank 0
    may sample alone. The network's own attributes show through (G.attention)."""

    def forward(self, *inputs, **kwargs):
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.module.parameters()):
            return super().forward(*inputs, **kwargs)
        return self.module(*inputs, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)


def distribute(module: torch.nn.Module, sync_bn: bool = False, find_unused: bool = False) -> torch.nn.Module:
    """`module` in DistributedDataParallel (its gradients averaged over all processes in
    backward()), as _Trained; with `sync_bn` its BatchNorm layers made SyncBatchNorm (in place: the
    same parameters and state_dict keys; CUDA only). `find_unused`: parameters that get no gradient
    in some steps (progan.py's layers of resolutions not yet reached)."""
    device = next(module.parameters()).device
    if sync_bn:
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    # No buffer broadcast before each forward: each process keeps its own BN running statistics
    # between checkpoints (broadcast_buffers gives every process rank 0's when one is saved); the
    # broadcast would also modify, in place, tensors that D's first forward saved for backward.
    ddp = torch.nn.parallel.DistributedDataParallel
    no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
               else "broadcast_buffers")  # (newer torch; older: broadcast_buffers)
    return _Trained(module, device_ids=[device.index] if device.type == "cuda" else None,
                    find_unused_parameters=find_unused, **{no_sync: False})


def all_reduce(tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
    """The mean (or "sum") of `tensor` over all processes, in place; returns it."""
    if active():
        dist.all_reduce(tensor)
        if op == "mean":
            tensor /= world_size()
    return tensor


def average_before_step(optimizer: torch.optim.Optimizer) -> None:
    """Before each step of `optimizer`, average the .grad of its parameters over the processes
    in one collective: for the gradients DistributedDataParallel never sees, those assigned from
    torch.autograd.grad, where DDP's hooks (which run in backward()) do not fire."""
    def hook(opt, args, kwargs):
        grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
        if active() and grads:
            flat = all_reduce(torch.cat([g.flatten() for g in grads]))
            for g, mean in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(mean.view_as(g))
    optimizer.register_step_pre_hook(hook)


def on_main(fn, error: type[Exception]):
    """fn() on rank 0 alone; its result, or its `error` (a message for the user), reaches every
    process."""
    box = [None]
    if rank() == 0:
        try:
            box[0] = (True, fn())
        except error as e:
            box[0] = (False, str(e))
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise error(value)
    return value


def anyone(flag: bool, device) -> bool:
    """True on every process if `flag` is true on any (a Ctrl-C that reached one process)."""
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_buffers(modules) -> None:
    """Rank 0's buffers (BatchNorm statistics) to every process, as a checkpoint saves them."""
    for m in modules:
        for buffer in m.buffers() if isinstance(m, torch.nn.Module) else ():
            dist.broadcast(buffer, 0)


def gather(obj) -> list:
    """Every process's `obj` (its RNG states), in rank order."""
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    dist.barrier()


# ----------------------------------------------------------------------------------------------
# CUDA graphs
# ----------------------------------------------------------------------------------------------
class Graphed:
    """A training step `fn(*inputs) -> tensors` replayed as one captured CUDA graph.

    What the step computes does not change; only how its kernels are launched. The step must
    keep all its work on the GPU: no `.item()`, no Python decision on a tensor's value, tensors
    of fixed shapes, and `optimizers`, the ones it steps, are made capturable. Host values are
    baked into the graph: the step is warmed up and captured anew when a non-tensor input
    changes (a step whose inputs change at every call is never captured: it runs eagerly) or
    an optimiser's hyperparameters do (key).

    Tensor inputs are copied into static buffers, the step runs on those, and the outputs are
    returned as fresh copies, so a caller sees what an eager call returns. The first `warmup`
    calls run eagerly on a side stream (cudnn picks its algorithms, the optimisers create their
    state), as torch.cuda.graphs requires; the next one is captured. With capture=False (not on
    CUDA) the step runs eagerly through the same buffers (the plumbing the CPU tests check).
    A step that cannot be captured raises `error` with one sentence.
    """

    def __init__(self, fn, capture: bool = True, warmup: int = 3, error: type[Exception] = RuntimeError,
                 optimizers=()):
        self.fn, self.capture, self.warmup, self.error, self.optimizers = fn, capture, warmup, error, optimizers
        self.calls, self.graph, self.inputs, self.outputs, self.captured_key = 0, None, None, None, None
        self.replays = 0  # in all, across resets (a test's evidence that graphs ran)
        for opt in optimizers if capture else ():
            make_capturable(opt, True)

    def key(self) -> list:
        """What a captured step holds fixed of its optimisers: their hyperparameters (a learning
        rate a schedule changes) and the size of their state (a state cleared)."""
        return [(len(opt.state), [{k: v for k, v in group.items() if k != "params" and not torch.is_tensor(v)}
                                  for group in opt.param_groups]) for opt in self.optimizers]

    def reset(self) -> None:
        """Warm up and capture again (a baked-in value changed)."""
        self.graph, self.calls = None, 0

    def __call__(self, *inputs):
        if (self.inputs is None or len(inputs) != len(self.inputs)
                or any(not _same_layout(a, b) for a, b in zip(self.inputs, inputs))):
            self.inputs = [x.clone() if torch.is_tensor(x) else x for x in inputs]  # static buffers
            self.reset()
        else:
            for static, x in zip(self.inputs, inputs):
                if torch.is_tensor(x):
                    static.copy_(x)
        if self.graph is not None and self.key() != self.captured_key:
            self.reset()
        if not self.capture:
            out = self.fn(*self.inputs)
        elif self.calls < self.warmup:
            out = self._warm_up()
        else:
            if self.graph is None:
                self._capture()
            self.graph.replay()
            self.replays += 1
            out = self.outputs
        self.calls += 1
        return _tree_map(lambda t: t.detach().clone(), out)

    def _warm_up(self):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "capturable=True ... uncaptured": expected here
            out = self.fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        return out

    def _capture(self) -> None:
        self.graph, self.captured_key = torch.cuda.CUDAGraph(), self.key()
        try:
            # thread_local: a DataLoader's pin-memory thread may use CUDA while we capture
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.outputs = self.fn(*self.inputs)
        except RuntimeError as e:
            self.graph = None
            while isinstance(e.__context__, RuntimeError):  # ending a failed capture raises anew
                e = e.__context__
            if isinstance(e, torch.cuda.OutOfMemoryError):
                raise self.error("--fast: out of GPU memory while capturing the training step as a "
                                 "CUDA graph; try a smaller --batch-size, or run without --fast.") from None
            reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise self.error(f"--fast: this training step cannot be captured as a CUDA graph "
                             f"({reason}); run without --fast.") from None


def bf16(module: torch.nn.Module, device_type: str) -> None:
    """--amp: `module`'s forward under bf16 autocast, its floating outputs returned as float32,
    so that losses and backward() run outside autocast, as PyTorch advises for autocast."""
    def forward(self, *args, **kwargs):
        with torch.autocast(device_type, torch.bfloat16):
            out = type(self).forward(self, *args, **kwargs)
        return _tree_map(lambda t: t.float() if t.is_floating_point() else t, out)
    module.forward = types.MethodType(forward, module)  # (bound to the module: a deepcopy rebinds it)


def _same_layout(a, b) -> bool:
    if torch.is_tensor(a) != torch.is_tensor(b):
        return False
    if not torch.is_tensor(a):
        return a is b or a == b
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device


def _tree_map(fn, x):
    if torch.is_tensor(x):
        return fn(x)
    if isinstance(x, (tuple, list)):
        return type(x)(_tree_map(fn, v) for v in x)
    if isinstance(x, dict):
        return {k: _tree_map(fn, v) for k, v in x.items()}
    return x


def make_capturable(optimizer: torch.optim.Optimizer, enabled: bool = True) -> None:
    """Switch an optimiser's capturable flag. A capturable (or fused) optimiser keeps its step
    count on the parameter's device: a CUDA graph cannot read one from the host."""
    for group in optimizer.param_groups:
        group["capturable"] = enabled
    if any(g["capturable"] or g.get("fused") for g in optimizer.param_groups):
        for param, state in optimizer.state.items():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(param.device, torch.float32)
    if enabled:  # an eager step of a capturable optimiser (ProGAN's fade-in) is expected
        warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
