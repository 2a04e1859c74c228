//! A misbehaving initiator over softrdma: bad CM private data, SGL
//! descriptor counts above 16 or zero, offsets outside the capsule, lengths
//! above `max_io_size`, in-capsule data larger than negotiated, unknown
//! opcodes, commands after the controller is shut down. Each gets the right
//! NVMe status or a reject/disconnect; the target never crashes and serves
//! verified I/O afterwards.

mod e2e_common;

use std::time::Duration;

use e2e_common::*;
use nvmf_rdma_rs::engine::codec::nvme::{io_opcode, Command, Status};
use nvmf_rdma_rs::engine::codec::private_data::CmRequest;
use nvmf_rdma_rs::engine::codec::sgl::{encode_in_capsule, encode_keyed, encode_last_segment};
use nvmf_rdma_rs::initiator::{Controller, ControllerConfig, Done, Queue, QueueOptions};

/// Sends `capsule` (SQE + in-capsule bytes) on `q` and returns its completion
/// status, or `None` if the queue failed instead.
fn raw(q: &mut Queue, capsule: &[u8]) -> Option<Status> {
    let cid = q.alloc().ok()?;
    q.submit_raw(cid, capsule).ok()?;
    let mut done: Vec<Done> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        match q.wait(&mut done, Duration::from_millis(100)) {
            Ok(_) => {
                if let Some(d) = done.iter().find(|d| d.cid == cid) {
                    let s = d.completion.status;
                    q.release(cid);
                    return Some(s);
                }
            }
            Err(_) => return None,
        }
    }
    panic!("no completion and no disconnect for a malformed command within 5 s");
}

fn read_cmd(nlb: u32) -> Command {
    let mut c = Command::new(io_opcode::READ, 0);
    c.set_nsid(1);
    c.set_cdw12(nlb - 1);
    c
}

fn write_cmd(nlb: u32) -> Command {
    let mut c = Command::new(io_opcode::WRITE, 0);
    c.set_nsid(1);
    c.set_cdw12(nlb - 1);
    c
}

fn capsule(cmd: &Command, extra: &[u8]) -> Vec<u8> {
    let mut v = cmd.as_bytes().to_vec();
    v.extend_from_slice(extra);
    v
}

#[test]
fn e2e_bad_private_data_is_rejected() {
    if !under_softrdma("e2e_bad_private_data_is_rejected", Duration::from_secs(120)) {
        return;
    }
    let mut t = TargetProc::start(&[]);
    let good = CmRequest {
        recfmt: 0,
        qid: 0,
        hrqsize: 32,
        hsqsize: 31,
        cntlid: 0xffff,
    }
    .to_bytes();
    let mut bad_recfmt = good;
    bad_recfmt[0] = 1;
    let mut zero_hrqsize = good;
    zero_hrqsize[4] = 0;
    zero_hrqsize[5] = 0;
    // The CM pads connect private data with zeros (56 bytes with RDMA_PS_TCP
    // on IB), so "empty" arrives as zeros: rejected for its hrqsize of 0.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("4 bytes (hrqsize cut)", good[..4].to_vec()),
        ("recfmt 1", bad_recfmt.to_vec()),
        ("hrqsize 0", zero_hrqsize.to_vec()),
    ];
    for (what, pd) in &cases {
        let mut o = QueueOptions::new(0, 32);
        o.raw_private_data = Some(pd.clone());
        o.connect_timeout = Duration::from_secs(5);
        match Queue::connect(t.addr, o) {
            Ok(_) => panic!("{what}: connection accepted"),
            Err(e) => println!("{what}: {e}"),
        }
        assert!(t.alive(), "{what}: target died");
    }
    let idle = t.wait_idle(Duration::from_secs(10));
    assert_eq!(
        idle["counters"]["connects_rejected"].as_u64(),
        Some(cases.len() as u64),
        "{idle}"
    );
    let mut ok = perf_cfg(t.addr, 4, 4096, 100);
    ok.region_bytes = 1 << 20;
    verified_io(&ok);
    t.stop();
}

