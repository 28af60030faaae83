#!/usr/bin/env python3
"""Measure op costs on one GPU and write a moai op-cost profile (format_version 1).

Usage (on the GPU machine, PyTorch with CUDA or ROCm):

    python profile_ops.py --gpu h100 --out h100.json            # full grid (about 10-20 minutes)
    python profile_ops.py --gpu mi250 --out mi250.json --quick  # small grid (about 1-2 minutes)

The file is read by `moai_costmodel::profile::OpProfile::load` (see the format in
`costmodel/src/profile.rs`) and passed to `ProfiledCostModel::with_profile`. Every table is a full
grid: matmul over (M, N, K) per dtype; fused attention (`scaled_dot_product_attention`, causal,
forward and backward) over (batch, heads, seq, head_dim) per GQA group size; memory-bound kernels by
bytes moved (norm, elementwise, reduce, gather, optimizer, copy). Times are medians of CUDA/HIP-event
timings after warm-up, in seconds per kernel call.

Provenance recorded: device name, torch / BLAS / HIP or CUDA versions, driver, date, the command line.
This script has not been run in the session that wrote it (no GPU there): the committed H100 and A100
coefficients are fitted from published and shared measurements instead (data/efficiency.json).
"""

import argparse
import datetime
import json
import subprocess
import sys

import torch
import torch.nn.functional as F

DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32}


def timed(fn, warmup=3, iters=10):
    """Median seconds of fn() measured with device events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return max(times[len(times) // 2], 1e-7)


def matmul_tables(quick):
    axis = [256, 1024, 4096, 16384] if quick else [128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
    tables = []
    for name, dt in DTYPES.items():
        ms, ns, ks = axis, axis, axis
        times = []
        for m in ms:
            for n in ns:
                for k in ks:
                    a = torch.randn(m, k, device="cuda", dtype=dt)
                    b = torch.randn(k, n, device="cuda", dtype=dt)
                    times.append(timed(lambda: a @ b))
                    del a, b
        tables.append({"dtype": name, "m": ms, "n": ns, "k": ks, "time_s": times})
    return tables


def attention_tables(quick):
    batch = [1, 4] if quick else [1, 2, 4, 8]
    heads = [8, 32] if quick else [4, 8, 16, 32, 64]
    seq = [512, 2048] if quick else [256, 512, 1024, 2048, 4096, 8192]
    head_dim = [64, 128]
    groups = [1, 4] if quick else [1, 2, 4, 8]
    tables = []
    for group in groups:
        for backward in (False, True):
            times = []
            for b in batch:
                for h in heads:
                    for s in seq:
                        for d in head_dim:
                            kv = max(h // group, 1)
                            q = torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
                            k = torch.randn(b, kv, s, d, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
                            v = torch.randn(b, kv, s, d, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
                            gqa = {"enable_gqa": True} if kv != h else {}
                            if backward:
                                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)
                                grad = torch.randn_like(out)
                                t = timed(lambda: torch.autograd.grad(out, (q, k, v), grad, retain_graph=True))
                            else:
                                t = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa))
                            times.append(t)
                            del q, k, v
            tables.append({"dtype": "bf16", "causal": True, "backward": backward, "gqa_group": group,
                           "batch": batch, "heads": heads, "seq": seq, "head_dim": head_dim, "time_s": times})
    return tables


def memory_tables(quick):
    sizes = [2 ** p for p in (range(16, 33, 4) if quick else range(14, 34, 2))]  # bytes moved
    tables = []

    def elems(bytes_moved, per_elem):
        return max(int(bytes_moved // per_elem), 1024)

    kinds = {
        # bytes moved per element: read + write
        "elementwise": (4, lambda n: (lambda x: (lambda: F.silu(x)))(torch.randn(n, device="cuda", dtype=torch.bfloat16))),
        "copy": (6, lambda n: (lambda x: (lambda: x.to(torch.bfloat16)))(torch.randn(n, device="cuda"))),
        "reduce": (4, lambda n: (lambda x: (lambda: torch.softmax(x.view(-1, 1024), dim=-1)))(
            torch.randn((n // 1024 + 1) * 1024, device="cuda", dtype=torch.bfloat16))),
        "norm": (4, lambda n: (lambda x, w: (lambda: F.rms_norm(x.view(-1, 1024), (1024,), w)))(
            torch.randn((n // 1024 + 1) * 1024, device="cuda", dtype=torch.bfloat16),
            torch.ones(1024, device="cuda", dtype=torch.bfloat16))),
        "gather": (4, lambda n: (lambda t, i: (lambda: F.embedding(i, t)))(
            torch.randn(32000, 1024, device="cuda", dtype=torch.bfloat16),
            torch.randint(0, 32000, (max(n // 1024, 1),), device="cuda"))),
    }
    for kind, (per, make) in kinds.items():
        times = [timed(make(elems(b, per))) for b in sizes]
        tables.append({"kind": kind, "bytes": [float(b) for b in sizes], "time_s": times})
    # Optimizer: fused AdamW over fp32 params; 28 bytes of state traffic per parameter.
    times = []
    for b in sizes:
        n = elems(b, 28)
        p = torch.nn.Parameter(torch.randn(n, device="cuda"))
        p.grad = torch.randn_like(p)
        opt = torch.optim.AdamW([p], fused=True)
        times.append(timed(opt.step))
        del p, opt
    tables.append({"kind": "optimizer", "bytes": [float(b) for b in sizes], "time_s": times})
    return tables


def provenance():
    lib = {"torch": torch.__version__}
    if torch.version.hip:
        lib["hip"] = torch.version.hip
        lib["blas"] = "hipBLASLt/rocBLAS (torch default)"
    else:
        lib["cuda"] = torch.version.cuda or "unknown"
        lib["blas"] = "cuBLAS/cuBLASLt (torch default)"
        lib["cudnn"] = str(torch.backends.cudnn.version())
    lib["attention"] = "torch.nn.functional.scaled_dot_product_attention (default backend)"
    try:
        tool = ["rocm-smi", "--showdriverversion"] if torch.version.hip else [
            "nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        driver = subprocess.run(tool, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[-1]
    except Exception:  # noqa: BLE001 - provenance is best effort
        driver = "unknown"
    return lib, driver


def provenance_record():
    """The provenance fields every measurement file of this directory starts with."""
    lib, driver = provenance()
    return {
        "device_name": torch.cuda.get_device_name(0),
        "kernel_library": lib,
        "driver": driver,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "command": " ".join(["python"] + sys.argv),
    }


def write_json(path, out):
    """Writes a measurement file and says so on stderr."""
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {path}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", required=True, choices=["mi250", "mi210", "mi300x", "h100", "a100"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="small grids")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_ops.py: no CUDA or ROCm device visible to PyTorch")
    torch.backends.cuda.matmul.allow_tf32 = False
    out = {
        "format_version": 1,
        "gpu": args.gpu,
        **provenance_record(),
        "matmul": matmul_tables(args.quick),
        "attention": attention_tables(args.quick),
        "memory_bound": memory_tables(args.quick),
    }
    write_json(args.out, out)


if __name__ == "__main__":
    main()
