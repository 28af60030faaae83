//! Context parallelism (`cp`) in the estimator: per-rank work and memory, ring and all-to-all
//! traffic, the gradient group over dp·cp, and the legality of cp against sequence and heads.

use crate::support::fixture::{parse_spec, step_profile};
use moai_costmodel::{
    Cluster, CostModel, CpComm, Gpu, ParallelConfig, ProfiledCostModel, Recompute,
};

fn llama8b(b: u64, seq: u64, r: Recompute) -> moai_ir::cost::StepProfile {
    let spec = parse_spec("llama:layers=32,hidden=4096,heads=32,kv_heads=8,ffn=14336,vocab=128256")
        .unwrap();
    step_profile(&spec, b, seq, r, "bf16")
}

fn est(
    p: &moai_ir::cost::StepProfile,
    devices: u32,
    cfg: &ParallelConfig,
) -> moai_costmodel::Estimate {
    let c = Cluster::new(Gpu::H100, devices).unwrap();
    ProfiledCostModel::new().estimate(p, &c, cfg).unwrap()
}

#[test]
fn a_cp_rank_does_a_cp_th_of_the_work_and_holds_a_cp_th_of_the_activations() {
    let p = llama8b(1, 32768, Recompute::Selective);
    let base = ParallelConfig {
        tp: 8,
        sequence_parallel: true,
        recompute: Recompute::Selective,
        num_micro_batches: 2,
        ..Default::default()
    };
    let one = est(&p, 8, &base);
    let cp4 = ParallelConfig {
        cp: 4,
        ..base.clone()
    };
    let four = est(&p, 32, &cp4);
    let b1 = &one.breakdown;
    let b4 = &four.breakdown;
    // Kernel seconds divide by cp except the per-kernel floors and launches (not divided).
    let ratio = b4.compute_s / b1.compute_s;
    assert!(ratio > 0.25 && ratio < 0.27, "compute ratio {ratio}");
    let (a1, a4) = (
        one.memory[0].activations_bytes,
        four.memory[0].activations_bytes,
    );
    assert!((a4 * 4.0 / a1 - 1.0).abs() < 1e-3, "{a1} {a4}");
    assert_eq!(b1.cp_comm_s, 0.0);
    assert!(b4.cp_comm_s > 0.0);
    // tp·cp = 32 spans 4 servers: the ring runs over the network behind 32K-token attention. With
    // Transformer Engine's Hopper attention (Stack::attention_kernel, 1.6x FlashAttention-2) part of
    // it is exposed; the rest of the step follows the compute.
    assert!(
        four.step_time_s - b4.exposed_comm_s < 0.3 * one.step_time_s,
        "{} ({} exposed) vs {}",
        four.step_time_s,
        b4.exposed_comm_s,
        one.step_time_s
    );
    // Same tokens per step, a quarter of the compute per rank, less the ring's exposed part (about
    // a quarter of the cp 4 step at the fitted Hopper attention rate): throughput over 2.5x.
    assert!(
        four.tokens_per_s > 2.5 * one.tokens_per_s,
        "{} vs {}",
        four.tokens_per_s,
        one.tokens_per_s
    );
    let sum = b4.compute_s + b4.exposed_comm_s + b4.bubble_s + b4.optimizer_s;
    assert!((sum - four.step_time_s).abs() < 1e-9 * four.step_time_s.max(1.0));
}

/// torchtitan's context parallelism on one 8-GPU server (its Llama 3.1 8B long-context table's
/// cp 8 row): the ring rank runs cp attention kernels per pass (a causal diagonal block and half-size
/// blocks) and merges them in fp32, accumulating the key/value gradients in fp32 at the query heads'
/// width (the model repeats its 8 key/value heads to 32 for SDPA), where a Ulysses rank runs one
/// kernel over the whole sequence for its heads; the kernels are the same FLOPs, so the ring costs
/// its merge traffic more compute (about 10%).
#[test]
fn a_ring_rank_pays_its_step_kernels_and_merges() {
    let p = llama8b(1, 262144, Recompute::Full);
    let cfg = |cp_comm| ParallelConfig {
        dp: 1,
        cp: 8,
        cp_comm,
        recompute: Recompute::Full,
        distribute_param: true,
        stack: moai_costmodel::Stack::Fsdp,
        ..Default::default()
    };
    let ring = est(&p, 8, &cfg(CpComm::P2p)).breakdown.compute_s;
    let ulysses = est(&p, 8, &cfg(CpComm::A2a)).breakdown.compute_s;
    let extra = ring / ulysses - 1.0;
    assert!(extra > 0.05 && extra < 0.13, "{ring} vs {ulysses}");
}

