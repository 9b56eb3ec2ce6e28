//! Perplexity of a long text read through a memory: the text goes in chunk by chunk, as a
//! conversation's prompt would, and every position's next-token loss is kept, so one pass gives the
//! perplexity of any range of positions (issue 4: tokens 4k–8k and 12k–16k).

use std::ops::Range;

use tch::{Device, Kind, Tensor};

use crate::model::{LayerCache, Llama, LogitsAt, ModelError};

/// Next-token losses (nats) of `tokens[1..]`, read in forward passes of `chunk` tokens.
pub fn token_losses<C: LayerCache>(
    model: &Llama,
    caches: &mut [C],
    tokens: &[u32],
    chunk: usize,
) -> Result<Vec<f64>, ModelError> {
    let mut losses = Vec::with_capacity(tokens.len().saturating_sub(1));
    for (index, part) in tokens.chunks(chunk.max(1)).enumerate() {
        let ids: Vec<i64> = part.iter().map(|&t| i64::from(t)).collect();
        let logits = model.forward(
            &Tensor::from_slice(&ids).unsqueeze(0),
            caches,
            LogitsAt::All,
        )?; // [1, T, V]
        let start = index * chunk;
        let targets: Vec<i64> = tokens
            .iter()
            .skip(start + 1)
            .take(part.len())
            .map(|&t| i64::from(t))
            .collect();
        let scored = targets.len() as i64; // the text's last token has no target
        let log_probs = logits
            .select(0, 0)
            .narrow(0, 0, scored)
            .log_softmax(-1, Kind::Float);
        let picked = log_probs
            .gather(
                -1,
                &Tensor::from_slice(&targets)
                    .to_device(log_probs.device())
                    .unsqueeze(-1),
                false,
            )
            .view([-1]);
        losses.extend(
            Vec::<f64>::try_from(-picked.to_kind(Kind::Double).to_device(Device::Cpu))
                .map_err(|e| ModelError::BadInput(format!("reading losses back: {e}")))?,
        );
    }
    Ok(losses)
}

/// exp(mean loss) over the predictions of the tokens at `positions` (`losses[i]` predicts token i+1).
pub fn perplexity(losses: &[f64], positions: Range<usize>) -> Option<f64> {
    let range = positions.start.saturating_sub(1)..positions.end.saturating_sub(1);
    let slice = losses.get(range)?;
    (!slice.is_empty()).then(|| (slice.iter().sum::<f64>() / slice.len() as f64).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perplexity_averages_the_losses_of_the_range() {
        let losses = [0.0, 1.0, 3.0, 100.0];
        assert_eq!(perplexity(&losses, 2..4), Some(2f64.exp()));
        assert_eq!(perplexity(&losses, 1..2), Some(1.0));
        assert_eq!(perplexity(&losses, 3..9), None);
    }
}
