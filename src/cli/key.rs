//! `walvault key`: key rotation. List the keys and what each still seals,
//! add the keyring's new key to `walvault.json`, retire a key nothing needs.

use std::process::ExitCode;

use anyhow::Context;

use crate::format::KeyId;
use crate::format::manifest::join_ids;
use crate::progress::human_bytes;

use super::args::RepoArgs;

/// Arguments of `key`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Rotate encryption keys. The key file lists keys one per line; the first seals new objects, \
the others still open old ones. To rotate: put a new key (walvault keygen) first in the key file, keep the old \
ones below it, run `walvault key add` so walvault.json lists it, and restart the sidecar. Old objects stay sealed \
with the old key until expire removes them; `walvault key list` shows how many objects and bytes each key still \
protects. Once an old key protects nothing, `walvault key retire ID` removes it from walvault.json, and a key file \
without it is accepted.",
    after_long_help = "Examples:\
\n  walvault keygen > new.key && chmod 600 new.key\
\n  cat new.key walvault.key > rotated.key && chmod 600 rotated.key   # the new key first\
\n  walvault key add --config walvault.toml --key-file rotated.key\
\n  walvault key list --config walvault.toml --key-file rotated.key\
\n  walvault key retire --config walvault.toml --key-file rotated.key 0a0b0c0d"
)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

/// What to do.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Show the keys walvault.json lists and the objects and bytes each seals (reads every header).
    List {
        #[command(flatten)]
        repo: RepoArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List every key of the key file in walvault.json (the key file must hold every key listed).
    Add {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Remove a key from walvault.json once no object is sealed with it.
    Retire {
        #[command(flatten)]
        repo: RepoArgs,
        /// The key id (8 hex digits, as `key list` shows).
        id: KeyId,
    },
}

/// Runs the action.
///
/// # Errors
/// A refused rotation (exit 2), store errors.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::List { repo, json } => list(&repo, json).await,
        Action::Add { repo } => {
            let (repo, manifest) = repo.open_existing().await?;
            let Some(m) = repo
                .add_keyring_keys(&manifest)
                .await
                .context("rewrite walvault.json")?
            else {
                println!(
                    "walvault.json already lists every key of the key file ({}); nothing changed",
                    join_ids(&manifest.key_ids)
                );
                return Ok(ExitCode::SUCCESS);
            };
            println!(
                "walvault.json lists keys {}; new objects are sealed with {} (restart running walvault processes)",
                join_ids(&m.key_ids),
                repo.keyring()
                    .write_key()
                    .map_or("-".into(), |k| k.id().to_string())
            );
            Ok(ExitCode::SUCCESS)
        }
        Action::Retire { repo, id } => {
            let (repo, manifest) = repo.open_existing().await?;
            let m = repo.retire_key(&manifest, id).await.map_err(|e| match e {
                refused @ crate::storage::Error::Retire { .. } => anyhow::Error::new(refused),
                other => anyhow::Error::new(other).context("rewrite walvault.json"),
            })?;
            println!(
                "key {id} retired: walvault.json lists {}; a key file without {id} is accepted",
                join_ids(&m.key_ids)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn list(repo: &RepoArgs, json: bool) -> anyhow::Result<ExitCode> {
    let (repo, manifest) = repo.open_existing().await?;
    let report = repo
        .key_report(&manifest)
        .await
        .context("read object headers")?;
    if json {
        println!("{}", serde_json::json!(report));
        return Ok(ExitCode::SUCCESS);
    }
    for l in &report.keys {
        let mut notes = Vec::new();
        if l.seals_new_objects {
            notes.push("seals new objects");
        }
        if !l.listed {
            notes.push("not in walvault.json (run walvault key add)");
        }
        if !l.in_keyring {
            notes.push("not in the key file");
        }
        println!(
            "key {}: {} objects, {}{}{}",
            l.id,
            l.objects,
            human_bytes(l.bytes),
            if notes.is_empty() { "" } else { "; " },
            notes.join(", ")
        );
    }
    let plain = report.unencrypted;
    if plain.objects > 0 {
        println!(
            "unencrypted: {} objects, {}",
            plain.objects,
            human_bytes(plain.bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}
