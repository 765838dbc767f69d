//! File-tree benchmark: Lifeboat beside restic on the same generated tree,
//! in the same run. Prints wall time, repository size and peak memory for
//! each step, and the ratios.
//!
//! Run through `deploy/bench-files.sh` (builds release binaries first).

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use lifeboat_integration_tests::bench::{Measured, drop_caches, du, measure, sync_and_settle};
use lifeboat_integration_tests::services;
use lifeboat_integration_tests::tree_gen::{TreeSpec, apply_day_of_changes, generate_tree};

/// Where a tool's repository lives.
#[derive(Clone)]
enum Repo {
    Local(PathBuf),
    /// The S3 emulator: endpoint, bucket, prefix.
    S3 {
        endpoint: String,
        bucket: String,
        prefix: String,
    },
}

impl Repo {
    fn for_lifeboat(&self) -> String {
        match self {
            Repo::Local(p) => p.display().to_string(),
            Repo::S3 { endpoint, bucket, prefix } => format!("s3://{bucket}/{prefix}?endpoint={endpoint}"),
        }
    }

    fn for_restic(&self) -> String {
        match self {
            Repo::Local(p) => p.display().to_string(),
            Repo::S3 { endpoint, bucket, prefix } => format!("s3:{endpoint}/{bucket}/{prefix}"),
        }
    }

    /// Bytes the repository takes in its store.
    fn stored_bytes(&self, rt: &tokio::runtime::Runtime) -> u64 {
        match self {
            Repo::Local(p) => du(p),
            Repo::S3 { endpoint, bucket, prefix } => rt.block_on(async {
                let client = services::s3_client(endpoint).await;
                let mut pages =
                    client.list_objects_v2().bucket(bucket).prefix(format!("{prefix}/")).into_paginator().send();
                let mut total = 0u64;
                while let Some(Ok(page)) = pages.next().await {
                    total += page.contents().iter().map(|o| o.size().unwrap_or(0).max(0) as u64).sum::<u64>();
                }
                total
            }),
        }
    }
}

trait Tool {
    fn name(&self) -> &'static str;
    fn init(&self) -> Result<()>;
    fn backup(&self, src: &Path) -> Result<Measured>;
    fn restore(&self, target: &Path) -> Result<Measured>;
    fn repo(&self) -> &Repo;
}

struct Lifeboat {
    bin: PathBuf,
    repo: Repo,
    key: PathBuf,
}

impl Lifeboat {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("LIFEBOAT_REPO", self.repo.for_lifeboat()).env("LIFEBOAT_KEY_FILE", &self.key);
        c
    }
}

impl Tool for Lifeboat {
    fn name(&self) -> &'static str {
        "lifeboat"
    }
    fn init(&self) -> Result<()> {
        measure(self.cmd().args(["key", "generate", "--out"]).arg(&self.key))?;
        measure(self.cmd().args(["repo", "init"]))?;
        Ok(())
    }
    fn backup(&self, src: &Path) -> Result<Measured> {
        measure(self.cmd().args(["backup", "files"]).arg(src))
    }
    fn restore(&self, target: &Path) -> Result<Measured> {
        measure(self.cmd().args(["restore", "latest", "--target"]).arg(target))
    }
    fn repo(&self) -> &Repo {
        &self.repo
    }
}

struct Restic {
    repo: Repo,
    cache: PathBuf,
}

impl Restic {
    fn cmd(&self) -> Command {
        let mut c = Command::new("restic");
        c.env("RESTIC_REPOSITORY", self.repo.for_restic())
            .env("RESTIC_PASSWORD", "benchmark")
            .env("RESTIC_CACHE_DIR", &self.cache)
            .arg("--quiet");
        c
    }
}

impl Tool for Restic {
    fn name(&self) -> &'static str {
        "restic"
    }
    fn init(&self) -> Result<()> {
        measure(self.cmd().arg("init"))?;
        Ok(())
    }
    fn backup(&self, src: &Path) -> Result<Measured> {
        measure(self.cmd().arg("backup").arg(src))
    }
    fn restore(&self, target: &Path) -> Result<Measured> {
        measure(self.cmd().args(["restore", "latest", "--target"]).arg(target))
    }
    fn repo(&self) -> &Repo {
        &self.repo
    }
}

/// One tool's figures for one step.
#[derive(Clone, Copy)]
struct Figures {
    secs: f64,
    peak_rss_kib: i64,
    stored: u64,
    /// Requests the S3 emulator served during the step (0 on a local disk).
    requests: u64,
}

struct Row {
    step: &'static str,
    results: Vec<Figures>,
}

/// Runs one measured step of `tool` and collects its figures.
fn figures(tool: &dyn Tool, rt: &tokio::runtime::Runtime, step: impl FnOnce() -> Result<Measured>) -> Result<Figures> {
    let before = s3_requests();
    let m = step()?;
    let requests = s3_requests() - before;
    Ok(Figures { secs: m.secs, peak_rss_kib: m.peak_rss_kib, stored: tool.repo().stored_bytes(rt), requests })
}

