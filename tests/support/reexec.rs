//! Re-executing one test under softrdma: the single helper every
//! softrdma-backed test binary uses (`tests/e2e_common`,
//! `tests/initiator_loopback.rs`, `tests/verbs_loopback.rs`).
//!
//! The parent re-runs its own test binary for exactly one test with
//! `LD_LIBRARY_PATH` at the staged softrdma libraries, a private fabric
//! directory (`SOFTRDMA_SHM_DIR`, so concurrent runs and stale fabric
//! segments of other builds never interfere) and a marker variable that makes
//! the child run the body. The parent passes only when the child exits 0
//! **and** its harness reports that exactly one test ran and passed, so a
//! filter that matches nothing cannot pass vacuously.
#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the harness prints when exactly one test ran and passed.
const ONE_PASSED: &str = "test result: ok. 1 passed";

/// The staged softrdma directory (`SOFTRDMA_LIB_DIR`, default
/// `target/softrdma`), or a panic saying how to build it.
pub fn softrdma_dir() -> PathBuf {
    let d = std::env::var_os("SOFTRDMA_LIB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/softrdma"));
    for f in ["libibverbs.so.1", "librdmacm.so.1", "softrdma-ctl"] {
        assert!(
            d.join(f).is_file(),
            "softrdma is not built ({} missing): run `bash scripts/build-softrdma.sh` first \
             (or set SOFTRDMA_LIB_DIR)",
            d.join(f).display()
        );
    }
    d
}

/// Whether this process is the re-executed child (`child_env` is set).
pub fn in_child(child_env: &str) -> bool {
    std::env::var_os(child_env).is_some()
}

/// In the child: returns `true` (run the body). In the parent: re-runs test
/// `name` under softrdma, waits at most `timeout`, echoes the child's output,
/// asserts it exited 0 with exactly one test passed, and returns `false`.
pub fn under_softrdma(child_env: &str, name: &str, timeout: Duration) -> bool {
    if in_child(child_env) {
        return true;
    }
    let dir = softrdma_dir();
    let shm = std::env::temp_dir().join(format!("nvmf-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&shm).expect("creating the private fabric directory");
    let mut ld = dir.into_os_string();
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        ld.push(":");
        ld.push(old);
    }
    let mut child = Command::new(std::env::current_exe().expect("current test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(child_env, "1")
        .env("LD_LIBRARY_PATH", ld)
        .env("SOFTRDMA_SHM_DIR", &shm)
        .env("SOFTRDMA_QUIET", "1")
        .env("SOFTRDMA_FAULT_LOG", shm.join("faults.log"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("re-executing the test under softrdma");
    let out_reader = drain(child.stdout.take().expect("child stdout"));
    let err_reader = drain(child.stderr.take().expect("child stderr"));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for the child test") {
            break Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    let _ = std::fs::remove_dir_all(&shm);
    print!("{stdout}");
    eprint!("{stderr}");
    let Some(status) = status else {
        panic!("{name} under softrdma timed out after {timeout:?}");
    };
    assert!(
        status.success() && stdout.contains(ONE_PASSED),
        "{name} under softrdma failed ({status}; the child must report {ONE_PASSED:?}); \
         its output is above"
    );
    false
}

/// Reads a pipe to the end on its own thread (so a chatty child never blocks
/// on a full pipe while the parent waits for it).
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}
