//! A minimal `.npy` reader (little-endian f32, f64, i64, i32, bool; C order), for reference outputs.

use crate::error::{IrError, Result};
use crate::tensor::Tensor;
use std::path::Path;

/// Reads a `.npy` file into a tensor.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|source| IrError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_npy(&bytes).map_err(|reason| IrError::Parse {
        path: path.to_path_buf(),
        reason,
    })
}

/// Parses the bytes of a `.npy` file.
pub fn parse_npy(bytes: &[u8]) -> std::result::Result<Tensor, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + hlen)
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not UTF-8")?;
    let field = |key: &str| -> std::result::Result<&str, String> {
        let i = header
            .find(&format!("'{key}'"))
            .ok_or_else(|| format!("header lacks '{key}'"))?;
        let rest = &header[i + key.len() + 2..];
        Ok(rest.trim_start().trim_start_matches(':').trim_start())
    };
    let descr = field("descr")?;
    let descr = descr
        .trim_start_matches('\'')
        .split('\'')
        .next()
        .unwrap_or("");
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let shape_s = field("shape")?;
    let shape_s = shape_s
        .trim_start_matches('(')
        .split(')')
        .next()
        .unwrap_or("");
    let shape: Vec<usize> = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape entry `{s}`"))
        })
        .collect::<std::result::Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let data = &bytes[start + hlen..];
    let need = |w: usize| -> std::result::Result<(), String> {
        if data.len() < n * w {
            Err(format!(
                "data holds {} bytes, shape {shape:?} needs {}",
                data.len(),
                n * w
            ))
        } else {
            Ok(())
        }
    };
    Ok(match descr {
        "<f4" => {
            need(4)?;
            Tensor::f32(
                shape,
                data.chunks_exact(4)
                    .take(n)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        }
        "<f8" => {
            need(8)?;
            Tensor::f64(
                shape,
                data.chunks_exact(8)
                    .take(n)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            )
        }
        "<i8" => {
            need(8)?;
            Tensor::i64(
                shape,
                data.chunks_exact(8)
                    .take(n)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            )
        }
        "<i4" => {
            need(4)?;
            Tensor::i64(
                shape,
                data.chunks_exact(4)
                    .take(n)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect(),
            )
        }
        "|b1" => {
            need(1)?;
            Tensor::bool(shape, data[..n].iter().map(|b| *b != 0).collect())
        }
        d => return Err(format!("unsupported dtype `{d}`")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_small_array_and_rejects_garbage() {
        let header = "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 1), }";
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(&5i64.to_le_bytes());
        b.extend_from_slice(&(-3i64).to_le_bytes());
        let t = parse_npy(&b).unwrap();
        assert_eq!(t.shape, vec![2, 1]);
        assert_eq!(t.as_i64().unwrap(), vec![5, -3]);
        assert!(parse_npy(b"hello world").is_err());
        assert!(parse_npy(&b[..b.len() - 3]).is_err());
    }
}
