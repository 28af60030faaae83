//! The op-builder table: one builder per ONNX op type, grouped by family (tract's `onnx/src/ops/mod.rs`
//! idea). Each builder reads its node's inputs from the importer context and returns one value per output.

mod elementwise;
mod nn;
mod shape;

use super::ctx::{Ctx, Outs};
use onnx_protobuf::NodeProto;

/// A builder: converts one ONNX node.
pub(crate) type Builder = fn(&mut Ctx, &NodeProto) -> Result<Outs, String>;

/// Every supported op type (default ONNX domain) with its builder.
const TABLE: &[(&str, Builder)] = &[
    // elementwise
    ("Add", elementwise::binary),
    ("Sub", elementwise::binary),
    ("Mul", elementwise::binary),
    ("Div", elementwise::binary),
    ("Pow", elementwise::binary),
    ("Max", elementwise::binary),
    ("Min", elementwise::binary),
    ("Equal", elementwise::binary),
    ("Less", elementwise::binary),
    ("LessOrEqual", elementwise::binary),
    ("Greater", elementwise::binary),
    ("GreaterOrEqual", elementwise::binary),
    ("And", elementwise::binary),
    ("Or", elementwise::binary),
    ("Neg", elementwise::unary),
    ("Exp", elementwise::unary),
    ("Log", elementwise::unary),
    ("Sqrt", elementwise::unary),
    ("Reciprocal", elementwise::unary),
    ("Tanh", elementwise::unary),
    ("Sigmoid", elementwise::unary),
    ("Relu", elementwise::unary),
    ("Cos", elementwise::unary),
    ("Sin", elementwise::unary),
    ("Erf", elementwise::unary),
    ("Abs", elementwise::unary),
    ("Not", elementwise::unary),
    ("IsNaN", elementwise::unary),
    ("Gelu", elementwise::gelu),
    ("Where", elementwise::where_),
    ("Cast", elementwise::cast),
    ("CastLike", elementwise::cast),
    ("Identity", elementwise::identity),
    ("Dropout", elementwise::identity),
    // shapes and data movement
    ("Constant", shape::constant),
    ("ConstantOfShape", shape::constant_of_shape),
    ("Shape", shape::shape),
    ("Size", shape::size),
    ("Gather", shape::gather),
    ("Concat", shape::concat),
    ("Unsqueeze", shape::unsqueeze),
    ("Squeeze", shape::squeeze),
    ("Reshape", shape::reshape),
    ("Flatten", shape::flatten),
    ("Expand", shape::expand),
    ("Slice", shape::slice),
    ("Range", shape::range),
    ("Transpose", shape::transpose),
    ("Split", shape::split),
    ("SplitToSequence", shape::split_to_sequence),
    ("SequenceAt", shape::sequence_at),
    // linear algebra, reductions, normalization
    ("MatMul", nn::matmul),
    ("Gemm", nn::gemm),
    ("Softmax", nn::softmax),
    ("LogSoftmax", nn::softmax),
    ("ReduceMean", nn::reduce),
    ("ReduceSum", nn::reduce),
    ("ReduceMax", nn::reduce),
    ("ReduceMin", nn::reduce),
    ("ReduceProd", nn::reduce),
    ("CumSum", nn::cumsum),
    ("Trilu", nn::trilu),
    ("GatherND", nn::gather_nd),
    ("LayerNormalization", nn::layer_norm),
];

/// The builder for an op type of the default domain.
pub(crate) fn builder(op_type: &str) -> Option<Builder> {
    TABLE.iter().find(|(n, _)| *n == op_type).map(|(_, b)| *b)
}

/// The ONNX op types the importer supports (default domain), sorted.
pub fn supported_ops() -> Vec<&'static str> {
    let mut v: Vec<&str> = TABLE.iter().map(|(n, _)| *n).collect();
    v.sort();
    v
}
