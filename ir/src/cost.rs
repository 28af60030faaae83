//! Per-op cost records: the interface between the training graph (which knows what runs) and the cost
//! model (which knows how long it takes on a device).
//!
//! A record is evaluated at concrete sizes (micro-batch, sequence length) and says what kind of kernel it
//! is, its FLOPs and bytes moved, which phase of the step it belongs to, its decoder layer, and how it
//! divides under tensor parallelism.

use crate::dtype::DType;
use serde::{Deserialize, Serialize};

/// Phase of a training step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Forward pass.
    Forward,
    /// Backward pass.
    Backward,
    /// Forward ops re-run during backward (recomputation).
    Recompute,
    /// Optimizer update.
    Optimizer,
}

/// How an op divides across a tensor-parallel group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TpSplit {
    /// Every rank does the whole op (norms, residual adds without sequence parallelism).
    Replicated,
    /// Output features split (column-parallel linear): `n / tp`.
    Column,
    /// Input features split (row-parallel linear): `k / tp`.
    Row,
    /// Attention heads (and KV heads) split.
    Heads,
    /// Vocabulary split (embedding, LM head, loss).
    Vocab,
    /// Split along the sequence under sequence parallelism, replicated otherwise.
    Sequence,
    /// Routed-expert work and weights (the grouped expert GEMMs, their parameters and optimizer
    /// updates): divided over the expert-parallel group (`ep` experts' shares) and the expert
    /// tensor-parallel group (`expert_tp`), not over `tp`.
    Expert,
}

/// The kernel family of an op, with the sizes a profile is indexed by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KernelClass {
    /// `batch` independent `[m, k] × [k, n]` products.
    Matmul {
        /// Batch count.
        batch: u64,
        /// Rows of the output.
        m: u64,
        /// Columns of the output.
        n: u64,
        /// Contraction size.
        k: u64,
        /// Compute dtype.
        dtype: DType,
    },
    /// Fused attention (flash-style), forward or backward.
    Attention {
        /// Batch.
        batch: u64,
        /// Query heads.
        heads: u64,
        /// KV heads.
        kv_heads: u64,
        /// Sequence length.
        seq: u64,
        /// Head dimension.
        head_dim: u64,
        /// Causal.
        causal: bool,
        /// Backward kernel.
        backward: bool,
        /// Compute dtype.
        dtype: DType,
    },
    /// Normalization (RMSNorm, LayerNorm), memory bound.
    Norm,
    /// Elementwise or data movement, memory bound.
    Elementwise,
    /// Reductions and softmax outside attention.
    Reduce,
    /// Embedding gather or its scatter-add backward.
    Gather,
    /// Optimizer update over a parameter shard.
    Optimizer,
    /// Plain copies (casts of weights, concatenations).
    Copy,
}

/// What an op of the training graph is for, where its tensor-parallel split or its cost depends on
/// more than its kind. Set where the training graph builds the op ([`crate::train`]'s builder: the
/// precision policy's casts, the linear layers' backward, the linear layers that share an input,
/// Hugging Face's unfused rotary embedding),
/// kept on the node ([`crate::train::TrainingGraph::meta`]) and carried into its [`OpCost`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Anything else.
    #[default]
    Plain,
    /// A linear layer's input gradient `d_x = d_y · Wᵀ`.
    LinearDx,
    /// A linear layer's weight gradient `d_W = xᵀ · d_y`.
    LinearDw,
    /// A cast of a weight to the compute dtype.
    WeightCast,
    /// A float cast of an activation or a gradient the training graph makes: autocast's per-call
    /// casts to the compute dtype, the fp32 upcasts of the eager modules autocast runs (RMSNorm,
    /// rotary embedding, the loss's logits), the model's own casts re-typed by the precision policy,
    /// and the gradients' casts back to their forward dtype.
    Cast,
    /// An op of Hugging Face's unfused rotary embedding under autocast (`apply_rotary_pos_emb`:
    /// negation, concatenation, products and sum; see `build_engine_training_graph`), or of its
    /// gradient or recomputation: a stack with a fused RoPE kernel runs that kernel instead. The
    /// decomposition's casts have a cast role ([`Role::is_cast`]).
    EagerRotary,
    /// A linear layer reading the same input as an earlier linear layer of the forward graph
    /// (Llama's key and value projections after the query's, the up projection after the gate's):
    /// an engine that fuses a layer's projections of one input into one module (Megatron-Core's
    /// `linear_qkv` and `linear_fc1` Transformer Engine modules) runs it inside that module. Set on
    /// the forward linear and its recomputation; its gradients have the linear's backward roles.
    SharedInputLinear,
    /// An op of an activation function's gradient as autodiff writes it out (SiLU, GeLU and its
    /// tanh form: the derivative's elementwise terms and the product with the incoming gradient).
    /// Every engine moai costs runs that gradient as one kernel (PyTorch's native `silu_backward` and
    /// `gelu_backward`, Megatron-LM's fused bias-GeLU and SwiGLU backward, Transformer Engine's
    /// `dgelu`/`dswiglu`), and the step's cost records do so too ([`crate::train::cost::fuse_activation_grads`]).
    ActivationGrad,
}

