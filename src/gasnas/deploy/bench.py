"""`gasnas bench`: batch-1 latency of a derived net, optionally next to the torchvision peers,
on one or several backends, measured in one process and interleaved.

Interleaved means round-robin: every round times each (model, backend) once, starting one place
further along each round, so slow drift of the machine (thermal, other load) hits every entry
equally. Each single run is timed by `gasnas.latency.timing.time_callable` (the one timer; it
synchronises CUDA), and the runners come from `timing.make_runner` (ONNX Runtime's from
`ort_runner`: the same export and session, with thread-pool spinning off), so these numbers are
comparable with the latency table's.
"""

from __future__ import annotations

import copy
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gasnas.errors import GasnasError
from gasnas.latency.measure import quiet_export
from gasnas.latency.timing import (
    BACKENDS,
    DTYPES,
    Timing,
    environment,
    make_runner,
    onnx_bytes,
    percentile,
    time_callable,
    torch_threads,
)

SPREAD_WARN = 0.15  # (p90 - median) / median above this: the median may not be stable


@dataclass
class BenchModel:
    """A network to time, with its complexity at the bench input size."""

    name: str
    model: nn.Module
    params: int
    flops: int
    source: str = ""
    reference: bool = False  # the derived net: ratios are relative to it


@dataclass
class BenchResult:
    model: str
    backend: str
    timing: Timing | None = None
    status: str = "ok"  # ok | unavailable | failed
    reason: str = ""
    samples: list[float] = field(default_factory=list)


def timing_from_samples(samples: list[float]) -> Timing:
    """The same summary `time_callable` gives, from samples collected one run at a time."""
    return Timing(statistics.median(samples), percentile(samples, 0.9), statistics.fmean(samples),
                  min(samples), len(samples))


def time_interleaved(runners: list[Callable[[], Any]], warmup: int, runs: int, device: str = "cpu",
                     progress: bool = False) -> list[list[float]]:
    """Round-robin timing: `warmup` untimed rounds, then `runs` rounds that time every runner
    once each (rotating the start), every single run timed by `time_callable`. Returns the
    samples (ms) per runner, in the order given."""
    from tqdm import tqdm

    n = len(runners)
    samples: list[list[float]] = [[] for _ in range(n)]
    rounds = tqdm(range(max(0, warmup) + max(1, runs)), desc="bench rounds", unit="round",
                  disable=not progress or None, leave=False)
    for r in rounds:
        for k in range(n):
            i = (r + k) % n
            if r < warmup:
                runners[i]()
            else:
                samples[i].append(time_callable(runners[i], 0, 1, device).median_ms)
    return samples


def ort_runner(model: nn.Module, input_size: tuple[int, int], device: str = "cpu",
               threads: int | None = None) -> Callable[[], Any]:
    """Like `make_runner(..., backend="onnxruntime")` (same exporter, same threads and providers),
    but with ONNX Runtime's thread-pool spinning off: a spinning pool keeps burning the cores
    after each run, which slowed the next, interleaved torch run 2.6x in a measurement here.
    (To fold into `timing.ort_session` as an option.)"""
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - a declared dependency
        raise GasnasError("backend 'onnxruntime': the onnxruntime package is not installed") from None
    h, w = input_size
    example = torch.randn(1, 3, h, w)
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise GasnasError("backend 'onnxruntime' on cuda: this onnxruntime has no CUDAExecutionProvider")
        providers.insert(0, "CUDAExecutionProvider")
    with quiet_export():
        data = onnx_bytes(model.float().cpu(), example)
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    session = ort.InferenceSession(data, opts, providers=providers)
    feed = {session.get_inputs()[0].name: example.numpy()}
    return lambda: session.run(None, feed)


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    m = re.match(r"backend '[^']+'(?: is unavailable)?:?\s*(.+)", text)
    return m.group(1) if m else text


def check_options(backends: list[str], device: str, dtype: str) -> None:
    """Bad values are user errors that name the option (one line, exit 2)."""
    if not backends:
        raise GasnasError("--backend: give at least one backend")
    for b in backends:
        if b not in BACKENDS:
            raise GasnasError(f"--backend {b!r}: expected one of {', '.join(BACKENDS)}")
    if not (device == "cpu" or re.fullmatch(r"cuda(:\d+)?", device)):
        raise GasnasError(f"--device {device!r}: expected cpu or cuda[:N]")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GasnasError(f"--device {device}: CUDA is not available on this machine")
    if dtype not in DTYPES:
        raise GasnasError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if device == "cpu" and dtype == "fp16":
        raise GasnasError("--dtype fp16 on --device cpu: PyTorch's CPU kernels lack fp16; use bf16 or fp32")


