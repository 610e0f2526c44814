//! Reading `.safetensors` files tensor by tensor, each straight into the buffer the tensor
//! will own: no whole-file copy and no second copy per tensor, so loading costs the weights'
//! size in memory and little more (candle's `safetensors::load` holds the file and the
//! tensors at once; its mmap loader needs `unsafe`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Deserialize;

use crate::error::{LlmError, Result, io};

#[derive(Debug, Deserialize)]
struct TensorInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Headers larger than this are not safetensors files anyone should load.
const MAX_HEADER: u64 = 100 * 1024 * 1024;

pub fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let format = |message: String| LlmError::Format {
        path: path.to_path_buf(),
        message,
    };
    let mut file = File::open(path).map_err(io(path))?;
    let file_len = file.metadata().map_err(io(path))?.len();
    let mut size = [0u8; 8];
    file.read_exact(&mut size).map_err(io(path))?;
    let header_len = u64::from_le_bytes(size);
    if header_len > MAX_HEADER || 8 + header_len > file_len {
        return Err(format(format!(
            "header of {header_len} bytes does not fit a {file_len}-byte file"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(io(path))?;
    let mut entries: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| format(format!("header: {e}")))?;
    entries.remove("__metadata__");
    let data_start = 8 + header_len;
    let mut tensors = HashMap::with_capacity(entries.len());
    let mut infos: Vec<(String, TensorInfo)> = entries
        .into_iter()
        .map(|(name, value)| {
            let info: TensorInfo =
                serde_json::from_value(value).map_err(|e| format(format!("{name}: {e}")))?;
            Ok((name, info))
        })
        .collect::<Result<_>>()?;
    // In file order, so reads are sequential.
    infos.sort_by_key(|(_, info)| info.data_offsets[0]);
    for (name, info) in infos {
        let [begin, end] = info.data_offsets;
        let elements: usize = info.shape.iter().product();
        let width = match info.dtype.as_str() {
            "F32" => 4,
            "F16" | "BF16" => 2,
            other => {
                return Err(format(format!(
                    "{name}: dtype {other} is not supported (F32, F16, BF16 are)"
                )));
            }
        };
        if end < begin || end - begin != (elements * width) as u64 || data_start + end > file_len {
            return Err(format(format!(
                "{name}: data offsets {begin}..{end} do not match shape {:?}",
                info.shape
            )));
        }
        file.seek(SeekFrom::Start(data_start + begin))
            .map_err(io(path))?;
        let tensor = match info.dtype.as_str() {
            "F32" => {
                let mut values = vec![0f32; elements];
                file.read_exact(bytemuck::cast_slice_mut(&mut values))
                    .map_err(io(path))?;
                Tensor::from_vec(values, info.shape, device)?
            }
            half_type => {
                let mut values = vec![0u16; elements];
                file.read_exact(bytemuck::cast_slice_mut(&mut values))
                    .map_err(io(path))?;
                let floats: Vec<f32> = if half_type == "F16" {
                    values
                        .iter()
                        .map(|v| half::f16::from_bits(*v).to_f32())
                        .collect()
                } else {
                    values
                        .iter()
                        .map(|v| half::bf16::from_bits(*v).to_f32())
                        .collect()
                };
                Tensor::from_vec(floats, info.shape, device)?
            }
        };
        tensors.insert(name, tensor);
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_candle_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("w.safetensors");
        let a = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let b = Tensor::new(&[1.5f32, -2.0], &Device::Cpu)
            .unwrap()
            .to_dtype(candle_core::DType::F16)
            .unwrap();
        let map = HashMap::from([("a".to_owned(), a.clone()), ("b".to_owned(), b)]);
        candle_core::safetensors::save(&map, &path).unwrap();
        let read = read_safetensors(&path, &Device::Cpu).unwrap();
        assert_eq!(
            read["a"].to_vec2::<f32>().unwrap(),
            a.to_vec2::<f32>().unwrap()
        );
        assert_eq!(read["b"].to_vec1::<f32>().unwrap(), vec![1.5, -2.0]);
    }

    #[test]
    fn truncated_and_garbage_files_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("bad.safetensors");
        std::fs::write(&path, [255u8; 16]).unwrap();
        assert!(read_safetensors(&path, &Device::Cpu).is_err());
        let good = tmp.path().join("good.safetensors");
        let map = HashMap::from([(
            "a".to_owned(),
            Tensor::zeros((64, 64), candle_core::DType::F32, &Device::Cpu).unwrap(),
        )]);
        candle_core::safetensors::save(&map, &good).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let message = read_safetensors(&path, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(message.contains("bad.safetensors"), "{message}");
    }
}
