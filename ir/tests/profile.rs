//! The training step profile: its fingerprint, layer reduction (identical decoder layers profiled
//! once) and selective recomputation, on models built by moai-models.

use crate::support::planning_llama;
use moai_ir::cost::{BlockKind, Phase, StepProfile, TpSplit};
use moai_ir::train::{
    RecomputePolicy, TrainOptions, build_engine_training_graph, peak_memory, reduce_layers,
    step_profile, unreduced_step_profile,
};

#[test]
fn the_fingerprint_is_computed_when_built_and_follows_the_contents() {
    let g = planning_llama(2, 256, 4, 2, 688, 1000);
    let o = TrainOptions::default();
    let p = step_profile(&g, &o, 2, 128).unwrap();
    // Stored when built: a clone carries it, and a second build of the same graph agrees.
    let f = p.fingerprint();
    assert_eq!(p.clone().fingerprint(), f);
    assert_eq!(step_profile(&g, &o, 2, 128).unwrap().fingerprint(), f);
    // Other sizes, another recomputation: other contents, other fingerprints.
    assert_ne!(step_profile(&g, &o, 4, 128).unwrap().fingerprint(), f);
    let full = TrainOptions {
        recompute: RecomputePolicy::Full,
        ..TrainOptions::default()
    };
    assert_ne!(step_profile(&g, &full, 2, 128).unwrap().fingerprint(), f);
    // An edited clone keeps the stale digest until refreshed; equality ignores the digest.
    let mut q = p.clone();
    q.blocks[1].ops[0].flops *= 2.0;
    assert_eq!(q.fingerprint(), f);
    q.refresh_fingerprint();
    assert_ne!(q.fingerprint(), f);
    assert_ne!(q, p);
    q.blocks[1].ops[0].flops /= 2.0;
    q.refresh_fingerprint();
    assert_eq!(q.fingerprint(), f);
    assert_eq!(q, p);
    // An op's role is part of the contents (the cost model prices some roles differently).
    let mut r = p.clone();
    r.blocks[1].ops[0].role = moai_ir::cost::Role::SharedInputLinear;
    r.refresh_fingerprint();
    assert_ne!(r.fingerprint(), f);
    // Not serialized: a round trip compares equal and recomputes the same digest.
    let back: StepProfile = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
    assert_eq!(back.fingerprint(), f);
}

#[test]
fn identical_layers_reduce_to_one_and_profile_matches_the_full_graph() {
    let g = planning_llama(4, 256, 4, 2, 688, 1000);
    let red = reduce_layers(&g).unwrap();
    // Layer 0 also holds the rotary tables' [1, 1, seq, d] views that every layer reads (made once,
    // as the ONNX export shares them), so it is its own structure and layers 1-3 reduce to layer 1.
    assert_eq!(red.layer_rep, vec![(0, 0), (1, 1), (2, 1), (3, 2)]);
    assert!(red.graph.len() < g.len());
    let policies = [
        RecomputePolicy::None,
        RecomputePolicy::Selective,
        RecomputePolicy::SelectiveOp,
        RecomputePolicy::Full,
    ];
    // Under autocast and on bf16 weight copies (whose last layer's output the head does not keep).
    for (r, copies) in policies.into_iter().flat_map(|r| [(r, false), (r, true)]) {
        let o = TrainOptions {
            recompute: r,
            bf16_weight_copies: copies,
            ..TrainOptions::default()
        };
        let prof = step_profile(&g, &o, 2, 128).unwrap();
        assert_eq!(prof.blocks.len(), 6);
        let tg = build_engine_training_graph(&g, &o).unwrap();
        let mem = peak_memory(&tg, 2, 128).unwrap();
        // Middle layers: their saved activations (including their output, the next layer's input) agree.
        for l in 1..3u32 {
            let full = mem
                .blocks
                .iter()
                .find(|b| b.block == BlockKind::Decoder(l))
                .unwrap()
                .saved_bytes as f64;
            let pb = prof
                .blocks
                .iter()
                .find(|b| b.kind == BlockKind::Decoder(l))
                .unwrap();
            assert_eq!(
                pb.saved.tp_sharded + pb.saved.tp_replicated,
                full,
                "{r} (copies {copies}): layer {l}"
            );
            assert_eq!(
                pb.ops.iter().filter(|o| o.layer == Some(l)).count(),
                pb.ops.len()
            );
            assert!(
                pb.ops
                    .iter()
                    .any(|o| o.label.starts_with(&format!("layers.{l}.")))
            );
            assert!(
                pb.boundary_bytes > 0.0
                    && pb.transient.tp_sharded + pb.transient.tp_replicated > 0.0
            );
        }
        let q = prof.blocks[1]
            .ops
            .iter()
            .find(|o| o.label.contains("q_proj:Linear"))
            .unwrap();
        assert_eq!(q.split, TpSplit::Column);
        let down = prof.blocks[1]
            .ops
            .iter()
            .find(|o| o.label.contains("down_proj:Linear"))
            .unwrap();
        assert_eq!(down.split, TpSplit::Row);
        let att = prof.blocks[1]
            .ops
            .iter()
            .find(|o| o.label.ends_with(":Attention"))
            .unwrap();
        assert_eq!(att.split, TpSplit::Heads);
        let head = prof.blocks.last().unwrap();
        assert!(head.ops.iter().any(|o| o.split == TpSplit::Vocab));
    }
}

