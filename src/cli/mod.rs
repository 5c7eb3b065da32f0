//! cli: the `medsentry` command line: `serve`, `screen`, `models`, `bench`, `eval`, `quarantine`,
//! `audit`, `bundle`.

pub mod audit;
mod bench;
mod bundle;
mod eval;
mod models;
mod quarantine;
mod screen;

use clap::{Parser, Subcommand};

use crate::config::{ModelArgs, ServeArgs};

#[derive(Debug, Parser)]
#[command(name = "medsentry", version, about = "Adversarial-input screening sidecar for medical image classifiers")]
pub struct Cli {
    /// Log lines on stderr: text (coloured only on a terminal, and never with NO_COLOR set)
    /// or json (one object per line, for log collectors).
    #[arg(long, global = true, value_enum, env = "MEDSENTRY_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar: gRPC (medsentry.v1.Sentry, health, reflection) + admin HTTP port.
    Serve(Box<ServeArgs>),
    /// Classify and screen files without a server (DICOM, PNG or JPEG; detected by content).
    Screen(screen::ScreenArgs),
    /// List the model bundles and their figures.
    Models(models::ModelsArgs),
    /// Measure Screen through gRPC against a bare ONNX Runtime session on the same bundle.
    Bench(bench::BenchArgs),
    /// Detector AUROC / TPR per attack on a folder of clean and adversarial inputs, with ROC plots.
    Eval(eval::EvalArgs),
    /// Sign and verify bundles: keygen, sign, verify (serve --trusted-key checks them).
    Bundle(bundle::BundleArgs),
    /// List or export what the quarantine store holds.
    Quarantine(quarantine::QuarantineArgs),
    /// Red-team a running endpoint with black-box attacks through its API (loopback only
    /// unless --allow-remote); report.json, REPORT.md and queries.jsonl in --out.
    Audit(audit::AuditArgs),
}

/// Runs a parsed command; the process exit code follows the result.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let grpc = tokio::net::TcpListener::bind(args.listen).await.map_err(|e| anyhow::anyhow!("binding gRPC {}: {e}", args.listen))?;
            let admin = tokio::net::TcpListener::bind(args.admin_listen).await.map_err(|e| anyhow::anyhow!("binding admin {}: {e}", args.admin_listen))?;
            crate::server::run(*args, grpc, admin, crate::server::termination_signal()).await
        }
        Command::Screen(args) => screen::run(args).await,
        Command::Models(args) => models::run(args),
        Command::Bench(args) => bench::run(args).await,
        Command::Audit(args) => audit::run(args).await,
        Command::Eval(args) => eval::run(args).await,
        Command::Quarantine(args) => quarantine::run(args),
        Command::Bundle(args) => bundle::run(args),
    }
}

/// Shared by `screen` and `bench`: model flags without the server's.
pub(crate) type Models = ModelArgs;
