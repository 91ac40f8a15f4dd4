//! One forward pass over a batch of tokenized texts, then what
//! sentence-transformers does after the transformer: mean pooling over the
//! attention mask and L2 normalisation.

use candle_core::{D, DType, Device, Tensor};
use candle_transformers::models::bert::BertModel;
use tokenizers::Encoding;

/// Pads `batch` to its longest text, runs the model and returns one unit
/// vector per encoding, in order. Padding is masked out of both the
/// attention and the mean, so a text's vector does not depend on its
/// batch-mates (up to float rounding).
pub(super) fn embed_batch(
    model: &BertModel,
    batch: &[&Encoding],
) -> candle_core::Result<Vec<Vec<f32>>> {
    let longest = batch.iter().map(|e| e.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(batch.len() * longest);
    let mut mask = Vec::with_capacity(batch.len() * longest);
    for encoding in batch {
        let pad = longest - encoding.len();
        ids.extend(
            encoding
                .get_ids()
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0, pad)),
        );
        mask.extend(std::iter::repeat_n(1u32, encoding.len()).chain(std::iter::repeat_n(0, pad)));
    }
    let shape = (batch.len(), longest);
    let ids = Tensor::from_vec(ids, shape, &Device::Cpu)?;
    let mask = Tensor::from_vec(mask, shape, &Device::Cpu)?;
    let types = ids.zeros_like()?;
    let hidden = model.forward(&ids, &types, Some(&mask))?;
    let pooled = mean_pool(&hidden, &mask)?;
    normalize(&pooled)?.to_vec2::<f32>()
}

/// Sum of the token vectors where the mask is 1, over the mask's count
/// (clamped at 1e-9 as sentence-transformers does).
fn mean_pool(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?;
    summed.broadcast_div(&counts)
}

/// x / max(‖x‖, 1e-12), row by row (torch.nn.functional.normalize).
fn normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norms = x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
    x.broadcast_div(&norms)
}