/// Asserts that the reduced profile is the unreduced one: every block (its ops, saved, transient
/// and boundary bytes) and the optimizer's records (as a set: the reduced profile lists them by
/// representative).
fn assert_same_profile(reduced: &StepProfile, whole: &StepProfile, what: &str) {
    assert_eq!(reduced.blocks.len(), whole.blocks.len(), "{what}");
    for (a, b) in reduced.blocks.iter().zip(&whole.blocks) {
        assert_eq!(a, b, "{what}: {:?}", a.kind);
    }
    let sorted = |p: &StepProfile| {
        let mut v: Vec<String> = p.optimizer.iter().map(|o| format!("{o:?}")).collect();
        v.sort();
        v
    };
    assert_eq!(sorted(reduced), sorted(whole), "{what}: optimizer");
    assert_eq!(reduced.static_bytes_per_param, whole.static_bytes_per_param);
}

const POLICIES: [RecomputePolicy; 4] = [
    RecomputePolicy::None,
    RecomputePolicy::Selective,
    RecomputePolicy::SelectiveOp,
    RecomputePolicy::Full,
];

/// Layers of several structures in any order (here Qwen2-MoE with a dense MLP in layer 2 of 6,
/// `mlp_only_layers`): the reduced model is the prefix of layers up to one standing for the last, so
/// every kept layer hands its output on to a decoder layer or, for the last, to the head, and its
/// weights reach the loss. Its profile is the whole model's under every recomputation, on weight
/// copies and under autocast.
#[test]
fn layers_of_mixed_structure_reduce_to_a_prefix_and_match_the_full_graph() {
    let json = r#"{"model_type": "qwen2_moe", "hidden_size": 256, "intermediate_size": 512,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 6,
        "vocab_size": 1000, "num_experts": 4, "num_experts_per_tok": 2,
        "moe_intermediate_size": 128, "shared_expert_intermediate_size": 256,
        "mlp_only_layers": [2], "decoder_sparse_step": 1, "torch_dtype": "bfloat16"}"#;
    let g = moai_models::from_hf_config_str(json, "mixed").unwrap();
    let red = reduce_layers(&g).unwrap();
    // Layer 0 is its own structure (it makes the rotary tables), 1 the first MoE layer, 2 the dense
    // one; the prefix ends at 3, the first MoE layer after them all, which stands for the last.
    assert_eq!(
        red.layer_rep,
        vec![(0, 0), (1, 1), (2, 2), (3, 1), (4, 1), (5, 3)]
    );
    assert!(red.graph.len() < g.len());
    for (r, copies) in POLICIES.into_iter().flat_map(|r| [(r, false), (r, true)]) {
        let o = TrainOptions {
            recompute: r,
            bf16_weight_copies: copies,
            ..TrainOptions::default()
        };
        let what = format!("{r} (copies {copies})");
        assert_same_profile(
            &step_profile(&g, &o, 2, 128).unwrap(),
            &unreduced_step_profile(&g, &o, 2, 128).unwrap(),
            &what,
        );
    }
}

