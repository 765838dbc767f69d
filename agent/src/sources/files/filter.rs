//! Include and exclude globs.
//!
//! A pattern with a `/` is matched against the whole absolute path; one
//! without is matched against the entry's name, so `*.tmp` excludes
//! temporary files anywhere and `/var/www/cache` excludes one directory.

use std::path::Path;

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::FilesError;

/// Compiled include and exclude patterns.
#[derive(Debug, Clone)]
pub struct Filter {
    exclude_path: GlobSet,
    exclude_name: GlobSet,
    include_path: GlobSet,
    include_name: GlobSet,
    has_includes: bool,
}

fn build(patterns: &[String]) -> Result<(GlobSet, GlobSet), FilesError> {
    let mut by_path = GlobSetBuilder::new();
    let mut by_name = GlobSetBuilder::new();
    for p in patterns {
        let glob =
            Glob::new(p).map_err(|e| FilesError::Pattern { pattern: p.clone(), reason: e.kind().to_string() })?;
        if p.contains('/') {
            by_path.add(glob)
        } else {
            by_name.add(glob)
        };
    }
    let err = |e: globset::Error| FilesError::Pattern { pattern: patterns.join(" "), reason: e.to_string() };
    Ok((by_path.build().map_err(err)?, by_name.build().map_err(err)?))
}

impl Filter {
    /// Compiles the patterns; an invalid one is an error naming it.
    pub fn new(includes: &[String], excludes: &[String]) -> Result<Self, FilesError> {
        let (exclude_path, exclude_name) = build(excludes)?;
        let (include_path, include_name) = build(includes)?;
        Ok(Filter { exclude_path, exclude_name, include_path, include_name, has_includes: !includes.is_empty() })
    }

    /// True if the entry at `path` (any kind) is excluded.
    pub fn excluded(&self, path: &Path) -> bool {
        let name = path.file_name().map(Path::new);
        self.exclude_path.is_match(path) || name.is_some_and(|n| self.exclude_name.is_match(n))
    }

    /// True if a file at `path` passes the include patterns (all files do
    /// when there are none). Directories are always walked.
    pub fn included(&self, path: &Path) -> bool {
        if !self.has_includes {
            return true;
        }
        let name = path.file_name().map(Path::new);
        self.include_path.is_match(path) || name.is_some_and(|n| self.include_name.is_match(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        let f = Filter::new(&[], &["*.tmp".into(), "/srv/app/cache".into(), "/srv/**/node_modules".into()]).unwrap();
        assert!(f.excluded(Path::new("/srv/app/x.tmp")));
        assert!(f.excluded(Path::new("/srv/app/cache")));
        assert!(f.excluded(Path::new("/srv/a/b/node_modules")));
        assert!(!f.excluded(Path::new("/srv/app/cache2")));
        assert!(!f.excluded(Path::new("/srv/app/x.tmpl")));
        assert!(f.included(Path::new("/anything")));

        let inc = Filter::new(&["*.conf".into()], &[]).unwrap();
        assert!(inc.included(Path::new("/etc/a.conf")));
        assert!(!inc.included(Path::new("/etc/a.txt")));
        assert!(Filter::new(&[], &["a[".into()]).is_err());
    }
}
