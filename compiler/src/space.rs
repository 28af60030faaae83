//! The search space: every combination of data, tensor and pipeline parallelism over the cluster's
//! devices, micro-batch size and count, recomputation, ZeRO sharding, sequence parallelism and pipeline
//! schedule, filtered by the request's constraints. Combinations that break a structural rule are
//! counted by reason instead of silently skipped.

use crate::config::ZeroStage;
use crate::request::Constraints;
use moai_costmodel::{Cluster, CpComm, ParallelConfig, Recompute, Schedule};
use std::collections::BTreeMap;

/// What the space needs to know about the model.
#[derive(Clone, Copy, Debug)]
pub struct ModelShape {
    /// Decoder layers.
    pub layers: u32,
    /// Attention heads.
    pub heads: u64,
    /// KV heads.
    pub kv_heads: u64,
    /// FFN width.
    pub ffn: u64,
    /// Routed experts per mixture-of-experts layer (0: a dense model).
    pub experts: u64,
    /// Inner width of one routed expert (0: a dense model).
    pub expert_ffn: u64,
}

impl ModelShape {
    /// The shape of a loaded model.
    pub fn of(model: &crate::model::Model) -> ModelShape {
        let s = &model.summary;
        let moe = model.arch.as_ref().and_then(|a| a.moe.as_ref());
        ModelShape {
            layers: s.layers as u32,
            heads: s.heads,
            kv_heads: s.kv_heads,
            ffn: s.ffn,
            experts: moe.map_or(0, |m| m.experts as u64),
            expert_ffn: moe.map_or(0, |m| m.expert_ffn as u64),
        }
    }
}

/// The candidates of a job and the structural rejections met while enumerating.
#[derive(Clone, Debug, Default)]
pub struct Space {
    /// Candidates in a deterministic order.
    pub candidates: Vec<ParallelConfig>,
    /// Combinations rejected before evaluation, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Fixed dimensions (flags) that no candidate can meet, each naming the flag and the numbers; any
    /// one of them leaves the space empty. See [`constraint_conflicts`].
    pub conflicts: Vec<String>,
}

/// Micro-batch sizes the search tries.
pub const MICRO_BATCH_SIZES: [u32; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

/// The most micro-batches a pipelined candidate (pp > 1) may have: the cost model simulates the schedule
/// per micro-batch, so its time and memory grow with the count. Candidates beyond it are rejected by name.
pub const MAX_PIPELINE_MICRO_BATCHES: u64 = 1 << 16;

/// Divisors of `n` in increasing order, in O(√n).
fn divisors(n: u32) -> Vec<u32> {
    let mut low = Vec::new();
    let mut high = Vec::new();
    let mut d: u32 = 1;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            low.push(d);
            if d != n / d {
                high.push(n / d);
            }
        }
        d += 1;
    }
    low.extend(high.into_iter().rev());
    low
}

