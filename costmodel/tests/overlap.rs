//! The overlap switches (`overlap_grad_reduce`, `overlap_param_gather`, `tp_comm_overlap`): switching
//! one off on an engine that has it puts the communication it hid back on the critical path, and frees
//! what overlapping costs (Transformer Engine's SM margin and userbuffers for TP overlap, the ZeRO-3
//! prefetch buffer); on an engine without the switch it changes nothing.

use crate::support::fixture::{parse_spec, step_profile};
use moai_costmodel::{
    Cluster, CostModel, Estimate, Gpu, OverlapSwitch, ParallelConfig, ProfiledCostModel, Recompute,
    Stack,
};

fn profile(b: u64) -> moai_ir::cost::StepProfile {
    let spec = parse_spec("llama:layers=32,hidden=4096,heads=32,kv_heads=32,ffn=11008,vocab=32000")
        .unwrap();
    step_profile(&spec, b, 2048, Recompute::None, "bf16")
}

fn run(cfg: &ParallelConfig, cluster: &Cluster) -> Estimate {
    ProfiledCostModel::new()
        .estimate(&profile(cfg.micro_batch_size as u64), cluster, cfg)
        .unwrap()
}

fn off(cfg: &ParallelConfig, s: OverlapSwitch) -> ParallelConfig {
    let mut c = cfg.clone();
    s.set(&mut c, false);
    c
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn tp_overlap_off_exposes_the_hidden_collectives_and_frees_its_sms_and_buffers() {
    // dp 1, so no gradient sync shares the backward the TP collectives lengthen.
    let cluster = Cluster::new(Gpu::H100, 2).unwrap();
    let on = ParallelConfig {
        dp: 1,
        tp: 2,
        sequence_parallel: true,
        num_micro_batches: 4,
        ..ParallelConfig::default()
    };
    let (a, b) = (
        run(&on, &cluster),
        run(&off(&on, OverlapSwitch::TpComm), &cluster),
    );
    let (ba, bb) = (&a.breakdown, &b.breakdown);
    // The collectives are the same; on hid them behind the GEMMs (PhaseSums::exposed_tp_s): here
    // the GEMMs outlast them, so all of the backward's and seven eighths of the forward's (the last
    // of the four chunks of each reduce-scatter stays exposed).
    assert!(close(ba.tp_comm_s, bb.tp_comm_s) && ba.tp_comm_s > 0.0);
    let hidden = bb.exposed_comm_s - ba.exposed_comm_s;
    assert!(
        hidden > 0.85 * ba.tp_comm_s && hidden < ba.tp_comm_s,
        "{hidden} vs {}",
        ba.tp_comm_s
    );
    assert!(ba.exposed_comm_s > 0.0, "{}", ba.exposed_comm_s);
    // While overlapped, the GEMMs beside the collectives ran on 132 - 16 SMs of the H100.
    let margin = ba.compute_s - bb.compute_s;
    assert!(margin > 0.0 && margin < 0.1 * bb.compute_s, "{margin}");
    // The step changes by exactly the exposed communication less the freed SM margin.
    assert!(
        close(b.step_time_s - a.step_time_s, hidden - margin),
        "{} {} {hidden} {margin}",
        a.step_time_s,
        b.step_time_s
    );
    // Ten [seq · micro-batch, hidden] bf16 userbuffers: 10 × 2048 × 4096 × 2 bytes.
    let freed = a.peak_memory_bytes as f64 - b.peak_memory_bytes as f64;
    assert!(close(freed, 10.0 * 2048.0 * 4096.0 * 2.0), "{freed}");
    // Without sequence parallelism Megatron-LM has no TP overlap: the switch changes nothing.
    let no_sp = ParallelConfig {
        sequence_parallel: false,
        ..on.clone()
    };
    assert_eq!(
        run(&no_sp, &cluster),
        run(&off(&no_sp, OverlapSwitch::TpComm), &cluster)
    );
}

#[test]
fn grad_reduce_and_param_gather_off_put_the_sync_on_the_critical_path() {
    let cluster = Cluster::new(Gpu::H100, 16).unwrap();
    // ZeRO-0: the gradient all-reduce under backward.
    let ddp = ParallelConfig {
        dp: 16,
        num_micro_batches: 2,
        ..ParallelConfig::default()
    };
    let (a, b) = (
        run(&ddp, &cluster),
        run(&off(&ddp, OverlapSwitch::GradReduce), &cluster),
    );
    assert!(close(a.breakdown.compute_s, b.breakdown.compute_s));
    assert!(close(b.breakdown.exposed_comm_s, b.breakdown.dp_comm_s));
    let exposed = b.breakdown.exposed_comm_s - a.breakdown.exposed_comm_s;
    assert!(exposed > 0.0);
    assert!(close(b.step_time_s - a.step_time_s, exposed));
    // ZeRO-1 on Megatron-LM: without --overlap-param-gather the weights' all-gather is exposed.
    let z1 = ParallelConfig {
        distribute_optimizer: true,
        ..ddp.clone()
    };
    let (a, b) = (
        run(&z1, &cluster),
        run(&off(&z1, OverlapSwitch::ParamGather), &cluster),
    );
    let exposed = b.breakdown.exposed_comm_s - a.breakdown.exposed_comm_s;
    assert!(exposed > 0.0);
    assert!(close(b.step_time_s - a.step_time_s, exposed));
    assert!(close(a.breakdown.dp_comm_s, b.breakdown.dp_comm_s));
    // ZeRO-3: without prefetch every gather is exposed, and one gathered layer's buffer is freed.
    let mut z3 = ddp.clone();
    z3.distribute_param = true;
    z3.distribute_low_prec_param = true;
    z3.distribute_optimizer = true;
    let (a, b) = (
        run(&z3, &cluster),
        run(&off(&z3, OverlapSwitch::ParamGather), &cluster),
    );
    let exposed = b.breakdown.exposed_comm_s - a.breakdown.exposed_comm_s;
    assert!(exposed > 0.0);
    assert!(close(b.step_time_s - a.step_time_s, exposed));
    assert!(b.peak_memory_bytes < a.peak_memory_bytes);
}

#[test]
fn engines_without_the_switch_always_overlap() {
    let cluster = Cluster::new(Gpu::H100, 16).unwrap();
    for stack in [Stack::Fsdp, Stack::Torchtitan] {
        let mut cfg = ParallelConfig {
            dp: 16,
            num_micro_batches: 2,
            stack,
            ..ParallelConfig::default()
        };
        cfg.distribute_param = true;
        cfg.distribute_low_prec_param = true;
        cfg.distribute_optimizer = true;
        let base = run(&cfg, &cluster);
        for s in OverlapSwitch::ALL {
            let e = run(&off(&cfg, s), &cluster);
            assert_eq!(e.step_time_s, base.step_time_s, "{stack} {s}");
            assert_eq!(e.peak_memory_bytes, base.peak_memory_bytes, "{stack} {s}");
        }
    }
}

#[test]
fn deepspeed_zero1_weight_gather_is_exposed_after_the_step() {
    // DeepSpeed's ZeRO-1 all-gathers the updated 16-bit weights after the optimizer step
    // (stage_1_and_2.py `all_gather_dp_groups`): exposed in full, as Megatron-LM's gather without
    // --overlap-param-gather; the gradient reduction stays under backward (overlap_comm).
    let cluster = Cluster::new(Gpu::H100, 16).unwrap();
    // Micro-batches of 8 sequences: a backward long enough to hide the whole gradient sync.
    let z1 = |stack| ParallelConfig {
        dp: 16,
        micro_batch_size: 8,
        num_micro_batches: 2,
        distribute_optimizer: true,
        stack,
        ..ParallelConfig::default()
    };
    let ds = run(&z1(Stack::Deepspeed), &cluster);
    let mg_on = run(&z1(Stack::Megatron), &cluster);
    let mg_off = run(
        &off(&z1(Stack::Megatron), OverlapSwitch::ParamGather),
        &cluster,
    );
    // The same bytes on both engines, in buckets of each engine's size (DeepSpeed's 5·10⁸ elements,
    // Megatron-LM's 4·10⁷ parameters, whose more numerous collectives pay more latency).
    let scale = ds.breakdown.dp_comm_s / mg_on.breakdown.dp_comm_s;
    assert!((0.5..=1.0).contains(&scale), "{scale}");
    // Megatron-LM exposes the gather without --overlap-param-gather; DeepSpeed always does, on top of
    // its last (large) gradient bucket's reduce-scatter.
    let gather = mg_off.breakdown.exposed_comm_s - mg_on.breakdown.exposed_comm_s;
    assert!(gather > 0.25 * mg_on.breakdown.dp_comm_s, "{gather}");
    let ds_extra = ds.breakdown.exposed_comm_s - mg_on.breakdown.exposed_comm_s;
    assert!(
        ds.breakdown.exposed_comm_s >= 0.98 * scale * gather,
        "{} vs {}",
        ds.breakdown.exposed_comm_s,
        scale * gather
    );
    assert!(ds_extra > 0.0, "{ds_extra}");
    // DeepSpeed's parameter-gather switch is ZeRO-3's prefetch: it does not move the ZeRO-1 gather.
    let ds_off = run(
        &off(&z1(Stack::Deepspeed), OverlapSwitch::ParamGather),
        &cluster,
    );
    assert!(close(
        ds_off.breakdown.exposed_comm_s,
        ds.breakdown.exposed_comm_s
    ));
}
