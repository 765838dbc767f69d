//! Where Lifeboat keeps files on the local machine, following the XDG base
//! directories with an override per kind and a system fallback for daemons
//! without a home.

use std::path::PathBuf;

/// `$override_var`, else `$xdg_var/lifeboat`, else `~/home_rel`, else `system`.
fn local_dir(override_var: &str, xdg_var: &str, home_rel: &str, system: &str) -> PathBuf {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = env(override_var) {
        return dir;
    }
    if let Some(dir) = env(xdg_var) {
        return dir.join("lifeboat");
    }
    match env("HOME") {
        Some(home) => home.join(home_rel),
        None => PathBuf::from(system),
    }
}

/// Durable local state (the outbox): `LIFEBOAT_STATE_DIR`, else
/// `$XDG_STATE_HOME/lifeboat`, else `~/.local/state/lifeboat`, else `/var/lib/lifeboat`.
pub fn state_dir() -> PathBuf {
    local_dir("LIFEBOAT_STATE_DIR", "XDG_STATE_HOME", ".local/state/lifeboat", "/var/lib/lifeboat")
}

/// Disposable caches: `LIFEBOAT_CACHE_DIR`, else `$XDG_CACHE_HOME/lifeboat`,
/// else `~/.cache/lifeboat`, else `/var/cache/lifeboat`.
pub fn cache_dir() -> PathBuf {
    local_dir("LIFEBOAT_CACHE_DIR", "XDG_CACHE_HOME", ".cache/lifeboat", "/var/cache/lifeboat")
}
