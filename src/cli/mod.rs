//! `infini generate` and `infini chat` (`architecture.md`, the command line): load the model, then
//! stream tokens through the sampler, the stop rules and the incremental decoder.

use std::io::{BufRead, Write};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

mod memory_args;
pub use crate::model::{parse_device, ModelArgs};
pub use memory_args::MemoryArgs;

use crate::engine::decode::Decoding;
use crate::engine::generate::{decode, prefill, PREFILL_CHUNK};
use crate::engine::sampler::{Sampler, SamplingParams};
use crate::engine::stop::StopRules;
use crate::memory::MemoryLayout;
use crate::model::{LayerCache, Llama};
use crate::session::Past;
use crate::tokenizer::{ChatMessage, Tokenizer, Transcript};

/// Model, device and sampling flags shared by `generate` and `chat`; each also reads `INFINI_*`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub load: ModelArgs,
    /// 0 is greedy.
    #[arg(long, env = "INFINI_TEMPERATURE", default_value_t = 0.7)]
    pub temperature: f64,
    /// 0 keeps all tokens.
    #[arg(long, env = "INFINI_TOP_K", default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, env = "INFINI_TOP_P", default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, env = "INFINI_MIN_P", default_value_t = 0.0)]
    pub min_p: f64,
    #[arg(long, env = "INFINI_REPETITION_PENALTY", default_value_t = 1.0)]
    pub repetition_penalty: f64,
    #[arg(long, env = "INFINI_FREQUENCY_PENALTY", default_value_t = 0.0)]
    pub frequency_penalty: f64,
    #[arg(long, env = "INFINI_PRESENCE_PENALTY", default_value_t = 0.0)]
    pub presence_penalty: f64,
    /// Makes sampling reproducible.
    #[arg(long, env = "INFINI_SEED")]
    pub seed: Option<u64>,
    /// Most tokens to generate per reply.
    #[arg(long, env = "INFINI_MAX_TOKENS", default_value_t = 256)]
    pub max_tokens: usize,
    /// A string that ends the reply (repeatable; INFINI_STOP takes a comma-separated list).
    #[arg(long = "stop", env = "INFINI_STOP", value_delimiter = ',')]
    pub stop: Vec<String>,
    #[command(flatten)]
    pub memory: MemoryArgs,
}

