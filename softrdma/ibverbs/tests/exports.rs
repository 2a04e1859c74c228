//! The built libraries export exactly the rdma-core 44 ABI: every symbol of the golden lists
//! committed in `softrdma/{ibverbs,rdmacm}/abi/` (see `docs/softrdma.md`) at its exact version,
//! default or not,
//! and nothing else except softrdma's private node. Checks `target/softrdma/libibverbs.so.1` and,
//! when built, `target/softrdma/librdmacm.so.1`, with `objdump -T`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// `name@@VER` / `name@VER` for every defined, versioned dynamic symbol.
fn exports(lib: &Path) -> BTreeSet<String> {
    let out = Command::new("objdump")
        .arg("-T")
        .arg(lib)
        .output()
        .expect("objdump (binutils) must be installed");
    assert!(out.status.success(), "objdump -T {} failed", lib.display());
    let mut set = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4
            || line.contains("*UND*")
            || !(line.contains(" DF ") || line.contains(" DO "))
        {
            continue;
        }
        let name = f[f.len() - 1];
        let ver = f[f.len() - 2];
        if ver == "Base" || ver.starts_with("GLIBC") {
            continue;
        }
        let s = if let Some(v) = ver.strip_prefix('(').and_then(|v| v.strip_suffix(')')) {
            format!("{name}@{v}")
        } else {
            format!("{name}@@{ver}")
        };
        set.insert(s);
    }
    set
}

/// The golden list committed in the repository (`softrdma/{ibverbs,rdmacm}/abi/<file>`,
/// `docs/softrdma.md`); a reference copy next to the repository, when present, is preferred.
fn golden(file: &str) -> Option<BTreeSet<String>> {
    let root = repo_root();
    let candidates = [
        root.join("../shared/docs/abi").join(file),
        root.join("softrdma/ibverbs/abi").join(file),
        root.join("softrdma/rdmacm/abi").join(file),
    ];
    let p = candidates.iter().find(|p| p.exists())?;
    println!("golden list: {}", p.display());
    let text = std::fs::read_to_string(p).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_whitespace().last())
            .map(str::to_string)
            .collect(),
    )
}

fn check(lib: &Path, golden_file: &str, allowed_extra: &str) -> bool {
    let Some(want) = golden(golden_file) else {
        panic!(
            "golden list {golden_file} not found in ../shared/docs/abi (next to the repository) \
             nor in softrdma/{{ibverbs,rdmacm}}/abi"
        );
    };
    let have = exports(lib);
    let missing: Vec<_> = want.difference(&have).collect();
    let extra: Vec<_> = have
        .difference(&want)
        .filter(|s| !s.ends_with(allowed_extra))
        .collect();
    println!(
        "{}: {} exports, golden {} ({golden_file})",
        lib.display(),
        have.len(),
        want.len()
    );
    if !missing.is_empty() {
        eprintln!("missing from {}: {missing:?}", lib.display());
    }
    if !extra.is_empty() {
        eprintln!("unexpected in {}: {extra:?}", lib.display());
    }
    missing.is_empty() && extra.is_empty()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("exports: test");
        return;
    }
    let dir = repo_root().join("target/softrdma");
    let verbs = dir.join("libibverbs.so.1");
    assert!(
        verbs.exists(),
        "softrdma is not built ({} missing): run `bash scripts/build-softrdma.sh`",
        verbs.display()
    );
    let mut ok = check(&verbs, "libibverbs-44-exports.txt", "@@SOFTRDMA_PRIVATE_1");
    let cm = dir.join("librdmacm.so.1");
    if cm.exists() {
        ok &= check(&cm, "librdmacm-44-exports.txt", "@@SOFTRDMA_PRIVATE_1");
    } else {
        println!("librdmacm.so.1 not built: only libibverbs checked");
    }
    assert!(ok, "export table differs from rdma-core 44");
    println!("exports match rdma-core 44");
}
