//! Adam with a global gradient-norm clip and a warm-up + cosine schedule, whose moments are named
//! tensors so that a checkpoint can save them and a resumed run continues exactly (§5.1: Adam,
//! cosine to 0, clip; one step per sequence batch, §7.4).

use std::collections::BTreeMap;
use tch::{nn, Tensor};

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPSILON: f64 = 1e-8;

/// Adam over every trainable variable of a `VarStore`, keyed by the variable's name.
#[derive(Debug)]
pub struct Adam {
    /// name → (parameter, first moment, second moment)
    slots: BTreeMap<String, (Tensor, Tensor, Tensor)>,
    /// Steps taken so far (for the bias correction).
    pub steps: i64,
}

impl Adam {
    /// Zero moments for every trainable variable of `vs`.
    pub fn new(vs: &nn::VarStore) -> Self {
        let slots = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(name, t)| {
                let (m, v) = (t.zeros_like(), t.zeros_like());
                (name, (t, m, v))
            })
            .collect();
        Self { slots, steps: 0 }
    }

    /// The learning rate at `step` (0-based): linear warm-up, then cosine decay to 0 at `total`.
    pub fn schedule(peak: f64, step: usize, warmup: usize, total: usize) -> f64 {
        if step < warmup {
            return peak * (step + 1) as f64 / warmup as f64;
        }
        let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
        peak * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
    }

    /// Clips the global gradient norm to `max_norm`, takes one Adam step at `lr`, zeroes the
    /// gradients; returns the norm before clipping.
    pub fn step(&mut self, lr: f64, max_norm: f64) -> f64 {
        self.steps += 1;
        let t = self.steps as f64;
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self.slots.values().map(|(p, _, _)| p.grad()).collect();
            let norm = grads
                .iter()
                .filter(|g| g.defined())
                .map(|g| g.square().sum(g.kind()).double_value(&[]))
                .sum::<f64>()
                .sqrt();
            let scale = if norm > max_norm {
                max_norm / (norm + 1e-6)
            } else {
                1.0
            };
            let step_size = lr * (1.0 - BETA2.powf(t)).sqrt() / (1.0 - BETA1.powf(t));
            for ((param, m, v), grad) in self.slots.values_mut().zip(&grads) {
                if !grad.defined() {
                    continue;
                }
                let grad = grad * scale;
                let _ = m.g_mul_scalar_(BETA1).g_add_(&(&grad * (1.0 - BETA1)));
                let _ = v
                    .g_mul_scalar_(BETA2)
                    .g_add_(&(grad.square() * (1.0 - BETA2)));
                let update = &*m / (v.sqrt() + EPSILON) * step_size;
                let _ = param.g_sub_(&update);
                let _ = param.grad().zero_();
            }
            norm
        })
    }

    /// The moments as named tensors (`m.<name>`, `v.<name>`), for a checkpoint.
    pub fn named_moments(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .flat_map(|(name, (_, m, v))| {
                [
                    (format!("m.{name}"), m.shallow_clone()),
                    (format!("v.{name}"), v.shallow_clone()),
                ]
            })
            .collect()
    }

    /// Restores moments saved by [`Adam::named_moments`]; every slot must be present.
    pub fn load_moments(&mut self, named: Vec<(String, Tensor)>, steps: i64) -> Result<(), String> {
        let saved: BTreeMap<String, Tensor> = named.into_iter().collect();
        for (name, (_, m, v)) in self.slots.iter_mut() {
            for (prefix, moment) in [("m", m), ("v", v)] {
                let key = format!("{prefix}.{name}");
                let value = saved
                    .get(&key)
                    .ok_or_else(|| format!("optimiser state lacks {key}"))?;
                if value.size() != moment.size() {
                    return Err(format!(
                        "optimiser state {key} has shape {:?}, expected {:?}",
                        value.size(),
                        moment.size()
                    ));
                }
                tch::no_grad(|| moment.copy_(value));
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((Adam::schedule(1.0, 0, 10, 110) - 0.1).abs() < 1e-12);
        assert!((Adam::schedule(1.0, 10, 10, 110) - 1.0).abs() < 1e-12);
        assert!((Adam::schedule(1.0, 60, 10, 110) - 0.5).abs() < 1e-12);
        assert!(Adam::schedule(1.0, 110, 10, 110).abs() < 1e-12);
    }

    #[test]
    fn first_step_moves_each_weight_by_lr_against_the_gradient_sign() {
        // Adam's first update is lr·g/|g| (bias-corrected), to 1e-6, for a gradient below the clip.
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[2], nn::Init::Const(1.0));
        let mut adam = Adam::new(&vs);
        let loss = (&w * Tensor::from_slice(&[0.5f32, -0.25])).sum(Kind::Float);
        loss.backward();
        let norm = adam.step(0.1, 10.0);
        assert!((norm - (0.25f64 + 0.0625).sqrt()).abs() < 1e-6);
        let after: Vec<f32> = Vec::try_from(&w).unwrap();
        assert!(
            (after[0] - 0.9).abs() < 1e-6 && (after[1] - 1.1).abs() < 1e-6,
            "{after:?}"
        );
    }
}
