//! External weight data: validation of `location` at import (never reading bytes), and bounds-checked
//! reading, confined to the model's directory, when execution needs the values.

use crate::dtype::DType;
use crate::error::{IrError, Result};
use crate::op::ParamData;
use crate::tensor::Tensor;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

/// Checks that an external-data location is a relative path that stays inside the model directory:
/// no absolute paths, drive prefixes, or `..` components.
pub fn validate_location(location: &str) -> std::result::Result<(), String> {
    if location.is_empty() {
        return Err("empty location".into());
    }
    if location.contains('\0') {
        return Err(format!("location `{location}` contains a NUL byte"));
    }
    let p = Path::new(location);
    let drive = location.len() >= 2
        && location.as_bytes()[1] == b':'
        && location.as_bytes()[0].is_ascii_alphabetic();
    if p.is_absolute() || location.starts_with('/') || location.starts_with('\\') || drive {
        return Err(format!(
            "location `{location}` is an absolute path; it must be relative to the model's directory"
        ));
    }
    if location.split(['/', '\\']).any(|c| c == "..")
        || p.components().any(|c| matches!(c, Component::ParentDir))
    {
        return Err(format!(
            "location `{location}` escapes the model's directory (`..`)"
        ));
    }
    Ok(())
}

/// Reads the values of a parameter whose data is external, from `graph_source_dir` (the directory of the
/// model file, [`crate::Graph::source_dir`]). Inline data is returned as is. The file must stay inside the
/// directory (after resolving links), and `offset`/`length` must lie inside the file and match the
/// tensor's size.
pub fn read_external(
    graph_source_dir: &Path,
    name: &str,
    data: &ParamData,
    dtype: DType,
    shape: &[usize],
) -> Result<Tensor> {
    let (location, offset, length) = match data {
        ParamData::Inline(t) => return Ok(t.clone()),
        ParamData::External {
            location,
            offset,
            length,
        } => (location, *offset, *length),
    };
    let err = |path: &Path, reason: String| IrError::ExternalData {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        reason,
    };
    validate_location(location).map_err(|r| err(graph_source_dir, r))?;
    let numel: u64 = shape.iter().map(|d| *d as u64).product();
    let want = numel * dtype.size_bytes();
    if length != want {
        return Err(err(
            graph_source_dir,
            format!("declared length {length} bytes, but {dtype}{shape:?} needs {want}"),
        ));
    }
    let path = graph_source_dir.join(location);
    let mut file = std::fs::File::open(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            err(
                &path,
                format!("weight file `{}` is missing", path.display()),
            )
        } else {
            err(
                &path,
                format!("cannot open weight file `{}`: {e}", path.display()),
            )
        }
    })?;
    let dir = graph_source_dir
        .canonicalize()
        .map_err(|e| err(graph_source_dir, format!("model directory: {e}")))?;
    let real = path.canonicalize().map_err(|e| err(&path, e.to_string()))?;
    if !real.starts_with(&dir) {
        return Err(err(
            &path,
            format!("`{location}` resolves outside the model's directory"),
        ));
    }
    let size = file
        .metadata()
        .map_err(|e| err(&path, e.to_string()))?
        .len();
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(err(
            &path,
            format!(
                "bytes {offset}..{} are outside the file ({size} bytes)",
                offset.saturating_add(length)
            ),
        ));
    }
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| err(&path, e.to_string()))?;
    let mut buf = vec![0u8; length as usize];
    file.read_exact(&mut buf)
        .map_err(|e| err(&path, e.to_string()))?;
    super::proto::decode_bytes(&buf, dtype, shape).map_err(|r| err(&path, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_must_stay_inside() {
        assert!(validate_location("model.onnx.data").is_ok());
        assert!(validate_location("weights/part1.bin").is_ok());
        assert!(validate_location("../x").is_err());
        assert!(validate_location("a/../../x").is_err());
        assert!(validate_location("/etc/passwd").is_err());
        assert!(validate_location("C:\\x").is_err());
        assert!(validate_location("").is_err());
    }

    #[test]
    fn reads_bounds_checked() {
        let dir = std::env::temp_dir().join(format!("moai-ext-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bytes: Vec<u8> = [1.0f32, 2.0, 3.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        std::fs::write(dir.join("w.bin"), &bytes).unwrap();
        let ok = ParamData::External {
            location: "w.bin".into(),
            offset: 4,
            length: 8,
        };
        let t = read_external(&dir, "w", &ok, DType::F32, &[2]).unwrap();
        assert_eq!(t.data, crate::tensor::TensorData::F32(vec![2.0, 3.0]));
        let past = ParamData::External {
            location: "w.bin".into(),
            offset: 8,
            length: 8,
        };
        assert!(
            read_external(&dir, "w", &past, DType::F32, &[2])
                .unwrap_err()
                .to_string()
                .contains("outside the file")
        );
        let missing = ParamData::External {
            location: "nope.bin".into(),
            offset: 0,
            length: 8,
        };
        assert!(
            read_external(&dir, "w", &missing, DType::F32, &[2])
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