/// Why the fixed dimensions of `c` can never be met on `devices` devices for this model and batch, one
/// sentence each naming the flag and the numbers (empty when every fixed value is possible on its own).
/// Each conflict alone excludes every candidate.
pub fn constraint_conflicts(
    shape: ModelShape,
    devices: u32,
    batch: u64,
    c: &Constraints,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(t) = c.tp {
        if !devices.is_multiple_of(t) {
            out.push(format!("--tp {t} does not divide the {devices} devices"));
        }
        let t = t as u64;
        for (n, what) in [
            (shape.heads, "attention heads"),
            (shape.kv_heads, "KV heads"),
        ] {
            if !n.is_multiple_of(t) {
                out.push(format!("--tp {t} does not divide the {n} {what}"));
            }
        }
        if !shape.ffn.is_multiple_of(t) {
            out.push(format!(
                "--tp {t} does not divide the FFN width {}",
                shape.ffn
            ));
        }
    }
    if let Err(e) = c.offload_activations.check_layers(shape.layers) {
        out.push(e.to_string());
    }
    if let Some(p) = c.pp
        && !devices.is_multiple_of(p)
    {
        out.push(format!("--pp {p} does not divide the {devices} devices"));
    }
    if let Some(d) = c.dp {
        if !devices.is_multiple_of(d) {
            out.push(format!("--dp {d} does not divide the {devices} devices"));
        }
        if !batch.is_multiple_of(d as u64) {
            out.push(format!("--dp {d} does not divide the batch of {batch}"));
        }
    }
    let fixed: Vec<(&str, u32)> = [("dp", c.dp), ("tp", c.tp), ("pp", c.pp)]
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| (n, v)))
        .collect();
    if fixed.len() > 1 && fixed.iter().all(|(_, v)| devices.is_multiple_of(*v)) {
        let product: u64 = fixed.iter().map(|(_, v)| *v as u64).product();
        let names: Vec<String> = fixed.iter().map(|(n, v)| format!("{n} {v}")).collect();
        if !(devices as u64).is_multiple_of(product)
            || (fixed.len() == 3 && product != devices as u64)
        {
            out.push(format!(
                "{} (= {product}) do not fit the {devices} devices",
                names.join(" × ")
            ));
        }
    }
    if let Some(n) = c.dp_shard {
        if c.zero == Some(ZeroStage::Zero0) {
            out.push(format!(
                "--dp-shard {n} needs a sharded plan (--zero 1 or 3), not --zero 0"
            ));
        }
        if !devices.is_multiple_of(n) {
            out.push(format!(
                "--dp-shard {n} does not divide the {devices} devices"
            ));
        } else if let Some(d) = c.dp
            && !d.is_multiple_of(n)
        {
            out.push(format!("--dp-shard {n} does not divide --dp {d}"));
        }
        if n == 1 {
            out.push("--dp-shard 1 shards nothing (every rank a group of its own); use --zero 0 to replicate".into());
        }
    }
    if let Some(m) = c.micro_batch_size
        && !batch.is_multiple_of(m as u64)
    {
        out.push(format!(
            "--micro-batch-size {m} does not divide the batch of {batch}"
        ));
    }
    out
}

/// The overlap switches the search turns off, each only where the candidate's engine has the switch,
/// it applies to the candidate, the constraints leave it free, and turning it off can make the
/// candidate faster: TP communication overlap (Megatron-LM's `--tp-comm-overlap` reserves 16 SMs from
/// the GEMMs it runs beside and allocates userbuffers; off frees both and exposes the collectives, so
/// either side can win). Turning off the gradient reduce or the ZeRO-1 gather overlap only costs time
/// in the cost model, and the ZeRO-3 prefetch off only saves one gathered layer's buffer at the cost
/// of exposed gathers, so the search does not double the space for them (a user fixes them with
/// `--overlap`, and `estimate` takes them).
fn overlap_variants(
    cfg: &ParallelConfig,
    cluster: &Cluster,
    c: &Constraints,
) -> Vec<ParallelConfig> {
    use moai_costmodel::OverlapSwitch;
    let d = crate::export::PlanDims::of_config(cfg, cluster);
    let mut out: Vec<ParallelConfig> = Vec::new();
    for sw in [OverlapSwitch::TpComm] {
        let free = !c.overlap.iter().any(|(k, _)| *k == sw);
        if !free || !sw.get(cfg) || !cfg.stack.has_overlap_switch(sw) {
            continue;
        }
        if !d.switch_applies(cfg.stack, sw) {
            continue;
        }
        // Off alone, and with every earlier switch off too.
        let mut more: Vec<ParallelConfig> = std::iter::once(cfg)
            .chain(out.iter())
            .map(|base| {
                let mut v = base.clone();
                sw.set(&mut v, false);
                v
            })
            .collect();
        if crate::export::engine_runs(
            cfg.stack,
            &crate::export::PlanDims::of_config(&more[0], cluster),
        )
        .is_err()
        {
            continue;
        }
        out.append(&mut more);
    }
    out
}

