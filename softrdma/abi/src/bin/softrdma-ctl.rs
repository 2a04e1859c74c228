//! `softrdma-ctl`: inspect softrdma counters and send runtime control commands.
//!
//! ```text
//! softrdma-ctl stats [PID]        counters of every process in the fabric (or one pid)
//! softrdma-ctl send PID COMMAND…  send a control command to process PID and wait until it is
//!                                 acknowledged (in force); exit 1 if refused (see docs/softrdma.md)
//! softrdma-ctl pids               pids of the live softrdma processes
//! ```

use softrdma_abi::fabric::{self, Counter, Fabric, MAX_NODES};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::ExitCode;
use std::sync::atomic::Ordering;

fn usage() -> ExitCode {
    eprintln!(
        "usage: softrdma-ctl stats [PID] | softrdma-ctl pids | softrdma-ctl send PID COMMAND..."
    );
    ExitCode::from(2)
}

fn stats(f: &Fabric, only: Option<u32>) -> ExitCode {
    let mut found = false;
    for i in 0..MAX_NODES {
        let n = f.node(i);
        let pid = n.owner.load(Ordering::Acquire);
        if pid == 0 || only.is_some_and(|p| p != pid) {
            continue;
        }
        found = true;
        let alive = fabric::pid_alive(pid)
            && fabric::pid_starttime(pid) == Some(n.starttime.load(Ordering::Relaxed));
        let mut line = format!("pid={pid} state={}", if alive { "alive" } else { "dead" });
        for c in Counter::ALL {
            line.push_str(&format!(
                " {}={}",
                c.name(),
                n.counters[c as usize].load(Ordering::Relaxed) as i64
            ));
        }
        println!("{line}");
    }
    if only.is_some() && !found {
        eprintln!(
            "softrdma-ctl: no softrdma process with pid {}",
            only.unwrap_or(0)
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// Commands the fabric uses between its own processes: they carry no reply.
const INTERNAL_COMMANDS: [&str; 4] = ["cq", "srqlimit", "kick", "rerr"];

/// How long `send` waits for the target process to acknowledge a command.
const ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends `cmd` to process `pid` and, for user commands, waits for its
/// acknowledgement: when this returns success the rule is in force.
fn send(pid: u32, cmd: &str) -> ExitCode {
    use std::os::linux::net::SocketAddrExt;
    let name = fabric::node_socket_name(pid);
    let addr = match SocketAddr::from_abstract_name(name.as_bytes()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("softrdma-ctl: bad socket name {name}: {e}");
            return ExitCode::from(1);
        }
    };
    let internal = INTERNAL_COMMANDS.contains(&cmd.split(' ').next().unwrap_or(""));
    let sock = if internal {
        UnixDatagram::unbound()
    } else {
        // A bound name of our own, so the process can answer.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let own = format!("softrdma-ctl-{}-{nanos}", std::process::id());
        SocketAddr::from_abstract_name(own.as_bytes()).and_then(|a| UnixDatagram::bind_addr(&a))
    };
    let sock = match sock {
        Ok(s) => s,
        Err(e) => {
            eprintln!("softrdma-ctl: socket: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = sock.send_to_addr(cmd.as_bytes(), &addr) {
        eprintln!("softrdma-ctl: cannot reach softrdma process {pid} (@{name}): {e}");
        return ExitCode::from(1);
    }
    if internal {
        return ExitCode::SUCCESS;
    }
    let _ = sock.set_read_timeout(Some(ACK_TIMEOUT));
    let mut buf = [0u8; 2048];
    match sock.recv(&mut buf) {
        Ok(n) => {
            let reply = String::from_utf8_lossy(&buf[..n]);
            if let Some(err) = reply.strip_prefix("error") {
                eprintln!("softrdma-ctl: process {pid} refused '{cmd}':{err}");
                ExitCode::from(1)
            } else {
                if reply != "ok" {
                    println!("{reply}");
                }
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!(
                "softrdma-ctl: process {pid} did not acknowledge '{cmd}' within {ACK_TIMEOUT:?}: {e}"
            );
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        return usage();
    };
    match cmd.as_str() {
        "stats" | "pids" => {
            let f = match Fabric::open() {
                Ok(f) => f,
                Err(e) => {
                    eprintln!(
                        "softrdma-ctl: cannot open fabric in {}: {e}",
                        fabric::fabric_dir()
                    );
                    return ExitCode::from(1);
                }
            };
            if cmd == "pids" {
                for i in 0..MAX_NODES {
                    let pid = f.node(i).owner.load(Ordering::Acquire);
                    if pid != 0 && fabric::pid_alive(pid) {
                        println!("{pid}");
                    }
                }
                return ExitCode::SUCCESS;
            }
            let only = match args.get(1).map(|s| s.parse::<u32>()) {
                None => None,
                Some(Ok(p)) => Some(p),
                Some(Err(_)) => return usage(),
            };
            stats(&f, only)
        }
        "send" => {
            let (Some(pid), true) = (
                args.get(1).and_then(|p| p.parse::<u32>().ok()),
                args.len() > 2,
            ) else {
                return usage();
            };
            send(pid, &args[2..].join(" "))
        }
        _ => usage(),
    }
}
