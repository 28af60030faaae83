//! Where the predictions are known to miss published measurements, said at run time to whoever
//! plans or estimates such a job. Each miss names the truth file that shows it; the test
//! `long_context_rows_within_12_percent` (`costmodel/tests/validation.rs`) holds that file at the
//! level stated here, so a change that moves it must update both.

use crate::config::{CpComm, ParallelConfig};

/// The one-line warnings that apply to a plan `cfg` of `seq` tokens per sequence (none for most
/// plans). Today one: ring attention of 4 ranks or more over PyTorch's context parallelism
/// (torchtitan, FSDP training scripts) is known to run slower than predicted: torchtitan's Llama 3.1
/// 8B rows at cp 4 and 8 on one host (`truth/long_context_torchtitan.jsonl`) took 24-31% longer per
/// step than predicted, while its cp 1 and 2 rows and its 405B rows (cp 2-8 across hosts) are within
/// 10%.
pub fn for_plan(seq: u64, cfg: &ParallelConfig) -> Vec<String> {
    let mut out = Vec::new();
    if cfg.cp >= 4 && cfg.cp_comm == CpComm::P2p && cfg.stack.runs_pytorch_ring() {
        out.push(format!(
            "--seq-len {seq} with cp {} on {}: PyTorch's ring attention of 4 ranks or more is known to be slower than \
             predicted: torchtitan's Llama 3.1 8B runs with context parallelism 4 and 8 on one host took 24-31% \
             longer per step than predicted (README: Long context)",
            cfg.cp, cfg.stack
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Stack;

    #[test]
    fn pytorch_ring_plans_are_flagged() {
        let cfg = |cp, stack, cp_comm| ParallelConfig {
            cp,
            stack,
            cp_comm,
            ..Default::default()
        };
        assert!(for_plan(131_072, &cfg(1, Stack::Torchtitan, CpComm::P2p)).is_empty());
        assert!(for_plan(131_072, &cfg(2, Stack::Torchtitan, CpComm::P2p)).is_empty());
        assert!(for_plan(131_072, &cfg(4, Stack::Megatron, CpComm::P2p)).is_empty());
        assert!(for_plan(131_072, &cfg(4, Stack::Torchtitan, CpComm::A2a)).is_empty());
        for stack in [Stack::Torchtitan, Stack::Fsdp] {
            let w = for_plan(131_072, &cfg(4, stack, CpComm::P2p));
            assert_eq!(w.len(), 1);
            assert!(
                w[0].starts_with(&format!("--seq-len 131072 with cp 4 on {stack}: "))
                    && !w[0].contains('\n')
            );
        }
    }
}
