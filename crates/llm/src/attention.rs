//! Gemma 3's attention helpers on candle tensors: rotary tables and the causal, optionally
//! sliding, mask over a preallocated cache (`llama` does both on plain buffers itself).

use candle_core::{DType, Device, Result, Tensor};

/// Rotary position tables for `positions` positions.
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(head_dim: usize, base: f32, positions: usize, device: &Device) -> Result<Rope> {
        let inverse: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1.0 / base.powf(i as f32 / head_dim as f32))
            .collect();
        let inverse = Tensor::new(inverse.as_slice(), device)?.unsqueeze(0)?;
        let angles = Tensor::arange(0, positions as u32, device)?
            .to_dtype(DType::F32)?
            .unsqueeze(1)?
            .matmul(&inverse)?;
        Ok(Rope {
            cos: angles.cos()?,
            sin: angles.sin()?,
        })
    }

    /// Rotates [batch, heads, seq, head_dim] at `position` (the half-split "neox" layout).
    pub fn apply(&self, x: &Tensor, position: usize) -> Result<Tensor> {
        let seq = x.dim(2)?;
        candle_nn::rotary_emb::rope(
            &x.contiguous()?,
            &self.cos.narrow(0, position, seq)?,
            &self.sin.narrow(0, position, seq)?,
        )
    }
}

/// What the `seq` new queries at `position` see of the cache: [seq, position + seq], 0 where
/// attention is allowed and -inf elsewhere (later positions, and for a sliding-window layer
/// positions `window` or more behind the query).
pub fn attention_mask(
    window: Option<usize>,
    position: usize,
    seq: usize,
    device: &Device,
) -> Result<Tensor> {
    let total = position + seq;
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| {
            let query = position + i;
            (0..total).map(move |key| {
                let visible = key <= query && window.is_none_or(|w| query - key < w);
                if visible { 0.0 } else { f32::NEG_INFINITY }
            })
        })
        .collect();
    Tensor::from_vec(mask, (seq, total), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_layers_see_only_the_window_and_nobody_sees_the_future() {
        let device = Device::Cpu;
        let model_mask = |window, position, seq| -> Vec<Vec<bool>> {
            attention_mask(window, position, seq, &device)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
                .into_iter()
                .map(|row| row.into_iter().map(|v| v == 0.0).collect())
                .collect()
        };
        // Three new tokens after two cached ones, a window of 2.
        assert_eq!(
            model_mask(Some(2), 2, 3),
            [
                [false, true, true, false, false],
                [false, false, true, true, false],
                [false, false, false, true, true]
            ]
        );
        assert_eq!(
            model_mask(None, 0, 2),
            [[true, false], [true, true]],
            "a global layer sees every earlier position"
        );
    }
}
