//! Measures the CPU cost of `minitarget::Target::execute` for 4 KiB random
//! reads and writes against a RAM namespace, with no transport around it.
//!
//! `cargo run --release --example minitarget_cost [IOS]` (default 1,000,000
//! I/Os per case). CPU time is the thread's on-CPU time from
//! `/proc/thread-self/schedstat` (wall time is also printed; on a loaded
//! machine only the CPU figure means anything).

use std::time::Instant;

use nvmf_rdma_rs::engine::codec::nvme::{fctype, io_opcode, Command};
use nvmf_rdma_rs::minitarget::{connect_data, DataBuffer, QpairId, Target, TargetConfig};

const NQN: &str = "nqn.2026-01.io.example:cost";
const HOST: &str = "nqn.2014-08.org.nvmexpress:cost-host";
const NS_BYTES: u64 = 1 << 30;

fn cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn connect(target: &mut Target, qpair: QpairId, qid: u16, cntlid: u16) -> u16 {
    let mut cmd = Command::new_fabrics(fctype::CONNECT, 1);
    cmd.set_cdw10(u32::from(qid) << 16);
    cmd.set_cdw11(31);
    let mut data = connect_data([0; 16], cntlid, NQN, HOST);
    let done = target.execute(qpair, &cmd, DataBuffer::single(&mut data), 0);
    let cqe = done.completion().expect("connect completes");
    assert!(cqe.status.is_success(), "connect qid {qid}: {}", cqe.status);
    cqe.cdw0 as u16
}

fn main() {
    let ios: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("IOS must be a number"))
        .unwrap_or(1_000_000);
    let mut target = Target::new(TargetConfig::new(NQN, vec![NS_BYTES])).expect("config");
    let (admin, io) = (QpairId(1), QpairId(2));
    let cntlid = connect(&mut target, admin, 0, 0xffff);
    let mut cc = Command::new_fabrics(fctype::PROPERTY_SET, 2);
    cc.set_cdw11(0x14);
    cc.set_cdw12(1 | 6 << 16 | 4 << 20);
    target.execute(admin, &cc, DataBuffer::none(), 0);
    connect(&mut target, io, 1, cntlid);

    let blocks = NS_BYTES / 512;
    let mut buf = vec![0xa5u8; 4096];
    let cases = [
        ("write, random over 1 GiB", io_opcode::WRITE, blocks),
        ("read,  random over 1 GiB", io_opcode::READ, blocks),
        ("write, random over 1 MiB", io_opcode::WRITE, 2048),
        ("read,  random over 1 MiB", io_opcode::READ, 2048),
    ];
    for (name, opcode, span) in cases {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let (wall0, cpu0) = (Instant::now(), cpu_ns());
        for i in 0..ios {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let lba = (x % (span / 8)) * 8;
            let mut cmd = Command::new(opcode, i as u16);
            cmd.set_nsid(1);
            cmd.set_cdw10(lba as u32);
            cmd.set_cdw11((lba >> 32) as u32);
            cmd.set_cdw12(7);
            let done = target.execute(io, &cmd, DataBuffer::single(&mut buf), 0);
            assert!(done.completion().is_some_and(|c| c.status.is_success()));
        }
        let wall = wall0.elapsed().as_nanos() as f64 / ios as f64;
        match (cpu0, cpu_ns()) {
            (Some(a), Some(b)) => println!(
                "4 KiB {name}: {:.0} ns CPU, {wall:.0} ns wall per I/O ({ios} I/Os)",
                (b - a) as f64 / ios as f64
            ),
            _ => println!("4 KiB {name}: {wall:.0} ns wall per I/O ({ios} I/Os)"),
        }
    }
}
