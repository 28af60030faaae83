#!/usr/bin/env python3
"""Measure fused attention at long sequences on one GPU, per backend, at the block shapes a
context-parallel ring runs, and write a JSON table of seconds and TFLOP/s.

Usage (on the GPU machine, PyTorch 2.5 or later with CUDA):

    python long_attention.py --out h100_long_attention.json            # about 3 minutes on an H100
    python long_attention.py --out h100_long_attention.json --quick    # about 1 minute

Why: the long-sequence truth files (`costmodel/data/truth/nemo_long_sequence_h100.jsonl`,
`long_context_torchtitan.jsonl`) say moai's H100 attention from 16K-32K tokens on is optimistic by up
to 1.6x (README, *Long context*), and cannot say whether the kernels themselves slow down at long
sequences, whether cuDNN's kernel keeps its lead over FlashAttention-2 there, or whether the ring's
half-size blocks run slower than the causal diagonal. This table answers those three on one device;
a ring across devices needs two or more GPUs and is not measured here.

Shapes (batch 1, bf16, head dim 128, 32 query heads, Llama 3 8B's): for each sequence T per rank, the
causal T x T block (a rank without context parallelism, or a ring's diagonal step), the non-causal
T x T/2 block (all queries against half the visiting keys) and the T/2 x T block (half the queries
against all of them), each with 8 key/value heads (grouped-query attention, `enable_gqa`) and with
the keys and values repeated to 32 heads first (what torchtitan of December 2024 passed to SDPA).
Backends: FlashAttention-2 (SDPBackend.FLASH_ATTENTION), cuDNN (SDPBackend.CUDNN_ATTENTION) and
the memory-efficient kernel; a backend that refuses a shape is recorded with its error. Forward is
one SDPA call; backward is `torch.autograd.grad` of its output. Times are medians of CUDA-event
timings after warm-up. TFLOP/s count the FLOPs the kernel executes: 4*b*h*q*kv*d forward, 2.5x that
backward (FlashAttention's backward recomputes the scores), halved for a causal square block.

Provenance recorded: device name, torch / CUDA / cuDNN versions, driver, date, the command line.
This script has not been run in the session that wrote it (no GPU there).
"""

import argparse
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from profile_ops import provenance_record, timed, write_json  # shared with the op profiler

BACKENDS = {
    "flash2": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}
HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128


def executed_flops(q, kv, causal, heads=HEADS, d=HEAD_DIM):
    """Forward FLOPs the kernel executes (the masked half of a causal square skipped)."""
    f = 4.0 * heads * q * kv * d
    return f / 2 if causal and q == kv else f


def measure(backend, q_len, kv_len, causal, repeat_kv):
    """Forward and backward seconds of one block, or the error that stopped it."""
    kvh = HEADS if repeat_kv else KV_HEADS
    q = torch.randn(1, HEADS, q_len, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, kvh, kv_len, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, kvh, kv_len, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    gqa = {} if kvh == HEADS else {"enable_gqa": True}
    try:
        with sdpa_kernel([BACKENDS[backend]]):
            fwd = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, **gqa), 2, 5)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, **gqa)
            grad = torch.randn_like(out)
            bwd = timed(lambda: torch.autograd.grad(out, (q, k, v), grad, retain_graph=True), 2, 5)
        return {"forward_s": fwd, "backward_s": bwd}
    except RuntimeError as e:  # a backend that does not take this shape says why
        return {"error": str(e).splitlines()[0][:300]}
    finally:
        del q, k, v
        torch.cuda.empty_cache()


def rows(quick):
    seqs = [8192, 32768] if quick else [4096, 8192, 16384, 32768, 65536]
    out = []
    for t in seqs:
        blocks = [("causal", t, t, True), ("half_keys", t, t // 2, False), ("half_queries", t // 2, t, False)]
        for name, q_len, kv_len, causal in blocks:
            for repeat_kv in (False, True):
                for backend in BACKENDS:
                    r = measure(backend, q_len, kv_len, causal, repeat_kv)
                    row = {"seq_per_rank": t, "block": name, "q": q_len, "kv": kv_len, "causal": causal,
                           "heads": HEADS, "kv_heads": HEADS if repeat_kv else KV_HEADS,
                           "head_dim": HEAD_DIM, "backend": backend, **r}
                    if "forward_s" in r:
                        f = executed_flops(q_len, kv_len, causal)
                        row["forward_tflops"] = f / r["forward_s"] / 1e12
                        row["backward_tflops"] = 2.5 * f / r["backward_s"] / 1e12
                    out.append(row)
                    shown = (f"{row['forward_tflops']:7.1f} {row['backward_tflops']:7.1f}"
                             if "forward_s" in r else "  " + r["error"][:60])
                    print(f"{t:>6} {name:<12} kv_heads {row['kv_heads']:>2} {backend:<9} {shown}",
                          file=sys.stderr)
    return out


def power_limit():
    """The GPU's power limit as nvidia-smi reports it (the power-limited H100s run slower)."""
    try:
        tool = ["nvidia-smi", "--query-gpu=power.limit", "--format=csv,noheader"]
        return subprocess.run(tool, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001 - provenance is best effort
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="two sequence lengths only")
    args = ap.parse_args()
    if not torch.cuda.is_available() or torch.version.hip:
        sys.exit("long_attention.py: needs an NVIDIA GPU visible to PyTorch")
    out = provenance_record()
    out["kernel_library"]["attention"] = "torch.nn.functional.scaled_dot_product_attention, one backend per row"
    out["power_limit"] = power_limit()
    out["rows"] = rows(args.quick)
    write_json(args.out, out)


if __name__ == "__main__":
    main()
