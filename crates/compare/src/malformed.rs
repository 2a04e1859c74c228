//! The misbehaving host of the malformed-capsule scenarios: connects like
//! a normal host, then sends capsules the NVMe-oF RDMA rules forbid — SGL
//! descriptor lists of every count from 0 to 255, list offsets inside and
//! far outside the capsule, keyed lengths over `max_io_size`, in-capsule
//! data over the negotiated size, unknown opcodes — and reconnects whenever
//! the target drops the queue. Runs as `nvmf-rdma-compare malformed-host`
//! under softrdma; the campaign judges the target afterwards.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nvmf_rdma_rs::engine::codec::nvme::{io_opcode, Command};
use nvmf_rdma_rs::engine::codec::sgl::{encode_in_capsule, encode_keyed, encode_last_segment};
use nvmf_rdma_rs::initiator::{Controller, ControllerConfig, Done, Queue};

use crate::rng::Rng;

/// Bytes of one SGL descriptor.
const DESC: usize = 16;
/// Bytes of the command part of a capsule.
const SQE: usize = 64;

/// One malformed capsule: a name, the command and its in-capsule bytes.
pub struct Case {
    /// What is wrong with it.
    pub name: String,
    /// The command.
    pub cmd: Command,
    /// In-capsule bytes after the command.
    pub extra: Vec<u8>,
}

fn write_cmd(nlb: u32) -> Command {
    let mut c = Command::new(io_opcode::WRITE, 0);
    c.set_nsid(1);
    c.set_cdw12(nlb.saturating_sub(1));
    c
}

/// The capsules for a queue whose data buffer is at `addr`/`rkey` and
/// whose capsules carry at most `room` in-capsule bytes.
pub fn cases(rng: &mut Rng, addr: u64, rkey: u32, room: usize) -> Vec<Case> {
    let mut out = Vec::new();
    for count in 0..=255usize {
        let mut cmd = write_cmd(8);
        cmd.set_sgl1(encode_last_segment(0, (count * DESC) as u32));
        let list: Vec<u8> = (0..count)
            .flat_map(|i| encode_keyed(addr + (i as u64) * 16, 16, rkey, false).raw)
            .take(room)
            .collect();
        out.push(Case {
            name: format!("last-segment list of {count} descriptors"),
            cmd,
            extra: list,
        });
    }
    for _ in 0..8 {
        let inside = rng.range(1, room.max(17) as u64 - 16);
        let far = *rng.pick(&[room as u64 + 16, 1 << 20, u32::MAX as u64, u64::MAX - 15]);
        for (what, off) in [("inside", inside), ("far outside", far)] {
            let mut cmd = write_cmd(1);
            cmd.set_sgl1(encode_last_segment(off, DESC as u32));
            out.push(Case {
                name: format!("list offset {off} ({what} the capsule)"),
                cmd,
                extra: encode_keyed(addr, 512, rkey, false).raw.to_vec(),
            });
        }
    }
    for _ in 0..8 {
        let len = rng.range(128 * 1024 + 1, 16 * 1024 * 1024 - 1) as u32;
        let mut cmd = Command::new(io_opcode::READ, 0);
        cmd.set_nsid(1);
        cmd.set_cdw12(len / 512);
        cmd.set_sgl1(encode_keyed(addr, len, rkey, false));
        out.push(Case {
            name: format!("keyed length {len} over max_io_size"),
            cmd,
            extra: Vec::new(),
        });
    }
    for _ in 0..8 {
        let len = rng.range(room as u64 + 1, 1 << 20) as u32;
        let mut cmd = write_cmd(len.div_ceil(512));
        cmd.set_sgl1(encode_in_capsule(0, len));
        out.push(Case {
            name: format!("in-capsule data of {len} bytes (over the negotiated size)"),
            cmd,
            extra: Vec::new(),
        });
    }
    for _ in 0..16 {
        let op = loop {
            let op = rng.range(0x03, 0xff) as u8;
            if ![
                0x04, 0x05, 0x08, 0x09, 0x0c, 0x0d, 0x0e, 0x10, 0x11, 0x12, 0x15, 0x19, 0x1d,
            ]
            .contains(&op)
            {
                break op;
            }
        };
        let mut cmd = Command::new(op, 0);
        cmd.set_nsid(1);
        cmd.set_sgl1(encode_keyed(addr, 512, rkey, false));
        out.push(Case {
            name: format!("unknown opcode {op:#04x}"),
            cmd,
            extra: Vec::new(),
        });
    }
    out
}

