//! Heap allocations per I/O through the engine in steady state: 0.
//!
//! A counting global allocator (`stats_alloc`, no `unsafe` here) wraps the
//! system allocator for this test binary only. A transport-like driver feeds
//! the engine 4 KiB reads and writes (keyed SGL) through the public API, with
//! an ideal NIC and host, first one at a time and then 32 in flight; after a
//! warm-up, the allocation count over thousands of I/Os must not move.
//! Allocation counts are deterministic, so this is an exact assertion.

use std::alloc::System;
use std::collections::VecDeque;

use nvmf_rdma_engine::codec::nvme::{io_opcode, Command, Completion, Status};
use nvmf_rdma_engine::codec::sgl::{encode_in_capsule, encode_keyed};
use nvmf_rdma_engine::{Action, LocalSge, Qpair, QpairConfig, RecvId, ReqId, WcStatus, WrId};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const QD: u16 = 32;
const IO: u32 = 4096;

#[derive(Clone, Copy)]
enum Ev {
    Grant(ReqId),
    Executed(ReqId),
    Wc(u64),
}

struct Driver {
    qp: Qpair,
    free_recvs: Vec<RecvId>,
    events: VecDeque<Ev>,
    read: Vec<u8>,
    write: Vec<u8>,
    write_icd: Vec<u8>,
    bufs: [LocalSge; 1],
    responses: u64,
}

impl Driver {
    fn new() -> Driver {
        let qp = Qpair::new(QpairConfig::new(1, QD, 16)).expect("valid config");
        let capsule = |opcode: u8, icd: u32| {
            let mut c = Command::new(opcode, 1);
            if icd > 0 {
                c.set_sgl1(encode_in_capsule(0, icd));
            } else {
                c.set_sgl1(encode_keyed(0x10_0000, IO, 0x77, false));
            }
            let mut v = c.as_bytes().to_vec();
            v.resize(64 + icd as usize, 0x5a);
            v
        };
        let mut d = Driver {
            qp,
            free_recvs: Vec::with_capacity(usize::from(QD)),
            events: VecDeque::with_capacity(8 * usize::from(QD)),
            read: capsule(io_opcode::READ, 0),
            write: capsule(io_opcode::WRITE, 0),
            write_icd: capsule(io_opcode::WRITE, IO),
            bufs: [LocalSge {
                addr: 0x7f00_0000_0000,
                len: IO,
                lkey: 3,
            }],
            responses: 0,
        };
        d.pump();
        assert_eq!(d.free_recvs.len(), usize::from(QD));
        d
    }

    fn submit(&mut self, kind: u32, cid: u16) {
        let recv = self.free_recvs.pop().expect("a posted receive");
        let capsule = match kind % 3 {
            0 => &mut self.read,
            1 => &mut self.write,
            _ => &mut self.write_icd,
        };
        capsule[2..4].copy_from_slice(&cid.to_le_bytes());
        self.qp
            .handle_completion(WrId::recv(recv).to_raw(), WcStatus::Success, capsule)
            .expect("recv accepted");
    }

    fn pump(&mut self) {
        loop {
            while let Some(a) = self.qp.poll_action() {
                match a {
                    Action::PostRecv { recv } => self.free_recvs.push(recv),
                    Action::RequestBuffers { req, .. } => self.events.push_back(Ev::Grant(req)),
                    Action::PostReads { req, first, count } => {
                        for i in first..first + count {
                            let wr = self.qp.data_wr(req, i).expect("data WR");
                            self.events.push_back(Ev::Wc(wr.wr_id.to_raw()));
                        }
                    }
                    Action::PostResponse { req, writes, recv } => {
                        self.free_recvs.extend(recv);
                        for i in 0..writes {
                            assert!(self.qp.data_wr(req, i).is_some());
                        }
                        let s = self.qp.send_wr(req).expect("send WR");
                        self.events.push_back(Ev::Wc(s.wr_id.to_raw()));
                        self.responses += 1;
                    }
                    Action::Execute { req } => self.events.push_back(Ev::Executed(req)),
                    Action::ReleaseBuffers { .. } => {}
                    other => panic!("unexpected action in steady state: {other:?}"),
                }
            }
            match self.events.pop_front() {
                None => return,
                Some(Ev::Grant(req)) => self.qp.handle_buffers_granted(req, &self.bufs).unwrap(),
                Some(Ev::Executed(req)) => self
                    .qp
                    .handle_command_executed(req, Completion::new(0, Status::SUCCESS))
                    .unwrap(),
                Some(Ev::Wc(raw)) => self
                    .qp
                    .handle_completion(raw, WcStatus::Success, &[])
                    .unwrap(),
            }
        }
    }

    fn run_sequential(&mut self, ios: u32) {
        for i in 0..ios {
            self.submit(i, i as u16);
            self.pump();
        }
    }

    fn run_batched(&mut self, batches: u32) {
        for b in 0..batches {
            for i in 0..u32::from(QD) {
                self.submit(b + i, i as u16);
            }
            self.pump();
        }
    }
}

/// One test only: the allocator is global, so a second test running in
/// parallel would be counted too. The test harness's own threads can still
/// allocate a few bytes while a round runs, so the engine's count is the
/// minimum over several rounds: an engine that allocated per I/O would show
/// thousands in every round.
#[test]
fn zero_allocations_per_io_in_steady_state() {
    // The counting allocator is really installed.
    let region = Region::new(GLOBAL);
    let v = std::hint::black_box(vec![1u8; 100]);
    assert!(region.change().allocations >= 1);
    drop(v);

    let mut d = Driver::new();
    d.run_sequential(300);
    d.run_batched(10);

    let mut best = usize::MAX;
    let mut ios = 0;
    for round in 0..5 {
        let before = d.responses;
        let region = Region::new(GLOBAL);
        d.run_sequential(3_000);
        d.run_batched(100);
        let stats = region.change();
        ios = d.responses - before;
        assert_eq!(ios, 3_000 + 100 * u64::from(QD));
        let n = stats.allocations + stats.reallocations;
        println!(
            "round {round}: {ios} I/Os (4 KiB read / write / in-capsule write): {} allocations, {} reallocations",
            stats.allocations, stats.reallocations
        );
        best = best.min(n);
    }
    println!(
        "allocations per I/O in steady state: {:.4}",
        best as f64 / ios as f64
    );
    assert_eq!(best, 0, "heap allocations in steady state");
    d.qp.check_invariants().unwrap();
}
