//! `libnvmf_rdma_rs.so` loads into any process and does nothing there.
//!
//! `LD_PRELOAD` reaches every child of a shell (`timeout`, Python,
//! `spdk_nvme_perf`), so the library must load silently into processes that
//! are not SPDK's `nvmf_tgt`: no undefined SPDK symbol (immediate binding
//! would kill the process), and a constructor that finds no SPDK and returns.
//! Runs in CI without SPDK; with `SPDK_DIR` set at build time the same tests
//! check the library built with the SPDK glue (docs/spdk-plugin.md).

use std::path::PathBuf;
use std::process::Command;

/// The cdylib Cargo built for this test run: `target/<profile>/deps/`, next
/// to the test binary (the copy in `target/<profile>/` is only refreshed by
/// `cargo build`, so it may be stale).
fn cdylib() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .expect("test binary lives in target/<profile>/deps");
    let lib = dir.join("libnvmf_rdma_rs.so");
    assert!(
        lib.is_file(),
        "{} not built (the crate's cdylib target)",
        lib.display()
    );
    lib
}

/// The status `nvmf_rdma_rs_spdk_status()` must report in a non-SPDK process.
fn expected_status() -> u32 {
    if cfg!(spdk) {
        1 // NoSpdk: the glue is in, its constructor ran and found no SPDK
    } else {
        0 // NotBuilt
    }
}

fn assert_silent_success(what: &str, out: std::process::Output) {
    assert!(
        out.status.success(),
        "{what} with LD_PRELOAD failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "{what} with LD_PRELOAD printed something:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn preloaded_into_true_is_silent() {
    let out = Command::new("true")
        .env("LD_PRELOAD", cdylib())
        .output()
        .expect("running true");
    // ld.so reports a library it cannot preload on stderr, so silence also
    // shows that it loaded.
    assert_silent_success("true", out);
}

#[test]
fn preloaded_into_python_is_silent_and_does_nothing() {
    let lib = cdylib();
    // Exit 0 only when the library is mapped (LD_PRELOAD took effect) and its
    // constructor left the status a non-SPDK process must have.
    let script = format!(
        "import ctypes,sys; m=open('/proc/self/maps').read(); \
         l=ctypes.CDLL('{lib}'); \
         sys.exit(0 if '{lib}' in m and l.nvmf_rdma_rs_spdk_status()=={st} else 3)",
        lib = lib.display(),
        st = expected_status()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .env("LD_PRELOAD", &lib)
        .output()
        .expect("running python3");
    assert_silent_success("python3", out);
}

#[test]
fn no_undefined_spdk_symbols() {
    let lib = cdylib();
    let out = Command::new("nm")
        .args(["-D", "--undefined-only"])
        .arg(&lib)
        .output()
        .expect("running nm (binutils)");
    assert!(out.status.success(), "nm failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains("@GLIBC")),
        "nm listed no undefined symbols at all (is this the cdylib?):\n{text}"
    );
    let spdk: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("spdk_") || l.contains("g_trace"))
        .collect();
    assert!(
        spdk.is_empty(),
        "undefined SPDK symbols in {}: {spdk:?}",
        lib.display()
    );
}