#[test]
fn ring_traffic_is_exposed_for_short_sequences_only() {
    let cfg = |cp_comm| ParallelConfig {
        tp: 4,
        dp: 2,
        cp: 2,
        cp_comm,
        sequence_parallel: true,
        ..Default::default()
    };
    let exposed = |seq: u64, c: CpComm| {
        let p = llama8b(1, seq, Recompute::None);
        let e = est(&p, 16, &cfg(c));
        let b = e.breakdown.clone();
        (b.cp_comm_s, b.exposed_comm_s)
    };
    let (long_t, _) = exposed(65536, CpComm::P2p);
    let (short_t, _) = exposed(1024, CpComm::P2p);
    assert!(long_t > short_t && short_t > 0.0);
    // All-to-all moves every head's queries, keys, values and output: never hidden.
    let (a2a_t, a2a_exposed) = exposed(65536, CpComm::A2a);
    assert!(a2a_exposed >= a2a_t, "{a2a_exposed} {a2a_t}");
}

#[test]
fn gradients_reduce_over_dp_times_cp_and_zero_shards_over_it() {
    let p = llama8b(1, 8192, Recompute::Selective);
    let cfg = ParallelConfig {
        tp: 8,
        cp: 2,
        dp: 1,
        recompute: Recompute::Selective,
        distribute_optimizer: true,
        ..Default::default()
    };
    let with_cp = est(&p, 16, &cfg);
    assert!(
        with_cp.breakdown.dp_comm_s > 0.0,
        "dp 1 but dp·cp 2 reduce gradients"
    );
    let no_cp = est(
        &p,
        8,
        &ParallelConfig {
            cp: 1,
            ..cfg.clone()
        },
    );
    assert_eq!(no_cp.breakdown.dp_comm_s, 0.0);
    assert!(with_cp.memory[0].optimizer_bytes < 0.51 * no_cp.memory[0].optimizer_bytes);
}

/// The bound the search prunes by: a cp > 1 candidate whose micro-batch size cp divides does the same
/// work on the same tokens per device as cp = 1 with dp·cp ranks and micro-batch size / cp, plus its
/// context-parallel traffic and buffers, so it is never smaller and never faster beyond the roofline's
/// shape effects (a cp rank's kernels are timed at the whole sequence's shapes and divided by cp, whose
/// tile and wave quantization can be up to about 4 % kinder than the smaller micro-batch's).
#[test]
fn cp_dividing_the_micro_batch_is_dominated_by_more_data_parallelism() {
    for (seq, mbs, cp) in [(4096u64, 2u32, 2u32), (16384, 4, 4), (2048, 4, 2)] {
        let with_cp = ParallelConfig {
            tp: 2,
            cp,
            dp: 2,
            micro_batch_size: mbs,
            num_micro_batches: 2,
            recompute: Recompute::Selective,
            distribute_optimizer: true,
            ..Default::default()
        };
        let more_dp = ParallelConfig {
            cp: 1,
            dp: 2 * cp,
            micro_batch_size: mbs / cp,
            ..with_cp.clone()
        };
        let x = est(
            &llama8b(mbs as u64, seq, Recompute::Selective),
            4 * cp,
            &with_cp,
        );
        let y = est(
            &llama8b((mbs / cp) as u64, seq, Recompute::Selective),
            4 * cp,
            &more_dp,
        );
        assert!(
            x.step_time_s >= y.step_time_s * 0.95,
            "seq {seq} cp {cp}: {} < {}",
            x.step_time_s,
            y.step_time_s
        );
        assert!(
            x.peak_memory_bytes >= y.peak_memory_bytes,
            "seq {seq} cp {cp}"
        );
    }
}

#[test]
fn cp_must_divide_the_sequence_twice_and_a2a_the_heads() {
    let c = Cluster::new(Gpu::H100, 16).unwrap();
    let m = ProfiledCostModel::new();
    let mut cfg = ParallelConfig {
        tp: 8,
        cp: 2,
        ..Default::default()
    };
    let e = m
        .estimate(&llama8b(1, 1026, Recompute::None), &c, &cfg)
        .unwrap_err();
    assert!(e.to_string().contains("multiple of 2·cp = 4"), "{e}");
    // 8 KV heads / tp 8 = 1 head per rank: all-to-all cannot split it over 2 ranks.
    cfg.cp_comm = CpComm::A2a;
    let e = m
        .estimate(&llama8b(1, 1024, Recompute::None), &c, &cfg)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("8 KV heads / tp 8 to be a multiple of cp"),
        "{e}"
    );
    cfg.tp = 4;
    cfg.dp = 2;
    assert!(
        m.estimate(&llama8b(1, 1024, Recompute::None), &c, &cfg)
            .is_ok()
    );
    let e = ParallelConfig {
        cp: 3,
        ..cfg.clone()
    }
    .validate_cluster(&c)
    .unwrap_err();
    assert!(e.to_string().contains("dp·tp·pp·cp = 2·4·1·3 = 24"), "{e}");
    let json = serde_json::to_string(&cfg).unwrap();
    assert!(
        json.contains(r#""cp":2"#) && json.contains(r#""cp_comm":"a2a""#),
        "{json}"
    );
    let plain = serde_json::to_string(&ParallelConfig::default()).unwrap();
    assert!(
        plain.contains(r#""cp":1"#) && !plain.contains("cp_comm"),
        "{plain}"
    );
}
