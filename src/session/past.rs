//! What a conversation's past lives in, for the commands that read one (`generate`, `chat`,
//! `eval memory`): the model's plain KV cache (`--kv-cache`: exact, bounded by the context) or a
//! [`SessionMemory`] (the four tiers of `infinity-former.md` §9.7: unbounded, constant cost).

use super::SessionMemory;
use crate::memory::MemoryLayout;
use crate::model::{KvCache, LayerCache, Llama};

/// A fresh past of either kind; callers match on it to hand the model the caches it extends.
pub enum Past {
    Plain(Vec<KvCache>),
    Memory(Box<SessionMemory>),
}

impl Past {
    /// A session memory laid out as `layout` says, or the plain cache when there is no layout.
    pub fn new(model: &Llama, layout: Option<&MemoryLayout>) -> Self {
        match layout {
            Some(layout) => Self::Memory(Box::new(SessionMemory::new(model, layout))),
            None => Self::Plain(model.new_cache()),
        }
    }

    /// Tokens taken in: every one the memory has seen, or those the plain cache holds.
    pub fn tokens_seen(&self) -> u64 {
        match self {
            Self::Plain(caches) => caches.first().map_or(0, |c| c.len() as u64),
            Self::Memory(memory) => memory.tokens_seen(),
        }
    }
}
