//! An SPDK build tree: where its programs are and which release it is.

use std::path::{Path, PathBuf};

/// Why a tree cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A program the comparison runs is missing.
    #[error("{dir} has no {what}: build SPDK there with --with-shared --with-rdma")]
    Missing {
        /// The tree.
        dir: PathBuf,
        /// The missing file, relative to the tree.
        what: &'static str,
    },
}

/// A usable SPDK build.
#[derive(Debug, Clone)]
pub struct SpdkTree {
    /// Root of the tree.
    pub dir: PathBuf,
    /// Release from `include/spdk/version.h`, e.g. `v26.01` or `v24.01.1-pre`.
    pub version: String,
}

impl SpdkTree {
    /// Checks `dir` has what a target run needs (`nvmf_tgt`, `build/lib`).
    pub fn open(dir: &Path) -> Result<SpdkTree, TreeError> {
        for what in ["build/bin/nvmf_tgt", "build/lib"] {
            if !dir.join(what).exists() {
                return Err(TreeError::Missing {
                    dir: dir.to_path_buf(),
                    what,
                });
            }
        }
        let header =
            std::fs::read_to_string(dir.join("include/spdk/version.h")).unwrap_or_default();
        Ok(SpdkTree {
            dir: dir.to_path_buf(),
            version: version_of_header(&header).unwrap_or_else(|| "unknown".into()),
        })
    }

    /// Checks the tree also has `spdk_nvme_perf` (the initiator of every run).
    pub fn require_perf(&self) -> Result<PathBuf, TreeError> {
        let p = self.dir.join("build/bin/spdk_nvme_perf");
        if p.is_file() {
            Ok(p)
        } else {
            Err(TreeError::Missing {
                dir: self.dir.clone(),
                what: "build/bin/spdk_nvme_perf",
            })
        }
    }

    /// `build/bin/nvmf_tgt`.
    pub fn nvmf_tgt(&self) -> PathBuf {
        self.dir.join("build/bin/nvmf_tgt")
    }
}

/// `vMAJOR.MINOR[.PATCH][SUFFIX]` from the `#define SPDK_VERSION_*` lines.
pub fn version_of_header(h: &str) -> Option<String> {
    let get = |name: &str| {
        h.lines().find_map(|l| {
            let rest = l.trim().strip_prefix("#define")?.trim();
            let rest = rest.strip_prefix(name)?;
            rest.starts_with([' ', '\t'])
                .then(|| rest.trim().to_string())
        })
    };
    let major: u32 = get("SPDK_VERSION_MAJOR")?.parse().ok()?;
    let minor: u32 = get("SPDK_VERSION_MINOR")?.parse().ok()?;
    let patch: u32 = get("SPDK_VERSION_PATCH")?.parse().ok()?;
    let suffix = get("SPDK_VERSION_SUFFIX").unwrap_or_default();
    let suffix = suffix.trim_matches('"');
    let mut v = format!("v{major}.{minor:02}");
    if patch != 0 {
        v.push_str(&format!(".{patch}"));
    }
    v.push_str(suffix);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let h = "#define SPDK_VERSION_MAJOR\t26\n#define SPDK_VERSION_MINOR\t1\n\
                 #define SPDK_VERSION_PATCH\t0\n#define SPDK_VERSION_SUFFIX\t\"\"\n\
                 #define SPDK_VERSION_MAJOR_STRING\tx\n";
        assert_eq!(version_of_header(h).as_deref(), Some("v26.01"));
        let h = h
            .replace("PATCH\t0", "PATCH\t1")
            .replace("\"\"", "\"-pre\"");
        assert_eq!(version_of_header(&h).as_deref(), Some("v26.01.1-pre"));
        assert_eq!(version_of_header("nothing"), None);
    }

    #[test]
    fn missing_tree_is_named() {
        let e = SpdkTree::open(Path::new("/nonexistent-spdk")).unwrap_err();
        assert!(e
            .to_string()
            .contains("/nonexistent-spdk has no build/bin/nvmf_tgt"));
    }
}