impl Role {
    /// Whether the op is a cast the training graph makes (of a weight, an activation or a gradient).
    pub fn is_cast(self) -> bool {
        matches!(self, Role::WeightCast | Role::Cast)
    }

    /// The role the ops differentiating a forward op of this role start with: the unfused rotary
    /// embedding's gradient is unfused rotary too; a linear layer's backward sets its own roles, and
    /// casts take theirs where they are made.
    pub fn of_gradient(self) -> Role {
        match self {
            Role::EagerRotary => Role::EagerRotary,
            _ => Role::Plain,
        }
    }
}

/// The cost of one op instance at concrete sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpCost {
    /// Kernel family and sizes.
    pub class: KernelClass,
    /// Floating-point operations.
    pub flops: f64,
    /// Bytes read plus bytes written.
    pub bytes: f64,
    /// Phase.
    pub phase: Phase,
    /// Decoder layer (None for embedding, final norm, LM head, loss).
    pub layer: Option<u32>,
    /// Tensor-parallel split.
    pub split: TpSplit,
    /// Short label (e.g. `layers.3.self_attn.q_proj`), for breakdowns only: costing reads `role`.
    pub label: String,
    /// What the op is for, where that changes its cost (casts, unfused rotary embedding).
    #[serde(default)]
    pub role: Role,
}

/// Which part of the model a block is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Token (and position) embedding, before the first decoder layer.
    Embedding,
    /// One decoder layer.
    Decoder(u32),
    /// Final norm, LM head and loss.
    Head,
}

/// Activation bytes of one micro-batch, split by how they divide under tensor parallelism.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ActivationBytes {
    /// Divided by tp (head-split or column-split tensors).
    pub tp_sharded: f64,
    /// Replicated across the tp group, unless sequence parallelism splits them (layer inputs, norms).
    pub tp_replicated: f64,
}

impl ActivationBytes {
    /// Bytes per device under tensor parallelism `tp`, with or without sequence parallelism.
    pub fn per_device(&self, tp: u64, sequence_parallel: bool) -> f64 {
        let tp = tp.max(1) as f64;
        self.tp_sharded / tp
            + if sequence_parallel {
                self.tp_replicated / tp
            } else {
                self.tp_replicated
            }
    }
}

/// One block of the model (embedding, a decoder layer, or the head) in one training step of one
/// micro-batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockProfile {
    /// Which block.
    pub kind: BlockKind,
    /// Forward, backward and recompute ops of one micro-batch (optimizer ops are in
    /// [`StepProfile::optimizer`]).
    pub ops: Vec<OpCost>,
    /// Trainable parameters in this block.
    pub params: u64,
    /// Parameters that divide under tensor parallelism (the rest, e.g. norm weights, are replicated).
    pub tp_sharded_params: u64,
    /// Of `tp_sharded_params`, the routed experts' parameters, which divide over the expert-parallel
    /// and expert tensor-parallel groups (`ep · expert_tp`) instead of `tp`.
    #[serde(default)]
    pub expert_params: u64,
    /// Activations saved from forward for backward, for one micro-batch, under the recompute policy.
    pub saved: ActivationBytes,
    /// Extra transient bytes at this block's own peak (backward temporaries, recomputed activations).
    pub transient: ActivationBytes,
    /// Bytes of the activation passed to the next block (what pipeline stages send).
    pub boundary_bytes: f64,
}

/// How a step's loss runs over the LM head's logits: part of the model's code (LLM Foundry's MPT picks
/// its loss function in the model class), so it travels with the profile rather than the stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKernel {
    /// PyTorch's cross-entropy over an fp32 copy of the bf16 logits, as Hugging Face models and
    /// torchtitan compute it (`logits.float()`): the graph as the training-graph builder makes it,
    /// which saves the fp32 logits for backward.
    #[default]
    Fp32Upcast,
    /// A fused softmax-cross-entropy kernel over the bf16 logits (flash-attn's `xentropy`,
    /// `flash_attn.losses.cross_entropy.CrossEntropyLoss`, the default `loss_fn` of LLM Foundry's
    /// MPT): no fp32 copy; the kernel saves the bf16 logits and its backward writes a bf16 gradient.
    FusedBf16,
}

