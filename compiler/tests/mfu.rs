//! The planner's best plan for a large dense model, per GPU, against published MFU.
//!
//! Llama 2 70B (`models/configs/llama2-70b/config.json`), 64 devices, 512 sequences of 4096 tokens,
//! amp-bf16, the planner's full search. Two checks per GPU:
//!
//! 1. **Like for like.** Every published 70B-class run on these GPUs recomputes activations, so the
//!    planner's best plan *with full recomputation* is held to the published 70B-class MFU range of
//!    that GPU:
//!    - A100: 43-56%. Llama 2 70B pretraining (Touvron et al. 2023, Table 2: 1,720,320 A100-80GB
//!      GPU-hours for 2T tokens, so 6·N·D over 312 TFLOP/s times those hours is about 43%, a lower
//!      bound since the hours include restarts); MosaicML llm-foundry MPT-70B, FSDP, full
//!      checkpointing (`costmodel/data/truth/llmfoundry_a100_80gb.jsonl`: 48.6% on 32 and 53.3% on
//!      64 A100-80GB); torchtitan Llama 2/3 70B on 64 A100 (`torchtitan.jsonl`: 50.5-51.7%);
//!      Megatron-LM with selective recomputation (Korthikanti et al. 2022, arXiv 2205.05198, Table
//!      5, `megatron_a100_korthikanti2022.jsonl`: 51.4% at 175B, up to 56.3% at 1T).
//!    - H100: 36-47%. llm-foundry MPT-70B on 32-512 H100 (`llmfoundry_h100.jsonl`: 36.2-43.4%);
//!      Llama 3 405B pretraining on 8K-16K H100 (Llama 3 paper, Table 4: 38-43%); Megatron-LM's
//!      README: up to 47% MFU on H100 clusters (GPT-3 175B, 462B).
//!    - MI250 (per GCD): 25-50%. Frontier MI250X (Dash et al., arXiv 2312.12705: 32-38%); MosaicML
//!      MPT-7B on 64 MI250 (`mi250_mosaicml.jsonl`, about 43% per GCD).
//!    - MI300X: 20-50%. AMD Primus / Megatron-LM MI300X and MI325X training reports, about 30-45% of
//!      the bf16 peak (`mi325x_primus_megatron.jsonl`).
//! 2. **Free choice.** The unrestricted best plan (the one `moai-compile plan` prints) is at least as
//!    fast as the recomputing one, and its hardware FLOP utilisation (MFU, times 4/3 under full
//!    recomputation) stays at or below the highest any published dense-LLM run sustained on that
//!    GPU: A100 79.3% (llm-foundry MPT-13B on 8 A100-80GB, full checkpointing,
//!    `llmfoundry_a100_80gb.jsonl`), H100 60.0% (NeMo Llama 3.1 8B on 8 H100 without
//!    recomputation, `nemo_dgxc_h100_bf16.jsonl`); MI250 and MI300X the upper ends of their ranges
//!    above (no higher figure published).
//!
//! 3. **Free choice against published MFU.** The free choice's MFU stays at or below the highest
//!    MFU published for dense-LLM training on that GPU where one counts FLOPs as moai does (every
//!    matmul, the LM head, and attention's full `s × s` square, not halved for the causal mask):
//!    - A100 72%: the FlashAttention-2 paper (Dao 2023, arXiv 2307.08691, Table 1: GPT3-2.7B at
//!      8k context on 8 A100-80GB, 225 TFLOP/s per GPU, FLOPs `6·s·N + 12·L·h·s²` per sequence;
//!      `costmodel/data/truth/flashattention2_a100.jsonl`, which moai predicts 4-10% slow, so
//!      its A100 figures are, if anything, low). The A100 free choice is 66.6% at this commit.
//!    - H100 60.0%: NVIDIA's DGX Cloud benchmarking recipes (NVIDIA/dgxc-benchmarking at
//!      8f5cbb3799ea, NeMo 24.12, BF16; `costmodel/data/truth/nemo_dgxc_h100_bf16.jsonl`), whose
//!      FLOP count is moai's (12·L·h²·(1 + groups/heads + s/h) + 18·L·ffn·h + 6·V·h per token):
//!      Llama 3.1 8B on 8 H100, 59.99%. The like-for-like figure is the same recipes' Llama 3.1
//!      70B on 64 H100 (TP 4, PP 4 with 5 virtual stages, CP 2, no recomputation, the plan the
//!      free choice here resembles): 54.5%. The H100 free choice is 53.0% at this commit, and moai
//!      predicts that 70B row 2.4-3.2% slow (cross-validated: its model left out of the fit).

use moai_compiler::{Cluster, Gpu, Model, PlanRequest, Recompute, plan};
use std::sync::OnceLock;

fn llama2_70b() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let path = crate::common::repo().join("models/configs/llama2-70b/config.json");
        Model::load(&path.display().to_string()).expect("llama2-70b config imports")
    })
}

/// The best plan's MFU, its hardware FLOP utilisation and its one-line summary, with recomputation
/// limited to `recompute` (all policies when empty).
fn best(gpu: Gpu, recompute: &[Recompute]) -> (f64, f64, String) {
    let cluster = Cluster::new(gpu, 64).unwrap();
    let mut req = PlanRequest::new(512, 4096);
    req.constraints.recompute = recompute.to_vec();
    let report = plan(llama2_70b(), &cluster, &req).expect("a plan");
    let summary = report
        .explanation
        .split(". It is costed")
        .next()
        .unwrap_or_default()
        .to_string();
    let mfu = report.output.predicted.mfu;
    // Full recomputation runs every layer's forward twice: 8 of the model's 6 FLOPs per token and
    // parameter; selective recomputation repeats only the attention core FlashAttention does not
    // store anyway.
    let hfu = match report.output.plan.recompute {
        Recompute::Full => mfu * 4.0 / 3.0,
        _ => mfu,
    };
    (mfu, hfu, summary)
}

#[test]
fn best_plan_mfu_within_published_ranges() {
    // (GPU, published 70B-class MFU range with recomputation, highest published hardware
    // utilisation, highest published MFU counted as moai counts FLOPs where one is known: check 3)
    let ranges = [
        (Gpu::A100, 0.43, 0.56, 0.793, Some(0.72)),
        (Gpu::H100, 0.36, 0.47, 0.600, Some(0.600)),
        (Gpu::Mi250, 0.25, 0.50, 0.50, None),
        (Gpu::Mi300x, 0.20, 0.50, 0.50, None),
    ];
    for (gpu, lo, hi, hfu_max, mfu_max) in ranges {
        let (recomputing, _, how) = best(gpu, &[Recompute::Full]);
        eprintln!("{gpu}, full recomputation (published {lo}-{hi}): MFU {recomputing:.3}; {how}");
        let (free, hfu, how) = best(gpu, &[]);
        eprintln!("{gpu}, free choice: MFU {free:.3}, HFU {hfu:.3} (at most {hfu_max}); {how}");
        assert!(
            (lo..=hi).contains(&recomputing),
            "{gpu}: {recomputing:.3} with full recomputation, published {lo}-{hi}"
        );
        assert!(free >= recomputing - 1e-9, "{gpu}: {free} < {recomputing}");
        assert!(
            hfu <= hfu_max,
            "{gpu}: hardware FLOP utilisation {hfu:.3} above the highest published, {hfu_max}"
        );
        if let Some(max) = mfu_max {
            assert!(
                free <= max,
                "{gpu}: free choice MFU {free:.3} above the published {max}"
            );
        }
    }
}