/// The expert-parallel splits `(ep, expert_tp)` searched for a candidate with `dp` and `tp`: for a
/// mixture-of-experts model, `ep` over the divisors of `dp` that divide the experts and `expert_tp`
/// over 1 and `tp` (Megatron folds `ep · expert_tp` into the `dp · tp` ranks); `(1, 1)` for a dense
/// model. `--ep` / `--expert-tp` fix them.
fn expert_splits(shape: ModelShape, dp: u32, tp: u32, c: &Constraints) -> Vec<(u32, u32)> {
    if shape.experts == 0 {
        return vec![(c.ep.unwrap_or(1), c.expert_tp.unwrap_or(1))];
    }
    let eps: Vec<u32> = match c.ep {
        Some(e) => vec![e],
        None => divisors(dp)
            .into_iter()
            .filter(|e| shape.experts.is_multiple_of(*e as u64))
            .collect(),
    };
    let etps: Vec<u32> = match c.expert_tp {
        Some(t) => vec![t],
        None if tp > 1 => vec![1, tp],
        None => vec![1],
    };
    let mut out = Vec::with_capacity(eps.len() * etps.len());
    for &e in &eps {
        for &t in &etps {
            out.push((e, t));
        }
    }
    out
}

/// The hybrid-sharding groups searched for a candidate (`dp_shard`, 0 = all of dp): a fixed
/// `--dp-shard` (an error, the rejection reason, when it does not divide dp or the candidate shards
/// nothing); else, for ZeRO-3 candidates, full sharding and every shard group of whole servers
/// (`dp_shard · cp · tp` a multiple of the devices per server, `1 < dp_shard < dp`, on a cluster of
/// full servers): the groups whose parameter gathers stay on a server's links or on a few servers',
/// with the gradient all-reduce across the replicas on the network. Smaller groups only add memory to
/// the same intra-server traffic.
///
/// ZeRO-1 candidates keep full sharding unless `--dp-shard` fixes a group (then Megatron-LM's
/// distributed-optimizer instances are costed and exported): their hybrid form moves no parameter
/// gathers off the network (full sharding's hierarchical reduce-scatter and all-gather already put
/// `1/servers`-th of the bytes there, the replicas' all-reduce the same), so it differs from full
/// sharding by a few per cent of gradient traffic while its optimizer state and step grow by
/// `dp / dp_shard`; leaving it out of the default space keeps every existing plan's search counts.
/// 0 alone for replicated (ZeRO-0) candidates.
fn dp_shards(
    dp: u32,
    tp: u32,
    cp: u32,
    zero: ZeroStage,
    cluster: &Cluster,
    c: &Constraints,
) -> Result<Vec<u32>, String> {
    let sharded = zero != ZeroStage::Zero0;
    if let Some(n) = c.dp_shard {
        if !sharded {
            return Err(
                "--dp-shard needs ZeRO-1 or ZeRO-3 (a replicated candidate has no shard group)"
                    .into(),
            );
        }
        // A group of all of dp is full sharding.
        if n > 0 && ParallelConfig::shard_group(dp, n) == 0 {
            return Ok(vec![0]);
        }
        if n == 0 || !dp.is_multiple_of(n) {
            return Err("--dp-shard does not divide dp".into());
        }
        if n == 1 {
            return Err("--dp-shard 1 shards nothing".into());
        }
        return Ok(vec![n]);
    }
    let mut out = vec![0];
    let per = cluster.devices_per_server.max(1) as u64;
    if zero == ZeroStage::Zero3 && (cluster.devices as u64).is_multiple_of(per) {
        out.extend(divisors(dp).into_iter().filter(|&s| {
            s > 1 && s < dp && (s as u64 * cp as u64 * tp as u64).is_multiple_of(per)
        }));
    }
    Ok(out)
}