/// The bundled Llama-2-13B export (the README's main job): its weights reach the linears through
/// ONNX `Transpose` nodes, which the training graph computes at their first reader, so each
/// layer's weight gradients are transients of that layer's backward, not buffers held to the end of
/// the step. Its reduced profile (three of forty layers) is the whole model's, at the main job's
/// micro-batch, on weight copies and under autocast.
#[test]
fn the_llama2_13b_export_reduces_to_its_whole_profile() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/llama2-13b.onnx");
    let g = moai_ir::onnx::import(&path).unwrap().graph;
    assert_eq!(reduce_layers(&g).unwrap().layer_rep[39], (39, 2));
    for (r, copies) in [
        (RecomputePolicy::None, true),
        (RecomputePolicy::Full, true),
        (RecomputePolicy::Selective, false),
    ] {
        let o = TrainOptions {
            recompute: r,
            bf16_weight_copies: copies,
            ..TrainOptions::default()
        };
        let reduced = step_profile(&g, &o, 8, 1024).unwrap();
        let whole = unreduced_step_profile(&g, &o, 8, 1024).unwrap();
        assert_same_profile(&reduced, &whole, &format!("{r} (copies {copies})"));
        // No layer's backward holds the later layers' weight gradients: the middle layers' transient
        // peaks agree (a 13B layer's bf16 weight gradients alone are 0.63 GB).
        let transient = |l: usize| {
            let t = &whole.blocks[l + 1].transient;
            t.tp_sharded + t.tp_replicated
        };
        assert_eq!(transient(10), transient(30), "{r} (copies {copies})");
        // The untied LM head's weight (and its transpose, and under weight copies its cast) is the
        // head's, on the last pipeline stage, not the embedding's.
        let reads_lm_head =
            |b: &moai_ir::cost::BlockProfile| b.ops.iter().any(|o| o.label.starts_with("lm_head:"));
        assert!(!reads_lm_head(&whole.blocks[0]) && reads_lm_head(whole.blocks.last().unwrap()));
    }
}

#[test]
fn selective_recompute_keeps_attention_inputs_only() {
    let g = planning_llama(2, 256, 4, 4, 688, 1000);
    let none = step_profile(&g, &TrainOptions::default(), 1, 256).unwrap();
    let sel = step_profile(
        &g,
        &TrainOptions {
            recompute: RecomputePolicy::Selective,
            ..TrainOptions::default()
        },
        1,
        256,
    )
    .unwrap();
    let (a, b) = (&none.blocks[1], &sel.blocks[1]);
    // The attention output [1, 4, 256, 64] bf16 and its f32 lse [1, 4, 256] are no longer kept.
    assert_eq!(
        a.saved.tp_sharded - b.saved.tp_sharded,
        (256 * 256 * 2 + 4 * 256 * 4) as f64
    );
    assert!(
        b.ops
            .iter()
            .any(|o| o.phase == Phase::Recompute && o.label.ends_with(":Attention"))
    );
}

