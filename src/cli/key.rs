//! `walvault key`: key rotation. List the keys and what each still seals,
//! add the keyring's new key to `walvault.json`, retire a key nothing needs.

use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use crate::progress::human_bytes;
use crate::storage::KeyUsage;

use super::RepoArgs;

/// Arguments of `key`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Rotate encryption keys. The key file lists keys one per line; the first seals new objects, \
the others still open old ones. To rotate: put a new key (walvault keygen) first in the key file, keep the old \
ones below it, run `walvault key add` so walvault.json lists it, and restart the sidecar. Old objects stay sealed \
with the old key until expire removes them; `walvault key list` shows how many objects and bytes each key still \
protects. Once an old key protects nothing, `walvault key retire ID` removes it from walvault.json, and a key file \
without it is accepted."
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
        id: String,
    },
}

#[derive(Serialize)]
struct KeyLine {
    id: String,
    listed: bool,
    in_keyring: bool,
    seals_new_objects: bool,
    objects: u64,
    bytes: u64,
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
            let mut ids: Vec<String> = repo
                .keyring()
                .ids()
                .iter()
                .map(|k| format!("{k:08x}"))
                .collect();
            for listed in &manifest.key_ids {
                if !ids.contains(listed) {
                    ids.push(listed.clone());
                }
            }
            let m = repo
                .rewrite_key_ids(ids)
                .await
                .context("rewrite walvault.json")?;
            println!(
                "walvault.json lists keys {}; new objects are sealed with {} (restart running walvault processes)",
                m.key_ids.join(", "),
                repo.keyring()
                    .write_key()
                    .map_or("-".into(), |k| format!("{:08x}", k.id()))
            );
            Ok(ExitCode::SUCCESS)
        }
        Action::Retire { repo, id } => {
            let (repo, manifest) = repo.open_existing().await?;
            let refuse = |reason: String| -> anyhow::Result<ExitCode> {
                Err(crate::config::Error::Invalid {
                    what: "key to retire",
                    value: id.clone(),
                    reason,
                }
                .into())
            };
            if !manifest.key_ids.contains(&id) {
                return refuse(format!(
                    "walvault.json lists {}",
                    manifest.key_ids.join(", ")
                ));
            }
            if repo
                .keyring()
                .write_key()
                .is_some_and(|k| format!("{:08x}", k.id()) == id)
            {
                return refuse(
                    "it seals new objects (it is first in the key file): put the new key first"
                        .into(),
                );
            }
            let numeric = u32::from_str_radix(&id, 16).ok();
            let usage = repo.key_usage().await.context("read object headers")?;
            if let Some(u) = usage.get(&numeric).filter(|u| u.objects > 0) {
                return refuse(format!(
                    "{} objects ({}) are still sealed with it; let expire remove them (walvault expire), or keep the key",
                    u.objects,
                    human_bytes(u.bytes)
                ));
            }
            let ids: Vec<String> = manifest
                .key_ids
                .iter()
                .filter(|k| **k != id)
                .cloned()
                .collect();
            let m = repo
                .rewrite_key_ids(ids)
                .await
                .context("rewrite walvault.json")?;
            println!(
                "key {id} retired: walvault.json lists {}; a key file without {id} is accepted",
                m.key_ids.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn list(repo: &RepoArgs, json: bool) -> anyhow::Result<ExitCode> {
    let (repo, manifest) = repo.open_existing().await?;
    let usage = repo.key_usage().await.context("read object headers")?;
    let keyring: Vec<String> = repo
        .keyring()
        .ids()
        .iter()
        .map(|k| format!("{k:08x}"))
        .collect();
    let mut ids: Vec<String> = manifest.key_ids.clone();
    for id in keyring.iter().chain(
        usage
            .keys()
            .flatten()
            .map(|k| format!("{k:08x}"))
            .collect::<Vec<_>>()
            .iter(),
    ) {
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    let lines: Vec<KeyLine> = ids
        .iter()
        .map(|id| {
            let u = usage
                .get(&u32::from_str_radix(id, 16).ok())
                .copied()
                .unwrap_or(KeyUsage::default());
            KeyLine {
                id: id.clone(),
                listed: manifest.key_ids.contains(id),
                in_keyring: keyring.contains(id),
                seals_new_objects: keyring.first() == Some(id),
                objects: u.objects,
                bytes: u.bytes,
            }
        })
        .collect();
    let plain = usage.get(&None).copied().unwrap_or_default();
    if json {
        println!(
            "{}",
            serde_json::json!({ "keys": lines, "unencrypted": plain })
        );
        return Ok(ExitCode::SUCCESS);
    }
    for l in &lines {
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
    if plain.objects > 0 {
        println!(
            "unencrypted: {} objects, {}",
            plain.objects,
            human_bytes(plain.bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}
