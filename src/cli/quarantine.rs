//! `medsentry quarantine list|export`: what the quarantine store holds, and copies of its
//! entries (object + record) for the people who investigate an attack.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::quarantine::{list_records, Record};

#[derive(Debug, Args)]
pub struct QuarantineArgs {
    /// The store's folder (the policy file's [quarantine] dir).
    #[arg(long, env = "MEDSENTRY_QUARANTINE_DIR")]
    pub dir: PathBuf,
    #[command(subcommand)]
    pub command: QuarantineCommand,
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// One line per entry, oldest first (or JSON lines with --json).
    List {
        #[arg(long)]
        json: bool,
        /// Only entries of this model.
        #[arg(long)]
        model: Option<String>,
    },
    /// Copies entries (object and record JSON) into --out.
    Export {
        /// Folder to write into (created).
        #[arg(long)]
        out: PathBuf,
        /// Entry ids (sha256, or a unique prefix); none = every entry.
        ids: Vec<String>,
    },
}

pub fn run(args: QuarantineArgs) -> anyhow::Result<()> {
    let records = list_records(&args.dir)?;
    match args.command {
        QuarantineCommand::List { json, model } => {
            let shown = records.iter().filter(|r| model.as_ref().is_none_or(|m| &r.model == m));
            if !json {
                println!(
                    "{:<16} {:<24} {:<10} {:<12} {:>7} {:>9} {:<16}  model / policy",
                    "id", "received (UTC ms)", "kind", "verdict", "fused", "bytes", "caller"
                );
            }
            for r in shown {
                if json {
                    println!("{}", serde_json::to_string(r)?);
                } else {
                    println!(
                        "{:<16} {:<24} {:<10} {:<12} {:>7.3} {:>9} {:<16}  {} {} / {}",
                        &r.id[..16],
                        r.received_unix_ms,
                        r.input_kind,
                        r.verdict,
                        r.fused_score,
                        r.bytes,
                        if r.caller.is_empty() { "-" } else { &r.caller },
                        r.model,
                        r.model_version,
                        r.policy
                    );
                }
            }
        }
        QuarantineCommand::Export { out, ids } => {
            let chosen: Vec<&Record> =
                if ids.is_empty() { records.iter().collect() } else { ids.iter().map(|id| find(&records, id)).collect::<anyhow::Result<_>>()? };
            std::fs::create_dir_all(&out)?;
            for r in &chosen {
                let object = args.dir.join(&r.object);
                let name = object.file_name().map(|n| n.to_os_string()).unwrap_or_default();
                std::fs::copy(&object, out.join(&name)).map_err(|e| anyhow::anyhow!("{}: {e}", object.display()))?;
                std::fs::write(out.join(format!("{}.json", r.id)), serde_json::to_vec_pretty(r)?)?;
            }
            println!("exported {} entr{} to {}", chosen.len(), if chosen.len() == 1 { "y" } else { "ies" }, out.display());
        }
    }
    Ok(())
}

fn find<'a>(records: &'a [Record], id: &str) -> anyhow::Result<&'a Record> {
    let hits: Vec<&Record> = records.iter().filter(|r| r.id.starts_with(id)).collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => anyhow::bail!("no quarantine entry with id {id}"),
        _ => anyhow::bail!("id prefix {id} matches {} entries; give more characters", hits.len()),
    }
}