#[test]
fn selective_op_recompute_reruns_every_second_linear_and_keeps_attention() {
    let g = planning_llama(2, 256, 4, 2, 688, 1000);
    let prof = |r| {
        step_profile(
            &g,
            &TrainOptions {
                recompute: r,
                ..TrainOptions::default()
            },
            1,
            256,
        )
        .unwrap()
    };
    let (none, op, full) = (
        prof(RecomputePolicy::None),
        prof(RecomputePolicy::SelectiveOp),
        prof(RecomputePolicy::Full),
    );
    let b = &op.blocks[1];
    let recomputed = |name: &str| {
        b.ops
            .iter()
            .any(|o| o.phase == Phase::Recompute && o.label.contains(&format!("{name}:Linear")))
    };
    // Forward mm order q, k, v, o, gate, up, down: the 2nd, 4th and 6th are rerun.
    for (name, again) in [
        ("q_proj", false),
        ("k_proj", true),
        ("v_proj", false),
        ("o_proj", true),
        ("gate_proj", false),
        ("up_proj", true),
        ("down_proj", false),
    ] {
        assert_eq!(recomputed(name), again, "{name}");
    }
    assert!(
        !b.ops
            .iter()
            .any(|o| o.phase == Phase::Recompute && o.label.ends_with(":Attention"))
    );
    // Norms and activations are rerun too; the other layers' policy is the same.
    assert!(b.ops.iter().filter(|o| o.phase == Phase::Recompute).count() > 3);
    // Keeps less than no recomputation and more than full recomputation.
    let kept = |p: &StepProfile| p.blocks[1].saved.tp_sharded + p.blocks[1].saved.tp_replicated;
    assert!(kept(&op) < kept(&none) && kept(&op) > kept(&full));
    let flops = |p: &StepProfile| p.blocks[1].ops.iter().map(|o| o.flops).sum::<f64>();
    assert!(flops(&none) < flops(&op) && flops(&op) < flops(&full));
}

/// A tied LM head reads the embedding table from the embedding block; that weight is not an
/// activation crossing the block boundary (which pipelining sends between stages per micro-batch
/// and the vocab-parallel embedding all-reduces): the embedding block's boundary is the hidden
/// states, as with an untied head, whatever the vocabulary.
#[test]
fn a_tied_head_does_not_send_the_embedding_table_across_the_boundary() {
    for copies in [false, true] {
        tied_head_boundary(TrainOptions {
            bf16_weight_copies: copies,
            ..TrainOptions::default()
        });
    }
}

fn tied_head_boundary(o: TrainOptions) {
    let boundary = |spec: &str| {
        let g = moai_models::from_spec(spec).unwrap();
        let p = step_profile(&g, &o, 2, 16).unwrap();
        assert_eq!(p.blocks[0].kind, BlockKind::Embedding);
        p.blocks[0].boundary_bytes
    };
    let tied = boundary("gpt:layers=2,hidden=64,heads=4,vocab=1000,max_pos=32");
    let untied = boundary("gpt:layers=2,hidden=64,heads=4,vocab=1000,max_pos=32,tied=false");
    let big_vocab = boundary("gpt:layers=2,hidden=64,heads=4,vocab=8000,max_pos=32");
    assert!(tied > 0.0);
    assert_eq!(tied, untied);
    assert_eq!(tied, big_vocab);
    // The hidden states of one micro-batch (2 x 16 tokens x 64), not the 1000 x 64 table.
    assert!(tied <= (2 * 16 * 64 * 4) as f64, "{tied}");
}

/// A linear layer whose weight reaches it through a transpose splits under tensor parallelism as
/// its weight's name says: PyTorch's ONNX export writes every `nn.Linear` as `MatMul(x,
/// Transpose(W))`, and a tied LM head multiplies by the embedding table transposed. Before,
/// such layers stayed replicated, so tensor parallelism divided none of an imported model's
/// GEMMs (llama2-13b from ONNX at tp 2: 16.1 s of matmuls per step instead of 8.3 s).
#[test]
fn weights_read_through_a_transpose_split_as_their_layer() {
    // Under autocast and on bf16 weight copies (a cast between the weight and its transpose).
    for copies in [false, true] {
        transposed_weights_split(TrainOptions {
            bf16_weight_copies: copies,
            ..TrainOptions::default()
        });
    }
}

