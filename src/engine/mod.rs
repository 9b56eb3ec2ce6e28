//! The model's side of serving: the generation loop (prefill, then decode with the cache).

pub mod generate;
