//! The closed canonical op set. Every ONNX op moai imports maps onto these; later passes (recognition,
//! autodiff, tensor-parallel sharding) only ever see these.
//!
//! Primitive ops come straight from import. *Fused* ops ([`Op::Linear`], [`Op::Embedding`],
//! [`Op::RmsNorm`], [`Op::LayerNorm`], [`Op::Rotary`], [`Op::Attention`], [`Op::Gelu`]...) are produced by
//! recognition and carry the higher-level structure that the planner, autodiff and the cost model need.

use crate::dim::Dim;
use crate::dtype::DType;
use crate::shape::Shape;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Where a parameter's bytes live.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ParamData {
    /// Values stored inline in the model file (loaded).
    Inline(Tensor),
    /// Values in an external file next to the model; never read for planning.
    External {
        /// Path relative to the model's directory, validated to stay inside it.
        location: String,
        /// Byte offset in that file.
        offset: u64,
        /// Byte length (declared or computed from the type).
        length: u64,
    },
}

/// Elementwise unary functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `e^x`
    Exp,
    /// `ln x`
    Log,
    /// `√x`
    Sqrt,
    /// `1/√x`
    Rsqrt,
    /// `1/x`
    Reciprocal,
    /// `tanh x`
    Tanh,
    /// `1/(1+e^-x)`
    Sigmoid,
    /// `x·sigmoid(x)` (fused)
    Silu,
    /// GELU, exact (erf) form (fused)
    Gelu,
    /// GELU, tanh approximation (fused)
    GeluTanh,
    /// `max(x, 0)`
    Relu,
    /// `cos x`
    Cos,
    /// `sin x`
    Sin,
    /// `erf x`
    Erf,
    /// `|x|`
    Abs,
    /// Logical not (bool)
    Not,
    /// `isnan(x)` (bool result)
    IsNan,
}

/// Elementwise binary functions with NumPy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a · b`
    Mul,
    /// `a / b` (integer division truncates, as ONNX does)
    Div,
    /// `a ^ b`
    Pow,
    /// `max(a, b)`
    Max,
    /// `min(a, b)`
    Min,
    /// `a == b` (bool)
    Equal,
    /// `a < b` (bool)
    Less,
    /// `a <= b` (bool)
    LessOrEqual,
    /// `a > b` (bool)
    Greater,
    /// `a >= b` (bool)
    GreaterOrEqual,
    /// logical and (bool)
    And,
    /// logical or (bool)
    Or,
}

/// Reduction kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReduceKind {
    /// Sum.
    Sum,
    /// Mean.
    Mean,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
    /// Product.
    Prod,
}

/// Collectives between ranks of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectiveKind {
    /// Sum across the group, result everywhere.
    AllReduce,
    /// Concatenate shards along an axis, result everywhere.
    AllGather,
    /// Sum then scatter shards along an axis.
    ReduceScatter,
    /// Send to the next pipeline stage.
    Send,
    /// Receive from the previous pipeline stage.
    Recv,
    /// Identity in the forward pass whose gradient is an all-reduce over the group: where a replicated
    /// activation enters a tensor-parallel region (Megatron-LM's `copy_to_tensor_model_parallel_region`).
    CopyToGroup,
}