fn transposed_weights_split(o: TrainOptions) {
    let forward_matmuls = |p: &StepProfile, kind: fn(&BlockKind) -> bool| -> Vec<TpSplit> {
        p.blocks
            .iter()
            .filter(|b| kind(&b.kind))
            .flat_map(|b| b.ops.iter())
            .filter(|op| {
                op.phase == Phase::Forward
                    && matches!(op.class, moai_ir::cost::KernelClass::Matmul { .. })
                    && op.flops > 0.0
            })
            .map(|op| op.split)
            .collect()
    };
    let tied =
        moai_models::from_spec("gpt:layers=2,hidden=64,heads=4,vocab=1000,max_pos=32").unwrap();
    let p = step_profile(&tied, &o, 2, 16).unwrap();
    let head = forward_matmuls(&p, |k| *k == BlockKind::Head);
    assert_eq!(head, vec![TpSplit::Vocab]);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/llama-350m.onnx");
    let g = moai_ir::onnx::import(&path).expect("llama-350m.onnx").graph;
    let p = step_profile(&g, &o, 1, 64).unwrap();
    let decoder = forward_matmuls(&p, |k| matches!(k, BlockKind::Decoder(_)));
    // q, k, v, gate, up column-parallel; o, down row-parallel (attention's batched GEMMs are fused).
    assert!(!decoder.is_empty());
    assert!(
        decoder
            .iter()
            .all(|s| matches!(s, TpSplit::Column | TpSplit::Row)),
        "{decoder:?}"
    );
    assert_eq!(
        forward_matmuls(&p, |k| *k == BlockKind::Head),
        vec![TpSplit::Vocab]
    );
}

/// An `amp-bf16` step computing on bf16 weight copies (as the training engines do) keeps a bf16
/// residual stream: under full recomputation a middle decoder layer saves its output (the next
/// layer's checkpointed input) at 2 bytes per element, not autocast's fp32 4 (the reduced profile's
/// representative layer counts it though the head, not a layer, reads it); without recomputation a
/// layer saves less than under autocast; the bytes per parameter (fp32 master weights, gradients,
/// moments) are autocast's, and the copy of each weight is made once.
#[test]
fn weight_copies_keep_the_residual_stream_in_bf16() {
    let g = planning_llama(4, 256, 4, 2, 688, 1000);
    let (mb, seq) = (2u64, 128u64);
    let full = |copies: bool| {
        let o = TrainOptions {
            recompute: RecomputePolicy::Full,
            bf16_weight_copies: copies,
            ..TrainOptions::default()
        };
        step_profile(&g, &o, mb, seq).unwrap()
    };
    let saved = |p: &StepProfile| {
        let b = p
            .blocks
            .iter()
            .find(|b| b.kind == BlockKind::Decoder(1))
            .unwrap();
        b.saved.tp_sharded + b.saved.tp_replicated
    };
    let (autocast, copies) = (full(false), full(true));
    let input = (mb * seq * 256) as f64;
    assert_eq!(saved(&autocast), 4.0 * input);
    assert_eq!(saved(&copies), 2.0 * input);
    assert_eq!(
        autocast.static_bytes_per_param,
        copies.static_bytes_per_param
    );
    assert_eq!(autocast.grad_bytes_per_param, copies.grad_bytes_per_param);
    // One bf16 copy per weight of a layer (7 linears, 2 norms), whatever its number of uses.
    let weight_casts = |p: &StepProfile| {
        p.blocks
            .iter()
            .find(|b| b.kind == BlockKind::Decoder(1))
            .unwrap()
            .ops
            .iter()
            .filter(|o| o.phase == Phase::Forward && o.role == moai_ir::cost::Role::WeightCast)
            .count()
    };
    assert_eq!(weight_casts(&copies), 9);
    // Without recomputation the layer saves less than under autocast (bf16 adds and norm outputs).
    let none = |copies: bool| {
        let o = TrainOptions {
            bf16_weight_copies: copies,
            ..TrainOptions::default()
        };
        saved(&step_profile(&g, &o, mb, seq).unwrap())
    };
    assert!(
        none(true) < none(false),
        "{} vs {}",
        none(true),
        none(false)
    );
    // Other policies ignore the switch.
    for p in [
        moai_ir::train::PrecisionPolicy::Bf16,
        moai_ir::train::PrecisionPolicy::Fp32,
    ] {
        let o = |c| TrainOptions {
            precision: p,
            bf16_weight_copies: c,
            ..TrainOptions::default()
        };
        assert_eq!(
            step_profile(&g, &o(true), mb, seq).unwrap(),
            step_profile(&g, &o(false), mb, seq).unwrap()
        );
    }
}
