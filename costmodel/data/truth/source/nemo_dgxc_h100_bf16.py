"""Writes ../nemo_dgxc_h100_bf16.jsonl from NVIDIA's DGX Cloud benchmarking recipes (BF16, H100).

The rows are the BF16 pre-training tables of NVIDIA/dgxc-benchmarking at commit 8f5cbb3799ea
(release v25.02, container nvcr.io/nvidia/nemo:24.12): llama3.1/README_8b.md, README_70b.md,
README_405b.md and nemo_megatron/README_175b.md, with each recipe read from the same commit's
yaml (llama3.1/llama3.1_{8b,70b,405b}.yaml, nemo_megatron/gpt3_175b_hydra.yaml) and launch
overrides (llama3.1/configure.sh, nemo_megatron/configure.sh). Run from anywhere:
`python3 costmodel/data/truth/source/nemo_dgxc_h100_bf16.py`.
"""
import json
import pathlib

REPO = "NVIDIA/dgxc-benchmarking at commit 8f5cbb3799ea (release v25.02, NeMo 24.12 container nvcr.io/nvidia/nemo:24.12)"
COMMON = (
    "Stack: NeMo 24.12 on Megatron-Core with Transformer Engine (transformer_engine: true, mcore_gpt: true), "
    "cuDNN fused attention (NVTE_FUSED_ATTN=1, NVTE_FLASH_ATTN=0), megatron_amp_O2 bf16 with fp32 master weights "
    "(moai amp-bf16), optimizer distributed_fused_adam (ZeRO-1: distribute_optimizer) with overlap_grad_sync and "
    "overlap_param_sync, no activation checkpointing (activations_checkpoint_* null), fp8 false (configure.sh sets "
    "model.fp8=$FP8_ENABLED, false for DTYPE=bf16). Measured: the README table's 'Throughput in tokens per second' "
    "(sequence x global batch / the last step's train_step_timing of a 50-step run, as the README states). Cluster: "
    "DGX H100 servers, 8 H100 SXM 80GB and 8 ConnectX-7 400 Gb/s ports each (NVIDIA DGX H100 datasheet), 50 GB/s per "
    "GPU between servers (network_bytes_per_s). Fitted with every other truth row (the recipes are published in full); "
    "moai predicted these rows within 3.7% (step time, mean absolute) with coefficients fitted before they were added."
)


def llama_row(size, gpus, layers, hidden, heads, groups, ffn, vocab, tp, pp, vp, cp, gbs, tokens_s, mfu,
              file, yaml, extra):
    dp = gpus // (tp * pp * cp)
    assert dp * tp * pp * cp == gpus
    m = gbs // dp
    assert m * dp == gbs
    cfg = {"dp": dp, "tp": tp, "pp": pp, "cp": cp, "micro_batch_size": 1, "num_micro_batches": m,
           "recompute": "none", "distribute_optimizer": True, "sequence_parallel": tp > 1,
           "schedule": f"interleaved:{vp}" if vp else "1f1b", "stack": "megatron",
           "overlap_grad_reduce": True, "overlap_param_gather": True, "tp_comm_overlap": tp > 1}
    src = (f"{REPO}, {file}, table 'Llama 3.1 {size} BF16', column {gpus}x H100 GPUs (GBS={gbs}): "
           f"{tokens_s} tokens/s, MFU {mfu}% (the README's FLOP count: 12*L*h^2*(1 + groups/heads + s/h) "
           f"+ 18*L*ffn*h + 6*V*h per token, attention's full s x s square, as moai counts it). Recipe ({yaml}): "
           f"{layers} layers, hidden {hidden}, {heads} heads, {groups} query groups, ffn {ffn} (fast-swiglu), RMSNorm, RoPE "
           f"(fused), no biases, untied embeddings, sequence 8192, micro-batch 1, global batch {gbs}, TP {tp}, PP {pp}, "
           f"VP {vp or 'none'}, CP {cp} (Transformer Engine's p2p ring), data-parallel {dp}, {m} micro-batches per rank, "
           f"sequence_parallel {'true' if tp > 1 else 'false'}, ub_tp_comm_overlap {'true' if tp > 1 else 'false'}. "
           f"{extra}{COMMON}")
    model = (f"llama:layers={layers},hidden={hidden},heads={heads},kv_heads={groups},ffn={ffn},"
             f"vocab={vocab},rope_theta=500000,seq=8192")
    return {"name": f"nemo llama3.1-{size} bf16 h100x{gpus} tp{tp} pp{pp} cp{cp}" + (f" vp{vp}" if vp else ""),
            "model": model, "cluster": {"gpu": "h100", "devices": gpus, "network_bytes_per_s": 50e9},
            "batch": gbs, "seq": 8192, "precision": "amp-bf16", "optimizer": "adamw", "config": cfg,
            "measured": {"tokens_per_s": float(tokens_s)}, "source": src}


def padded(vocab, tp):
    """NeMo pads the vocabulary to a multiple of make_vocab_size_divisible_by (128) times TP."""
    k = 128 * tp
    return (vocab + k - 1) // k * k


out = []
# Llama 3.1 8B: README_8b.md, BF16 (TP=1, PP=1, CP=2, MBS=1, GA=32).
for gpus, tok, mfu in [(8, 82028, 59.99), (16, 161443, 59.03), (32, 322638, 58.99), (64, 645277, 58.99),
                       (128, 1275155, 58.28)]:
    out.append(llama_row("8b", gpus, 32, 4096, 32, 8, 14336, padded(128256, 1), 1, 1, None, 2, 16 * gpus, tok,
                         mfu, "llama3.1/README_8b.md", "llama3.1/llama3.1_8b.yaml",
                         "Vocabulary 128256 (Llama 3 tokenizer; a multiple of 128). "))
