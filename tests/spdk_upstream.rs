//! Upstream SPDK over softrdma (opt-in: needs an SPDK build in `SPDK_DIR`).
//!
//! Starts SPDK's own `nvmf_tgt` with `LD_LIBRARY_PATH` pointing at softrdma,
//! configures it over its JSON-RPC UNIX socket (RDMA transport, a malloc
//! bdev, a subsystem with one namespace and an RDMA listener on 127.0.0.1),
//! then drives I/O through it with SPDK's `spdk_nvme_perf` (4 KiB randread)
//! and with this project's initiator (`nvmf-rdma-rs perf`, verified randrw).
//! Both must finish without I/O errors. Every wait is bounded and every
//! process is stopped when the test ends, passes or fails.
//!
//! Environment:
//! - `SPDK_DIR`: an SPDK tree built with `--with-shared --with-rdma`
//!   (`build/bin/nvmf_tgt`, `build/bin/spdk_nvme_perf`, `build/lib`). Unset:
//!   the test prints why it skips and passes.
//! - `SOFTRDMA_LIB_DIR`: softrdma's staged libraries (default
//!   `<repo>/target/softrdma`, made by `bash scripts/build-softrdma.sh`).
//! - `SPDK_PERF_SECS`: seconds of each I/O run (default 3).
//! - `SPDK_MEM_MB`: `-s` memory size of each SPDK process (default 1024).
//!
//! See docs/spdk.md.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
/// Bound of every single RPC and of the target start-up.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time a timed I/O run may take beyond its duration (connect, teardown).
const RUN_SLACK: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// softrdma's staged libraries, or a panic saying how to build them.
fn softrdma_dir() -> PathBuf {
    let dir = std::env::var_os("SOFTRDMA_LIB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/softrdma"));
    assert!(
        dir.join("libibverbs.so.1").is_file() && dir.join("librdmacm.so.1").is_file(),
        "softrdma is not staged in {}: run `bash scripts/build-softrdma.sh` first",
        dir.display()
    );
    dir
}

/// A child process that is stopped (SIGINT, then SIGKILL after 10 s) when
/// dropped, with its stdout+stderr in a log file.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out.try_clone().expect("cloning the log file handle");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        Proc { name, child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the log, for failure messages.
    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        lines[from..].join("\n")
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waitpid")
    }

    /// Waits at most `timeout` for the process to exit on its own; kills it
    /// and panics (with its log) when it does not.
    fn wait_bounded(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not finish within {timeout:?}; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGINT (SPDK apps shut down cleanly on it), SIGKILL after 10 s.
    fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{}: no exit 10 s after SIGINT, killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A minimal JSON-RPC 2.0 client for SPDK's UNIX-domain RPC socket.
struct RpcClient {
    sock: PathBuf,
    next_id: u64,
}

impl RpcClient {
    /// Sends one request on a fresh connection and returns its `result`,
    /// or panics with the method, the parameters and the error object.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut req = json!({ "jsonrpc": "2.0", "method": method, "id": id });
        if !params.is_null() {
            req["params"] = params.clone();
        }
        let mut stream = UnixStream::connect(&self.sock)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.sock.display()));
        stream.set_read_timeout(Some(RPC_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(RPC_TIMEOUT)).unwrap();
        stream
            .write_all(req.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("sending {method}: {e}"));
        let reply = read_one_json(&mut stream)
            .unwrap_or_else(|e| panic!("reading the reply to {method}: {e}"));
        assert_eq!(
            reply["id"],
            json!(id),
            "{method}: reply id mismatch: {reply}"
        );
        if let Some(err) = reply.get("error") {
            panic!("RPC {method} {params} failed: {err}");
        }
        reply.get("result").cloned().unwrap_or(Value::Null)
    }
}

/// Reads bytes until they form one complete JSON value (the socket's read
/// timeout bounds every read).
fn read_one_json(stream: &mut UnixStream) -> Result<Value, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "connection closed after {} bytes: {}",
                buf.len(),
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut values = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
        match values.next() {
            Some(Ok(v)) => return Ok(v),
            Some(Err(e)) if e.is_eof() => continue,
            Some(Err(e)) => {
                return Err(format!("bad JSON ({e}): {}", String::from_utf8_lossy(&buf)))
            }
            None => continue,
        }
    }
}

