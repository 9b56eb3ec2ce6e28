//! Named checkpoint tensors, looked up by the Hugging Face names (`model.layers.0.self_attn.q_proj.weight`):
//! every loader (safetensors folder, GGUF) produces this map, so building the model is a lookup.
//! A weight matrix may be held as int4 groups (GGUF Q4_1), see [`Matrix`].

use std::collections::HashMap;

use tch::Tensor;

use super::linear::Matrix;
use super::q4::Int4Groups;
use super::ModelError;

#[derive(Debug, Default)]
pub struct Weights {
    tensors: HashMap<String, Matrix>,
}

impl Weights {
    pub fn new(tensors: impl IntoIterator<Item = (String, Tensor)>) -> Self {
        Self {
            tensors: tensors
                .into_iter()
                .map(|(name, t)| (name, Matrix::Dense(t)))
                .collect(),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        self.tensors.insert(name.into(), Matrix::Dense(tensor));
    }

    /// Adds a weight matrix held as int4 groups.
    pub fn insert_int4(&mut self, name: impl Into<String>, groups: Int4Groups) {
        self.tensors.insert(name.into(), Matrix::Int4(groups));
    }

    /// Removes and returns `name` as a dense tensor (int4 groups dequantised to f32), checking its
    /// shape.
    pub fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
        Ok(match self.take_matrix(name, shape)? {
            Matrix::Dense(t) => t,
            int4 => int4.dense(),
        })
    }

    /// Removes and returns `name` as stored, checking its shape.
    pub fn take_matrix(&mut self, name: &str, shape: &[i64]) -> Result<Matrix, ModelError> {
        let matrix = self
            .tensors
            .remove(name)
            .ok_or_else(|| ModelError::MissingWeight(name.to_string()))?;
        let actual = matrix.shape();
        if actual != shape {
            return Err(ModelError::WeightShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                actual,
            });
        }
        Ok(matrix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn lookups_check_presence_and_shape() {
        let mut weights = Weights::new([(
            "a".to_string(),
            Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)),
        )]);
        assert!(matches!(
            weights.take("a", &[3, 2]),
            Err(ModelError::WeightShape { .. })
        ));
        assert!(
            matches!(weights.take("b", &[2, 3]), Err(ModelError::MissingWeight(name)) if name == "b")
        );
        weights.insert("a", Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)));
        assert_eq!(weights.take("a", &[2, 3]).unwrap().size(), vec![2, 3]);
        assert!(!weights.contains("a"), "take removes the tensor");
    }

    #[test]
    fn int4_matrices_come_back_as_stored_or_dense() {
        // Deterministic values (no draw from the global generator, which other tests seed).
        let w = Tensor::arange(256, (Kind::Float, Device::Cpu))
            .sin()
            .reshape([4, 64]);
        let mut weights = Weights::default();
        weights.insert_int4("w", Int4Groups::quantise(&w).unwrap());
        weights.insert_int4("v", Int4Groups::quantise(&w).unwrap());
        assert!(matches!(
            weights.take_matrix("w", &[4, 64]),
            Ok(Matrix::Int4(_))
        ));
        // Dense view: the dequantised groups, within half a quantisation step of w.
        let dense = weights.take("v", &[4, 64]).unwrap();
        let error = (dense - &w).abs().max().double_value(&[]);
        let range = (w.max() - w.min()).double_value(&[]);
        assert!(error <= range / 30.0 + 1e-6, "dequantised off by {error}");
    }
}
