//! The built librdmacm exports exactly rdma-core 44's 68 symbols at their versions
//! (golden list `abi/librdmacm-44-exports.txt`, taken from Debian's librdmacm.so.1.3.44.0),
//! has SONAME librdmacm.so.1 and needs libibverbs.so.1.

use std::path::PathBuf;
use std::process::Command;

/// The library to check: the newest of `$SOFTRDMA_LIB_DIR/librdmacm.so.1`,
/// `<workspace>/target/softrdma/librdmacm.so.1` (staged by `scripts/build-softrdma.sh`) and the
/// cdylibs cargo left in this target directory. (`cargo test` alone does not build a
/// cdylib-only package's library, so at least the staged copy must exist.)
fn built_lib() -> PathBuf {
    let mut cands: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("SOFTRDMA_LIB_DIR") {
        cands.push(PathBuf::from(d).join("librdmacm.so.1"));
    }
    cands.push(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/softrdma/librdmacm.so.1"),
    );
    if let Some(target) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent()?.parent()?.parent().map(PathBuf::from))
    {
        for profile in ["debug", "release"] {
            cands.push(target.join(profile).join("librdmacm.so"));
        }
    }
    cands
        .into_iter()
        .filter_map(|p| {
            let t = std::fs::metadata(&p).ok()?.modified().ok()?;
            Some((t, p))
        })
        .max()
        .map(|(_, p)| p)
        .expect(
            "librdmacm not built: run `bash scripts/build-softrdma.sh` (stages \
             target/softrdma/librdmacm.so.1) or set SOFTRDMA_LIB_DIR",
        )
}

fn readelf(args: &[&str], lib: &PathBuf) -> String {
    let out = Command::new("readelf")
        .args(args)
        .arg(lib)
        .output()
        .expect("run readelf (binutils)");
    assert!(out.status.success(), "readelf failed: {:?}", out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn exports_match_rdma_core_44() {
    let lib = built_lib();
    let text = readelf(&["--dyn-syms", "-W"], &lib);
    let mut got: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Num: Value Size Type Bind Vis Ndx Name
            (f.len() >= 8 && f[0].ends_with(':') && f[6] != "UND" && f[7].contains('@'))
                .then(|| f[7].to_string())
        })
        .collect();
    got.sort();
    let golden = include_str!("../abi/librdmacm-44-exports.txt");
    let mut want: Vec<String> = golden.lines().map(str::to_string).collect();
    want.sort();
    assert_eq!(want.len(), 68);
    let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).collect();
    let extra: Vec<_> = got.iter().filter(|g| !want.contains(g)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "export mismatch: missing {missing:?}, extra {extra:?}"
    );
    // Nothing else leaks out unversioned (Rust helpers stay local).
    let unversioned: Vec<_> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 8
                && f[0].ends_with(':')
                && f[6] != "UND"
                && !f[7].contains('@')
                && f[4] == "GLOBAL")
                .then(|| f[7].to_string())
        })
        .collect();
    assert!(
        unversioned.is_empty(),
        "unversioned exports: {unversioned:?}"
    );
}

#[test]
fn soname_and_needed() {
    let lib = built_lib();
    let d = readelf(&["-d"], &lib);
    assert!(d.contains("Library soname: [librdmacm.so.1]"), "{d}");
    assert!(d.contains("Shared library: [libibverbs.so.1]"), "{d}");
    let v = readelf(&["-V"], &lib);
    for node in ["RDMACM_1.0", "RDMACM_1.1", "RDMACM_1.2", "RDMACM_1.3"] {
        assert!(v.contains(node), "version node {node} missing:\n{v}");
    }
}