/// Waits until `nvmf_tgt` answers `spdk_get_version` on its socket.
fn wait_for_rpc(tgt: &mut Proc, rpc: &mut RpcClient) -> Value {
    let start = Instant::now();
    loop {
        if let Some(status) = tgt.exited() {
            panic!(
                "nvmf_tgt exited during start-up ({status}); log {}:\n{}",
                tgt.log.display(),
                tgt.log_tail()
            );
        }
        if UnixStream::connect(&rpc.sock).is_ok() {
            return rpc.call("spdk_get_version", Value::Null);
        }
        assert!(
            start.elapsed() < RPC_TIMEOUT,
            "nvmf_tgt did not open {} within {RPC_TIMEOUT:?}; log:\n{}",
            rpc.sock.display(),
            tgt.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A port unlikely to collide with other tests running on this machine.
fn port() -> u16 {
    if let Ok(p) = std::env::var("SPDK_TEST_PORT") {
        return p.parse().expect("SPDK_TEST_PORT is a port number");
    }
    44000 + (std::process::id() % 1000) as u16
}

/// `Total : IOPS MiB/s avg min max` of spdk_nvme_perf's summary.
fn spdk_perf_total_iops(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.trim_start().starts_with("Total"))?;
    let (_, nums) = line.rsplit_once(':')?;
    nums.split_whitespace().next()?.parse().ok()
}

#[test]
fn upstream_nvmf_tgt_over_softrdma() {
    let Some(spdk) = std::env::var_os("SPDK_DIR").map(PathBuf::from) else {
        eprintln!(
            "SPDK_DIR not set: skipping the upstream SPDK nvmf_tgt / spdk_nvme_perf test \
             over softrdma (see docs/spdk.md)"
        );
        return;
    };
    let nvmf_tgt = spdk.join("build/bin/nvmf_tgt");
    let spdk_perf = spdk.join("build/bin/spdk_nvme_perf");
    for bin in [&nvmf_tgt, &spdk_perf] {
        assert!(
            bin.is_file(),
            "SPDK_DIR={} has no {}: build SPDK with --with-shared --with-rdma",
            spdk.display(),
            bin.display()
        );
    }
    let softrdma = softrdma_dir();
    let secs = env_u64("SPDK_PERF_SECS", 3);
    let mem_mb = env_u64("SPDK_MEM_MB", 1024).to_string();

    let scratch =
        Scratch(std::env::temp_dir().join(format!("spdk-upstream-{}", std::process::id())));
    std::fs::create_dir_all(scratch.0.join("shm")).unwrap();
    let ld_path = format!(
        "{}:{}",
        softrdma.display(),
        spdk.join("build/lib").display()
    );
    let with_env = |cmd: &mut Command| {
        cmd.env("LD_LIBRARY_PATH", &ld_path)
            .env("SOFTRDMA_SHM_DIR", scratch.0.join("shm"))
            .env("SOFTRDMA_QUIET", "1");
    };

    // The target: one reactor on core 0, no hugepages, no PCI probing, its own
    // RPC socket.
    let sock = scratch.0.join("nvmf_tgt.sock");
    let mut cmd = Command::new(&nvmf_tgt);
    cmd.args(["--no-huge", "-s", &mem_mb, "--no-pci", "-m", "0x1", "-r"])
        .arg(&sock);
    with_env(&mut cmd);
    let mut tgt = Proc::spawn("nvmf_tgt", cmd, scratch.0.join("nvmf_tgt.log"));
    let mut rpc = RpcClient { sock, next_id: 0 };
    let version = wait_for_rpc(&mut tgt, &mut rpc);
    eprintln!("nvmf_tgt up: {version}");

    let port = port();
    rpc.call("nvmf_create_transport", json!({ "trtype": "RDMA" }));
    rpc.call(
        "bdev_malloc_create",
        json!({ "name": "Malloc0", "num_blocks": 65536, "block_size": 512 }),
    );
    rpc.call(
        "nvmf_create_subsystem",
        json!({ "nqn": NQN, "allow_any_host": true, "serial_number": "SPDK00000000000001" }),
    );
    rpc.call(
        "nvmf_subsystem_add_ns",
        json!({ "nqn": NQN, "namespace": { "bdev_name": "Malloc0" } }),
    );
    rpc.call(
        "nvmf_subsystem_add_listener",
        json!({ "nqn": NQN, "listen_address": {
            "trtype": "RDMA", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()
        }}),
    );
    let transports = rpc.call("nvmf_get_transports", Value::Null);
    assert!(
        transports
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["trtype"] == "RDMA")),
        "nvmf_get_transports shows no RDMA transport: {transports}"
    );
    eprintln!("RDMA transport: {transports}");

    // SPDK's own initiator: 4 KiB random reads at QD 32, on core 1.
    let trid = format!("trtype:RDMA adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN}");
    let mut cmd = Command::new(&spdk_perf);
    cmd.args([
        "--no-huge",
        "-s",
        &mem_mb,
        "-c",
        "0x2",
        "-q",
        "32",
        "-o",
        "4096",
    ])
    .args(["-w", "randread", "-t", &secs.to_string(), "-r", &trid]);
    with_env(&mut cmd);
    let mut perf = Proc::spawn("spdk_nvme_perf", cmd, scratch.0.join("spdk_nvme_perf.log"));
    let status = perf.wait_bounded(Duration::from_secs(secs) + RUN_SLACK);
    let out = perf.log_text();
    eprintln!("spdk_nvme_perf ({status}):\n{out}");
    assert!(
        tgt.exited().is_none(),
        "nvmf_tgt died during spdk_nvme_perf; log:\n{}",
        tgt.log_tail()
    );
    assert!(status.success(), "spdk_nvme_perf failed ({status}):\n{out}");
    for bad in ["completed with error", "starting I/O failed", "ERROR"] {
        assert!(
            !out.contains(bad),
            "spdk_nvme_perf reported {bad:?}:\n{out}"
        );
    }
    let iops = spdk_perf_total_iops(&out)
        .unwrap_or_else(|| panic!("no `Total` line in spdk_nvme_perf output:\n{out}"));
    assert!(iops > 0.0, "spdk_nvme_perf completed no I/O:\n{out}");

    // This project's initiator against the same target: verified mixed I/O.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nvmf-rdma-rs"));
    cmd.args(["perf", "--addr", &format!("127.0.0.1:{port}"), "--nqn", NQN])
        .args([
            "--workload",
            "randrw",
            "--verify",
            "--region",
            "8M",
            "-q",
            "32",
        ])
        .args(["--time", &secs.to_string()]);
    with_env(&mut cmd);
    let mut ours = Proc::spawn("nvmf-rdma-rs perf", cmd, scratch.0.join("ours.log"));
    let status = ours.wait_bounded(Duration::from_secs(secs) + RUN_SLACK);
    let out = ours.log_text();
    eprintln!("nvmf-rdma-rs perf ({status}):\n{out}");
    assert!(
        status.success(),
        "nvmf-rdma-rs perf against nvmf_tgt failed ({status}):\n{out}\nnvmf_tgt log:\n{}",
        tgt.log_tail()
    );

    // The target saw the traffic on its RDMA transport and is still healthy.
    let stats = rpc.call("nvmf_get_stats", Value::Null);
    eprintln!("nvmf_get_stats: {stats}");
    assert!(
        stats.to_string().contains("\"trtype\":\"RDMA\""),
        "nvmf_get_stats has no RDMA poll-group statistics: {stats}"
    );
    let completed: u64 = stats["poll_groups"]
        .as_array()
        .map(|groups| {
            groups
                .iter()
                .filter_map(|g| g["completed_nvme_io"].as_u64())
                .sum()
        })
        .unwrap_or(0);
    assert!(
        completed > 0,
        "nvmf_get_stats reports no completed NVMe I/O: {stats}"
    );
    tgt.stop();
    let log = tgt.log_text();
    assert!(
        !log.contains("Segmentation fault") && !log.contains("Assertion"),
        "nvmf_tgt log shows a crash:\n{log}"
    );
}
