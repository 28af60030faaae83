//! Exports of a plan to the engines people run at scale: Megatron-LM arguments, a DeepSpeed config and
//! a torchrun launch script per server.

use crate::plan::PlanConfig;
use serde_json::json;

/// What the exporters need to know about the model and job besides the plan.
#[derive(Clone, Debug)]
pub struct ExportContext {
    /// Decoder layers.
    pub layers: u32,
    /// Hidden size.
    pub hidden: u64,
    /// Attention heads.
    pub heads: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    /// FFN width.
    pub ffn: u64,
    /// Vocabulary size.
    pub vocab: u64,
    /// Llama-style (RMSNorm, SwiGLU, rotary, no biases) or GPT-2 style.
    pub llama_style: bool,
    /// Tied input/output embeddings.
    pub tied_embeddings: bool,
    /// Global batch (sequences).
    pub global_batch: u64,
    /// Sequence length.
    pub seq: u64,
    /// Precision policy name (`amp-bf16`, `bf16`, `fp32`).
    pub precision: String,
    /// Optimizer name (`adamw`, `sgd`).
    pub optimizer: String,
    /// Servers in the cluster.
    pub servers: u64,
    /// Devices per server.
    pub devices_per_server: u64,
}

/// Megatron-LM command-line arguments for `pretrain_gpt.py`, as (flag, optional value) pairs.
pub fn megatron_args(plan: &PlanConfig, cx: &ExportContext) -> Vec<(String, Option<String>)> {
    let mut a: Vec<(String, Option<String>)> = Vec::new();
    let mut kv = |k: &str, v: String| a.push((k.to_string(), Some(v)));
    kv("--tensor-model-parallel-size", plan.tp.to_string());
    kv("--pipeline-model-parallel-size", plan.pp.to_string());
    kv("--micro-batch-size", plan.micro_batch_size.to_string());
    kv("--global-batch-size", cx.global_batch.to_string());
    kv("--seq-length", cx.seq.to_string());
    kv("--max-position-embeddings", cx.seq.to_string());
    kv("--num-layers", cx.layers.to_string());
    kv("--hidden-size", cx.hidden.to_string());
    kv("--ffn-hidden-size", cx.ffn.to_string());
    kv("--num-attention-heads", cx.heads.to_string());
    kv(
        "--optimizer",
        if cx.optimizer == "sgd" {
            "sgd".into()
        } else {
            "adam".into()
        },
    );
    if let Some(v) = plan
        .schedule
        .strip_prefix("interleaved:")
        .and_then(|v| v.parse::<u64>().ok())
    {
        let per_stage = cx.layers as u64 / plan.pp.max(1);
        kv(
            "--num-layers-per-virtual-pipeline-stage",
            (per_stage / v.max(1)).max(1).to_string(),
        );
    }
    match plan.recompute.as_str() {
        "full" => {
            kv("--recompute-granularity", "full".into());
            kv("--recompute-method", "uniform".into());
            kv("--recompute-num-layers", "1".into());
        }
        "selective" => kv("--recompute-granularity", "selective".into()),
        _ => {}
    }
    let mut flag = |k: &str| a.push((k.to_string(), None));
    if cx.kv_heads != cx.heads {
        flag("--group-query-attention");
    }
    if plan.sequence_parallel {
        flag("--sequence-parallel");
    }
    if plan.distribute_optimizer || plan.distribute_param {
        flag("--use-distributed-optimizer");
    }
    match cx.precision.as_str() {
        "fp32" => {}
        _ => flag("--bf16"),
    }
    if cx.llama_style {
        flag("--swiglu");
        flag("--disable-bias-linear");
        flag("--use-rotary-position-embeddings");
    }
    if !cx.tied_embeddings {
        flag("--untie-embeddings-and-output-weights");
    }
    if cx.kv_heads != cx.heads {
        a.push(("--num-query-groups".into(), Some(cx.kv_heads.to_string())));
    }
    if cx.llama_style {
        a.push(("--normalization".into(), Some("RMSNorm".into())));
        a.push(("--position-embedding-type".into(), Some("rope".into())));
    }
    a
}

/// The Megatron-LM arguments as one shell-ready line.
pub fn megatron_command_line(plan: &PlanConfig, cx: &ExportContext) -> String {
    megatron_args(plan, cx)
        .into_iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k} {v}"),
            None => k,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A DeepSpeed JSON config for the plan. DeepSpeed has no tensor parallelism of its own: tp > 1 or