/// [`crate::export::assign_engine_for`], except that without `--engine` a hybrid-sharded candidate
/// goes to the engine of its fully sharded twin (the same candidate with `dp_shard` 0) or nowhere: a
/// shard group is compared with full sharding on one engine, never won by moving the candidate to
/// an engine the preference order would not give it (e.g. DeepSpeed runs the twin, MiCS is not
/// exported, and another engine's stack would price the group).
fn assign_engine_hybrid(
    fixed: Option<moai_costmodel::Stack>,
    cfg: ParallelConfig,
    cluster: &Cluster,
    moe: bool,
) -> Result<ParallelConfig, String> {
    if fixed.is_some() || cfg.dp_shard == 0 {
        return crate::export::assign_engine_for(fixed, cfg, cluster, moe);
    }
    let twin = ParallelConfig {
        dp_shard: 0,
        ..cfg.clone()
    };
    let engine = crate::export::assign_engine_for(None, twin, cluster, moe)?.stack;
    crate::export::assign_engine_for(Some(engine), cfg, cluster, moe).map_err(|_| {
        format!(
            "hybrid sharding: {} runs the fully sharded twin but not this shard group",
            crate::export::engine_title(engine)
        )
    })
}

/// Whether a context-parallel candidate is dominated by one with more data parallelism, the bound the
/// space prunes cp by: when `g = gcd(cp, micro_batch_size) > 1`, the candidate with cp/g, dp·g and
/// micro-batch size / g (same tp, pp, micro-batch count, recomputation, ZeRO, schedule) has the same
/// tokens per device per micro-batch, the same work, the same gradient group (dp·cp) and the same
/// static, activation and logit bytes, and less context-parallel traffic and buffers; so it is never
/// larger, and never slower up to the roofline's tile and wave quantization (a cp rank's kernels are
/// timed at the whole sequence's shapes and divided by cp, up to about 4 % kinder). It is in the space
/// whenever dp, the micro-batch size and cp are not fixed by flags. What remains of cp > 1 is
/// micro-batches smaller than (or coprime to) cp: sequences too long for one device.
pub fn cp_dominated(cp: u32, micro_batch_size: u32, c: &Constraints) -> bool {
    let (mut a, mut b) = (cp, micro_batch_size);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    cp > 1 && a > 1 && c.dp.is_none() && c.micro_batch_size.is_none() && c.cp.is_none()
}