#[test]
fn e2e_malformed_commands_get_nvme_status() {
    if !under_softrdma(
        "e2e_malformed_commands_get_nvme_status",
        Duration::from_secs(120),
    ) {
        return;
    }
    let mut t = TargetProc::start(&[]);
    let mut cfg = ControllerConfig::new(t.addr, "nqn.2016-06.io.spdk:cnode1");
    cfg.io_queues = 1;
    cfg.io_depth = 8;
    let mut c = Controller::connect(cfg).expect("connect");
    let mut qs = c.take_io_queues();
    let q = &mut qs[0];
    q.set_in_capsule_size(8192.min(q.in_capsule_size().max(4096)));
    let (addr, rkey) = q.data_region(0);

    let expect = |q: &mut Queue, what: &str, cap: Vec<u8>, want: Status| {
        let got = raw(q, &cap);
        println!("{what}: {got:?}");
        let got = got.unwrap_or_else(|| panic!("{what}: the queue failed instead of a status"));
        assert_eq!((got.sct, got.sc), (want.sct, want.sc), "{what}");
    };

    // Last Segment list naming 17 descriptors (> MSDBD 16).
    let mut cmd = write_cmd(8);
    cmd.set_sgl1(encode_last_segment(0, 17 * 16));
    let list: Vec<u8> = (0..17)
        .flat_map(|i| encode_keyed(addr + i * 256, 256, rkey, false).raw)
        .collect();
    expect(
        q,
        "17 descriptors",
        capsule(&cmd, &list),
        Status::INVALID_NUMBER_OF_SGL_DESCRIPTORS,
    );
    // Last Segment list of 0 descriptors.
    let mut cmd = write_cmd(8);
    cmd.set_sgl1(encode_last_segment(0, 0));
    let got = raw(q, &capsule(&cmd, &[]));
    println!("0 descriptors: {got:?}");
    assert!(
        got.is_some_and(|s| !s.is_success()),
        "0 descriptors: {got:?}"
    );
    // In-capsule data at an offset beyond the in-capsule area.
    let mut cmd = write_cmd(1);
    cmd.set_sgl1(encode_in_capsule(8192, 512));
    expect(
        q,
        "ICD offset",
        capsule(&cmd, &[0; 512]),
        Status::INVALID_SGL_OFFSET,
    );
    // Last Segment list beyond the capsule.
    let mut cmd = write_cmd(1);
    cmd.set_sgl1(encode_last_segment(8192, 16));
    expect(
        q,
        "segment offset",
        capsule(&cmd, &[0; 16]),
        Status::INVALID_SGL_OFFSET,
    );
    // Keyed length above max_io_size (131072).
    let mut cmd = read_cmd(512);
    cmd.set_sgl1(encode_keyed(addr, 256 * 1024, rkey, false));
    expect(
        q,
        "keyed length > max_io_size",
        capsule(&cmd, &[]),
        Status::DATA_SGL_LENGTH_INVALID,
    );
    // In-capsule data longer than the negotiated 4096 bytes.
    let mut cmd = write_cmd(16);
    cmd.set_sgl1(encode_in_capsule(0, 8192));
    expect(
        q,
        "ICD larger than negotiated",
        capsule(&cmd, &[]),
        Status::DATA_SGL_LENGTH_INVALID,
    );
    // Unsupported SGL descriptor type (Bit Bucket, type 1).
    let mut cmd = read_cmd(1);
    let mut d = encode_keyed(addr, 512, rkey, false);
    d.raw[15] = 0x10;
    cmd.set_sgl1(d);
    expect(
        q,
        "bit bucket SGL",
        capsule(&cmd, &[]),
        Status::SGL_DESCRIPTOR_TYPE_INVALID,
    );
    // Unknown I/O opcode.
    let mut cmd = Command::new(0x7e, 0);
    cmd.set_nsid(1);
    expect(
        q,
        "unknown opcode",
        capsule(&cmd, &[]),
        Status::INVALID_OPCODE,
    );

    // The queue still works.
    let mut cmd = read_cmd(1);
    cmd.set_sgl1(encode_keyed(addr, 512, rkey, false));
    expect(q, "valid read", capsule(&cmd, &[]), Status::SUCCESS);

    // Commands after the controller is shut down: its I/O queue is
    // disconnected by the target; a command either fails with an abort
    // status or finds the queue gone. Never a crash.
    c.return_io_queues(qs);
    let mut qs = c.take_io_queues();
    c.shutdown().expect("controller shutdown");
    let q = &mut qs[0];
    let mut cmd = read_cmd(1);
    cmd.set_sgl1(encode_keyed(addr, 512, rkey, false));
    let after = raw(q, &capsule(&cmd, &[]));
    println!("after shutdown: {after:?}");
    assert!(
        after.is_none_or(|s| !s.is_success()),
        "a command after shutdown succeeded"
    );
    drop(qs);
    assert!(t.alive());
    t.wait_idle(Duration::from_secs(15));
    let mut ok = perf_cfg(t.addr, 4, 4096, 100);
    ok.region_bytes = 1 << 20;
    verified_io(&ok);
    t.stop();
}