/// A canonical operation. Inputs are listed in the doc of each variant, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// A graph input (no inputs).
    Input {
        /// Input name.
        name: String,
    },
    /// A trainable parameter (no inputs).
    Param {
        /// Parameter (initializer) name.
        name: String,
        /// Where its values live.
        data: ParamData,
    },
    /// A non-trainable constant (no inputs).
    Constant(Tensor),
    /// Elementwise unary: `[x]`.
    Unary(UnaryOp),
    /// Elementwise binary with broadcasting: `[a, b]`.
    Binary(BinaryOp),
    /// `cond ? a : b` with broadcasting: `[cond, a, b]`.
    Where,
    /// Element type conversion: `[x]`.
    Cast(DType),
    /// Batched matrix product with broadcasting over leading axes: `[a, b]`.
    MatMul,
    /// Reduction over axes: `[x]`.
    Reduce {
        /// Kind of reduction.
        kind: ReduceKind,
        /// Axes (normalized, non-negative, sorted).
        axes: Vec<usize>,
        /// Keep reduced axes as size 1.
        keep_dims: bool,
    },
    /// Cumulative sum along an axis: `[x]`.
    CumSum {
        /// Axis (normalized).
        axis: usize,
        /// Exclude the current element.
        exclusive: bool,
        /// Sum from the end.
        reverse: bool,
    },
    /// Softmax along an axis: `[x]`.
    Softmax {
        /// Axis (normalized).
        axis: usize,
    },
    /// Log-softmax along an axis: `[x]`.
    LogSoftmax {
        /// Axis (normalized).
        axis: usize,
    },
    /// Reshape to a (symbolic) shape with the same element count: `[x]`.
    Reshape(Shape),
    /// Axis permutation: `[x]`.
    Transpose(Vec<usize>),
    /// Broadcast to a shape: `[x]`.
    Expand(Shape),
    /// Concatenation along an axis: `[x0, x1, ...]`.
    Concat {
        /// Axis (normalized).
        axis: usize,
    },
    /// Strided slice along one axis: `[x]`. Bounds are already clamped to `[0, dim]`.
    Slice {
        /// Axis (normalized).
        axis: usize,
        /// First index.
        start: Dim,
        /// One past the last index (for negative steps, one before).
        end: Dim,
        /// Step (non-zero).
        step: i64,
    },
    /// Gather along an axis with an index tensor: `[data, indices]`.
    Gather {
        /// Axis (normalized).
        axis: usize,
    },
    /// ONNX GatherND: `[data, indices]`.
    GatherNd {
        /// Leading batch dimensions.
        batch_dims: usize,
    },
    /// `start, start+step, ...` below `end`: no inputs, symbolic bounds.
    Range {
        /// First value.
        start: Dim,
        /// Exclusive limit.
        end: Dim,
        /// Step.
        step: i64,
        /// Element type.
        dtype: DType,
    },
    /// Lower/upper triangle mask (ONNX Trilu): `[x]`.
    Trilu {
        /// Keep the upper triangle.
        upper: bool,
        /// Diagonal offset.
        k: i64,
    },
    /// Fused linear layer `y = x·W (+ b)` with `W` stored `[in, out]`: `[x, w]` or `[x, w, b]`.
    Linear {
        /// Whether a bias input is present.
        bias: bool,
    },
    /// Token embedding lookup `table[ids]`: `[table, ids]`.
    Embedding,
    /// RMS normalization over the last axis, `x / √(mean(x²)+eps) · w`: `[x, w]`.
    RmsNorm {
        /// Epsilon.
        eps: f64,
    },
    /// Layer normalization over the last axis: `[x, w, b]`.
    LayerNorm {
        /// Epsilon.
        eps: f64,
    },
    /// Rotary position embedding (rotate-half form) `x·cos + rotate_half(x)·sin`: `[x, cos, sin]`,
    /// `x` is `[b, h, s, d]`, `cos`/`sin` broadcast to it.
    Rotary,
    /// Scaled-dot-product attention with grouped KV heads: `[q, k, v]` or `[q, k, v, mask]`;
    /// q `[b, h, s, d]`, k/v `[b, kv_h, s, d]`, additive mask broadcast to `[b, h, s, s]`.
    /// Outputs `[out [b, h, s, d], lse [b, h, s] f32]`: the log-sum-exp statistics are what fused kernels
    /// save for backward instead of the score matrix.
    Attention {
        /// Query heads.
        heads: usize,
        /// Key/value heads (divides `heads`).
        kv_heads: usize,
        /// Score scale (usually `1/√d`).
        scale: f64,
        /// Causal masking applied by the kernel itself.
        causal: bool,
    },
    /// Attention backward as fused kernels compute it (softmax recomputed from `lse`):
    /// `[q, k, v, out, lse, d_out]` (+ `mask` last if the forward had one) → `[d_q, d_k, d_v]`.
    AttentionBackward {
        /// Query heads.
        heads: usize,
        /// Key/value heads.
        kv_heads: usize,
        /// Score scale.
        scale: f64,
        /// Causal.
        causal: bool,
    },
    /// RMSNorm backward: `[x, w, d_y]` → `[d_x, d_w]`.
    RmsNormBackward {
        /// Epsilon.
        eps: f64,
    },
    /// LayerNorm backward: `[x, w, d_y]` → `[d_x, d_w, d_b]`.
    LayerNormBackward {
        /// Epsilon.
        eps: f64,
    },
    /// Rotary backward: `[d_y, cos, sin]` → `d_x`.
    RotaryBackward,
    /// Embedding backward (scatter-add of rows): `[ids, d_y]` → `d_table [vocab, hidden]`.
    EmbeddingBackward {
        /// Rows of the table.
        vocab: usize,
    },
    /// Cross-entropy backward: `[logits, targets, d_loss]` → `d_logits`.
    CrossEntropyBackward {
        /// Ignored target value.
        ignore_index: i64,
    },
    /// AdamW update (decoupled weight decay, bias-corrected at `step`):
    /// `[param, grad, m, v]` → `[param', m', v']`.
    AdamW {
        /// Learning rate.
        lr: f64,
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Denominator epsilon.
        eps: f64,
        /// Decoupled weight decay.
        weight_decay: f64,
        /// 1-based step number used for bias correction.
        step: u64,
    },
    /// SGD with momentum: `[param, grad, buf]` → `[param', buf']`.
    SgdMomentum {
        /// Learning rate.
        lr: f64,
        /// Momentum.
        momentum: f64,
        /// L2 weight decay added to the gradient.
        weight_decay: f64,
    },
    /// A collective across a process group (tensor-, data- or pipeline-parallel): `[x]` → `[y]`.
    Collective {
        /// Which collective.
        kind: CollectiveKind,
        /// Ranks in the group.
        group_size: u32,
        /// Axis gathered or scattered (all-gather, reduce-scatter).
        axis: Option<usize>,
    },
    /// Cross-entropy of logits against integer targets with an ignore index, mean over counted tokens:
    /// `[logits [.., V], targets [..]]` → scalar f32.
    CrossEntropy {
        /// Targets equal to this are not counted.
        ignore_index: i64,
    },
    /// The routed experts of a mixture-of-experts layer, fused as grouped GEMMs over the routed tokens:
    /// `[x [.., h], scores [.., E], w_gate [E, h, f], w_up [E, h, f], w_down [E, f, h]]` → `y [.., h]`.
    /// Each token goes to the `topk` experts of highest score (ties: lower index first); `y` is the sum
    /// of those experts' SwiGLU outputs `(silu(x·W_gate) ⊙ x·W_up)·W_down`, each weighted by its score
    /// (divided by the sum of the chosen `topk` scores when `norm_topk`). No token is dropped; the
    /// capacity factor sizes the expert GEMMs of the cost (`tokens · topk / E · capacity_factor` rows
    /// per expert), not the values.
    MoeExperts {
        /// Routed experts `E`.
        experts: usize,
        /// Experts per token.
        topk: usize,
        /// Renormalize the chosen scores to sum to 1.
        norm_topk: bool,
        /// Expert capacity factor (≥ 1).
        capacity_factor: f64,
    },
    /// [`Op::MoeExperts`] backward: `[x, scores, w_gate, w_up, w_down, d_y]` →
    /// `[d_x, d_scores, d_w_gate, d_w_up, d_w_down]` (the routing choice is not differentiated; the
    /// scores of the chosen experts are).
    MoeExpertsBackward {
        /// Routed experts.
        experts: usize,
        /// Experts per token.
        topk: usize,
        /// Renormalized scores.
        norm_topk: bool,
        /// Expert capacity factor.
        capacity_factor: f64,
    },
}

