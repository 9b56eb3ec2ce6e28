//! The `infini` command line.

use anyhow::Result;
use clap::{Parser, Subcommand};
use infini::api::openapi::ApiDoc;
use infini::cli::{run_chat, run_generate, ChatArgs, GenerateArgs};
use infini::config::ServeConfig;
use infini::demo::{run_memory_demo, MemoryDemo};
use infini::evaluation::{run_memory_eval, run_retention_eval, MemoryEvalArgs, RetentionEvalArgs};
use infini::train::cli::{run_eval_sorting, run_train, EvalSortingArgs, TrainTask};

/// infini: chat with unbounded memory at constant cost per token (the ∞-former).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The OpenAI-compatible HTTP server with persistent per-session memory.
    Serve(Box<ServeConfig>),
    /// Print the server's OpenAPI document (the committed copy is openapi/openapi.json).
    Openapi,
    /// Stream a long synthetic signal through one ∞-former memory and show that its size and
    /// update cost stay constant while the latest chunk stays readable.
    DemoMemory(MemoryDemo),
    /// Continue a prompt with the model, streaming the text to stdout (timing to stderr).
    Generate(GenerateArgs),
    /// Chat with the model: one message per line on stdin, replies streamed, conversation kept.
    Chat(ChatArgs),
    /// Train a model from scratch (the paper's sorting task).
    #[command(subcommand)]
    Train(TrainTask),
    /// Evaluate: a trained sorting checkpoint, or the session memory on the default model.
    #[command(subcommand)]
    Eval(EvalTask),
}

/// Tasks of `infini eval`.
#[derive(Subcommand, Debug)]
enum EvalTask {
    /// Token accuracy of a sorting checkpoint on freshly generated held-out sequences.
    Sorting(EvalSortingArgs),
    /// Perplexity and pass-key retrieval of the session memory, tier by tier (docs/EVALUATION.md).
    Memory(Box<MemoryEvalArgs>),
    /// What a bounded archive keeps, by retention policy: a fact used k times, then more text
    /// than the archive's budget (docs/RETENTION.md).
    Retention(Box<RetentionEvalArgs>),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Serve(config) => infini::api::serve(*config),
        Command::Openapi => {
            print!("{}", ApiDoc::json());
            Ok(())
        }
        Command::DemoMemory(args) => run_memory_demo(&args, &mut std::io::stdout()),
        Command::Generate(args) => run_generate(&args),
        Command::Chat(args) => run_chat(&args),
        Command::Train(task) => run_train(&task),
        Command::Eval(EvalTask::Sorting(args)) => run_eval_sorting(&args),
        Command::Eval(EvalTask::Memory(args)) => run_memory_eval(&args),
        Command::Eval(EvalTask::Retention(args)) => run_retention_eval(&args),
    }
}
