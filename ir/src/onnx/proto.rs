//! Decoding of ONNX protobuf pieces: tensors (inline data in every storage field ONNX uses), external
//! data references, attributes and node metadata.

use crate::dtype::DType;
use crate::tensor::{Tensor, TensorData};
use onnx_protobuf::{AttributeProto, NodeProto, TensorProto};

/// Data location code for external data (`TensorProto.DataLocation.EXTERNAL`).
const EXTERNAL: i32 = 1;

/// The element type of an ONNX tensor.
pub(crate) fn tensor_dtype(t: &TensorProto) -> Result<DType, String> {
    DType::from_onnx(t.data_type).ok_or_else(|| {
        format!(
            "tensor `{}` has unsupported element type code {}",
            t.name, t.data_type
        )
    })
}

/// The dims of a tensor as `usize`, rejecting negative ones.
pub(crate) fn tensor_shape(t: &TensorProto) -> Result<Vec<usize>, String> {
    t.dims
        .iter()
        .map(|d| {
            usize::try_from(*d).map_err(|_| format!("tensor `{}` has a negative dim {d}", t.name))
        })
        .collect()
}

/// An external data reference: `(location, offset, length)`; `length` is `None` when not declared.
/// An external tensor's location, offset and optional length.
type ExternalRef = (String, u64, Option<u64>);

pub(crate) fn external_ref(t: &TensorProto) -> Option<Result<ExternalRef, String>> {
    if t.data_location.value() != EXTERNAL {
        return None;
    }
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for kv in &t.external_data {
        match kv.key.as_str() {
            "location" => location = Some(kv.value.clone()),
            "offset" => match kv.value.parse() {
                Ok(v) => offset = v,
                Err(_) => return Some(Err(format!("offset `{}` is not a number", kv.value))),
            },
            "length" => match kv.value.parse() {
                Ok(v) => length = Some(v),
                Err(_) => return Some(Err(format!("length `{}` is not a number", kv.value))),
            },
            _ => {}
        }
    }
    Some(match location {
        Some(l) => Ok((l, offset, length)),
        None => Err("external data without a `location`".to_string()),
    })
}

/// Decodes an inline tensor into a [`Tensor`].
pub(crate) fn decode_tensor(t: &TensorProto) -> Result<Tensor, String> {
    let dtype = tensor_dtype(t)?;
    let shape = tensor_shape(t)?;
    let n: usize = shape.iter().product();
    let data = if !t.raw_data.is_empty() || n == 0 {
        decode_raw(&t.raw_data, dtype, n).map_err(|e| format!("tensor `{}`: {e}", t.name))?
    } else {
        decode_typed(t, dtype, n).map_err(|e| format!("tensor `{}`: {e}", t.name))?
    };
    Ok(Tensor { dtype, shape, data })
}

fn decode_raw(raw: &[u8], dtype: DType, n: usize) -> Result<TensorData, String> {
    let size = dtype.size_bytes() as usize;
    if raw.len() != n * size {
        return Err(format!(
            "raw data has {} bytes, expected {} ({} × {dtype})",
            raw.len(),
            n * size,
            n
        ));
    }
    let le = |i: usize| -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(&raw[i * size..(i + 1) * size]);
        b
    };
    Ok(match dtype {
        DType::F32 => TensorData::F32(
            (0..n)
                .map(|i| f32::from_le_bytes(le(i)[..4].try_into().unwrap_or([0; 4])))
                .collect(),
        ),
        DType::F64 => TensorData::F64((0..n).map(|i| f64::from_le_bytes(le(i))).collect()),
        DType::F16 => TensorData::F32(
            (0..n)
                .map(|i| {
                    half::f16::from_bits(u16::from_le_bytes([raw[2 * i], raw[2 * i + 1]])).to_f32()
                })
                .collect(),
        ),
        DType::BF16 => TensorData::F32(
            (0..n)
                .map(|i| {
                    half::bf16::from_bits(u16::from_le_bytes([raw[2 * i], raw[2 * i + 1]])).to_f32()
                })
                .collect(),
        ),
        DType::I64 | DType::U64 => {
            TensorData::I64((0..n).map(|i| i64::from_le_bytes(le(i))).collect())
        }
        DType::I32 => TensorData::I64(
            (0..n)
                .map(|i| i32::from_le_bytes(le(i)[..4].try_into().unwrap_or([0; 4])) as i64)
                .collect(),
        ),
        DType::U32 => TensorData::I64(
            (0..n)
                .map(|i| u32::from_le_bytes(le(i)[..4].try_into().unwrap_or([0; 4])) as i64)
                .collect(),
        ),
        DType::I16 => TensorData::I64(
            (0..n)
                .map(|i| i16::from_le_bytes([raw[2 * i], raw[2 * i + 1]]) as i64)
                .collect(),
        ),
        DType::U16 => TensorData::I64(
            (0..n)
                .map(|i| u16::from_le_bytes([raw[2 * i], raw[2 * i + 1]]) as i64)
                .collect(),
        ),
        DType::I8 => TensorData::I64(raw.iter().map(|b| *b as i8 as i64).collect()),
        DType::U8 => TensorData::I64(raw.iter().map(|b| *b as i64).collect()),
        DType::Bool => TensorData::Bool(raw.iter().map(|b| *b != 0).collect()),
        DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ => {
            return Err(format!(
                "inline {dtype} data is not decoded (only external f8 weights are supported)"
            ));
        }
    })
}

