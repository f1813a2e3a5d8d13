"""One way to time a network, shared by the latency table, `latency validate` and `gasnas bench`.

Batch 1, warm-up runs, then timed repeats; the median is the number that counts (p90 shows the
spread). On CUDA every run is synchronised. Backends: eager `torch`, `compile` (torch.compile),
`onnxruntime` (the module exported to ONNX in memory), `tensorrt` (reported unavailable unless
the package is installed).
"""

from __future__ import annotations

import contextlib
import io
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from gasnas.errors import GasnasError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BACKENDS = ("torch", "compile", "onnxruntime", "tensorrt")


@dataclass
class Timing:
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    runs: int

    @property
    def fps(self) -> float:
        return 1000.0 / self.median_ms if self.median_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "fps": self.fps}


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    idx = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[idx]


def time_round_robin(runners: dict[str, Callable[[], Any]], rounds: int, repeats: int, warmup: int = 3,
                     device: str = "cpu") -> dict[str, list[float]]:
    """Each runner's median ms per round, the runners timed in turn for `rounds` rounds (after
    `warmup` untimed runs each), so a slow phase of the machine hits all of them alike."""
    for run in runners.values():
        for _ in range(max(0, warmup)):
            run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    per: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(max(1, rounds)):
        for name, run in runners.items():
            per[name].append(time_callable(run, 1, repeats, device).median_ms)
    return per


def drift_corrected(per_round: dict[str, list[float]]) -> dict[str, float]:
    """Each runner's ms with the machine's round-to-round drift taken out: a round's speed is the
    median over runners of (ms this round / that runner's median over rounds), each round's ms
    are divided by it, and the median over rounds is kept. Why: on a shared 2-core VM a whole
    round can run 15% slow; every runner timed in it slows alike, so the ratio between two nets
    is steadier than either net's own median (two runners: the same as their paired ratio)."""
    medians = {name: statistics.median(v) for name, v in per_round.items()}
    rounds = min((len(v) for v in per_round.values()), default=0)
    speed = [statistics.median(per_round[n][r] / medians[n] for n in per_round if medians[n] > 0)
             for r in range(rounds)]
    return {name: statistics.median(v[r] / speed[r] for r in range(rounds)) if rounds else medians[name]
            for name, v in per_round.items()}


def paired_ratio(a: list[float], b: list[float]) -> dict[str, float]:
    """a / b per round (both timed in that round, so a slow phase of the machine cancels): the
    median and quartiles over rounds. Why not the ratio of the two medians: on a 2-core VM one
    net's round medians wander by ±15%, and a ratio of medians taken from different rounds
    carries that (5-round blocks of one 30-round run of the same two nets ranged 0.80–0.91)."""
    r = [x / y for x, y in zip(a, b)]
    q = statistics.quantiles(r, n=4, method="inclusive") if len(r) > 1 else [r[0]] * 3
    return {"median": statistics.median(r), "q1": q[0], "q3": q[2], "rounds": len(r)}


def time_callable(fn: Callable[[], Any], warmup: int, repeats: int, device: str = "cpu") -> Timing:
    """Run `fn` `warmup` times untimed, then `repeats` times timed (ms each). On CUDA each run is
    timed by a pair of CUDA events on the current stream (the GPU's own clock: kernel launches
    queue asynchronously, so a host clock would time the launches), synchronised per run."""
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(max(0, warmup)):
        fn()
    sync()
    samples = []
    for _ in range(max(1, repeats)):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(float(start.elapsed_time(end)))
            continue
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return Timing(statistics.median(samples), percentile(samples, 0.9), statistics.fmean(samples),
                  min(samples), len(samples))


_ALLOCATOR: str | None = None