# Llama 3.1 70B: README_70b.md, BF16 (TP=4, PP=4, CP=2, VP=5, MBS=1, GA=64).
for gpus, tok, mfu in [(64, 71756, 54.52), (128, 142663, 54.20), (256, 284881, 54.12), (512, 566797, 53.84),
                       (1024, 1129246, 53.63), (2048, 2260623, 53.68)]:
    out.append(llama_row("70b", gpus, 80, 8192, 64, 8, 28672, padded(128256, 4), 4, 4, 5, 2, 2 * gpus, tok,
                         mfu, "llama3.1/README_70b.md", "llama3.1/llama3.1_70b.yaml",
                         "Vocabulary: the Llama 3 tokenizer's 128256 padded to a multiple of 128 x TP = 512 "
                         "(NeMo's padding), 128512. "))
# Llama 3.1 405B: README_405b.md, BF16 (TP=8, PP=9, CP=2, VP=7, MBS=1, GA=63); configure.sh runs it on mock data
# with the megatron-gpt2-345m tokenizer (vocabulary 50257, padded to a multiple of 128 x 8 = 51200) and shortens
# the model below 576 GPUs: 7 layers at PP 1 without VP on 32 GPUs, 21 and 42 layers at PP 3 on 96 and 192 GPUs.
for gpus, layers, gbs, pp, vp, tok, mfu in [(32, 7, 126, 1, None, 114637, 57.65), (96, 21, 126, 3, 7, 116342, 55.41),
                                             (192, 42, 252, 3, 7, 119328, 56.03), (576, 126, 252, 9, 7, 117964, 54.85),
                                             (1152, 126, 504, 9, 7, 234589, 54.54),
                                             (2304, 126, 1008, 9, 7, 466527, 54.23)]:
    out.append(llama_row("405b" if layers == 126 else f"405b-{layers}l", gpus, layers, 16384, 128, 16, 53248,
                         padded(50257, 8), 8, pp, vp, 2, gbs, tok, mfu, "llama3.1/README_405b.md",
                         "llama3.1/llama3.1_405b.yaml and configure.sh's overrides",
                         f"{layers} of the 405B's layers (configure.sh's NUM_LAYERS for this GPU count), 16 query groups "
                         "as the recipe's yaml sets (num_query_groups: 16); mock data with the megatron-gpt2-345m tokenizer "
                         "(configure.sh), vocabulary 50257 padded to 51200. " if layers != 126 else
                         "16 query groups as the recipe's yaml sets (num_query_groups: 16); mock data with the "
                         "megatron-gpt2-345m tokenizer (configure.sh), vocabulary 50257 padded to 51200. "))
# GPT-3 175B: nemo_megatron/README_175b.md, BF16 (TP=4, PP=8, MBS=1, VP=12, SEQ=2048); GBS = 16 x nodes.
for gpus, tok, mfu in [(128, 63099, 53.54), (256, 124712, 52.91), (512, 249068, 52.84), (1024, 496191, 52.63),
                       (2048, 988057, 52.40)]:
    tp, pp, vp = 4, 8, 12
    dp = gpus // (tp * pp)
    gbs = 2 * gpus
    m = gbs // dp
    vocab = padded(50257, tp)
    cfg = {"dp": dp, "tp": tp, "pp": pp, "micro_batch_size": 1, "num_micro_batches": m, "recompute": "none",
           "distribute_optimizer": True, "sequence_parallel": True, "schedule": f"interleaved:{vp}",
           "stack": "megatron", "overlap_grad_reduce": True, "overlap_param_gather": True, "tp_comm_overlap": True}
    src = (f"{REPO}, nemo_megatron/README_175b.md, table 'NeMo Megatron BF16 (TP=4,PP=8, MBS=1, VP=12, SEQ=2048)', "
           f"column {gpus}x H100 GPUs (GBS={gbs}): {tok} tokens/s, MFU {mfu}% (the README's FLOP count: 24*L*h^2 + "
           f"12*L*h*s + 48*L*h^2 + 6*V*h per token with V = 51200). Recipe (nemo_megatron/gpt3_175b_hydra.yaml, "
           f"configure.sh: GBS = 16 x nodes, model.fp8 false for bf16): GPT-3 175B, 96 layers, hidden 12288, 96 heads, "
           f"ffn 49152 (GeLU), LayerNorm, learned positions, biased linears, embeddings shared with the output layer "
           f"(NeMo's default), sequence 2048, hidden and attention dropout 0.1, micro-batch 1, TP 4, PP 8, VP 12, "
           f"data-parallel {dp}, {m} micro-batches per rank, sequence_parallel and ub_tp_comm_overlap true. Vocabulary: "
           f"GPT-2's 50257 padded to a multiple of 128 x TP = 512 (NeMo's padding), {vocab}; the README's FLOP count "
           f"uses 51200 (not modelled: the difference is 0.3% of the FLOPs). moai models attention dropout in-kernel; "
           f"the hidden dropout runs inside Megatron's fused bias-dropout-add. {COMMON}")
    out.append({"name": f"nemo gpt3-175b bf16 h100x{gpus} tp4 pp8 vp12",
                "model": f"gpt:layers=96,hidden=12288,heads=96,vocab={vocab},seq=2048",
                "cluster": {"gpu": "h100", "devices": gpus, "network_bytes_per_s": 50e9},
                "batch": gbs, "seq": 2048, "precision": "amp-bf16", "optimizer": "adamw", "config": cfg,
                "measured": {"tokens_per_s": float(tok)}, "attention_dropout": 0.1, "source": src})

with open(pathlib.Path(__file__).resolve().parent.parent / "nemo_dgxc_h100_bf16.jsonl", "w") as f:
    for r in out:
        f.write(json.dumps(r) + "\n")
print(len(out))
