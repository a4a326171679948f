"""GPU check of suite's CUDA kernels (run through benchmarks/gpu_check.sh, which builds first).

For a machine with an NVIDIA GPU; it has not been run on the CPU-only development machine.

1. Correctness: the CUDA kernels against the plain-torch references (suite.kernels.reference_*)
   for several shapes, up to the full (n, 45, 100) block.
2. Speed: the fused kernels against the equivalent torch eager ops on (n, 45, 100) float32
   (n = 50,000 by default, smaller if memory is short), timed with CUDA events (median of
   repetitions), next to the GEMM X @ W of the same evaluation for scale.
3. The full probe protocol through suite.probe.bench.run_bench, when that module exists.
4. Feature extraction (suite.features.bench_features): ResNet-50 bf16 extraction against its
   bare forward, JPEG decode rates (PIL, torchvision CPU, nvJPEG), and extraction from JPEG files
   with each decoder (pil / torchvision in the DataLoader workers, device = nvJPEG).

Prints the card name and all numbers; with $OUT set, writes $OUT/gpu_check.json. Exits 1 when a
CUDA result disagrees with its reference.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from suite import kernels as K

M, KCLS, D = 45, 100, 2048  # values of the paper's grid, classes, feature dimension


def _time_ms(fn, reps: int, setup=None) -> float:
    """Median milliseconds of fn() between two CUDA events (setup() runs outside them)."""
    times = []
    for _ in range(reps + 2):  # two warm-ups
        if setup is not None:
            setup()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times[2:])


def _errors(got, want) -> float:
    return float((got.double() - want.double()).abs().max()) if got.numel() else 0.0


def _loss_errors(fused, reference, z, target) -> dict:
    """Differences of an in-place fused loss kernel from its reference on logits ``z``."""
    loss_r, g_r, b_r = reference(z, target)
    g = z.clone()
    loss, b = fused(g, target)
    return {"grad": _errors(g, g_r),
            "loss_rel": float(((loss - loss_r).abs() / loss_r.abs().clamp_min(1)).max()),
            "bias": _errors(b, b_r)}


def check_correctness(n_full: int) -> dict:
    """Max abs/rel differences CUDA vs reference; ok=False when outside the test tolerances."""
    shapes = [(1, 1, 1), (7, 3, 1), (13, 45, 3), (100, 45, 37), (33, 2, 1000), (8, 3, 129),
              (n_full, M, KCLS)]
    rows, ok = [], True
    gen = torch.Generator(device="cuda").manual_seed(0)
    for (n, m, k) in shapes:
        for scale in (1.0, 80.0):
            z = (torch.rand((n, m, k), device="cuda", generator=gen) * 2 - 1) * scale
            y = torch.randint(0, k, (n,), device="cuda", generator=gen)
            t = (torch.rand((n, k), device="cuda", generator=gen) < 0.3).float()
            row = {"shape": [n, m, k], "scale": scale,
                   "softmax": _loss_errors(K.softmax_xent_grad_, K.reference_softmax_xent_grad,
                                           z, y),
                   "sigmoid": _loss_errors(K.sigmoid_bce_grad_, K.reference_sigmoid_bce_grad,
                                           z, t)}
            row["argmax_equal"] = bool(torch.equal(K.argmax(z), K.reference_argmax(z)))
            good = (row["argmax_equal"] and all(
                r["grad"] <= 2e-6 and r["loss_rel"] <= 1e-5 and r["bias"] <= 1e-5 * max(n, 1)
                for r in (row["softmax"], row["sigmoid"])))
            row["ok"] = good
            ok &= good
            rows.append(row)
            print(f"  {str((n, m, k)):>18} scale {scale:>4}: softmax {row['softmax']}  "
                  f"sigmoid {row['sigmoid']}  argmax equal {row['argmax_equal']}  "
                  f"{'ok' if good else 'MISMATCH'}")
            del z
    torch.cuda.empty_cache()
    return {"ok": ok, "rows": rows}


def eager_softmax(z, y, onehot):
    """What the fused kernel replaces, in torch eager ops (float32): softmax, log, gather,
    subtract one-hot, sums."""
    p = torch.softmax(z, dim=2)  # (n, m, k)
    yy = y.view(-1, 1, 1).expand(-1, z.shape[1], 1)
    loss = -torch.log(p.gather(2, yy)).squeeze(2).double().sum(0)  # (m,)
    g = p - onehot  # (n, m, k)
    return loss, g, g.sum(0)


def eager_sigmoid(z, t):
    tt = t.unsqueeze(1)
    loss = (torch.nn.functional.softplus(z) - tt * z).double().sum(dim=(0, 2))
    g = torch.sigmoid(z) - tt
    return loss, g, g.sum(0)


def time_kernels(n: int, reps: int) -> dict:
    torch.manual_seed(0)
    z = torch.randn((n, M, KCLS), device="cuda") * 5
    y = torch.randint(0, KCLS, (n,), device="cuda")
    t = (torch.rand((n, KCLS), device="cuda") < 0.3).float()
    onehot = torch.nn.functional.one_hot(y, KCLS).float().unsqueeze(1)  # (n, 1, k)
    buf = torch.empty_like(z)
    x = torch.randn((n, D), device="cuda")
    w = torch.randn((D, M * KCLS), device="cuda")
    gb = n * M * KCLS * 4 / 1e9  # one pass over the logits block, GB

    def refill():
        buf.copy_(z)

    res = {"n": n, "m": M, "k": KCLS, "logits_GB": gb}
    res["softmax_fused_ms"] = _time_ms(lambda: K.softmax_xent_grad_(buf, y), reps, refill)
    res["softmax_fused_nocheck_ms"] = _time_ms(
        lambda: K.softmax_xent_grad_(buf, y, check_labels=False), reps, refill)
    res["softmax_eager_ms"] = _time_ms(lambda: eager_softmax(z, y, onehot), reps)
    res["sigmoid_fused_ms"] = _time_ms(lambda: K.sigmoid_bce_grad_(buf, t), reps, refill)
    res["sigmoid_eager_ms"] = _time_ms(lambda: eager_sigmoid(z, t), reps)
    res["argmax_fused_ms"] = _time_ms(lambda: K.argmax(z), reps)
    res["argmax_eager_ms"] = _time_ms(lambda: torch.argmax(z, dim=2), reps)
    # the two GEMMs of the same evaluation, for scale
    res["gemm_xw_fp32_ms"] = _time_ms(lambda: x @ w, reps)
    res["gemm_xtg_fp32_ms"] = _time_ms(lambda: x.t() @ buf.view(n, -1), reps)
    res["softmax_speedup"] = res["softmax_eager_ms"] / res["softmax_fused_ms"]
    res["sigmoid_speedup"] = res["sigmoid_eager_ms"] / res["sigmoid_fused_ms"]
    res["argmax_speedup"] = res["argmax_eager_ms"] / res["argmax_fused_ms"]
    # rows kernel reads + writes the block, the bias pass reads it once more
    res["softmax_fused_GBps"] = 3 * gb / (res["softmax_fused_nocheck_ms"] / 1e3)
    z = buf = x = w = None  # release the GPU memory (the timing lambdas have run)
    torch.cuda.empty_cache()
    return res


def _guarded(fn, **kwargs) -> dict:
    """``fn(**kwargs)``, timed: {"result", "seconds"}, or {"error", "seconds"} when it raises. A
    failing bench is reported and the check goes on: the kernel numbers stand on their own."""
    t0 = time.perf_counter()
    try:
        result = fn(**kwargs)
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}", "seconds": time.perf_counter() - t0}
    return {"result": result, "seconds": time.perf_counter() - t0}


def run_probe_bench(out: Path | None) -> dict:
    """The full protocol via suite.probe.bench.run_bench (owned by the probe stage), if any."""
    try:
        from suite.probe.bench import run_bench
    except ImportError as e:
        return {"skipped": f"suite.probe.bench not importable: {e}"}
    kwargs = {"features_file": None, "json_out": (out / "probe_bench.json") if out else None,
              "backends": None, "quick": False, "seed": 0}
    accepted = inspect.signature(run_bench).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    summary = _guarded(run_bench, **kwargs)
    summary["kwargs"] = {k: str(v) for k, v in kwargs.items()}
    if "result" in summary:
        try:
            json.dumps(summary["result"])
        except TypeError:
            summary["result"] = repr(summary["result"])
    return summary


def run_features_bench(arch: str, n_files: int) -> dict:
    """suite.features.bench_features on CUDA (see benchmarks/features.md for the fields)."""
    from suite.features import bench_features

    return _guarded(bench_features, arch=arch, batch_size=256, n_images=2048, device="cuda",
                    n_jpeg=256, n_files=n_files)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000, help="examples in the timed block")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--skip-probe", action="store_true", help="skip the full-protocol bench")
    ap.add_argument("--skip-features", action="store_true", help="skip the extraction bench")
    ap.add_argument("--features-arch", default="resnet50")
    ap.add_argument("--n-files", type=int, default=2048, help="JPEG files for the decoders")
    args = ap.parse_args(argv)

    K.require_cuda()
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    props = torch.cuda.get_device_properties(0)
    report = {
        "card": torch.cuda.get_device_name(0),
        "memory_GiB": props.total_memory / 2**30,
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "suite_C": K._C.__file__, "cuda_kernels": K.has_cuda(),
    }
    print(f"card: {report['card']} ({report['memory_GiB']:.0f} GiB), torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}), suite._C {K._C.__file__}")

    # The timed block needs the logits, a copy, the eager temporaries (~4 blocks) and X: cap n
    # so that about 8 blocks fit in the free memory.
    free, _ = torch.cuda.mem_get_info()
    n = min(args.n, int(free * 0.8 / (8 * M * KCLS * 4)))
    if n < args.n:
        print(f"n reduced to {n} to fit the free memory ({free / 2**30:.1f} GiB)")

    print("correctness (max abs diff of P - Y and bias, max relative diff of the loss):")
    report["correctness"] = check_correctness(min(n, 50_000))

    print(f"timing on ({n}, {M}, {KCLS}) float32, median of {args.reps}:")
    report["timing"] = timing = time_kernels(n, args.reps)
    for key, val in timing.items():
        print(f"  {key}: {val:.4g}" if isinstance(val, float) else f"  {key}: {val}")

    if args.skip_probe:
        report["probe_bench"] = {"skipped": "--skip-probe"}
    else:
        print("full probe protocol (suite.probe.bench.run_bench):")
        report["probe_bench"] = run_probe_bench(out)
        print(f"  {report['probe_bench']}")

    if args.skip_features:
        report["features_bench"] = {"skipped": "--skip-features"}
    else:
        print(f"feature extraction ({args.features_arch}, suite.features.bench_features):")
        report["features_bench"] = bench = run_features_bench(args.features_arch, args.n_files)
        for key, val in {**bench.get("result", {}), **bench}.items():
            if key != "result":
                print(f"  {key}: {val:.4g}" if isinstance(val, float) else f"  {key}: {val}")

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    ok = report["correctness"]["ok"]
    print("RESULT:", "ok" if ok else "CUDA results differ from the references")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