def run_bench(models: list[BenchModel], input_size: tuple[int, int], backends: list[str],
              device: str = "cpu", dtype: str = "fp32", threads: int | None = None,
              warmup: int = 3, runs: int = 10, progress: bool = False,
              extras: dict[str, Callable[[], Any]] | None = None) -> dict[str, Any]:
    """Time every model on every backend, interleaved, and return the report (JSON-able).

    A backend that cannot run here (TensorRT not installed, onnxruntime without CUDA, ...) is
    reported as `unavailable` with the reason, never skipped and never a crash. `extras` are
    further zero-argument callables (e.g. a peak-FLOP/s matmul) timed in the same rounds;
    their timings land in `report["extras"]`."""
    check_options(backends, device, dtype)
    if runs < 1 or warmup < 0:
        raise GasnasError("--runs must be >= 1 and --warmup >= 0")
    results: list[BenchResult] = []
    runners: list[Callable[[], Any]] = []
    timed: list[BenchResult] = []
    with torch_threads(threads):
        for bm in models:
            for backend in backends:
                res = BenchResult(bm.name, backend)
                results.append(res)
                try:
                    with quiet_export():
                        # Each runner gets its own copy: make_runner moves/casts the module.
                        model = copy.deepcopy(bm.model)
                        if backend == "onnxruntime" and dtype == "fp32":
                            # Same thread count as torch (ORT's own default may differ).
                            fn = ort_runner(model, input_size, device,
                                            threads if threads is not None else torch.get_num_threads())
                        else:
                            fn = make_runner(model, input_size, backend, device, dtype, threads)
                        fn()  # a first run surfaces backend failures (compile, ORT) here
                except GasnasError as exc:
                    res.status, res.reason = "unavailable", _reason(exc)
                    continue
                except Exception as exc:  # noqa: BLE001 - one backend failing must not end the table
                    res.status, res.reason = "failed", f"{type(exc).__name__}: {_reason(exc)}"
                    continue
                runners.append(fn)
                timed.append(res)
        extras = dict(extras or {})
        for fn in extras.values():
            fn()
        # The first run above was the first warm-up run.
        all_samples = time_interleaved(runners + list(extras.values()), max(0, warmup - 1), runs,
                                       device, progress)
    for res, samples in zip(timed, all_samples):
        res.samples = samples
        res.timing = timing_from_samples(samples)
    report = _report(models, results, input_size, backends, device, dtype, threads, warmup, runs)
    report["extras"] = {name: {**timing_from_samples(samples).to_dict(),
                               "samples_ms": [round(v, 4) for v in samples]}
                        for name, samples in zip(extras, all_samples[len(runners):])}
    return report


