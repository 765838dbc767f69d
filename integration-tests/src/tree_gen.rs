//! Deterministic test trees shaped like an application node: large
//! incompressible media, many small images, compressible logs, thousands of
//! tiny configs, symlinks.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// Shape of a generated tree.
#[derive(Debug, Clone)]
pub struct TreeSpec {
    /// Large incompressible files.
    pub media_files: usize,
    /// Size of each media file.
    pub media_size: usize,
    /// Small incompressible files.
    pub images: usize,
    /// Images are between this and 5× this size.
    pub image_min: usize,
    /// Compressible log files.
    pub logs: usize,
    /// Size of each log file.
    pub log_size: usize,
    /// Tiny text files.
    pub configs: usize,
    /// Symbolic links.
    pub symlinks: usize,
}

impl TreeSpec {
    /// About `gib` GiB: ~45% media, ~33% images, ~19% logs, the rest configs.
    pub fn app_node(gib: f64) -> Self {
        let scale = |n: f64| ((n * gib).round() as usize).max(1);
        TreeSpec {
            media_files: scale(10.0),
            media_size: 48 << 20,
            images: scale(3000.0),
            image_min: 40 << 10,
            logs: scale(24.0),
            log_size: 8 << 20,
            configs: scale(5000.0),
            symlinks: scale(200.0),
        }
    }

    /// A few MiB, for tests.
    pub fn small() -> Self {
        TreeSpec {
            media_files: 2,
            media_size: 3 << 20,
            images: 60,
            image_min: 8 << 10,
            logs: 3,
            log_size: 512 << 10,
            configs: 120,
            symlinks: 10,
        }
    }
}

/// What [`generate_tree`] wrote.
#[derive(Debug, Default)]
pub struct Generated {
    /// Regular files.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

fn rng(seed: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(seed)
}

fn random_bytes(r: &mut Xoshiro256PlusPlus, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    r.fill_bytes(&mut v);
    v
}

fn log_text(r: &mut Xoshiro256PlusPlus, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 256);
    let services = ["api", "auth", "partners", "qr", "payments"];
    let paths = ["/v1/partners", "/v1/offers", "/v1/users/me", "/v1/qr/scan", "/health"];
    while out.len() < len {
        let x = r.next_u64();
        let _ = writeln!(
            out,
            "2026-11-{:02}T{:02}:{:02}:{:02}.{:03}Z INFO service={} request_id={:016x} path={}/{} status={} duration_ms={}",
            1 + x % 28,
            (x >> 5) % 24,
            (x >> 10) % 60,
            (x >> 16) % 60,
            (x >> 22) % 1000,
            services[((x >> 32) % 5) as usize],
            x.rotate_left(17) & 0xffff_ffff,
            paths[((x >> 35) % 5) as usize],
            (x >> 38) % 5000,
            if (x >> 50).is_multiple_of(50) { 500 } else { 200 },
            (x >> 52) % 900
        );
    }
    out.truncate(len);
    out
}

fn write(path: &Path, data: &[u8], made: &mut Generated) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    made.files += 1;
    made.bytes += data.len() as u64;
    Ok(())
}

fn image_path(root: &Path, i: usize) -> std::path::PathBuf {
    root.join(format!("uploads/images/{:03}/img-{i:05}.jpg", i / 100))
}

fn config_path(root: &Path, i: usize) -> std::path::PathBuf {
    root.join(format!("configs/svc-{:02}/env-{}/setting-{i:05}.conf", i % 50, (i / 50) % 10))
}

/// Writes the tree under `root` (which must not exist yet).
pub fn generate_tree(root: &Path, spec: &TreeSpec) -> Result<Generated> {
    let mut made = Generated::default();
    let mut r = rng(1);
    for i in 0..spec.media_files {
        write(&root.join(format!("media/video-{i:03}.mp4")), &random_bytes(&mut r, spec.media_size), &mut made)?;
    }
    for i in 0..spec.images {
        let len = spec.image_min + (r.next_u64() as usize % (spec.image_min * 4));
        let mut img = b"\xff\xd8\xff\xe0JFIF".to_vec();
        img.extend(random_bytes(&mut r, len));
        write(&image_path(root, i), &img, &mut made)?;
    }
    for i in 0..spec.logs {
        write(&root.join(format!("logs/app-{i:03}.log")), &log_text(&mut r, spec.log_size), &mut made)?;
    }
    for i in 0..spec.configs {
        let text = format!(
            "# service {}\nlisten = \"0.0.0.0:{}\"\nreplicas = {}\ntoken = \"{:032x}\"\n",
            i % 50,
            8000 + i % 1000,
            1 + i % 7,
            r.next_u64() as u128 * r.next_u64() as u128
        );
        write(&config_path(root, i), text.as_bytes(), &mut made)?;
    }
    let links = root.join("uploads/links");
    fs::create_dir_all(&links)?;
    fs::create_dir_all(root.join("uploads/empty-dir"))?;
    for i in 0..spec.symlinks {
        let target = format!("../images/{:03}/img-{:05}.jpg", (i * 7 % spec.images) / 100, i * 7 % spec.images);
        std::os::unix::fs::symlink(target, links.join(format!("link-{i:04}.jpg")))?;
    }
    Ok(made)
}

/// A day on the node: logs grow, ~5% of images are rewritten, new uploads
/// and configs appear, and a region inside two media files is rewritten.
pub fn apply_day_of_changes(root: &Path, spec: &TreeSpec) -> Result<()> {
    let mut r = rng(2);
    for i in 0..spec.logs {
        let path = root.join(format!("logs/app-{i:03}.log"));
        let mut f = fs::OpenOptions::new().append(true).open(&path).with_context(|| format!("{}", path.display()))?;
        f.write_all(&log_text(&mut r, spec.log_size / 8))?;
    }
    let mut made = Generated::default();
    for i in (0..spec.images).step_by(20) {
        let path = image_path(root, i);
        let len = fs::metadata(&path)?.len() as usize;
        write(&path, &random_bytes(&mut r, len), &mut made)?;
    }
    for i in 0..spec.images / 20 {
        let len = spec.image_min + (r.next_u64() as usize % (spec.image_min * 4));
        write(&image_path(root, spec.images + i), &random_bytes(&mut r, len), &mut made)?;
    }
    for i in 0..spec.configs / 50 {
        write(&config_path(root, spec.configs + i), format!("new = {i}\n").as_bytes(), &mut made)?;
    }
    for i in 0..spec.media_files.min(2) {
        use std::os::unix::fs::FileExt;
        let path = root.join(format!("media/video-{i:03}.mp4"));
        let f = fs::OpenOptions::new().write(true).open(&path)?;
        let region = (spec.media_size / 12).max(4096);
        f.write_all_at(&random_bytes(&mut r, region), (spec.media_size / 2) as u64)?;
    }
    Ok(())
}
