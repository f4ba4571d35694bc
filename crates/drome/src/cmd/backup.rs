//! `drome backup` and `drome restore`: a copy of the embedded (SQLite) store, taken while the
//! server runs, and put back in place of a store while no server uses it. A PostgreSQL store is
//! backed up with PostgreSQL's own tools (`pg_dump`, or `pg_basebackup` with WAL archiving).

use super::server::{DEFAULT_DB, runtime};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    /// The store to copy (`sqlite://PATH`); the server may be running.
    #[arg(long, env = "DROME_DB", default_value = DEFAULT_DB)]
    pub db: String,
    /// The copy: a new file (an existing one is not overwritten).
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// A copy made by `drome backup`.
    pub backup: PathBuf,
    /// The store to put it in place of (`sqlite://PATH`); no server may be using it.
    #[arg(long, env = "DROME_DB", default_value = DEFAULT_DB)]
    pub db: String,
    /// Replace a store that is there (it is kept beside, as PATH.before-restore).
    #[arg(long)]
    pub force: bool,
}

fn sqlite_path(db: &str) -> anyhow::Result<PathBuf> {
    match db.strip_prefix("sqlite://") {
        Some(path) => Ok(PathBuf::from(path.split('?').next().unwrap_or(path))),
        None => bail!(
            "'{db}' is not an embedded store: back PostgreSQL up with pg_dump (or pg_basebackup with WAL archiving)"
        ),
    }
}

pub fn backup(args: BackupArgs) -> anyhow::Result<()> {
    sqlite_path(&args.db)?;
    if args.out.exists() {
        bail!("{} exists already: give a new file", args.out.display());
    }
    let t0 = std::time::Instant::now();
    runtime()?.block_on(async {
        let store = store::Store::connect(&args.db).await.with_context(|| format!("cannot open {}", args.db))?;
        let done = store.backup_to(&args.out).await;
        store.close().await;
        done.with_context(|| format!("cannot write {}", args.out.display()))
    })?;
    let bytes = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "backed up {} to {} ({} KiB, {:.1} s)",
        args.db,
        args.out.display(),
        bytes / 1024,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let target = sqlite_path(&args.db)?;
    if !args.backup.is_file() {
        bail!("{}: no such backup file", args.backup.display());
    }
    // The copy must be a drome store this version reads: an SQLite file (its header, checked at
    // once), then opened (and migrated) where it lies, so a bad file never replaces a good store.
    let mut header = [0u8; 16];
    let is_sqlite = std::fs::File::open(&args.backup)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
        .is_ok_and(|()| &header == b"SQLite format 3\0");
    if !is_sqlite {
        bail!("{} is not a drome store (not an SQLite database)", args.backup.display());
    }
    let check = format!("sqlite://{}", args.backup.display());
    let jobs = runtime()?.block_on(async {
        let store = store::Store::connect(&check)
            .await
            .with_context(|| format!("{} is not a drome store", args.backup.display()))?;
        let counts = store.state_counts().await;
        store.close().await;
        anyhow::Ok(counts?.iter().map(|(_, n)| *n).sum::<i64>())
    })?;
    if target.exists() {
        if !args.force {
            bail!(
                "{} exists: stop every server using it, then restore with --force (it is kept beside)",
                target.display()
            );
        }
        let aside = with_suffix(&target, ".before-restore");
        std::fs::rename(&target, &aside).with_context(|| format!("cannot move {} aside", target.display()))?;
        println!("the store that was there is kept as {}", aside.display());
    }
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(with_suffix(&target, suffix));
    }
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    }
    std::fs::copy(&args.backup, &target).with_context(|| format!("cannot write {}", target.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))?;
    }
    println!("restored {} ({jobs} jobs) to {}", args.backup.display(), args.db);
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}