def _report(models: list[BenchModel], results: list[BenchResult], input_size: tuple[int, int],
            backends: list[str], device: str, dtype: str, threads: int | None, warmup: int,
            runs: int) -> dict[str, Any]:
    import torchvision

    env = environment(device, threads, ",".join(backends), dtype)
    env["torchvision_version"] = torchvision.__version__
    if "onnxruntime" in backends:
        env["onnxruntime_spinning"] = False
    try:
        import onnxruntime

        env["onnxruntime_version"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover - a declared dependency
        env["onnxruntime_version"] = None
    ref = next((m.name for m in models if m.reference), models[0].name if models else None)
    ref_ms = {r.backend: r.timing.median_ms for r in results
              if r.model == ref and r.timing is not None}
    out_models = []
    for bm in models:
        per_backend: dict[str, Any] = {}
        for r in results:
            if r.model != bm.name:
                continue
            if r.timing is None:
                per_backend[r.backend] = {"status": r.status, "reason": r.reason}
                continue
            t = r.timing
            entry: dict[str, Any] = {"status": "ok", **t.to_dict(),
                                     "spread": (t.p90_ms - t.median_ms) / t.median_ms if t.median_ms else 0.0,
                                     "gflops_per_s": bm.flops / 1e9 / (t.median_ms / 1e3) if t.median_ms else None,
                                     "ratio_to_reference": (t.median_ms / ref_ms[r.backend]
                                                            if r.backend in ref_ms else None),
                                     "samples_ms": [round(s, 4) for s in r.samples]}
            per_backend[r.backend] = entry
        out_models.append({"name": bm.name, "source": bm.source, "reference": bm.name == ref,
                           "params": bm.params, "flops": bm.flops, "gflops": bm.flops / 1e9,
                           "results": per_backend})
    return {
        "input_size": list(input_size),
        "batch": 1,
        "backends": list(backends),
        "device": device,
        "dtype": dtype,
        "threads": env["threads"],
        "warmup": warmup,
        "runs": runs,
        "interleaved": True,
        "reference": ref,
        "environment": env,
        "models": out_models,
    }


def _num(x: float) -> str:
    """Readable at any magnitude: 2213.4 → 2213.4, 0.52 → 0.52, 0.0061 → 0.006."""
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.3f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(report: dict[str, Any], throughput: bool = False) -> str:
    """One table: a row per model, per backend the median (p90), FPS and latency ratio to the
    reference (derived) net; unavailable backends say why in the cell."""
    backends = report["backends"]
    ref = report.get("reference")
    head = ["model", "params (M)", "GFLOPs"]
    for b in backends:
        head += [f"{b} median / p90 ms", f"{b} FPS", f"{b} latency ÷ {ref}"]
        if throughput:
            head.append(f"{b} GFLOP/s")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for m in report["models"]:
        row = [m["name"], f"{m['params'] / 1e6:.2f}", _num(m["gflops"])]
        for b in backends:
            r = m["results"].get(b, {"status": "failed", "reason": "not run"})
            if r["status"] != "ok":
                row += [_cell(f"{r['status']}: {r['reason']}"), "—", "—"] + (["—"] if throughput else [])
                continue
            ratio = r.get("ratio_to_reference")
            row += [f"{r['median_ms']:.2f} / {r['p90_ms']:.2f}", f"{r['fps']:.1f}",
                    f"{ratio:.2f}×" if ratio is not None else "—"]
            if throughput:
                row.append(_num(r["gflops_per_s"]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The provenance header printed above the table."""
    env = report["environment"]
    h, w = report["input_size"]
    lines = [f"input 1x3x{h}x{w}, {report['dtype']}, device {report['device']} ({env['device_name']}), "
             f"{report['threads']} threads; warm-up {report['warmup']}, {report['runs']} timed runs "
             f"per entry, interleaved round-robin",
             f"torch {env['torch_version']}, torchvision {env.get('torchvision_version')}, "
             f"onnxruntime {env.get('onnxruntime_version')}, python {env['python']}; "
             "GFLOPs count a multiply-add as 2"]
    unstable = [f"{m['name']}/{b}" for m in report["models"] for b, r in m["results"].items()
                if r["status"] == "ok" and r["spread"] > SPREAD_WARN]
    if unstable:
        lines.append(f"note: p90 is more than {SPREAD_WARN:.0%} above the median for "
                     f"{', '.join(unstable)}; more --runs would give a steadier median")
    return lines


def matmul_runner(n: int = 2048, device: str = "cpu") -> Callable[[], torch.Tensor]:
    """A zero-argument n×n @ n×n fp32 matmul (2·n³ FLOPs): this device's practical peak."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return lambda: torch.mm(a, b)


def ort_matmul_runner(n: int = 2048, threads: int | None = None) -> Callable[[], Any]:
    """The same n×n fp32 matmul in ONNX Runtime (MLAS kernels; the matrices are fed as inputs,
    so nothing is constant-folded). On AMD CPUs MKL's sgemm, which torch uses, can be well
    below MLAS's, so the practical peak is the better of the two."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in ("a", "b", "y")]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "matmul", spec[:2], spec[2:])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = min(proto.ir_version, onnx.IR_VERSION)
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {k: rng.standard_normal((n, n), dtype=np.float32) for k in ("a", "b")}
    return lambda: session.run(None, feed)


def measure_matmul_peak(n: int = 2048, device: str = "cpu", threads: int | None = None,
                        warmup: int = 3, runs: int = 10) -> dict[str, Any]:
    """This device's practical fp32 peak: an n×n matmul timed with the shared timer."""
    with torch_threads(threads):
        t = time_callable(matmul_runner(n, device), warmup, runs, device)
    flops = 2 * n ** 3
    return {"n": n, "flops": flops, **t.to_dict(), "gflops_per_s": flops / 1e9 / (t.median_ms / 1e3)}