fn connect(addr: SocketAddr, nqn: &str) -> Option<(Controller, Queue)> {
    let mut cfg = ControllerConfig::new(addr, nqn);
    cfg.io_queues = 1;
    cfg.io_depth = 8;
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.command_timeout = Duration::from_secs(5);
    let mut c = Controller::connect(cfg).ok()?;
    let q = c.take_io_queues().pop()?;
    Some((c, q))
}

/// Sends one raw capsule; `Some(status text)` or `None` when the queue
/// failed (the target dropped it, or no answer within 5 s).
fn send(q: &mut Queue, capsule: &[u8]) -> Option<String> {
    let cid = q.alloc().ok()?;
    q.submit_raw(cid, capsule).ok()?;
    q.flush().ok()?;
    let mut done: Vec<Done> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        q.wait(&mut done, Duration::from_millis(100)).ok()?;
        if let Some(d) = done.iter().find(|d| d.cid == cid) {
            let s = d.completion.status;
            q.release(cid);
            return Some(format!("sct {} sc {:#04x}", s.sct, s.sc));
        }
    }
    None
}

/// The `malformed-host` mode.
pub fn run(addr: SocketAddr, nqn: &str, seed: u64) -> ExitCode {
    let mut rng = Rng::new(seed);
    let Some((mut ctrl, mut q)) = connect(addr, nqn) else {
        eprintln!("malformed host: cannot connect to {addr} {nqn}");
        return ExitCode::FAILURE;
    };
    let (daddr, rkey) = q.data_region(0);
    let room = q.in_capsule_size() as usize;
    let list = cases(&mut rng, daddr, rkey, room);
    let (mut answered, mut dropped, mut reconnect_failed) = (0usize, 0usize, 0usize);
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for case in &list {
        let mut capsule = case.cmd.as_bytes().to_vec();
        capsule.extend_from_slice(&case.extra[..case.extra.len().min(room)]);
        debug_assert!(capsule.len() <= SQE + room);
        match send(&mut q, &capsule) {
            Some(s) => {
                answered += 1;
                *statuses.entry(s).or_insert(0) += 1;
            }
            None => {
                dropped += 1;
                println!("{}: queue dropped", case.name);
                drop(q);
                drop(ctrl);
                match connect(addr, nqn) {
                    Some((c, nq)) => {
                        ctrl = c;
                        q = nq;
                    }
                    None => {
                        reconnect_failed += 1;
                        println!("reconnect after {:?} failed", case.name);
                        return summary(list.len(), answered, dropped, reconnect_failed, &statuses);
                    }
                }
            }
        }
    }
    ctrl.return_io_queues(vec![q]);
    let _ = ctrl.shutdown();
    summary(list.len(), answered, dropped, reconnect_failed, &statuses)
}

fn summary(
    total: usize,
    answered: usize,
    dropped: usize,
    reconnect_failed: usize,
    statuses: &std::collections::BTreeMap<String, usize>,
) -> ExitCode {
    let s: Vec<String> = statuses.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!(
        "{total} malformed capsules: {answered} answered with a status, {dropped} dropped the queue, \
         {reconnect_failed} reconnects failed; statuses: {}",
        s.join(", ")
    );
    if reconnect_failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_descriptor_count_and_each_kind() {
        let list = cases(&mut Rng::new(3), 0x1000, 7, 4096);
        for n in 0..=255 {
            let name = format!("last-segment list of {n} descriptors");
            assert!(list.iter().any(|c| c.name == name), "{name}");
        }
        for kind in [
            "inside the capsule",
            "far outside",
            "over max_io_size",
            "over the negotiated",
            "unknown opcode",
        ] {
            assert!(list.iter().any(|c| c.name.contains(kind)), "{kind}");
        }
        assert!(list.iter().all(|c| c.extra.len() <= 4096));
        // A 255-descriptor list fits a 4 KiB capsule area in full.
        let c255 = list
            .iter()
            .find(|c| c.name.ends_with(" 255 descriptors"))
            .unwrap();
        assert_eq!(c255.extra.len(), 255 * 16);
    }
}