/// Requests the S3 emulator has logged so far (one access-log line each).
fn s3_requests() -> u64 {
    fs::read(services::services_dir().join("s3.log"))
        .map_or(0, |log| log.split(|b| *b == b'\n').filter(|l| l.windows(5).any(|w| w == b"HTTP/")).count() as u64)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let work = PathBuf::from(args.next().unwrap_or_else(|| "/tmp/lifeboat-bench-files".into()));
    let gib: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1.0);
    let runs: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3).max(1);
    let on_s3 = match args.next().as_deref() {
        None | Some("local") => false,
        Some("s3") => true,
        Some(other) => bail!("unknown store {other:?}: local or s3"),
    };
    let rt = tokio::runtime::Runtime::new()?;
    let s3 = if on_s3 {
        services::s3_test_credentials();
        Some(services::s3_endpoint())
    } else {
        None
    };
    let bin = std::env::current_exe()?.with_file_name("lifeboat");
    if !bin.exists() {
        bail!("{} not found: build it first (cargo build --release -p lifeboat)", bin.display());
    }
    which_restic()?;
    let spec = TreeSpec::app_node(gib);
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
        // ext4 skips inodes freed in the last 30 s when allocating, which
        // makes creating files slow right after a mass deletion: let that pass.
        sync_and_settle();
        std::thread::sleep(std::time::Duration::from_secs(31));
    }
    let mut all: Vec<Vec<Row>> = Vec::new();
    for run in 0..runs {
        // Nothing is deleted until the end, so no step pays for another's deletions.
        let rows = run_once(&work.join(format!("run-{run}")), &spec, &bin, &rt, s3.as_deref())?;
        print_rows(&format!("run {} of {runs}", run + 1), &rows)?;
        all.push(rows);
    }
    // The median run of each step and tool, so one noisy run decides nothing.
    let median = (0..all[0].len())
        .map(|step| Row {
            step: all[0][step].step,
            results: (0..2)
                .map(|tool| {
                    let mut v: Vec<Figures> = all.iter().map(|rows| rows[step].results[tool]).collect();
                    v.sort_by(|a, b| a.secs.total_cmp(&b.secs));
                    v[v.len() / 2]
                })
                .collect(),
        })
        .collect::<Vec<_>>();
    print_rows(&format!("median of {runs} runs"), &median)?;
    if std::env::var_os("KEEP").is_none() {
        fs::remove_dir_all(&work).ok();
    }
    Ok(())
}

fn run_once(
    work: &Path,
    spec: &TreeSpec,
    bin: &Path,
    rt: &tokio::runtime::Runtime,
    s3: Option<&str>,
) -> Result<Vec<Row>> {
    let src = work.join("src");
    let t = Instant::now();
    let made = generate_tree(&src, spec)?;
    println!(
        "generated {} files, {:.2} GiB in {:.1}s at {}",
        made.files,
        made.bytes as f64 / (1u64 << 30) as f64,
        t.elapsed().as_secs_f64(),
        src.display()
    );
    let bucket = services::unique_bucket("bench");
    let repo = |name: &str| match s3 {
        Some(endpoint) => Repo::S3 { endpoint: endpoint.to_owned(), bucket: bucket.clone(), prefix: name.to_owned() },
        None => Repo::Local(work.join(format!("{name}-repo"))),
    };
    if let Some(endpoint) = s3 {
        rt.block_on(services::create_bucket(endpoint, &bucket));
    }
    let tools: Vec<Box<dyn Tool>> = vec![
        Box::new(Lifeboat { bin: bin.to_owned(), repo: repo("lifeboat"), key: work.join("lifeboat.key") }),
        Box::new(Restic { repo: repo("restic"), cache: work.join("restic-cache") }),
    ];
    for tool in &tools {
        tool.init()?;
    }
    let mut rows = Vec::new();
    for (step, change) in [("first backup", false), ("unchanged backup", false), ("after a day of changes", true)] {
        if change {
            apply_day_of_changes(&src, spec)?;
        }
        let mut results = Vec::new();
        for tool in &tools {
            sync_and_settle();
            results.push(
                figures(tool.as_ref(), rt, || tool.backup(&src)).with_context(|| format!("{} {step}", tool.name()))?,
            );
        }
        rows.push(Row { step, results });
    }
    let mut results = Vec::new();
    for tool in &tools {
        let target = work.join(format!("restore-{}", tool.name()));
        sync_and_settle();
        drop_caches();
        results.push(
            figures(tool.as_ref(), rt, || tool.restore(&target)).with_context(|| format!("{} restore", tool.name()))?,
        );
    }
    rows.push(Row { step: "full restore", results });
    if let Some(endpoint) = s3 {
        replicated_write(work, &src, bin, rt, endpoint, &bucket)?;
        // The emulators keep what they are given (moto in memory and temp
        // files): a benchmark leaves nothing behind.
        rt.block_on(services::delete_bucket(endpoint, &bucket));
    }
    Ok(rows)
}