/// `infini generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The text to continue (used as is, without the chat template).
    #[arg(long, env = "INFINI_PROMPT")]
    pub prompt: String,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `infini chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    /// An optional system message that opens the conversation.
    #[arg(long, env = "INFINI_SYSTEM")]
    pub system: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// A loaded model with its tokenizer, memory layout and the request settings.
struct Session {
    model: Llama,
    tokenizer: Tokenizer,
    /// `None` with `--kv-cache`.
    layout: Option<MemoryLayout>,
    args: RunArgs,
}

impl Session {
    fn load(args: &RunArgs) -> Result<Self> {
        // Checked first so that bad sampling or stop flags fail before the model loads.
        Self::sampling(args).validate()?;
        StopRules::new(args.stop.clone())?;
        if args.max_tokens == 0 {
            bail!("--max-tokens must be at least 1");
        }
        let (model, tokenizer) = args.load.load()?;
        let layout = (!args.memory.kv_cache)
            .then(|| MemoryLayout::for_model(args.memory.config(), &model))
            .transpose()?;
        Ok(Self {
            model,
            tokenizer,
            layout,
            args: args.clone(),
        })
    }

    fn new_caches(&self) -> Past {
        Past::new(&self.model, self.layout.as_ref())
    }

    /// A reply that continues `caches`; the session memory also takes in the reply's last token
    /// (so the next turn continues the whole reply) and, with `--memory-stats`, prints its state.
    fn reply_in(&self, caches: &mut Past, prompt: &[u32], out: &mut impl Write) -> Result<String> {
        match caches {
            Past::Plain(plain) => Ok(self.reply(plain, prompt, out)?.0),
            Past::Memory(memory) => {
                let (text, unfed) = self.reply(memory.caches(), prompt, out)?;
                if let Some(last) = unfed {
                    let _ = prefill(&self.model, memory.caches(), &[last], 1)?;
                }
                if self.args.memory.memory_stats {
                    eprintln!("[memory {}]", serde_json::to_string(&memory.stats())?);
                }
                Ok(text)
            }
        }
    }

    fn sampling(args: &RunArgs) -> SamplingParams {
        SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repetition_penalty: args.repetition_penalty,
            frequency_penalty: args.frequency_penalty,
            presence_penalty: args.presence_penalty,
            seed: args.seed,
        }
    }

    /// Generates after `prompt` (continuing `caches`), writing text to `out` as it is decoded.
    /// Returns the reply's text and the token the caches have not taken in yet, if any.
    fn reply<C: LayerCache>(
        &self,
        caches: &mut [C],
        prompt: &[u32],
        out: &mut impl Write,
    ) -> Result<(String, Option<u32>)> {
        let mut sampler = Sampler::new(Self::sampling(&self.args).validate()?);
        let stop_tokens: Vec<u32> = self.tokenizer.special_tokens().eos.into_iter().collect();
        let mut decoding = Decoding::new(prompt, self.args.max_tokens, stop_tokens)
            .with_text(StopRules::new(self.args.stop.clone())?);
        let mut text = String::new();
        let mut failure = None;
        let started = Instant::now();
        let generation = decode(
            &self.model,
            caches,
            &mut decoding,
            &mut sampler,
            Some(&self.tokenizer),
            PREFILL_CHUNK,
            |_, piece| {
                text.push_str(piece);
                let written = out.write_all(piece.as_bytes()).and_then(|_| out.flush());
                match written {
                    Ok(()) => true,
                    Err(e) => {
                        failure = Some(e);
                        false
                    }
                }
            },
        )?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        text.push_str(&generation.rest);
        out.write_all(generation.rest.as_bytes())?;
        out.flush()?;
        let n = generation.tokens.len();
        eprintln!(
            "\n[{} prompt tokens in {:.2} s ({:.1} tok/s); {} tokens in {:.2} s ({:.1} tok/s); total {:.2} s]",
            prompt.len(),
            generation.prefill.as_secs_f64(),
            prompt.len() as f64 / generation.prefill.as_secs_f64().max(1e-9),
            n,
            generation.decode.as_secs_f64(),
            n.saturating_sub(1) as f64 / generation.decode.as_secs_f64().max(1e-9),
            started.elapsed().as_secs_f64()
        );
        Ok((text, decoding.unfed()))
    }
}

/// `infini generate --prompt …`: the continuation to stdout, timing to stderr.
pub fn run_generate(args: &GenerateArgs) -> Result<()> {
    let session = Session::load(&args.run)?;
    let prompt = session.tokenizer.encode(&args.prompt)?;
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let mut caches = session.new_caches();
    session.reply_in(&mut caches, &prompt, &mut std::io::stdout().lock())?;
    println!();
    Ok(())
}

/// `infini chat`: one user message per stdin line. With the session memory (the default) each turn
/// feeds only the new text and the memory carries the conversation, however long; with
/// `--kv-cache` the whole conversation is re-run each turn and must fit the model's context.
pub fn run_chat(args: &ChatArgs) -> Result<()> {
    let session = Session::load(&args.run)?;
    let template = session
        .tokenizer
        .chat_template()
        .context("the model has no chat template")?;
    let mut transcript = Transcript::new();
    let mut pending: Vec<ChatMessage> = args
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s.as_str()))
        .collect();
    let mut caches = session.new_caches();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    eprintln!("infini chat: one message per line, end with Ctrl-D");
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        pending.push(ChatMessage::new("user", line));
        if matches!(caches, Past::Plain(_)) {
            // The plain cache restarts each turn: the whole conversation is the prompt.
            transcript.fed.clear();
            caches = session.new_caches();
        }
        let text = transcript.next_prompt(template, &std::mem::take(&mut pending))?;
        let prompt = session.tokenizer.encode(&text)?;
        let reply = session.reply_in(&mut caches, &prompt, &mut out)?;
        writeln!(out)?;
        transcript.record_reply(&reply, caches.tokens_seen());
    }
    Ok(())
}
