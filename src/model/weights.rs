//! Named checkpoint tensors, looked up by the Hugging Face names (`model.layers.0.self_attn.q_proj.weight`):
//! every loader (safetensors folder, GGUF) produces this map, so building the model is a lookup.

use std::collections::HashMap;

use tch::Tensor;

use super::ModelError;

#[derive(Debug, Default)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    pub fn new(tensors: impl IntoIterator<Item = (String, Tensor)>) -> Self {
        Self {
            tensors: tensors.into_iter().collect(),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        self.tensors.insert(name.into(), tensor);
    }

    /// Removes and returns `name`, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
        self.get(name, shape)?;
        Ok(self.tensors.remove(name).expect("present: get checked it"))
    }

    /// Borrows `name`, checking its shape (for a tensor used twice, such as tied embeddings).
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<&Tensor, ModelError> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingWeight(name.to_string()))?;
        if tensor.size() != shape {
            return Err(ModelError::WeightShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                actual: tensor.size(),
            });
        }
        Ok(tensor)
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
            weights.get("a", &[3, 2]),
            Err(ModelError::WeightShape { .. })
        ));
        assert!(
            matches!(weights.take("b", &[2, 3]), Err(ModelError::MissingWeight(name)) if name == "b")
        );
        assert_eq!(weights.take("a", &[2, 3]).unwrap().size(), vec![2, 3]);
        assert!(!weights.contains("a"), "take removes the tensor");
    }
}