/// CPU seconds a service from `deploy/services.sh` (by its PID file) has used so far.
fn service_cpu_secs(name: &str) -> f64 {
    let pid = fs::read_to_string(services::services_dir().join(format!("{name}.pid"))).unwrap_or_default();
    let stat = fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    // Fields after the parenthesised command name, from `state` (field 3)
    // on: utime and stime (fields 14 and 15) are at positions 11 and 12.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    if f.len() > 12 { (f[11] + f[12]) / ticks } else { 0.0 }
}

/// Lifeboat's first backup to S3 alone, to Azure alone, then to S3 + Azure
/// with every copy required (policy `all`), with the CPU each process used:
/// on a small machine the emulators' own CPU sets a floor under the time.
fn replicated_write(
    work: &Path,
    src: &Path,
    bin: &Path,
    rt: &tokio::runtime::Runtime,
    s3: &str,
    bucket: &str,
) -> Result<()> {
    let azure = services::azure_endpoint();
    let container = rt.block_on(services::azure_container(&azure, "bench"));
    let targets = [
        ("S3 alone", format!("s3://{bucket}/single?endpoint={s3}")),
        ("Azure alone", format!("azure://{}/{container}/single", services::AZURITE_ACCOUNT)),
        (
            "S3 + Azure (policy all)",
            format!("s3://{bucket}/rep?endpoint={s3},azure://{}/{container}/rep", services::AZURITE_ACCOUNT),
        ),
    ];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!("\nfirst backup to object stores (lifeboat)");
    println!(
        "{:<26}{:>8}{:>14}{:>12}{:>15}{:>14}",
        "target", "wall s", "lifeboat cpu", "moto cpu", "azurite cpu", "cpu floor s"
    );
    let mut secs = Vec::new();
    for (i, (name, location)) in targets.iter().enumerate() {
        let key = work.join(format!("replica-{i}.key"));
        let cmd = |args: &[&str]| {
            let mut c = Command::new(bin);
            c.args(args)
                .env("LIFEBOAT_REPO", location)
                .env("LIFEBOAT_KEY_FILE", &key)
                .env("LIFEBOAT_CACHE_DIR", work.join("cache"))
                .env("AZURE_STORAGE_CONNECTION_STRING", services::azurite_connection_string(&azure));
            c
        };
        measure(&mut cmd(&["key", "generate", "--out", key.to_str().unwrap_or_default()]))?;
        measure(&mut cmd(&["repo", "init"]))?;
        sync_and_settle();
        let (moto0, azurite0) = (service_cpu_secs("s3"), service_cpu_secs("azure"));
        let m = measure(cmd(&["backup", "files"]).arg(src))?;
        let (moto, azurite) = (service_cpu_secs("s3") - moto0, service_cpu_secs("azure") - azurite0);
        let floor = (m.cpu_secs + moto + azurite) / cores;
        println!("{name:<26}{:>8.2}{:>14.2}{:>12.2}{:>15.2}{:>14.2}", m.secs, m.cpu_secs, moto, azurite, floor);
        secs.push(m.secs);
    }
    println!(
        "replicated/S3 alone {:.2}, replicated/Azure alone {:.2} (cpu floor: all processes' CPU over {cores} cores)",
        secs[2] / secs[0],
        secs[2] / secs[1]
    );
    rt.block_on(services::delete_container(&azure, &container));
    Ok(())
}

fn print_rows(title: &str, rows: &[Row]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{title}")?;
    writeln!(
        out,
        "{:<24} {:>10} {:>10} {:>8} {:>10} {:>10} {:>12} {:>12} {:>8} {:>8}",
        "step",
        "lifeboat s",
        "restic s",
        "speedup",
        "lb MiB",
        "restic MiB",
        "lb repo MiB",
        "restic MiB",
        "lb req",
        "rs req"
    )?;
    // Requests are counted on the S3 emulator only.
    let count = |n: u64| if n == 0 { "-".to_owned() } else { n.to_string() };
    for r in rows {
        let (l, x) = (r.results[0], r.results[1]);
        writeln!(
            out,
            "{:<24} {:>10.2} {:>10.2} {:>7.2}x {:>10.1} {:>10.1} {:>12.1} {:>12.1} {:>8} {:>8}",
            r.step,
            l.secs,
            x.secs,
            x.secs / l.secs,
            l.peak_rss_kib as f64 / 1024.0,
            x.peak_rss_kib as f64 / 1024.0,
            l.stored as f64 / (1 << 20) as f64,
            x.stored as f64 / (1 << 20) as f64,
            count(l.requests),
            count(x.requests)
        )?;
    }
    let last = rows.len() - 2;
    let (lb_repo, restic_repo) = (rows[last].results[0].stored, rows[last].results[1].stored);
    let peak = rows.iter().map(|r| r.results[0].peak_rss_kib).max().unwrap_or(0);
    writeln!(
        out,
        "repository size lifeboat/restic: {:.3}; lifeboat peak memory {:.1} MiB",
        lb_repo as f64 / restic_repo as f64,
        peak as f64 / 1024.0
    )?;
    Ok(())
}

fn which_restic() -> Result<()> {
    let ok = Command::new("restic").arg("version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    if !ok {
        bail!("restic is not installed: run deploy/services.sh install (apt-get install restic)");
    }
    Ok(())
}
