//! Megatron-LM's mechanisms on the training graph: the fused-attention kernel family per GPU
//! generation and the autocast casts it does not run.

use crate::real::real_profile;
use crate::support::truth;
use moai_costmodel::efficiency::committed;
use moai_costmodel::estimate::PhaseSums;
use moai_costmodel::{AttentionKernel, Gpu, ProfiledCostModel, Stack};

/// The forward sums of the first decoder layer of the FlagPerf Llama-3-8B row (real training graph,
/// tp 2 with sequence parallelism) on `gpu`.
fn decoder_forward(gpu: Gpu) -> PhaseSums {
    let row = truth("truth/megatron_h100_flagperf.jsonl").remove(0);
    let profile = real_profile(&row).unwrap();
    let prep = ProfiledCostModel::new().prepare_for(&profile, gpu, &row.config);
    prep.blocks
        .iter()
        .find(|b| matches!(b.kind, moai_ir::cost::BlockKind::Decoder(_)))
        .unwrap()
        .forward
}

#[test]
fn megatron_drops_the_graphs_autocast_casts_and_other_stacks_keep_them() {
    let s = decoder_forward(Gpu::H100);
    // The amp graph casts each linear's fp32 weight and its fp32 input to bf16.
    assert!(
        s.autocast_cast_kernels >= 7.0,
        "{}",
        s.autocast_cast_kernels
    );
    assert!(s.autocast_cast_s > 0.0 && s.autocast_cast_s <= s.memory_s);
    // Hugging Face's unfused fp32 rotary embedding of q and k, which a fused RoPE kernel replaces.
    assert!(s.eager_rotary_kernels >= 4.0, "{}", s.eager_rotary_kernels);
    assert!(s.eager_rotary_s > 0.0 && s.eager_rotary_s <= s.fusable_s);
    let dropped_kernels = s.autocast_cast_kernels + s.eager_rotary_kernels;
    let mut without = s;
    without.memory_s -= s.autocast_cast_s;
    without.fusable_s -= s.eager_rotary_s;
    without.memory_kernels -= dropped_kernels;
    without.fusable_kernels -= s.eager_rotary_kernels;
    without.kernels -= dropped_kernels;
    without.autocast_cast_s = 0.0;
    without.autocast_cast_kernels = 0.0;
    without.eager_rotary_s = 0.0;
    without.eager_rotary_kernels = 0.0;
    let f = committed();
    let eff = f.get(Gpu::H100);
    for st in Stack::ALL {
        let sc = &*f.costed(st, Gpu::H100);
        let (t, k) = s.kernel_time(eff, sc);
        let (t0, k0) = without.kernel_time(eff, sc);
        if st.runs_amp_casts() {
            assert!(t > t0 + 0.5 * s.autocast_cast_s / eff.memory, "{st}");
            let fused = s.eager_rotary_kernels * (1.0 - sc.stack.fusion().1);
            assert!((k - k0 - (dropped_kernels - fused)).abs() < 1e-9, "{st}");
        } else {
            assert_eq!(st, Stack::Megatron);
            assert!((t - t0).abs() < 1e-12 * t0, "{st}: {t} vs {t0}");
            assert!((k - k0).abs() < 1e-9, "{st}: {k} vs {k0}");
        }
    }
}

#[test]
fn megatron_attention_runs_at_the_hopper_kernels_rate_on_h100_only() {
    let f = committed();
    for gpu in [Gpu::H100, Gpu::A100] {
        let s = decoder_forward(gpu);
        assert!(s.attention_s > 0.0);
        let mut twice = s;
        twice.attention_s *= 2.0;
        let eff = f.get(gpu);
        for st in [Stack::Megatron, Stack::Fsdp] {
            let sc = &*f.costed(st, gpu);
            let extra = twice.kernel_time(eff, sc).0 - s.kernel_time(eff, sc).0;
            let want =
                s.attention_s / (eff.attention * st.attention_kernel(gpu).throughput_over_fa2());
            assert!((extra / want - 1.0).abs() < 1e-9, "{st} {gpu}");
        }
    }
    assert_eq!(
        Stack::Megatron.attention_kernel(Gpu::H100),
        AttentionKernel::HopperFused
    );
    assert_eq!(
        Stack::Megatron.attention_kernel(Gpu::A100),
        AttentionKernel::FlashAttention2
    );
}

/// A row's attention dropout (the FlagPerf rows': Megatron-LM's default 0.1) divides each fused
/// attention kernel's work by the cited throughput fraction, forward and backward, and leaves every
/// other op alone; no dropout leaves the profile as built; a probability outside [0, 1) is an error.
#[test]
fn attention_dropout_slows_the_fused_attention_kernels_only() {
    let row = truth("truth/megatron_h100_flagperf.jsonl").remove(0);
    assert_eq!(row.attention_dropout, Some(0.1));
    let base = real_profile(&row).unwrap();
    let with = row.step_profile(&real_profile).unwrap();
    let (fwd, bwd) = moai_costmodel::ATTENTION_DROPOUT_THROUGHPUT;
    let mut seen = [false; 2];
    for (b0, b1) in base.blocks.iter().zip(&with.blocks) {
        assert_eq!(b0.ops.len(), b1.ops.len());
        for (o0, o1) in b0.ops.iter().zip(&b1.ops) {
            match o0.class {
                moai_ir::cost::KernelClass::Attention { backward, .. } => {
                    let f = if backward { bwd } else { fwd };
                    assert!((o1.flops * f / o0.flops - 1.0).abs() < 1e-12);
                    seen[usize::from(backward)] = true;
                }
                _ => assert_eq!(o0, o1),
            }
        }
    }
    assert_eq!(seen, [true, true]);
    let mut none = row.clone();
    none.attention_dropout = None;
    assert_eq!(
        none.step_profile(&real_profile).unwrap().blocks,
        base.blocks
    );
    let mut bad = row;
    bad.attention_dropout = Some(1.0);
    let e = bad.step_profile(&real_profile).unwrap_err().to_string();
    assert!(e.contains("attention_dropout"), "{e}");
}