def steady_allocator() -> str:
    """Keep glibc malloc in one steady regime for the rest of the process; returns its name.

    By default glibc moves its mmap threshold as large blocks are freed and returns heap memory
    to the OS when the heap top grows past a trim threshold, so the feature maps of a forward
    pass are page-faulted in again on every run, or not, depending on what the process did
    before: the same net measured 26 ms early in a process and 39 ms later (2-core CPU,
    360x480). A fixed 32 MiB mmap threshold and no trimming give the steady state of a
    long-running server (as jemalloc/tcmalloc would): stable and reproducible numbers.
    Idempotent; a no-op (`"default"`) where the C library is not glibc.
    """
    global _ALLOCATOR
    if _ALLOCATOR is not None:
        return _ALLOCATOR
    _ALLOCATOR = "default"
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            m_trim_threshold, m_mmap_threshold = -1, -3
            if libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30):
                _ALLOCATOR = "glibc-steady(mmap_threshold=32MiB,no_trim)"
    return _ALLOCATOR


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (None leaves it alone)."""
    if threads is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GasnasError(f"device '{device}': CUDA is not available on this machine")
    if not (device == "cpu" or device.startswith("cuda")):
        raise GasnasError(f"device '{device}': expected cpu or cuda[:N]")


def input_names(n: int) -> list[str]:
    """ONNX input names: `image` for a network, `image, input1, ...` for a multi-input module."""
    return ["image"] + [f"input{i}" for i in range(1, n)]


def onnx_bytes(model: nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...],
               dynamic: bool = False) -> bytes:
    """Export `model` to ONNX in memory (TorchScript exporter, opset 17). `example` is one input
    tensor, or a tuple of them for a module with several inputs (named by `input_names`)."""
    examples = example if isinstance(example, tuple) else (example,)
    names = input_names(len(examples))
    buf = io.BytesIO()
    axes = {"image": {0: "batch", 2: "height", 3: "width"},
            "logits": {0: "batch", 2: "height", 3: "width"}} if dynamic else None
    with torch.no_grad():
        torch.onnx.export(model, examples, buf, dynamo=False, opset_version=17,
                          input_names=names, output_names=["logits"], dynamic_axes=axes)
    return buf.getvalue()


def ort_session(model_bytes: bytes | str, device: str = "cpu", threads: int | None = None):
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - a declared dependency
        raise GasnasError("backend 'onnxruntime': the onnxruntime package is not installed") from None
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise GasnasError("backend 'onnxruntime' on cuda: this onnxruntime has no CUDAExecutionProvider")
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(model_bytes, opts, providers=providers)


def make_runner(model: nn.Module, input_size: tuple[int, int] | list[int], backend: str = "torch",
                device: str = "cpu", dtype: str = "fp32", threads: int | None = None,
                channels: int = 3, inputs: tuple[torch.Tensor, ...] | None = None) -> Callable[[], Any]:
    """Return a zero-argument function that runs `model` once on a batch-1 input of `input_size`.

    `inputs` (optional) replaces that input with given example tensors, passed as positional
    arguments: how the latency table times parts of a network that take several feature maps.
    Puts the process's allocator in its steady regime first (`steady_allocator`).
    """
    if backend not in BACKENDS:
        raise GasnasError(f"backend '{backend}': expected one of {', '.join(BACKENDS)}")
    check_device(device)
    steady_allocator()
    if dtype not in DTYPES:
        raise GasnasError(f"dtype '{dtype}': expected one of {', '.join(DTYPES)}")
    h, w = int(input_size[0]), int(input_size[1])
    model = model.eval()
    if backend == "tensorrt":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise GasnasError("backend 'tensorrt' is unavailable: the tensorrt package is not installed") from None
        raise GasnasError("backend 'tensorrt' is unavailable in this version of gasnas")
    if backend == "onnxruntime":
        if dtype != "fp32":
            raise GasnasError("backend 'onnxruntime': only dtype fp32 is supported")
        examples = (tuple(t.float().cpu() for t in inputs) if inputs is not None
                    else (torch.randn(1, channels, h, w),))
        session = ort_session(onnx_bytes(model.float().cpu(), examples), device, threads)
        wanted = {i.name for i in session.get_inputs()}  # an input the graph ignores is dropped
        feed = {n: t.numpy() for n, t in zip(input_names(len(examples)), examples) if n in wanted}
        return lambda: session.run(None, feed)
    if dtype != "fp32" and device == "cpu" and dtype == "fp16":
        raise GasnasError("dtype 'fp16' on cpu is not supported by PyTorch's CPU kernels; use bf16 or fp32")
    model = model.to(device=device, dtype=DTYPES[dtype])
    xs = (tuple(t.to(device=device, dtype=DTYPES[dtype]) for t in inputs) if inputs is not None
          else (torch.randn(1, channels, h, w, device=device, dtype=DTYPES[dtype]),))
    fn = torch.compile(model) if backend == "compile" else model

    def run() -> Any:
        with torch.inference_mode():
            return fn(*xs)

    return run


def measure_model(model: nn.Module, input_size: tuple[int, int] | list[int], backend: str = "torch",
                  device: str = "cpu", dtype: str = "fp32", threads: int | None = None,
                  warmup: int = 3, repeats: int = 10) -> Timing:
    """Median batch-1 latency of `model` at `input_size` (H, W) on the given backend/device."""
    with torch_threads(threads):
        run = make_runner(model, input_size, backend, device, dtype, threads)
        return time_callable(run, warmup, repeats, device)


def environment(device: str = "cpu", threads: int | None = None, backend: str = "torch",
                dtype: str = "fp32") -> dict[str, Any]:
    """What a timing depends on; stored with every LUT and benchmark so numbers keep provenance."""
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    env: dict[str, Any] = {
        "device": device,
        "device_name": name,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "backend": backend,
        "dtype": dtype,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "allocator": steady_allocator(),
    }
    if device.startswith("cuda"):  # settings that change which kernels run, so what a table means
        env["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
        env["tf32"] = bool(torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32)
    if backend == "onnxruntime":
        with contextlib.suppress(ImportError):
            import onnxruntime

            env["onnxruntime_version"] = onnxruntime.__version__
    return env


def time_models(models: dict[str, nn.Module], size: list[int] | tuple[int, int], backends: tuple[str, ...] = ("torch",),
                threads: int | None = None, rounds: int = 5, repeats: int = 20, warmup: int = 3
                ) -> dict[str, dict[str, dict[str, Any]]]:
    """Per model and backend, batch-1 CPU fp32: {"status": "ok", "median_ms", "round_medians_ms"},
    every (model, backend) timed in turn within each of `rounds` rounds in this one process, so a
    slow phase of the machine hits them alike; a backend that cannot run the model is recorded as
    {"status": "error", "error"}. The benchmarks that compare nets in one run all time this way."""
    results: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in models}
    with torch_threads(threads):
        runners = {}
        for backend in backends:
            for name, model in models.items():
                try:
                    runners[(name, backend)] = make_runner(model, size, backend, "cpu", "fp32", threads)
                except (GasnasError, ImportError, RuntimeError) as exc:
                    results[name][backend] = {"status": "error", "error": str(exc).splitlines()[0]}
        keys = list(runners)
        per = time_round_robin({f"{n}/{b}": runners[(n, b)] for n, b in keys}, rounds, repeats, warmup=warmup)
    for name, backend in keys:
        values = per[f"{name}/{backend}"]
        results[name][backend] = {"status": "ok", "median_ms": statistics.median(values), "round_medians_ms": values}
    return results
