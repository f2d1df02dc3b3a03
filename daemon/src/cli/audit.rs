//! `airlockd audit ...`: verify, inspect, export, digest, backup, keygen.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Subcommand;

use super::exit::{EXIT_FAILURE, EXIT_TAMPERED, EXIT_USAGE, fail};
use crate::audit::keys::{self, DigestKey};
use crate::audit::tools::{self, ExportFilter};
use crate::audit::verify;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every record, link and checkpoint signature; exit 0 only when intact, 2 when
    /// tampered (the first bad sequence number and what is wrong are printed), 1 on errors.
    Verify {
        /// The database; repeat for rotated files, oldest first, the live file last. Files
        /// of several nodes (`[audit] node`, in every record) may be given together: each
        /// node's files are verified as its own chain, in the order given, one line each.
        #[arg(long = "db", value_name = "FILE", required = true)]
        db: Vec<PathBuf>,
        /// The checkpoint public key (`audit-signing.pub`); repeat for several nodes (each
        /// node's files are checked against the one its files name). Without it checkpoints
        /// are only checked against the key the file itself names.
        #[arg(long, value_name = "FILE")]
        pubkey: Vec<PathBuf>,
        /// Checkpoints kept off the host (`audit export --checkpoints` output): the chain
        /// must pass through each and reach the newest. Needs `--pubkey`.
        #[arg(long, value_name = "FILE", requires = "pubkey")]
        anchors: Option<PathBuf>,
    },
    /// The check the daemon runs before it extends a log: its newest checkpoint is signed by
    /// the key, the records after it chain onto it, a rotated successor begins with its
    /// `rotate` record. Prints where the log stands; exit 0 when the daemon would extend
    /// it, 2 when it refuses (what is wrong is printed), 1 on errors.
    Inspect {
        /// The live database (or a rotated file).
        #[arg(long, value_name = "FILE")]
        db: PathBuf,
        /// The checkpoint public key; without it, the key stored in the file (a warning says
        /// so).
        #[arg(long, value_name = "FILE")]
        pubkey: Option<PathBuf>,
    },
    /// Print records as JSON lines (one object per record, with its chain hash).
    Export {
        #[arg(long, value_name = "FILE")]
        db: PathBuf,
        /// Only records at or after this time (RFC 3339, or a UTC date).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only records of this tenant.
        #[arg(long, value_name = "T")]
        tenant: Option<String>,
        /// Also print each signed checkpoint (`"kind":"checkpoint"`) after the record it
        /// seals: ship them off the host to anchor the log's tail.
        #[arg(long)]
        checkpoints: bool,
        /// Output format (only `jsonl`).
        #[arg(long, value_name = "FORMAT", default_value = "jsonl", value_parser = ["jsonl"])]
        format: String,
    },
    /// Keyed digest (HMAC-SHA256) of a file's bytes, as records carry it in
    /// `prompt_digest`, `message_digests` and `output_digest`.
    Digest {
        /// The text (exact bytes; no trailing newline is removed).
        #[arg(long, value_name = "FILE")]
        text: PathBuf,
        /// The digest key file (`audit-digest.key`).
        #[arg(long, value_name = "FILE", required_unless_present = "config")]
        key: Option<PathBuf>,
        /// Or the daemon's configuration, whose `[audit] digest_key` is used.
        #[arg(long, short = 'c', value_name = "FILE", conflicts_with = "key")]
        config: Option<PathBuf>,
    },
    /// Copy a live database with SQLite's online backup API.
    Backup {
        #[arg(long, value_name = "FILE")]
        db: PathBuf,
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
    },
    /// Create the checkpoint signing key, its public key and the digest key in DIR
    /// (existing files are kept).
    Keygen {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

/// Runs one audit subcommand; returns the exit code.
pub fn run(command: AuditCommand) -> ExitCode {
    match command {
        AuditCommand::Verify {
            db,
            pubkey,
            anchors,
        } => verify_cmd(&db, &pubkey, anchors.as_deref()),
        AuditCommand::Inspect { db, pubkey } => inspect_cmd(&db, pubkey.as_deref()),
        AuditCommand::Export {
            db,
            since,
            tenant,
            checkpoints,
            ..
        } => {
            let since_ms = match since.as_deref().map(tools::parse_since).transpose() {
                Ok(s) => s,
                Err(e) => return fail(EXIT_USAGE, e),
            };
            let filter = ExportFilter {
                since_ms,
                tenant,
                checkpoints,
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            match tools::export(&db, &filter, &mut out) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => fail(EXIT_FAILURE, e),
            }
        }
        AuditCommand::Digest { text, key, config } => {
            let key_path = match (key, config) {
                (Some(k), _) => k,
                (None, Some(c)) => match crate::config::Config::load(&c) {
                    Ok(cfg) => match cfg.audit {
                        Some(a) => a.digest_key,
                        None => {
                            return fail(
                                EXIT_USAGE,
                                format!("{}: no [audit] section", c.display()),
                            );
                        }
                    },
                    Err(e) => return fail(EXIT_USAGE, e),
                },
                (None, None) => {
                    return fail(EXIT_USAGE, "--key or --config is required");
                }
            };
            let key = match DigestKey::load(&key_path) {
                Ok(k) => k,
                Err(e) => return fail(EXIT_FAILURE, e),
            };
            match std::fs::read(&text) {
                Ok(bytes) => {
                    println!("{}", key.digest(&bytes));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(EXIT_FAILURE, format!("{}: {e}", text.display())),
            }
        }
        AuditCommand::Backup { db, to } => match tools::backup(&db, &to) {
            Ok(()) => {
                println!("backed up {} to {}", db.display(), to.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_FAILURE, e),
        },
        AuditCommand::Keygen { dir } => match keys::keygen(&dir) {
            Ok(created) => {
                for path in created {
                    println!("created {}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_FAILURE, e),
        },
    }
}

fn verify_cmd(db: &[PathBuf], pubkeys: &[PathBuf], anchors: Option<&Path>) -> ExitCode {
    let keys = match pubkeys
        .iter()
        .map(|p| keys::read_public(p))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(k) => k,
        Err(e) => return fail(EXIT_FAILURE, e),
    };
    let nodes = match verify::by_node(db) {
        Ok(nodes) => nodes,
        Err(e) => return fail(EXIT_FAILURE, e),
    };
    if nodes.len() > 1 {
        if anchors.is_some() {
            return fail(
                EXIT_USAGE,
                "--anchors checks one node's log: give that node's files",
            );
        }
        return verify_nodes(&nodes, &keys);
    }
    let key = match keys.as_slice() {
        [] => None,
        [key] => Some(*key),
        _ => return fail(EXIT_USAGE, "several --pubkey for one node's files"),
    };
    let anchors = match (anchors, &key) {
        (Some(path), Some(key)) => match crate::audit::anchors::load(path, key) {
            Ok(a) => a,
            Err(e) => return fail(EXIT_FAILURE, e),
        },
        (Some(_), None) => return fail(EXIT_USAGE, "--anchors needs --pubkey"),
        (None, _) => verify::Anchors::new(),
    };
    if let [only] = db {
        let rotated = crate::audit::rotate::rotated_files(only);
        if let Some(oldest) = rotated.first() {
            eprintln!(
                "note: {} rotated file(s) precede {} (oldest {}); pass them first, oldest \
                 first, to verify the whole chain",
                rotated.len(),
                only.display(),
                oldest.display()
            );
        }
    }
    let start = Instant::now();
    let report = match verify::verify_anchored(db, key.as_ref(), &anchors) {
        Ok(r) => r,
        Err(e) => return fail(EXIT_FAILURE, e),
    };
    let secs = start.elapsed().as_secs_f64();
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    match &report.finding {
        Some(finding) => {
            println!("TAMPERED: {finding}");
            ExitCode::from(EXIT_TAMPERED)
        }
        None => {
            let pinned = match report.last_anchor {
                Some(seq) => format!(
                    ", {} anchors matched (last at seq {seq})",
                    report.anchors_matched
                ),
                None => String::new(),
            };
            println!(
                "intact: {} records (seq {}..{}), {} checkpoints (last at seq {}){pinned}, verified in {:.3} s ({:.0} records/s)",
                report.records,
                report.first_seq.unwrap_or(0),
                report.last_seq,
                report.checkpoints,
                report.last_checkpoint,
                secs,
                report.records as f64 / secs.max(1e-9),
            );
            ExitCode::SUCCESS
        }
    }
}

/// Each node's files as its own chain: one line per node, exit 2 when any is tampered.
fn verify_nodes(
    nodes: &[(String, Vec<PathBuf>)],
    keys: &[ed25519_dalek::VerifyingKey],
) -> ExitCode {
    let mut tampered = false;
    for (node, files) in nodes {
        // The node's key among those given: the one its files name (a file naming none of
        // them is checked against the first, and its checkpoints then fail as forged).
        let key = match verify::stored_key(&files[0]) {
            Ok(stored) => keys
                .iter()
                .find(|k| Some(k.to_bytes()) == stored)
                .or(keys.first())
                .copied(),
            Err(e) => return fail(EXIT_FAILURE, e),
        };
        let report = match verify::verify(files, key.as_ref()) {
            Ok(r) => r,
            Err(e) => return fail(EXIT_FAILURE, e),
        };
        for warning in &report.warnings {
            eprintln!("warning: node {node}: {warning}");
        }
        match &report.finding {
            Some(finding) => {
                tampered = true;
                println!("node {node}: TAMPERED: {finding}");
            }
            None => println!(
                "node {node}: intact: {} records (seq {}..{}), {} checkpoints (last at seq {}), {} file(s)",
                report.records,
                report.first_seq.unwrap_or(0),
                report.last_seq,
                report.checkpoints,
                report.last_checkpoint,
                files.len(),
            ),
        }
    }
    if tampered {
        ExitCode::from(EXIT_TAMPERED)
    } else {
        ExitCode::SUCCESS
    }
}

fn inspect_cmd(db: &Path, pubkey: Option<&Path>) -> ExitCode {
    match tools::inspect(db, pubkey) {
        Ok((text, None)) => {
            print!("{text}");
            println!("daemon start: would extend this log");
            ExitCode::SUCCESS
        }
        Ok((text, Some(refusal))) => {
            print!("{text}");
            println!("REFUSED: {}: {refusal}", db.display());
            println!(
                "the daemon will not append to this file. Run `airlockd audit verify --db {} \
                 --pubkey audit-signing.pub [--anchors checkpoints.jsonl]` to locate every \
                 problem; keep the file as evidence and move it aside to start a new log",
                db.display()
            );
            ExitCode::from(EXIT_TAMPERED)
        }
        Err(e) => fail(EXIT_FAILURE, e),
    }
}
