//! JSON-RPC 2.0 over SPDK's UNIX socket: one request per connection, every
//! read and write bounded.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

/// Bound of one request.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The socket could not be used.
    #[error("RPC {method} on {sock}: {err}")]
    Io {
        /// Method called.
        method: String,
        /// Socket path.
        sock: String,
        /// What failed.
        err: String,
    },
    /// SPDK answered with an error object.
    #[error("RPC {method} {params} refused: {error}")]
    Refused {
        /// Method called.
        method: String,
        /// Parameters sent.
        params: Box<Value>,
        /// SPDK's error object.
        error: Box<Value>,
    },
}

/// A client for one target's socket.
pub struct Rpc {
    /// The socket.
    pub sock: PathBuf,
    id: u64,
}

impl Rpc {
    /// A client for `sock`.
    pub fn new(sock: PathBuf) -> Rpc {
        Rpc { sock, id: 0 }
    }

    /// Calls `method`; its `result`, or why not.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, RpcError> {
        self.id += 1;
        let mut req = json!({ "jsonrpc": "2.0", "method": method, "id": self.id });
        if !params.is_null() {
            req["params"] = params.clone();
        }
        let io = |err: std::io::Error| RpcError::Io {
            method: method.to_string(),
            sock: self.sock.display().to_string(),
            err: err.to_string(),
        };
        let mut s = UnixStream::connect(&self.sock).map_err(io)?;
        s.set_read_timeout(Some(RPC_TIMEOUT)).map_err(io)?;
        s.set_write_timeout(Some(RPC_TIMEOUT)).map_err(io)?;
        s.write_all(req.to_string().as_bytes()).map_err(io)?;
        let reply = read_value(&mut s).map_err(io)?;
        match reply.get("error") {
            Some(error) => Err(RpcError::Refused {
                method: method.to_string(),
                params: Box::new(params),
                error: Box::new(error.clone()),
            }),
            None => Ok(reply.get("result").cloned().unwrap_or(Value::Null)),
        }
    }
}

/// Reads until the bytes form one JSON value.
fn read_value(s: &mut UnixStream) -> std::io::Result<Value> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a whole reply",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        match serde_json::from_slice::<Value>(&buf) {
            Ok(v) => return Ok(v),
            Err(e) if e.is_eof() => continue,
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
    }
}

/// Sum of `key` over `nvmf_get_stats`' poll groups.
pub fn poll_group_sum(stats: &Value, key: &str) -> u64 {
    stats["poll_groups"]
        .as_array()
        .map(|g| g.iter().filter_map(|g| g[key].as_u64()).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_over_poll_groups() {
        let s = json!({ "poll_groups": [
            { "current_io_qpairs": 2, "completed_nvme_io": 10 },
            { "current_io_qpairs": 1 } ] });
        assert_eq!(poll_group_sum(&s, "current_io_qpairs"), 3);
        assert_eq!(poll_group_sum(&s, "completed_nvme_io"), 10);
        assert_eq!(poll_group_sum(&json!({}), "x"), 0);
    }
}