/// pp > 1 plans run DeepSpeed under Megatron-DeepSpeed, which reads the same file.
pub fn deepspeed_config(plan: &PlanConfig, cx: &ExportContext) -> serde_json::Value {
    let stage = if plan.distribute_param {
        3
    } else if plan.distribute_optimizer {
        1
    } else {
        0
    };
    let optimizer = if cx.optimizer == "sgd" {
        json!({"type": "SGD", "params": {"lr": 1e-4, "momentum": 0.9}})
    } else {
        json!({"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}})
    };
    let mut zero = json!({"stage": stage, "overlap_comm": true, "contiguous_gradients": true});
    if stage == 3 {
        zero["stage3_prefetch_bucket_size"] = json!(50_000_000u64);
        zero["stage3_param_persistence_threshold"] = json!(100_000u64);
    }
    json!({
        "train_batch_size": cx.global_batch,
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.num_micro_batches,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": cx.precision != "fp32"},
        "optimizer": optimizer,
        "zero_optimization": zero,
        "steps_per_print": 10,
        "wall_clock_breakdown": false,
    })
}

/// A torchrun launch script for server `rank` of the cluster, running Megatron-LM with the plan's args.
pub fn torchrun_script(plan: &PlanConfig, cx: &ExportContext, rank: u64) -> String {
    format!(
        "#!/usr/bin/env bash\n\
# moai launch script for server {rank} of {servers}. Set MASTER_ADDR to server 0's address and\n\
# MEGATRON_LM to a Megatron-LM checkout; data and tokenizer arguments are yours to add.\n\
set -euo pipefail\n\
: \"${{MASTER_ADDR:?set MASTER_ADDR to the address of server 0}}\"\n\
: \"${{MEGATRON_LM:?set MEGATRON_LM to a Megatron-LM checkout}}\"\n\
MASTER_PORT=${{MASTER_PORT:-29500}}\n\
exec torchrun --nnodes {servers} --nproc-per-node {gpus} --node-rank {rank} \\\n\
  --master-addr \"$MASTER_ADDR\" --master-port \"$MASTER_PORT\" \\\n\
  \"$MEGATRON_LM/pretrain_gpt.py\" \\\n\
  {args} \"$@\"\n",
        servers = cx.servers,
        gpus = cx.devices_per_server,
        args = megatron_command_line(plan, cx),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::StageInfo;

    pub(crate) fn sample() -> (PlanConfig, ExportContext) {
        (
            PlanConfig {
                dp: 4,
                tp: 2,
                pp: 4,
                num_micro_batches: 64,
                micro_batch_size: 1,
                recompute: "full".into(),
                distribute_param: false,
                distribute_low_prec_param: false,
                distribute_optimizer: true,
                sequence_parallel: true,
                schedule: "interleaved:2".into(),
                stages: (0..4)
                    .map(|i| StageInfo {
                        layers: [i * 10, i * 10 + 9],
                    })
                    .collect(),
            },
            ExportContext {
                layers: 40,
                hidden: 5120,
                heads: 40,
                kv_heads: 8,
                ffn: 13824,
                vocab: 32000,
                llama_style: true,
                tied_embeddings: false,
                global_batch: 256,
                seq: 1024,
                precision: "amp-bf16".into(),
                optimizer: "adamw".into(),
                servers: 4,
                devices_per_server: 8,
            },
        )
    }

    #[test]
    fn megatron_names_are_accepted_by_its_parser() {
        let accepted: std::collections::HashSet<&str> =
            include_str!("../data/megatron_arguments.txt")
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .map(str::trim)
                .collect();
        assert!(
            accepted.len() > 200,
            "the list of Megatron-LM options looks incomplete"
        );
        let (p, cx) = sample();
        for (name, _) in megatron_args(&p, &cx) {
            assert!(
                accepted.contains(name.as_str()),
                "{name} is not a Megatron-LM option"
            );
        }
    }

    #[test]
    fn megatron_args_follow_the_plan() {
        let (p, cx) = sample();
        let line = megatron_command_line(&p, &cx);
        for want in [
            "--tensor-model-parallel-size 2",
            "--pipeline-model-parallel-size 4",
            "--micro-batch-size 1",
            "--global-batch-size 256",
            "--recompute-granularity full",
            "--sequence-parallel",
            "--use-distributed-optimizer",
            "--num-layers-per-virtual-pipeline-stage 5",
            "--num-query-groups 8",
        ] {
            assert!(line.contains(want), "missing `{want}` in {line}");
        }
    }

    #[test]
    fn deepspeed_config_is_consistent() {
        let (p, cx) = sample();
        let c = deepspeed_config(&p, &cx);
        assert_eq!(c["zero_optimization"]["stage"], 1);
        assert_eq!(c["train_micro_batch_size_per_gpu"], 1);
        assert_eq!(c["gradient_accumulation_steps"], 64);
        // train_batch_size = micro * accumulation * dp, as DeepSpeed checks.
        assert_eq!(
            c["train_batch_size"].as_u64().unwrap(),
            p.micro_batch_size * p.num_micro_batches * p.dp
        );
        let keys: std::collections::HashSet<&str> =
            include_str!("../data/deepspeed_config_keys.txt")
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .map(str::trim)
                .collect();
        for (k, v) in c.as_object().unwrap() {
            assert!(
                keys.contains(k.as_str()),
                "{k} is not a DeepSpeed config key"
            );
            if k == "zero_optimization" {
                for zk in v.as_object().unwrap().keys() {
                    assert!(
                        keys.contains(format!("zero_optimization.{zk}").as_str()),
                        "zero_optimization.{zk}"
                    );
                }
            }
        }
    }

    #[test]
    fn torchrun_script_names_the_server() {
        let (p, cx) = sample();
        let s = torchrun_script(&p, &cx, 3);
        assert!(
            s.contains("--node-rank 3")
                && s.contains("--nnodes 4")
                && s.contains("--nproc-per-node 8")
        );
    }
}