impl Op {
    /// A short, stable name for histograms and logs (`MatMul`, `Linear`, `Binary.Add`, ...).
    pub fn kind_name(&self) -> String {
        match self {
            Op::Input { .. } => "Input".into(),
            Op::Param { .. } => "Param".into(),
            Op::Constant(_) => "Constant".into(),
            Op::Unary(u) => format!("Unary.{u:?}"),
            Op::Binary(b) => format!("Binary.{b:?}"),
            Op::Where => "Where".into(),
            Op::Cast(_) => "Cast".into(),
            Op::MatMul => "MatMul".into(),
            Op::Reduce { kind, .. } => format!("Reduce.{kind:?}"),
            Op::CumSum { .. } => "CumSum".into(),
            Op::Softmax { .. } => "Softmax".into(),
            Op::LogSoftmax { .. } => "LogSoftmax".into(),
            Op::Reshape(_) => "Reshape".into(),
            Op::Transpose(_) => "Transpose".into(),
            Op::Expand(_) => "Expand".into(),
            Op::Concat { .. } => "Concat".into(),
            Op::Slice { .. } => "Slice".into(),
            Op::Gather { .. } => "Gather".into(),
            Op::GatherNd { .. } => "GatherNd".into(),
            Op::Range { .. } => "Range".into(),
            Op::Trilu { .. } => "Trilu".into(),
            Op::Linear { .. } => "Linear".into(),
            Op::Embedding => "Embedding".into(),
            Op::RmsNorm { .. } => "RmsNorm".into(),
            Op::LayerNorm { .. } => "LayerNorm".into(),
            Op::Rotary => "Rotary".into(),
            Op::Attention { .. } => "Attention".into(),
            Op::CrossEntropy { .. } => "CrossEntropy".into(),
            Op::AttentionBackward { .. } => "AttentionBackward".into(),
            Op::RmsNormBackward { .. } => "RmsNormBackward".into(),
            Op::LayerNormBackward { .. } => "LayerNormBackward".into(),
            Op::RotaryBackward => "RotaryBackward".into(),
            Op::EmbeddingBackward { .. } => "EmbeddingBackward".into(),
            Op::CrossEntropyBackward { .. } => "CrossEntropyBackward".into(),
            Op::AdamW { .. } => "AdamW".into(),
            Op::SgdMomentum { .. } => "SgdMomentum".into(),
            Op::Collective { kind, .. } => format!("Collective.{kind:?}"),
            Op::MoeExperts { .. } => "MoeExperts".into(),
            Op::MoeExpertsBackward { .. } => "MoeExpertsBackward".into(),
        }
    }

    /// True for ops with no inputs whose value is known without running the graph.
    pub fn is_source(&self) -> bool {
        matches!(
            self,
            Op::Input { .. } | Op::Param { .. } | Op::Constant(_) | Op::Range { .. }
        )
    }
}
