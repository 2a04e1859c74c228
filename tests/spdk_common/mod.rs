//! Helpers shared by the tests that drive SPDK's own processes
//! (`spdk_upstream.rs`, `spdk_plugin.rs`): child processes with bounded waits
//! and logs, scratch directories, and a small JSON-RPC client for SPDK's
//! UNIX socket. See docs/spdk.md.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
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
