//! Helpers shared by the tests that drive SPDK's own processes
//! (`spdk_upstream.rs`, `spdk_plugin.rs`): child processes with bounded waits
//! and logs, scratch directories, and a small JSON-RPC client for SPDK's
//! UNIX socket. See docs/spdk.md.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Bound of every single RPC and of the target start-up.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// softrdma's staged libraries, or a panic saying how to build them.
pub fn softrdma_dir() -> PathBuf {
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
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Proc {
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

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        lines[from..].join("\n")
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waitpid")
    }

    /// Waits at most `timeout` for the process to exit on its own; kills it
    /// and panics (with its log) when it does not.
    pub fn wait_bounded(&mut self, timeout: Duration) -> ExitStatus {
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
    pub fn stop(&mut self) {
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
pub struct Scratch(pub PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A minimal JSON-RPC 2.0 client for SPDK's UNIX-domain RPC socket.
pub struct RpcClient {
    pub sock: PathBuf,
    pub next_id: u64,
}

impl RpcClient {
    /// Sends one request on a fresh connection and returns its `result`,
    /// or panics with the method, the parameters and the error object.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params.clone()) {
            Ok(v) => v,
            Err(err) => panic!("RPC {method} {params} failed: {err}"),
        }
    }

    /// Sends one request on a fresh connection: `Ok(result)` or
    /// `Err(error object)`; panics only when the socket fails.
    pub fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let (reply, _) = self.exchange(method, params);
        match reply.get("error") {
            Some(err) => Err(err.clone()),
            None => Ok(reply.get("result").cloned().unwrap_or(Value::Null)),
        }
    }

    /// The reply's raw text, as SPDK wrote it (parsing would hide a key
    /// written twice).
    pub fn call_raw(&mut self, method: &str, params: Value) -> String {
        let (reply, raw) = self.exchange(method, params.clone());
        if let Some(err) = reply.get("error") {
            panic!("RPC {method} {params} failed: {err}");
        }
        raw
    }

    /// One request and its reply, parsed and raw.
    fn exchange(&mut self, method: &str, params: Value) -> (Value, String) {
        self.next_id += 1;
        let id = self.next_id;
        let mut req = json!({ "jsonrpc": "2.0", "method": method, "id": id });
        if !params.is_null() {
            req["params"] = params;
        }
        let mut stream = UnixStream::connect(&self.sock)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.sock.display()));
        stream.set_read_timeout(Some(RPC_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(RPC_TIMEOUT)).unwrap();
        stream
            .write_all(req.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("sending {method}: {e}"));
        let (reply, raw) = read_one_json(&mut stream)
            .unwrap_or_else(|e| panic!("reading the reply to {method}: {e}"));
        assert_eq!(
            reply["id"],
            json!(id),
            "{method}: reply id mismatch: {reply}"
        );
        (reply, raw)
    }
}

/// Reads bytes until they form one complete JSON value (the socket's read
/// timeout bounds every read); returns it parsed and as text.
pub fn read_one_json(stream: &mut UnixStream) -> Result<(Value, String), String> {
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
            Some(Ok(v)) => return Ok((v, String::from_utf8_lossy(&buf).into_owned())),
            Some(Err(e)) if e.is_eof() => continue,
            Some(Err(e)) => {
                return Err(format!("bad JSON ({e}): {}", String::from_utf8_lossy(&buf)))
            }
            None => continue,
        }
    }
}

/// Waits until `nvmf_tgt` answers `spdk_get_version` on its socket.
pub fn wait_for_rpc(tgt: &mut Proc, rpc: &mut RpcClient) -> Value {
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

/// The cdylib Cargo built for this test run (next to the test binary).
pub fn cdylib() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let lib = exe
        .parent()
        .expect("target/<profile>/deps")
        .join("libnvmf_rdma_rs.so");
    assert!(lib.is_file(), "{} not built", lib.display());
    lib
}