/// Enumerates the space for a job of `batch` sequences of `seq` tokens on `cluster`. Context parallelism
/// runs over the divisors of devices/(tp·pp) for which 2·cp divides the sequence, each with ring (`p2p`)
/// and, where cp divides heads/tp and KV heads/tp, all-to-all (`a2a`) communication.
pub fn enumerate(
    shape: ModelShape,
    cluster: &Cluster,
    batch: u64,
    seq: u64,
    c: &Constraints,
) -> Space {
    let mut space = Space {
        conflicts: constraint_conflicts(shape, cluster.devices, batch, c),
        ..Space::default()
    };
    let mut reject = |reason: String, n: u64| *space.rejected.entry(reason).or_insert(0) += n;
    let devices = cluster.devices;
    let recomputes: Vec<Recompute> = if let Some(first) = c.stage_recompute.first() {
        // A fixed per-stage list: `recompute` names its first stage.
        vec![*first]
    } else if c.recompute.is_empty() && c.engine == Some(moai_costmodel::Stack::Torchtitan) {
        // torchtitan runs its per-op selective checkpointing, not Megatron-LM's selective.
        vec![Recompute::None, Recompute::SelectiveOp, Recompute::Full]
    } else if c.recompute.is_empty() {
        vec![Recompute::None, Recompute::Selective, Recompute::Full]
    } else {
        c.recompute.clone()
    };
    let zeros: Vec<ZeroStage> = match c.zero {
        Some(z) => vec![z],
        None => ZeroStage::ALL.to_vec(),
    };
    let mut candidates = Vec::new();
    for tp in divisors(devices) {
        if c.tp.is_some_and(|t| t != tp) {
            continue;
        }
        if tp > cluster.devices_per_server {
            reject(
                format!("tp > {} devices per server", cluster.devices_per_server),
                1,
            );
            continue;
        }
        let t = tp as u64;
        if !shape.heads.is_multiple_of(t)
            || !shape.kv_heads.is_multiple_of(t)
            || !shape.ffn.is_multiple_of(t)
        {
            // A fixed --tp was already named with the numbers by `constraint_conflicts`.
            if c.tp.is_none() {
                reject("tp does not divide heads, KV heads or FFN width".into(), 1);
            }
            continue;
        }
        // (pp, cp) pairs: context parallelism over the divisors of devices/(tp·pp).
        let pp_cp = divisors(devices / tp).into_iter().flat_map(|pp| {
            divisors(devices / (tp * pp))
                .into_iter()
                .map(move |cp| (pp, cp))
        });
        for (pp, cp) in pp_cp {
            if c.pp.is_some_and(|p| p != pp) {
                continue;
            }
            if pp > shape.layers {
                if cp == 1 {
                    reject("more pipeline stages than layers".into(), 1);
                }
                continue;
            }
            if !c.stage_recompute.is_empty() && c.stage_recompute.len() != pp as usize {
                reject(
                    format!(
                        "--stage-recompute lists {} stages, not pp",
                        c.stage_recompute.len()
                    ),
                    1,
                );
                continue;
            }
            if c.cp.is_some_and(|x| x != cp) {
                continue;
            }
            if cp > 1 && !seq.is_multiple_of(2 * cp as u64) {
                reject(
                    "cp: 2·cp does not divide the sequence (causal load balancing)".into(),
                    1,
                );
                continue;
            }
            let cp_comms: Vec<CpComm> = match c.cp_comm {
                _ if cp == 1 => vec![CpComm::P2p],
                Some(m) => vec![m],
                None => vec![CpComm::P2p, CpComm::A2a],
            };
            let dp = devices / (tp * pp * cp);
            if c.dp.is_some_and(|d| d != dp) {
                continue;
            }
            if !batch.is_multiple_of(dp as u64) {
                reject("dp does not divide the batch".into(), 1);
                continue;
            }
            let per_replica = batch / dp as u64;
            let sizes = match c.micro_batch_size {
                Some(m) => vec![m],
                None => MICRO_BATCH_SIZES.to_vec(),
            };
            for mbs in sizes {
                if cp_dominated(cp, mbs, c) && per_replica.is_multiple_of(mbs as u64) {
                    reject(
                        "cp shares a factor g with the micro-batch size (dominated by cp/g, dp·g, micro-batch size/g)"
                            .into(),
                        1,
                    );
                    continue;
                }
                if mbs as u64 > per_replica || !per_replica.is_multiple_of(mbs as u64) {
                    if c.micro_batch_size.is_some() && batch.is_multiple_of(mbs as u64) {
                        reject(
                            format!(
                                "--micro-batch-size {mbs} does not divide the sequences per data-parallel replica"
                            ),
                            1,
                        );
                    }
                    continue;
                }
                let Ok(nmb) = u32::try_from(per_replica / mbs as u64) else {
                    reject(
                        "more than 2^32-1 micro-batches per replica (a plan counts them in 32 bits)"
                            .into(),
                        1,
                    );
                    continue;
                };
                if pp > 1 && nmb as u64 > MAX_PIPELINE_MICRO_BATCHES {
                    reject(
                        format!(
                            "pipeline with more than {MAX_PIPELINE_MICRO_BATCHES} micro-batches (its schedule is simulated per micro-batch)"
                        ),
                        1,
                    );
                    continue;
                }
                let schedules: Vec<Schedule> = if pp == 1 {
                    vec![Schedule::OneFOneB]
                } else if c.schedules.is_empty() {
                    vec![
                        Schedule::OneFOneB,
                        Schedule::Gpipe,
                        Schedule::Interleaved(2),
                    ]
                } else {
                    c.schedules.clone()
                };
                for schedule in schedules {
                    if let Schedule::Interleaved(v) = schedule {
                        if !(shape.layers as u64).is_multiple_of(pp as u64 * v as u64) {
                            reject("interleaved chunks do not divide the layers".into(), 1);
                            continue;
                        }
                        if !nmb.is_multiple_of(pp) {
                            reject(
                                "interleaved schedule needs micro-batches divisible by pp".into(),
                                1,
                            );
                            continue;
                        }
                    }
                    if schedule == Schedule::ZeroBubbleV
                        && !(shape.layers as u64).is_multiple_of(2 * pp as u64)
                    {
                        reject(
                            "zbv's two chunks per stage do not divide the layers".into(),
                            1,
                        );
                        continue;
                    }
                    for &recompute in &recomputes {
                        for &zero in &zeros {
                            // torchtitan runs FSDP2 with pipeline parallelism; the other engines do not.
                            if zero == ZeroStage::Zero3
                                && pp > 1
                                && c.engine != Some(moai_costmodel::Stack::Torchtitan)
                            {
                                reject("ZeRO-3 with pipeline parallelism".into(), 1);
                                continue;
                            }
                            let sps: Vec<bool> = match c.sequence_parallel {
                                Some(sp) => vec![sp],
                                None if tp > 1 => vec![false, true],
                                None => vec![false],
                            };
                            // (sequence parallel, context-parallel communication) pairs.
                            let sps = sps
                                .into_iter()
                                .flat_map(|sp| cp_comms.iter().map(move |m| (sp, *m)));
                            for (sp, cp_comm) in sps {
                                if sp && tp == 1 {
                                    reject("sequence parallelism needs tp > 1".into(), 1);
                                    continue;
                                }
                                let splits = |n: u64| (n / t).is_multiple_of(cp as u64);
                                if cp_comm == CpComm::A2a
                                    && !(splits(shape.heads) && splits(shape.kv_heads))
                                {
                                    reject(
                                        "cp with all-to-all (a2a) does not divide heads/tp or KV heads/tp"
                                            .into(),
                                        1,
                                    );
                                    continue;
                                }
                                let mut cfg = ParallelConfig {
                                    dp,
                                    tp,
                                    pp,
                                    cp,
                                    cp_comm,
                                    micro_batch_size: mbs,
                                    num_micro_batches: nmb,
                                    recompute,
                                    sequence_parallel: sp,
                                    schedule,
                                    stages: Vec::new(),
                                    // fixed by the request: fp8 only when `--precision fp8` asks
                                    precision: c.precision,
                                    offload_optimizer: c.offload_optimizer,
                                    stage_recompute: c.stage_recompute.clone(),
                                    ..ParallelConfig::default()
                                };
                                zero.apply(&mut cfg);
                                let shards = match dp_shards(dp, tp, cp, zero, cluster, c) {
                                    Ok(s) => s,
                                    Err(why) => {
                                        reject(why, 1);
                                        continue;
                                    }
                                };
                                // `--offload activations`: with and without; `activations=N`: N.
                                let offloads = c.offload_activations.counts(shape.layers, pp);
                                let splits = expert_splits(shape, dp, tp, c);
                                let splits = splits.iter().flat_map(|s| {
                                    let offloads = &offloads;
                                    shards.iter().flat_map(move |d| {
                                        offloads.iter().map(move |n| (*s, *d, *n))
                                    })
                                });
                                for ((ep, expert_tp), dp_shard, offload_activations) in splits {
                                    let mut cfg = ParallelConfig {
                                        ep,
                                        expert_tp,
                                        dp_shard,
                                        offload_activations,
                                        ..cfg.clone()
                                    };
                                    for &(switch, on) in &c.overlap {
                                        switch.set(&mut cfg, on);
                                    }
                                    // Only what an engine runs; the stack it is costed for is that engine.
                                    let moe = shape.experts > 0;
                                    match assign_engine_hybrid(c.engine, cfg, cluster, moe) {
                                        // the one legality check the library's estimate also applies
                                        Ok(cfg) => {
                                            match crate::config::checked(&cfg, cluster, shape)
                                                .and_then(|()| {
                                                    crate::config::checked_seq(&cfg, seq, shape)
                                                }) {
                                                Ok(()) => {
                                                    let off = overlap_variants(&cfg, cluster, c);
                                                    candidates.push(cfg);
                                                    candidates.extend(off);
                                                }
                                                Err(e) => reject(e.to_string(), 1),
                                            }
                                        }
                                        Err(why) => reject(why, 1),
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    space.candidates = candidates;
    space
}

#[cfg(test)]
mod tests {
    use super::*;
    use moai_costmodel::Gpu;

    /// Tokens per sequence of the test jobs.
    const SEQ: u64 = 4096;

    fn shape13b() -> ModelShape {
        ModelShape {
            layers: 40,
            heads: 40,
            kv_heads: 40,
            ffn: 13824,
            experts: 0,
            expert_ffn: 0,
        }
    }

    #[test]
    fn divisors_in_order() {
        assert_eq!(divisors(1), vec![1]);
        assert_eq!(divisors(12), vec![1, 2, 3, 4, 6, 12]);
        assert_eq!(divisors(49), vec![1, 7, 49]);
        for n in 1..200u32 {
            let slow: Vec<u32> = (1..=n).filter(|d| n % d == 0).collect();
            assert_eq!(divisors(n), slow, "{n}");
        }
        // u32::MAX = 3 · 5 · 17 · 257 · 65537: 32 divisors, found without 4 billion steps
        assert_eq!(divisors(u32::MAX).len(), 32);
    }

    #[test]
    fn huge_batches_give_bounded_candidates() {
        let cluster = Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap();
        let s = enumerate(shape13b(), &cluster, 1 << 40, SEQ, &Constraints::default());
        assert!(!s.candidates.is_empty());
        for c in &s.candidates {
            assert_eq!(c.global_batch(), 1 << 40, "{c:?}");
            if c.pp > 1 {
                assert!(c.num_micro_batches as u64 <= MAX_PIPELINE_MICRO_BATCHES);
            }
        }
        assert!(
            s.rejected
                .keys()
                .any(|r| r.contains("2^32-1 micro-batches")),
            "{:?}",
            s.rejected
        );
    }

    #[test]
    fn space_is_large_and_respects_rules() {
        let cluster = Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap();
        let s = enumerate(shape13b(), &cluster, 256, SEQ, &Constraints::default());
        assert!(s.candidates.len() >= 1000, "{}", s.candidates.len());
        for c in &s.candidates {
            assert_eq!(c.dp * c.cp * c.tp * c.pp, 32);
            assert_eq!(
                c.dp as u64 * c.micro_batch_size as u64 * c.num_micro_batches as u64,
                256
            );
            assert!(c.tp <= 8 && 40 % c.tp == 0);
        }
        assert!(
            s.rejected.contains_key("tp > 8 devices per server"),
            "tp=16/32: {:?}",
            s.rejected
        );
    }

    #[test]
    fn constraints_fix_dimensions() {
        let cluster = Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap();
        let c = Constraints {
            tp: Some(1),
            pp: Some(1),
            recompute: vec![Recompute::Full],
            zero: Some(ZeroStage::Zero3),
            ..Default::default()
        };
        let s = enumerate(shape13b(), &cluster, 256, SEQ, &c);
        assert!(!s.candidates.is_empty());
        assert!(s.candidates.iter().all(|c| c.tp == 1
            && c.pp == 1
            && c.dp == 32
            && c.distribute_param
            && c.recompute == Recompute::Full));
    }

    #[test]
    fn torchtitan_searches_its_per_op_selective_checkpointing() {
        let cluster = Cluster::from_flavor("4xLarge.2048GB", Gpu::Mi250).unwrap();
        let policies = |engine| {
            let c = Constraints {
                tp: Some(1),
                pp: Some(1),
                zero: Some(ZeroStage::Zero3),
                engine,
                ..Default::default()
            };
            let s = enumerate(shape13b(), &cluster, 256, SEQ, &c);
            let mut r: Vec<Recompute> = s.candidates.iter().map(|c| c.recompute).collect();
            r.dedup();
            r.sort_by_key(|r| r.to_string());
            r.dedup();
            r
        };
        assert_eq!(
            policies(Some(moai_costmodel::Stack::Torchtitan)),
            vec![Recompute::Full, Recompute::None, Recompute::SelectiveOp]
        );
        assert_eq!(
            policies(None),
            vec![Recompute::Full, Recompute::None, Recompute::Selective]
        );
    }

    #[test]
    fn fixed_dimensions_that_cannot_be_met_are_named() {
        let shape = ModelShape {
            layers: 4,
            heads: 8,
            kv_heads: 8,
            ffn: 688,
            experts: 0,
            expert_ffn: 0,
        };
        let cluster = Cluster::new(Gpu::H100, 8).unwrap();
        let tp3 = Constraints {
            tp: Some(3),
            ..Default::default()
        };
        let s = enumerate(shape, &cluster, 32, SEQ, &tp3);
        assert!(s.candidates.is_empty());
        for want in [
            "--tp 3 does not divide the 8 devices",
            "--tp 3 does not divide the 8 attention heads",
            "--tp 3 does not divide the 8 KV heads",
            "--tp 3 does not divide the FFN width 688",
        ] {
            assert!(
                s.conflicts.iter().any(|c| c == want) || s.rejected.contains_key(want),
                "{want}: {:?}",
                s.rejected
            );
        }
        // On 6 devices tp 3 divides the devices but still not the heads.
        let six = Cluster::new(Gpu::H100, 6).unwrap();
        let s = enumerate(shape, &six, 30, SEQ, &tp3);
        assert!(s.candidates.is_empty());
        assert_eq!(
            s.conflicts,
            vec![
                "--tp 3 does not divide the 8 attention heads",
                "--tp 3 does not divide the 8 KV heads",
                "--tp 3 does not divide the FFN width 688"
            ]
        );
        assert!(
            !s.rejected
                .contains_key("tp does not divide heads, KV heads or FFN width")
        );

        let cases = [
            (
                Constraints {
                    pp: Some(3),
                    ..Default::default()
                },
                "--pp 3 does not divide the 8 devices",
            ),
            (
                Constraints {
                    dp: Some(3),
                    ..Default::default()
                },
                "--dp 3 does not divide the 8 devices",
            ),
            (
                Constraints {
                    dp: Some(4),
                    tp: Some(4),
                    ..Default::default()
                },
                "dp 4 × tp 4 (= 16) do not fit the 8 devices",
            ),
            (
                Constraints {
                    micro_batch_size: Some(3),
                    ..Default::default()
                },
                "--micro-batch-size 3 does not divide the batch of 32",
            ),
            (
                Constraints {
                    micro_batch_size: Some(16),
                    dp: Some(8),
                    ..Default::default()
                },
                "--micro-batch-size 16 does not divide the sequences per data-parallel replica",
            ),
        ];
        for (c, want) in cases {
            let s = enumerate(shape, &cluster, 32, SEQ, &c);
            assert!(s.candidates.is_empty(), "{want}");
            assert!(
                s.conflicts.iter().any(|c| c == want) || s.rejected.contains_key(want),
                "{want}: {:?}",
                s.rejected
            );
        }
        // A micro-batch size outside the default list is still searched when asked for.
        let s = enumerate(
            shape,
            &cluster,
            48,
            SEQ,
            &Constraints {
                micro_batch_size: Some(3),
                dp: Some(2),
                ..Default::default()
            },
        );
        assert!(!s.candidates.is_empty());
        assert!(s.candidates.iter().all(|c| c.micro_batch_size == 3));
    }
}