/// Per-block costs of one training step for one micro-batch at concrete sizes, produced by the training
/// graph and consumed by the cost model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepProfile {
    /// Micro-batch size.
    pub micro_batch: u64,
    /// Sequence length.
    pub seq: u64,
    /// Blocks in execution order: embedding, decoder layers, head.
    pub blocks: Vec<BlockProfile>,
    /// Optimizer ops for the whole (unsharded) model.
    pub optimizer: Vec<OpCost>,
    /// Static bytes per parameter (weights + gradients + optimizer state) under the precision policy and
    /// optimizer, before sharding.
    pub static_bytes_per_param: f64,
    /// Of those, bytes per parameter of low-precision weight copies (sharded by `distribute_low_prec_param`).
    pub low_prec_param_bytes_per_param: f64,
    /// Of those, bytes per parameter of optimizer state and master weights (sharded by
    /// `distribute_optimizer`).
    pub optimizer_bytes_per_param: f64,
    /// Of those, bytes per parameter of gradients.
    pub grad_bytes_per_param: f64,
    /// How the loss runs over the head's logits: the training graph builds an fp32 upcast; a model
    /// whose code calls a fused cross-entropy kernel instead is rewritten to [`LossKernel::FusedBf16`].
    #[serde(default)]
    pub loss: LossKernel,
    /// A digest of everything above, computed once (see [`StepProfile::fingerprint`]); not
    /// serialized and ignored by `==`.
    #[serde(skip)]
    pub fingerprint: Fingerprint,
}

/// The lazily computed digest of a [`StepProfile`]: what a cost model keys its per-profile caches on
/// instead of re-reading every op on every call. It is computed on first use and cloned with the
/// profile; code that edits a profile's fields after it was used must call
/// [`StepProfile::refresh_fingerprint`]. Two fingerprints always compare equal, so a profile's `==`
/// compares its contents only.
#[derive(Clone, Debug, Default)]
pub struct Fingerprint(std::sync::OnceLock<u64>);

impl PartialEq for Fingerprint {
    fn eq(&self, _: &Fingerprint) -> bool {
        true
    }
}

impl StepProfile {
    /// A 64-bit digest of the profile's sizes, blocks, ops and static bytes: equal profiles have equal
    /// fingerprints, and a profile that differs in any op, block or size almost surely has another.
    /// Computed on the first call and stored in the profile.
    pub fn fingerprint(&self) -> u64 {
        *self.fingerprint.0.get_or_init(|| self.digest())
    }

    /// Forgets the stored fingerprint: call after editing a profile that may have been fingerprinted
    /// (a clone carries its original's).
    pub fn refresh_fingerprint(&mut self) {
        self.fingerprint = Fingerprint::default();
    }

    fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        // SipHash with fixed keys: the same digest in every process.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let op = |h: &mut std::collections::hash_map::DefaultHasher, o: &OpCost| {
            o.class.hash(h);
            o.flops.to_bits().hash(h);
            o.bytes.to_bits().hash(h);
            o.phase.hash(h);
            o.layer.hash(h);
            o.split.hash(h);
            o.label.hash(h);
            o.role.hash(h);
        };
        let act = |h: &mut std::collections::hash_map::DefaultHasher, a: &ActivationBytes| {
            a.tp_sharded.to_bits().hash(h);
            a.tp_replicated.to_bits().hash(h);
        };
        (self.micro_batch, self.seq, self.blocks.len()).hash(&mut h);
        for b in &self.blocks {
            (
                b.kind,
                b.ops.len(),
                b.params,
                b.tp_sharded_params,
                b.expert_params,
            )
                .hash(&mut h);
            for o in &b.ops {
                op(&mut h, o);
            }
            act(&mut h, &b.saved);
            act(&mut h, &b.transient);
            b.boundary_bytes.to_bits().hash(&mut h);
        }
        self.optimizer.len().hash(&mut h);
        for o in &self.optimizer {
            op(&mut h, o);
        }
        for x in [
            self.static_bytes_per_param,
            self.low_prec_param_bytes_per_param,
            self.optimizer_bytes_per_param,
            self.grad_bytes_per_param,
        ] {
            x.to_bits().hash(&mut h);
        }
        self.loss.hash(&mut h);
        h.finish()
    }
}