/// `SPDK_DIR`, or `None` after printing why the test `what` is skipped.
/// Panics when SPDK_DIR is set but the crate was built without it.
pub fn spdk_dir_or_skip(what: &str, built_with_spdk: bool) -> Option<PathBuf> {
    let Some(spdk) = std::env::var_os("SPDK_DIR").map(PathBuf::from) else {
        eprintln!("SPDK_DIR not set: skipping {what} (see docs/spdk-plugin.md)");
        return None;
    };
    assert!(
        built_with_spdk,
        "SPDK_DIR is set but this crate was built without it: the plugin glue is not in the \
         library. Rebuild with SPDK_DIR set (cargo rebuilds when it changes)."
    );
    Some(spdk)
}

/// `<softrdma>/softrdma-ctl <args>` against the fabric in `shm`; returns its
/// output, panicking when it fails.
pub fn softrdma_ctl_in(softrdma: &Path, shm: &Path, args: &[&str]) -> String {
    let out = Command::new(softrdma.join("softrdma-ctl"))
        .args(args)
        .env("SOFTRDMA_SHM_DIR", shm)
        .output()
        .expect("softrdma-ctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "softrdma-ctl {args:?} failed: {text}");
    text
}

/// A listener port for test `n` of a file (`SPDK_TEST_PORT` + n, default
/// 45000 + pid % 500 * 2 + n).
pub fn test_port(n: u16) -> u16 {
    let base = env_u64(
        "SPDK_TEST_PORT",
        45000 + u64::from(std::process::id() % 500) * 2,
    );
    u16::try_from(base).expect("SPDK_TEST_PORT fits a port") + n
}

/// `nvmf_tgt` over softrdma in a scratch directory, with an RPC client.
pub struct SpdkTarget {
    pub spdk: PathBuf,
    pub softrdma: PathBuf,
    /// The fabric directory every process of the test shares.
    pub shm: PathBuf,
    pub sock: PathBuf,
    pub proc: Proc,
    pub rpc: RpcClient,
}

impl SpdkTarget {
    /// Starts `nvmf_tgt --no-huge -s SPDK_MEM_MB --no-pci -m 0x1` plus
    /// `extra`, with `LD_PRELOAD=preload` when given and `env` added, and
    /// waits until it answers RPCs.
    pub fn start(
        spdk: &Path,
        dir: &Path,
        name: &str,
        preload: Option<&Path>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> SpdkTarget {
        let softrdma = softrdma_dir();
        let shm = dir.join(format!("{name}-shm"));
        std::fs::create_dir_all(&shm).expect("fabric dir");
        let sock = dir.join(format!("{name}.sock"));
        let mem = env_u64("SPDK_MEM_MB", 1024).to_string();
        let mut cmd = Command::new(spdk.join("build/bin/nvmf_tgt"));
        // No core lock files: other SPDK processes of other tests may use
        // core 0 too.
        cmd.args([
            "--no-huge",
            "-s",
            &mem,
            "--no-pci",
            "-m",
            "0x1",
            "--disable-cpumask-locks",
            "-r",
        ])
        .arg(&sock)
        .args(extra)
        .env(
            "LD_LIBRARY_PATH",
            format!(
                "{}:{}",
                softrdma.display(),
                spdk.join("build/lib").display()
            ),
        )
        .env("SOFTRDMA_SHM_DIR", &shm)
        .env("SOFTRDMA_QUIET", "1");
        if let Some(p) = preload {
            cmd.env("LD_PRELOAD", p);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn("nvmf_tgt", cmd, dir.join(format!("{name}.log")));
        let mut rpc = RpcClient {
            sock: sock.clone(),
            next_id: 0,
        };
        wait_for_rpc(&mut proc, &mut rpc);
        SpdkTarget {
            spdk: spdk.to_path_buf(),
            softrdma,
            shm,
            sock,
            proc,
            rpc,
        }
    }

    /// Creates transport `trtype` with `params`, a 64 MiB malloc bdev, the
    /// subsystem `nqn` with it, and a listener on 127.0.0.1:`port`.
    pub fn export(&mut self, trtype: &str, params: Value, nqn: &str, port: u16) {
        let mut p = params;
        p["trtype"] = json!(trtype);
        self.rpc.call("nvmf_create_transport", p);
        self.export_existing(trtype, nqn, port);
    }

    /// As [`SpdkTarget::export`] for a transport that already exists.
    pub fn export_existing(&mut self, trtype: &str, nqn: &str, port: u16) {
        self.rpc.call(
            "bdev_malloc_create",
            json!({ "name": "Malloc0", "num_blocks": 131072, "block_size": 512 }),
        );
        self.rpc.call(
            "nvmf_create_subsystem",
            json!({ "nqn": nqn, "allow_any_host": true, "serial_number": "SPDK00000000000001" }),
        );
        self.rpc.call(
            "nvmf_subsystem_add_ns",
            json!({ "nqn": nqn, "namespace": { "bdev_name": "Malloc0" } }),
        );
        self.add_listener(trtype, nqn, port);
    }

    /// Adds a listener on 127.0.0.1:`port`.
    pub fn add_listener(&mut self, trtype: &str, nqn: &str, port: u16) {
        self.rpc.call(
            "nvmf_subsystem_add_listener",
            json!({ "nqn": nqn, "listen_address": {
                "trtype": trtype, "adrfam": "IPv4", "traddr": "127.0.0.1",
                "trsvcid": port.to_string() } }),
        );
    }

    /// `LD_LIBRARY_PATH` for SPDK's and this project's initiators.
    pub fn ld_path(&self) -> String {
        format!(
            "{}:{}",
            self.softrdma.display(),
            self.spdk.join("build/lib").display()
        )
    }

    /// Fails with the log tail if `nvmf_tgt` is no longer running.
    pub fn assert_alive(&mut self, when: &str) {
        if let Some(status) = self.proc.exited() {
            panic!(
                "nvmf_tgt exited ({status}) {when}; log:\n{}",
                self.proc.log_tail()
            );
        }
    }

    /// `softrdma-ctl <args>` against this target's fabric; returns its
    /// output, panicking when it fails.
    pub fn softrdma_ctl(&self, args: &[&str]) -> String {
        softrdma_ctl_in(&self.softrdma, &self.shm, args)
    }

    /// Counter ` name=<n>` of `nvmf_tgt` in `softrdma-ctl stats PID` (live
    /// objects such as `qps`, `cm_ids`; totals such as `faults_injected`).
    pub fn softrdma_counter(&self, name: &str) -> u64 {
        let text = self.softrdma_ctl(&["stats", &self.proc.child.id().to_string()]);
        let key = format!(" {name}=");
        let i = text
            .find(&key)
            .unwrap_or_else(|| panic!("no {name} in softrdma stats: {text}"));
        text[i + key.len()..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("bad {name} in softrdma stats: {text}"))
    }

    /// SIGINT and a bounded wait; asserts exit 0 and no crash in the log.
    pub fn stop_clean(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.proc.child.id().to_string()])
            .status();
        let status = self.proc.wait_bounded(Duration::from_secs(60));
        let log = self.proc.log_text();
        assert!(
            status.success(),
            "nvmf_tgt exited with {status}:\n{}",
            self.proc.log_tail()
        );
        for bad in ["panic", "Segmentation", "Aborted", "RDMA_RS: panic"] {
            assert!(!log.contains(bad), "{bad} in the nvmf_tgt log:\n{log}");
        }
    }
}

/// What one `spdk_nvme_perf` run printed.
#[derive(Debug)]
pub struct PerfRun {
    pub ok: bool,
    pub iops: f64,
    pub avg_us: f64,
    pub output: String,
}

/// Runs `spdk_nvme_perf --no-huge -s 512 -c 0x2 -t secs` plus `args`
/// against 127.0.0.1:`port`.
pub fn spdk_perf(t: &SpdkTarget, nqn: &str, port: u16, args: &[&str], secs: u64) -> PerfRun {
    let dir = t.shm.parent().expect("scratch").to_path_buf();
    let log = dir.join(format!(
        "perf-{port}-{}.log",
        args.join("_").replace('/', "")
    ));
    let mut cmd = Command::new(t.spdk.join("build/bin/spdk_nvme_perf"));
    cmd.args([
        "--no-huge",
        "-s",
        "512",
        "-c",
        "0x2",
        "-t",
        &secs.to_string(),
    ])
    .args(args)
    .arg("-r")
    .arg(format!(
        "trtype:RDMA adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{nqn}"
    ))
    .env("LD_LIBRARY_PATH", t.ld_path())
    .env("SOFTRDMA_SHM_DIR", &t.shm)
    .env("SOFTRDMA_QUIET", "1");
    let mut p = Proc::spawn("spdk_nvme_perf", cmd, log);
    let status = p.wait_bounded(Duration::from_secs(secs + 60));
    let output = p.log_text();
    let total = output
        .lines()
        .find(|l| l.starts_with("Total"))
        .unwrap_or_default()
        .to_string();
    let nums: Vec<f64> = total
        .split(':')
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let clean = !output.contains("completed with error")
        && !output.contains("starting I/O failed")
        && !output.contains("errors occurred");
    PerfRun {
        ok: status.success() && clean && nums.first().is_some_and(|&i| i > 0.0),
        iops: nums.first().copied().unwrap_or(0.0),
        avg_us: nums.get(2).copied().unwrap_or(0.0),
        output,
    }
}

/// This project's initiator (`nvmf-rdma-rs perf`) with `args` against
/// 127.0.0.1:`port` on the target's fabric, not yet started.
pub fn our_perf_cmd(t: &SpdkTarget, bin: &Path, port: u16, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("perf")
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(args)
        .env("LD_LIBRARY_PATH", &t.softrdma)
        .env("SOFTRDMA_SHM_DIR", &t.shm)
        .env("SOFTRDMA_QUIET", "1");
    cmd
}

/// Runs [`our_perf_cmd`] to the end; returns (exit 0, output).
pub fn our_perf(
    t: &SpdkTarget,
    bin: &Path,
    port: u16,
    args: &[&str],
    timeout: Duration,
) -> (bool, String) {
    let dir = t.shm.parent().expect("scratch").to_path_buf();
    let log = dir.join(format!(
        "ours-{port}-{}.log",
        args.join("_").replace('/', "")
    ));
    let mut p = Proc::spawn("nvmf-rdma-rs perf", our_perf_cmd(t, bin, port, args), log);
    let status = p.wait_bounded(timeout);
    (status.success(), p.log_text())
}

/// `bdevperf -w verify` through `bdev_nvme_attach_controller -t rdma`
/// against 127.0.0.1:`port`; `None` (with the reason printed) when this SPDK
/// build has no bdevperf.
pub fn bdevperf_verify(t: &SpdkTarget, nqn: &str, port: u16, secs: u64) -> Option<(bool, String)> {
    let bin = t.spdk.join("build/examples/bdevperf");
    if !bin.is_file() {
        eprintln!(
            "{} missing (SPDK configured with --disable-examples): the bdevperf verify step \
             is skipped; build it with `make -C examples/bdev/bdevperf` (docs/spdk.md)",
            bin.display()
        );
        return None;
    }
    let dir = t.shm.parent().expect("scratch").to_path_buf();
    let conf = dir.join(format!("bdevperf-{port}.json"));
    let config = json!({ "subsystems": [ { "subsystem": "bdev", "config": [
        { "method": "bdev_nvme_attach_controller", "params": {
            "name": "Nvme0", "trtype": "rdma", "adrfam": "IPv4", "traddr": "127.0.0.1",
            "trsvcid": port.to_string(), "subnqn": nqn } } ] } ] });
    std::fs::write(&conf, config.to_string()).expect("bdevperf config");
    let mut cmd = Command::new(&bin);
    cmd.args([
        "--no-huge",
        "-s",
        "512",
        "-m",
        "0x2",
        "--disable-cpumask-locks",
        "--json",
    ])
    .arg(&conf)
    .args([
        "-q",
        "32",
        "-o",
        "4096",
        "-w",
        "verify",
        "-t",
        &secs.to_string(),
    ])
    .arg("-r")
    .arg(dir.join(format!("bdevperf-{port}.sock")))
    .env("LD_LIBRARY_PATH", t.ld_path())
    .env("SOFTRDMA_SHM_DIR", &t.shm)
    .env("SOFTRDMA_QUIET", "1");
    let mut p = Proc::spawn("bdevperf", cmd, dir.join(format!("bdevperf-{port}.log")));
    let status = p.wait_bounded(Duration::from_secs(secs + 90));
    let out = p.log_text();
    let ok = status.success() && out.contains("Total") && !out.contains("Miscompare");
    Some((ok, out))
}