fn decode_typed(t: &TensorProto, dtype: DType, n: usize) -> Result<TensorData, String> {
    let check = |len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(format!("has {len} values, expected {n}"))
        }
    };
    Ok(match dtype {
        DType::F32 => {
            check(t.float_data.len())?;
            TensorData::F32(t.float_data.clone())
        }
        DType::F64 => {
            check(t.double_data.len())?;
            TensorData::F64(t.double_data.clone())
        }
        DType::F16 | DType::BF16 => {
            check(t.int32_data.len())?;
            TensorData::F32(
                t.int32_data
                    .iter()
                    .map(|b| {
                        let bits = *b as u16;
                        if dtype == DType::F16 {
                            half::f16::from_bits(bits).to_f32()
                        } else {
                            half::bf16::from_bits(bits).to_f32()
                        }
                    })
                    .collect(),
            )
        }
        DType::I64 => {
            check(t.int64_data.len())?;
            TensorData::I64(t.int64_data.clone())
        }
        DType::U64 | DType::U32 => {
            check(t.uint64_data.len())?;
            TensorData::I64(t.uint64_data.iter().map(|v| *v as i64).collect())
        }
        DType::I32 | DType::I16 | DType::I8 | DType::U16 | DType::U8 => {
            check(t.int32_data.len())?;
            TensorData::I64(t.int32_data.iter().map(|v| *v as i64).collect())
        }
        DType::Bool => {
            check(t.int32_data.len())?;
            TensorData::Bool(t.int32_data.iter().map(|v| *v != 0).collect())
        }
        _ => return Err(format!("inline {dtype} data is not decoded")),
    })
}

/// Decodes little-endian bytes of an external file into a tensor (used by `read_external`).
pub(crate) fn decode_bytes(raw: &[u8], dtype: DType, shape: &[usize]) -> Result<Tensor, String> {
    let n = shape.iter().product();
    Ok(Tensor {
        dtype,
        shape: shape.to_vec(),
        data: decode_raw(raw, dtype, n)?,
    })
}

/// Looks up an attribute.
pub(crate) fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// An integer attribute.
pub(crate) fn attr_i(node: &NodeProto, name: &str) -> Option<i64> {
    attr(node, name).map(|a| a.i)
}

/// A float attribute.
pub(crate) fn attr_f(node: &NodeProto, name: &str) -> Option<f32> {
    attr(node, name).map(|a| a.f)
}

/// An integer-list attribute.
pub(crate) fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

/// A string attribute.
pub(crate) fn attr_s(node: &NodeProto, name: &str) -> Option<String> {
    attr(node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

/// Node metadata value.
pub(crate) fn metadata<'a>(node: &'a NodeProto, key: &str) -> Option<&'a str> {
    node.metadata_props
        .iter()
        .find(|p| p.key == key)
        .map(|p| p.value.as_str())
}

/// Parses the exporter's Python-list name-scope string (`['', 'model', 'model.layers.0', 'pow_1']`)
/// and returns the innermost module scope (the last element is the op's own name and is dropped).
pub(crate) fn innermost_scope(list: &str) -> String {
    let items = parse_py_list(list);
    if items.len() < 2 {
        return String::new();
    }
    items[..items.len() - 1]
        .iter()
        .rev()
        .find(|s| !s.is_empty() && !s.starts_with('_'))
        .cloned()
        .unwrap_or_default()
}

/// Parses a Python list of string literals.
fn parse_py_list(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' || c == '"' {
            let mut item = String::new();
            while let Some(d) = chars.next() {
                if d == '\\' {
                    if let Some(e) = chars.next() {
                        item.push(e);
                    }
                } else if d == c {
                    break;
                } else {
                    item.push(d);
                }
            }
            out.push(item);
        }
    }
    out
}

/// The decoder-layer index named in a module path (`model.layers.12.mlp` → 12, `transformer.h.3` → 3).
pub fn layer_of_scope(scope: &str) -> Option<u32> {
    let parts: Vec<&str> = scope.split('.').collect();
    parts.windows(2).find_map(|w| {
        matches!(
            w[0],
            "layers" | "h" | "layer" | "blocks" | "block" | "decoder_layers"
        )
        .then(|| w[1].parse().ok())
        .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_layers() {
        let s = "['', 'model', 'model.layers.12', 'model.layers.12.self_attn', 'linear']";
        assert_eq!(innermost_scope(s), "model.layers.12.self_attn");
        assert_eq!(
            innermost_scope("['_empty_nn_module_stack_from_metadata_hook', 'sym_size_int_10']"),
            ""
        );
        assert_eq!(innermost_scope("['', 'lm_head', 'linear']"), "lm_head");
        assert_eq!(layer_of_scope("model.layers.12.self_attn"), Some(12));
        assert_eq!(layer_of_scope("transformer.h.3.mlp.c_fc"), Some(3));
        assert_eq!(layer_of_scope("model.norm"), None);
    }

    #[test]
    fn raw_bf16_and_length_check() {
        let one = half::bf16::from_f32(1.5).to_bits().to_le_bytes();
        let t = decode_bytes(&one, DType::BF16, &[1]).unwrap();
        assert_eq!(t.data, TensorData::F32(vec![1.5]));
        assert!(decode_bytes(&one, DType::F32, &[1]).is_err());
    }
}
