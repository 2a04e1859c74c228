//! Every command path of the minitarget, driven through `Target::execute`
//! with constructed commands.

use super::*;
use crate::engine::codec::admin::{cc, feature as fid, property as prop};
use crate::engine::codec::nvme::{admin_opcode, io_opcode, sct, Command, Fuse};

const NQN: &str = "nqn.2026-01.io.example:minitarget";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:0f0e0d0c-0b0a-0908-0706-050403020100";
const HOSTID: [u8; 16] = [7; 16];
const ADMIN: QpairId = QpairId(1);
const IO1: QpairId = QpairId(2);
const SEC: u64 = 1_000_000_000;
/// CC with EN = 1, IOSQES = 6, IOCQES = 4.
const CC_ENABLE: u32 = cc::EN | cc::QUEUE_ENTRY_SIZES;

fn config() -> TargetConfig {
    TargetConfig {
        listeners: vec![Listener::rdma("127.0.0.1:4420".parse().unwrap())],
        ..TargetConfig::new(NQN, vec![1 << 20, 4096])
    }
}

fn target() -> Target {
    Target::new(config()).unwrap()
}

fn run(t: &mut Target, q: QpairId, cmd: &Command, buf: &mut [u8], now: u64) -> Completion {
    t.execute(q, cmd, DataBuffer::single(buf), now)
        .completion()
        .expect("command completed")
}

fn run0(t: &mut Target, q: QpairId, cmd: &Command) -> Completion {
    run(t, q, cmd, &mut [], 0)
}

fn sc(c: &Completion) -> (u8, u8) {
    (c.status.sct, c.status.sc)
}

fn is(c: &Completion, s: Status) -> bool {
    (c.status.sct, c.status.sc) == (s.sct, s.sc)
}

#[track_caller]
fn assert_status(c: &Completion, s: Status) {
    assert!(
        is(c, s),
        "expected {s}, got {} (cdw0 {:#x})",
        c.status,
        c.cdw0
    );
}

fn connect_cmd(qid: u16, sqsize: u16, kato: u32) -> Command {
    let mut c = Command::new_fabrics(fctype::CONNECT, 0x10 + qid);
    c.set_cdw10(u32::from(qid) << 16);
    c.set_cdw11(u32::from(sqsize));
    c.set_cdw12(kato);
    c
}

#[allow(clippy::too_many_arguments)]
fn connect_with(
    t: &mut Target,
    q: QpairId,
    qid: u16,
    sqsize: u16,
    kato: u32,
    cntlid: u16,
    subnqn: &str,
    hostnqn: &str,
    now: u64,
) -> Completion {
    let mut d = connect_data(HOSTID, cntlid, subnqn, hostnqn);
    run(t, q, &connect_cmd(qid, sqsize, kato), &mut d, now)
}

fn connect_admin(t: &mut Target, q: QpairId, subnqn: &str, kato: u32) -> Completion {
    connect_with(t, q, 0, 31, kato, 0xffff, subnqn, HOST, 0)
}

fn connect_io(t: &mut Target, q: QpairId, qid: u16, cntlid: u16) -> Completion {
    connect_with(t, q, qid, 127, 0, cntlid, NQN, HOST, 0)
}

fn prop_get(t: &mut Target, q: QpairId, offset: u32, size8: bool) -> Completion {
    let mut c = Command::new_fabrics(fctype::PROPERTY_GET, 0x20);
    c.set_cdw10(u32::from(size8));
    c.set_cdw11(offset);
    run0(t, q, &c)
}

fn prop_set(t: &mut Target, q: QpairId, offset: u32, value: u32) -> Completion {
    let mut c = Command::new_fabrics(fctype::PROPERTY_SET, 0x21);
    c.set_cdw11(offset);
    c.set_cdw12(value);
    run0(t, q, &c)
}

/// Connect the admin queue, enable the controller; returns the cntlid.
fn ready_admin(t: &mut Target, q: QpairId, subnqn: &str) -> u16 {
    let c = connect_admin(t, q, subnqn, 0);
    assert_status(&c, Status::SUCCESS);
    assert_status(&prop_set(t, q, prop::CC, CC_ENABLE), Status::SUCCESS);
    c.cdw0 as u16
}

/// A ready controller with one I/O queue (qid 1 on IO1).
fn ready_io(t: &mut Target) -> u16 {
    let cntlid = ready_admin(t, ADMIN, NQN);
    assert_status(&connect_io(t, IO1, 1, cntlid), Status::SUCCESS);
    cntlid
}

fn identify(t: &mut Target, cns: u8, nsid: u32, buf: &mut [u8]) -> Completion {
    let mut c = Command::new(admin_opcode::IDENTIFY, 0x30);
    c.set_cdw10(u32::from(cns));
    c.set_nsid(nsid);
    run(t, ADMIN, &c, buf, 0)
}

fn rw(opcode: u8, nsid: u32, slba: u64, nlb: u32) -> Command {
    let mut c = Command::new(opcode, 0x40);
    c.set_nsid(nsid);
    c.set_cdw10(slba as u32);
    c.set_cdw11((slba >> 32) as u32);
    c.set_cdw12(nlb - 1);
    c
}

fn get_log(
    t: &mut Target,
    log_id: u8,
    rae: bool,
    len: u32,
    offset: u64,
    buf: &mut [u8],
) -> Completion {
    let numd = len / 4 - 1;
    let mut c = Command::new(admin_opcode::GET_LOG_PAGE, 0x50);
    c.set_cdw10(u32::from(log_id) | u32::from(rae) << 15 | (numd & 0xffff) << 16);
    c.set_cdw11(numd >> 16);
    c.set_cdw12(offset as u32);
    c.set_cdw13((offset >> 32) as u32);
    run(t, ADMIN, &c, buf, 0)
}

fn features(opcode: u8, fid: u8, cdw10_extra: u32, cdw11: u32) -> Command {
    let mut c = Command::new(opcode, 0x60);
    c.set_cdw10(u32::from(fid) | cdw10_extra);
    c.set_cdw11(cdw11);
    c
}

fn aer(cid: u16) -> Command {
    Command::new(admin_opcode::ASYNC_EVENT_REQUEST, cid)
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

// ---------------------------------------------------------------- end to end

#[test]
fn connect_enable_identify_write_read_back() {
    let mut t = target();
    // Admin Connect with the dynamic controller id.
    let c = connect_admin(&mut t, ADMIN, NQN, 0);
    assert_status(&c, Status::SUCCESS);
    assert!(!c.status.dnr);
    let cntlid = c.cdw0 as u16;
    assert_eq!(cntlid, 1);
    assert_eq!(c.cid, 0x10);
    assert_eq!(c.sqid, 0);
    assert_eq!(c.sqhd, 1);

    // CAP: MQES 127, CQR, TO, CSS = NVM.
    let cap = prop_get(&mut t, ADMIN, prop::CAP, true);
    assert_status(&cap, Status::SUCCESS);
    let cap = u64::from(cap.cdw0) | u64::from(cap.cdw1) << 32;
    assert_eq!(cap & 0xffff, 127);
    assert_eq!((cap >> 16) & 1, 1);
    assert_ne!((cap >> 24) & 0xff, 0);
    assert_eq!((cap >> 37) & 0xff, 1);
    assert_eq!(prop_get(&mut t, ADMIN, prop::VS, false).cdw0, 0x0001_0300);
    assert_eq!(prop_get(&mut t, ADMIN, prop::CSTS, false).cdw0 & 1, 0);

    // Enable; CSTS.RDY follows.
    assert_status(
        &prop_set(&mut t, ADMIN, prop::CC, CC_ENABLE),
        Status::SUCCESS,
    );
    assert_eq!(prop_get(&mut t, ADMIN, prop::CC, false).cdw0, CC_ENABLE);
    assert_eq!(prop_get(&mut t, ADMIN, prop::CSTS, false).cdw0, 1);

    // Identify Controller with the NVMe-oF fields.
    let mut id = vec![0u8; 4096];
    assert_status(&identify(&mut t, 1, 0, &mut id), Status::SUCCESS);
    assert_eq!(le16(&id, 78), cntlid);
    assert_eq!(le32(&id, 80), 0x0001_0300);
    assert_eq!(id[77], 5, "MDTS for 128 KiB");
    assert_eq!(le16(&id, 320), 100, "KAS");
    assert_eq!(id[259], 3, "AERL");
    assert_eq!(le16(&id, 520) & (1 << 3), 1 << 3, "ONCS write zeroes");
    assert_eq!(le32(&id, 516), 32, "NN");
    assert_eq!(id[512], 0x66);
    assert_eq!(id[513], 0x44);
    assert_eq!(le32(&id, 536), 0x0010_0005, "SGLS");
    assert_eq!(&id[768..768 + NQN.len()], NQN.as_bytes());
    assert_eq!(id[768 + NQN.len()], 0);
    assert_eq!(le32(&id, 1792), (64 + 4096) / 16, "IOCCSZ");
    assert_eq!(le32(&id, 1796), 1, "IORCSZ");
    assert_eq!(le16(&id, 1800), 0, "ICDOFF");
    assert_eq!(id[1802], 0, "FCATT dynamic");
    assert_eq!(id[1803], 16, "MSDBD");
    assert_eq!(id[111], 1, "CNTRLTYPE I/O");

    // Number of queues, then an I/O queue.
    let nq = run0(
        &mut t,
        ADMIN,
        &features(
            admin_opcode::SET_FEATURES,
            fid::NUMBER_OF_QUEUES,
            0,
            3 | 3 << 16,
        ),
    );
    assert_status(&nq, Status::SUCCESS);
    assert_eq!(nq.cdw0, 126 | 126 << 16);
    let c = connect_io(&mut t, IO1, 1, cntlid);
    assert_status(&c, Status::SUCCESS);
    assert_eq!(c.cdw0, u32::from(cntlid));
    assert_eq!(c.sqid, 1);

    // Identify Namespace 1: 1 MiB of 512-byte blocks.
    assert_status(&identify(&mut t, 0, 1, &mut id), Status::SUCCESS);
    assert_eq!(le64(&id, 0), 2048);
    assert_eq!(le64(&id, 8), 2048);
    assert_eq!(id[130], 9, "LBADS");

    // Write 8 blocks from three segments, read them back into two.
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let (mut a, mut b, mut c3) = (
        pattern[..1000].to_vec(),
        pattern[1000..1001].to_vec(),
        pattern[1001..].to_vec(),
    );
    let mut segs: [&mut [u8]; 3] = [&mut a, &mut b, &mut c3];
    let w = t
        .execute(
            IO1,
            &rw(io_opcode::WRITE, 1, 100, 8),
            DataBuffer::segments(&mut segs),
            0,
        )
        .completion()
        .unwrap();
    assert_status(&w, Status::SUCCESS);
    assert_eq!(w.sqid, 1);
    let mut r1 = vec![0u8; 512];
    let mut r2 = vec![0u8; 4096 - 512];
    let mut segs: [&mut [u8]; 2] = [&mut r1, &mut r2];
    let r = t
        .execute(
            IO1,
            &rw(io_opcode::READ, 1, 100, 8),
            DataBuffer::segments(&mut segs),
            0,
        )
        .completion()
        .unwrap();
    assert_status(&r, Status::SUCCESS);
    assert_eq!(&r1[..], &pattern[..512]);
    assert_eq!(&r2[..], &pattern[512..]);

    // Flush, Write Zeroes over the middle, read again.
    assert_status(
        &run0(&mut t, IO1, &rw(io_opcode::FLUSH, 1, 0, 1)),
        Status::SUCCESS,
    );
    assert_status(
        &run0(&mut t, IO1, &rw(io_opcode::WRITE_ZEROES, 1, 102, 2)),
        Status::SUCCESS,
    );
    let mut back = vec![0xaau8; 4096];
    assert_status(
        &run(&mut t, IO1, &rw(io_opcode::READ, 1, 100, 8), &mut back, 0),
        Status::SUCCESS,
    );
    assert_eq!(&back[..1024], &pattern[..1024]);
    assert!(back[1024..2048].iter().all(|&x| x == 0));
    assert_eq!(&back[2048..], &pattern[2048..]);
    // Namespace 2 is separate and still blank.
    assert_status(
        &run(&mut t, IO1, &rw(io_opcode::READ, 2, 0, 8), &mut back, 0),
        Status::SUCCESS,
    );
    assert!(back.iter().all(|&x| x == 0));

    let stats = t.stats();
    assert_eq!(stats.write_commands, 1);
    assert_eq!(stats.read_commands, 3);
    assert_eq!(stats.blocks_written, 8);
}

// ------------------------------------------------------------------ connect

#[test]
fn connect_refusals_point_at_the_field() {
    let mut t = target();
    // Unknown subsystem: IATTR 1, IPO 256.
    let c = connect_admin(&mut t, ADMIN, "nqn.2026-01.io.example:nope", 0);
    assert_status(&c, Status::CONNECT_INVALID_PARAMETERS);
    assert!(c.status.dnr);
    assert_eq!(c.cdw0, 256 | 1 << 16);
    // SUBNQN without NUL.
    let mut d = connect_data(HOSTID, 0xffff, NQN, HOST);
    d[256..512].fill(b'a');
    let c = run(&mut t, ADMIN, &connect_cmd(0, 31, 0), &mut d, 0);
    assert_eq!((sc(&c), c.cdw0), ((1, 0x82), 256 | 1 << 16));
    // RECFMT != 0.
    let mut cmd = connect_cmd(0, 31, 0);
    cmd.set_cdw10(1);
    let mut d = connect_data(HOSTID, 0xffff, NQN, HOST);
    assert_status(
        &run(&mut t, ADMIN, &cmd, &mut d, 0),
        Status::CONNECT_INCOMPATIBLE_FORMAT,
    );
    // SQSIZE 0 and too large: IATTR 0, IPO 44.
    for sqsize in [0, 128] {
        let c = connect_with(&mut t, ADMIN, 0, sqsize, 0, 0xffff, NQN, HOST, 0);
        assert_eq!((sc(&c), c.cdw0), ((1, 0x82), 44), "sqsize {sqsize}");
    }
    // HOSTNQN without NUL: IPO 512.
    let mut d = connect_data(HOSTID, 0xffff, NQN, HOST);
    d[512..768].fill(b'h');
    let c = run(&mut t, ADMIN, &connect_cmd(0, 31, 0), &mut d, 0);
    assert_eq!((sc(&c), c.cdw0), ((1, 0x82), 512 | 1 << 16));
    // Static controller id on the admin queue: IPO 16.
    let c = connect_with(&mut t, ADMIN, 0, 31, 0, 5, NQN, HOST, 0);
    assert_eq!((sc(&c), c.cdw0), ((1, 0x82), 16 | 1 << 16));
    // Connect data shorter than 1024 bytes.
    let mut short = [0u8; 512];
    assert_status(
        &run(&mut t, ADMIN, &connect_cmd(0, 31, 0), &mut short, 0),
        Status::INVALID_FIELD,
    );
    assert_eq!(t.qpair_count(), 0);
    assert!(t.controller_ids().is_empty());
}

#[test]
fn connect_checks_allowed_hosts() {
    let mut t = Target::new(TargetConfig {
        allowed_hosts: Some(vec![HOST.to_string()]),
        ..config()
    })
    .unwrap();
    let c = connect_with(
        &mut t,
        ADMIN,
        0,
        31,
        0,
        0xffff,
        NQN,
        "nqn.2014-08.org.nvmexpress:other",
        0,
    );
    assert_status(&c, Status::CONNECT_INVALID_HOST);
    // The discovery subsystem admits any host.
    let c = connect_with(
        &mut t,
        ADMIN,
        0,
        31,
        0,
        0xffff,
        DISCOVERY_NQN,
        "nqn.2014-08.org.nvmexpress:other",
        0,
    );
    assert_status(&c, Status::SUCCESS);
    assert_status(&connect_admin(&mut t, QpairId(9), NQN, 0), Status::SUCCESS);
}

#[test]
fn io_connect_refusals() {
    let mut t = target();
    // Unknown controller.
    let c = connect_io(&mut t, IO1, 1, 7);
    assert_eq!((sc(&c), c.cdw0), ((1, 0x82), 16 | 1 << 16));
    let cntlid = connect_admin(&mut t, ADMIN, NQN, 0).cdw0 as u16;
    // Before CC.EN: IATTR 0, IPO 42 (QID).
    let c = connect_io(&mut t, IO1, 1, cntlid);
    assert_eq!((sc(&c), c.cdw0), ((1, 0x82), 42));
    // Enabled without IOSQES/IOCQES.
    assert_status(&prop_set(&mut t, ADMIN, prop::CC, 1), Status::SUCCESS);
    let c = connect_io(&mut t, IO1, 1, cntlid);
    assert_eq!((sc(&c), c.cdw0), ((1, 0x82), 42));
    assert_status(
        &prop_set(&mut t, ADMIN, prop::CC, CC_ENABLE),
        Status::SUCCESS,
    );
    // I/O SQSIZE above max_queue_depth - 1.
    let c = connect_with(&mut t, IO1, 1, 128, 0, cntlid, NQN, HOST, 0);
    assert_eq!((sc(&c), c.cdw0), ((1, 0x82), 44));
    // Another host's NQN.
    let c = connect_with(
        &mut t,
        IO1,
        1,
        31,
        0,
        cntlid,
        NQN,
        "nqn.2014-08.org.nvmexpress:other",
        0,
    );
    assert_eq!((sc(&c), c.cdw0), ((1, 0x82), 512 | 1 << 16));
    // QID beyond max_qpairs_per_ctrlr - 1.
    assert_status(
        &connect_io(&mut t, IO1, 128, cntlid),
        Status::INVALID_QUEUE_IDENTIFIER,
    );
    // Duplicate QID.
    assert_status(&connect_io(&mut t, IO1, 1, cntlid), Status::SUCCESS);
    assert_status(
        &connect_io(&mut t, QpairId(3), 1, cntlid),
        Status::INVALID_QUEUE_IDENTIFIER,
    );
    // Connect again on a connected qpair.
    assert_status(&connect_io(&mut t, IO1, 2, cntlid), Status::INVALID_OPCODE);
    // Once the first I/O qpair is gone, its QID is free again.
    t.qpair_disconnected(IO1);
    assert_status(&connect_io(&mut t, QpairId(3), 1, cntlid), Status::SUCCESS);
}

#[test]
fn commands_before_connect_are_sequence_errors() {
    let mut t = target();
    let c = run0(&mut t, ADMIN, &Command::new(admin_opcode::IDENTIFY, 3));
    assert_status(&c, Status::COMMAND_SEQUENCE_ERROR);
    assert!(c.status.dnr);
    assert_eq!(c.cid, 3);
    let c = prop_get(&mut t, ADMIN, prop::CAP, true);
    assert_status(&c, Status::COMMAND_SEQUENCE_ERROR);
}

#[test]
fn controller_ids_are_allocated_per_admin_queue() {
    let mut t = target();
    let a = connect_admin(&mut t, QpairId(10), NQN, 0).cdw0;
    let b = connect_admin(&mut t, QpairId(11), NQN, 0).cdw0;
    assert_ne!(a, b);
    assert_eq!(t.controller_ids().len(), 2);
    t.qpair_disconnected(QpairId(10));
    assert_eq!(t.controller_ids(), vec![b as u16]);
}

#[test]
fn sqhd_wraps_at_the_queue_size() {
    let mut t = target();
    let c = connect_with(&mut t, ADMIN, 0, 2, 0, 0xffff, NQN, HOST, 0);
    assert_eq!(c.sqhd, 1);
    assert_eq!(prop_get(&mut t, ADMIN, prop::VS, false).sqhd, 2);
    assert_eq!(prop_get(&mut t, ADMIN, prop::VS, false).sqhd, 0);
    assert_eq!(prop_get(&mut t, ADMIN, prop::VS, false).sqhd, 1);
}

// --------------------------------------------------------------- properties

#[test]
fn property_errors() {
    let mut t = target();
    assert_status(&connect_admin(&mut t, ADMIN, NQN, 0), Status::SUCCESS);
    // Wrong size for CAP / VS, unknown offset, bad ATTRIB size.
    assert_status(
        &prop_get(&mut t, ADMIN, prop::CAP, false),
        Status::CONNECT_INVALID_PARAMETERS,
    );
    assert_status(
        &prop_get(&mut t, ADMIN, prop::VS, true),
        Status::CONNECT_INVALID_PARAMETERS,
    );
    assert_status(
        &prop_get(&mut t, ADMIN, 0x40, false),
        Status::CONNECT_INVALID_PARAMETERS,
    );
    let mut c = Command::new_fabrics(fctype::PROPERTY_GET, 1);
    c.set_cdw10(2);
    assert_status(&run0(&mut t, ADMIN, &c), Status::CONNECT_INVALID_PARAMETERS);
    // Read-only properties.
    assert_status(
        &prop_set(&mut t, ADMIN, prop::CSTS, 1),
        Status::CONNECT_INVALID_PARAMETERS,
    );
    assert_status(
        &prop_set(&mut t, ADMIN, prop::CAP, 1),
        Status::CONNECT_INVALID_PARAMETERS,
    );
    // Unsupported CC values: MPS != 0, AMS != 0, CSS != 0, SHN = 3.
    for bad in [1 << 7, 1 << 11, 1 << 4, 3 << 14] {
        assert_status(
            &prop_set(&mut t, ADMIN, prop::CC, CC_ENABLE | bad),
            Status::CONNECT_INVALID_PARAMETERS,
        );
    }
    assert_eq!(
        prop_get(&mut t, ADMIN, prop::CC, false).cdw0,
        0,
        "nothing applied"
    );
    // Unknown fabrics command type on the admin queue.
    assert_status(
        &run0(&mut t, ADMIN, &Command::new_fabrics(0x7e, 1)),
        Status::INVALID_OPCODE,
    );
    // Admin commands before CC.EN.
    let mut id = vec![0u8; 4096];
    assert_status(
        &identify(&mut t, 1, 0, &mut id),
        Status::COMMAND_SEQUENCE_ERROR,
    );
}

#[test]
fn properties_are_admin_queue_only() {
    let mut t = target();
    ready_io(&mut t);
    assert_status(
        &prop_get(&mut t, IO1, prop::CAP, true),
        Status::INVALID_OPCODE,
    );
}

#[test]
fn reset_drops_io_queues_and_held_aers() {
    let mut t = target();
    let cntlid = ready_io(&mut t);
    assert_eq!(
        t.execute(ADMIN, &aer(0x70), DataBuffer::none(), 0),
        Execution::Held
    );
    // CC.EN 1 -> 0.
    assert_status(&prop_set(&mut t, ADMIN, prop::CC, 0), Status::SUCCESS);
    assert_eq!(prop_get(&mut t, ADMIN, prop::CSTS, false).cdw0, 0);
    let done = t.take_completions();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].qpair, ADMIN);
    assert_eq!(done[0].completion.cid, 0x70);
    assert_status(&done[0].completion, Status::ABORTED_SQ_DELETION);
    assert!(!done[0].completion.status.dnr);
    assert_eq!(t.next_timeout(), Some(0), "a disconnect request is due");
    let d = t.poll(0);
    assert_eq!(
        d,
        vec![Disconnect {
            qpair: IO1,
            cntlid,
            qid: 1,
            reason: DisconnectReason::ControllerReset
        }]
    );
    assert_eq!(t.next_timeout(), None);
    assert!(t.poll(0).is_empty(), "asked once");
    // The I/O qpair aborts commands until the transport reports it gone.
    let c = run(
        &mut t,
        IO1,
        &rw(io_opcode::READ, 1, 0, 1),
        &mut [0u8; 512],
        0,
    );
    assert_status(&c, Status::ABORTED_SQ_DELETION);
    t.qpair_disconnected(IO1);
    // Re-enable and reconnect the same QID.
    assert_status(
        &prop_set(&mut t, ADMIN, prop::CC, CC_ENABLE),
        Status::SUCCESS,
    );
    assert_status(&connect_io(&mut t, QpairId(5), 1, cntlid), Status::SUCCESS);
}

#[test]
fn shutdown_reports_complete_and_drops_io_queues() {
    let mut t = target();
    ready_io(&mut t);
    // CC.SHN = 01b (normal shutdown).
    assert_status(
        &prop_set(&mut t, ADMIN, prop::CC, CC_ENABLE | 1 << 14),
        Status::SUCCESS,
    );
    let csts = prop_get(&mut t, ADMIN, prop::CSTS, false).cdw0;
    assert_eq!((csts >> 2) & 3, 2, "SHST complete");
    let d = t.poll(0);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].reason, DisconnectReason::ControllerShutdown);
    // A new I/O queue is refused while shut down.
    let cntlid = t.controller_ids()[0];
    let c = connect_io(&mut t, QpairId(5), 2, cntlid);
    assert_eq!((sc(&c), c.cdw0), ((1, 0x82), 42));
}

// ----------------------------------------------------------------- identify

#[test]
fn identify_namespaces_and_lists() {
    let mut t = target();
    ready_admin(&mut t, ADMIN, NQN);
    let mut id = vec![0xffu8; 4096];
    // Invalid NSIDs.
    for nsid in [0, 33, 0xffff_ffff] {
        assert_status(
            &identify(&mut t, 0, nsid, &mut id),
            Status::INVALID_NAMESPACE_OR_FORMAT,
        );
    }
    // An inactive NSID reads as zeroes.
    assert_status(&identify(&mut t, 0, 5, &mut id), Status::SUCCESS);
    assert!(id.iter().all(|&b| b == 0));
    // Namespace 2 holds 4096 bytes = 8 blocks.
    assert_status(&identify(&mut t, 0, 2, &mut id), Status::SUCCESS);
    assert_eq!(le64(&id, 0), 8);
    // Active namespace list.
    assert_status(&identify(&mut t, 2, 0, &mut id), Status::SUCCESS);
    assert_eq!((le32(&id, 0), le32(&id, 4), le32(&id, 8)), (1, 2, 0));
    assert_status(&identify(&mut t, 2, 1, &mut id), Status::SUCCESS);
    assert_eq!((le32(&id, 0), le32(&id, 4)), (2, 0));
    assert_status(
        &identify(&mut t, 2, 0xffff_fffe, &mut id),
        Status::INVALID_NAMESPACE_OR_FORMAT,
    );
    // Namespace identification descriptors: NGUID then UUID.
    assert_status(&identify(&mut t, 3, 1, &mut id), Status::SUCCESS);
    let (nguid, uuid) = {
        let ns = t.namespace(1).unwrap();
        (ns.nguid(), ns.uuid())
    };
    assert_eq!((id[0], id[1]), (2, 16));
    assert_eq!(&id[4..20], &nguid);
    assert_eq!((id[20], id[21]), (3, 16));
    assert_eq!(&id[24..40], &uuid);
    assert_eq!(id[40], 0, "list ends");
    let mut ns_page = vec![0u8; 4096];
    assert_status(&identify(&mut t, 0, 1, &mut ns_page), Status::SUCCESS);
    assert_eq!(&ns_page[104..120], &nguid);
    assert_status(
        &identify(&mut t, 3, 3, &mut id),
        Status::INVALID_NAMESPACE_OR_FORMAT,
    );
    // Unsupported CNS, short buffer.
    assert_status(&identify(&mut t, 0x10, 0, &mut id), Status::INVALID_FIELD);
    let mut short = vec![0u8; 1024];
    assert_status(
        &identify(&mut t, 1, 0, &mut short),
        Status::DATA_SGL_LENGTH_INVALID,
    );
}

// ----------------------------------------------------------------- features

#[test]
fn set_and_get_features() {
    let mut t = target();
    ready_admin(&mut t, ADMIN, NQN);
    let set = |f, extra, v| features(admin_opcode::SET_FEATURES, f, extra, v);
    let get = |f, sel: u32| features(admin_opcode::GET_FEATURES, f, sel << 8, 0);
    // Number of queues: 0xFFFF is invalid.
    assert_status(
        &run0(&mut t, ADMIN, &set(fid::NUMBER_OF_QUEUES, 0, 0xffff)),
        Status::INVALID_FIELD,
    );
    assert_eq!(
        run0(&mut t, ADMIN, &get(fid::NUMBER_OF_QUEUES, 0)).cdw0,
        126 | 126 << 16
    );
    // Keep alive: 0 is invalid; 15 s rounds up to the 10 s granularity.
    assert_status(
        &run0(&mut t, ADMIN, &set(fid::KEEP_ALIVE_TIMER, 0, 0)),
        Status::KEEP_ALIVE_INVALID,
    );
    assert_status(
        &run0(&mut t, ADMIN, &set(fid::KEEP_ALIVE_TIMER, 0, 15_000)),
        Status::SUCCESS,
    );
    assert_eq!(
        run0(&mut t, ADMIN, &get(fid::KEEP_ALIVE_TIMER, 0)).cdw0,
        20_000
    );
    assert_status(
        &run0(&mut t, ADMIN, &set(fid::KEEP_ALIVE_TIMER, 0, 1)),
        Status::SUCCESS,
    );
    assert_eq!(
        run0(&mut t, ADMIN, &get(fid::KEEP_ALIVE_TIMER, 0)).cdw0,
        10_000,
        "min_kato"
    );
    // Async event configuration: default has namespace notices on.
    assert_eq!(
        run0(&mut t, ADMIN, &get(fid::ASYNC_EVENT_CONFIG, 0)).cdw0,
        1 << 8
    );
    assert_status(
        &run0(&mut t, ADMIN, &set(fid::ASYNC_EVENT_CONFIG, 0, 0)),
        Status::SUCCESS,
    );
    assert_eq!(
        run0(&mut t, ADMIN, &get(fid::ASYNC_EVENT_CONFIG, 0)).cdw0,
        0
    );
    assert_eq!(
        run0(&mut t, ADMIN, &get(fid::ASYNC_EVENT_CONFIG, 1)).cdw0,
        1 << 8,
        "default"
    );
    // Volatile write cache.
    assert_eq!(
        run0(&mut t, ADMIN, &get(fid::VOLATILE_WRITE_CACHE, 0)).cdw0,
        1
    );
    assert_status(
        &run0(&mut t, ADMIN, &set(fid::VOLATILE_WRITE_CACHE, 0, 0)),
        Status::SUCCESS,
    );
    assert_eq!(
        run0(&mut t, ADMIN, &get(fid::VOLATILE_WRITE_CACHE, 0)).cdw0,
        0
    );
    // Capabilities, reserved SEL, save bit, unknown feature.
    assert_eq!(
        run0(&mut t, ADMIN, &get(fid::KEEP_ALIVE_TIMER, 3)).cdw0,
        1 << 2
    );
    assert_status(
        &run0(&mut t, ADMIN, &get(fid::KEEP_ALIVE_TIMER, 4)),
        Status::INVALID_FIELD,
    );
    assert_status(
        &run0(&mut t, ADMIN, &set(fid::ASYNC_EVENT_CONFIG, 1 << 31, 0)),
        Status::FEATURE_ID_NOT_SAVEABLE,
    );
    assert_status(
        &run0(&mut t, ADMIN, &set(0x01, 0, 0)),
        Status::INVALID_FIELD,
    );
    assert_status(&run0(&mut t, ADMIN, &get(0x02, 0)), Status::INVALID_FIELD);
    // Number of queues once an I/O queue exists.
    let cntlid = t.controller_ids()[0];
    assert_status(&connect_io(&mut t, IO1, 1, cntlid), Status::SUCCESS);
    assert_status(
        &run0(&mut t, ADMIN, &set(fid::NUMBER_OF_QUEUES, 0, 0)),
        Status::COMMAND_SEQUENCE_ERROR,
    );
}

// --------------------------------------------------------------- keep-alive

#[test]
fn keep_alive_timeout_disconnects_the_controller() {
    let mut t = target();
    // KATO 1 s is raised to min_kato 10 s.
    let c = connect_with(&mut t, ADMIN, 0, 31, 1000, 0xffff, NQN, HOST, 0);
    let cntlid = c.cdw0 as u16;
    assert_status(
        &prop_set(&mut t, ADMIN, prop::CC, CC_ENABLE),
        Status::SUCCESS,
    );
    assert_status(&connect_io(&mut t, IO1, 1, cntlid), Status::SUCCESS);
    assert_eq!(t.next_timeout(), Some(10 * SEC));
    // A Keep Alive at 9 s restarts the timer.
    let ka = Command::new(admin_opcode::KEEP_ALIVE, 9);
    assert_status(&run(&mut t, ADMIN, &ka, &mut [], 9 * SEC), Status::SUCCESS);
    assert!(t.poll(15 * SEC).is_empty());
    assert!(
        t.poll(19 * SEC).is_empty(),
        "exactly at the deadline is still fine"
    );
    let d = t.poll(19 * SEC + 1);
    assert_eq!(d.len(), 2);
    assert!(d
        .iter()
        .all(|d| d.reason == DisconnectReason::KeepAliveTimeout && d.cntlid == cntlid));
    assert!(d.iter().any(|d| d.qpair == ADMIN && d.qid == 0));
    assert!(d.iter().any(|d| d.qpair == IO1 && d.qid == 1));
    assert_eq!(t.next_timeout(), None);
    assert!(t.poll(100 * SEC).is_empty());
    // Commands are aborted until the transport reports the qpairs gone.
    assert_status(&run0(&mut t, ADMIN, &ka), Status::ABORTED_SQ_DELETION);
    t.qpair_disconnected(IO1);
    t.qpair_disconnected(ADMIN);
    assert!(t.controller_ids().is_empty());
    assert_eq!(t.qpair_count(), 0);
}

#[test]
fn kato_zero_disables_the_timer() {
    let mut t = target();
    ready_admin(&mut t, ADMIN, NQN);
    assert_eq!(t.next_timeout(), None);
    assert!(t.poll(u64::MAX).is_empty());
}

// ------------------------------------------------------------- async events

#[test]
fn aers_are_held_limited_and_completed_by_namespace_changes() {
    let mut t = target();
    ready_admin(&mut t, ADMIN, NQN);
    for cid in 0..4 {
        assert_eq!(
            t.execute(ADMIN, &aer(cid), DataBuffer::none(), 0),
            Execution::Held
        );
    }
    // AERL = 3 (0-based): a fifth is refused.
    let c = run0(&mut t, ADMIN, &aer(4));
    assert_status(&c, Status::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED);
    assert!(t.take_completions().is_empty());
    // A new namespace completes the oldest AER with a notice for log 04h.
    let nsid = t.add_namespace(8192).unwrap();
    assert_eq!(nsid, 3);
    let done = t.take_completions();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].completion.cid, 0);
    assert_eq!(done[0].completion.cdw0, 0x0004_0002);
    assert_status(&done[0].completion, Status::SUCCESS);
    // Masked until the host reads the changed namespace list.
    t.remove_namespace(2).unwrap();
    assert!(t.take_completions().is_empty());
    let mut log = vec![0u8; 4096];
    assert_status(
        &get_log(&mut t, 0x04, true, 4096, 0, &mut log),
        Status::SUCCESS,
    );
    assert_eq!((le32(&log, 0), le32(&log, 4), le32(&log, 8)), (2, 3, 0));
    // RAE = 1 kept the list; RAE = 0 clears it and unmasks.
    assert_status(
        &get_log(&mut t, 0x04, false, 4096, 0, &mut log),
        Status::SUCCESS,
    );
    assert_eq!(le32(&log, 0), 2);
    assert_status(
        &get_log(&mut t, 0x04, false, 4096, 0, &mut log),
        Status::SUCCESS,
    );
    assert_eq!(le32(&log, 0), 0);
    t.add_namespace(512).unwrap();
    let done = t.take_completions();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].completion.cid, 1);
    assert_eq!(
        t.remove_namespace(30),
        Err(ConfigError::NoSuchNamespace(30))
    );
}

#[test]
fn events_wait_for_an_aer() {
    let mut t = target();
    ready_admin(&mut t, ADMIN, NQN);
    t.add_namespace(512).unwrap();
    assert!(t.take_completions().is_empty());
    let c = run0(&mut t, ADMIN, &aer(9));
    assert_status(&c, Status::SUCCESS);
    assert_eq!(c.cdw0, 0x0004_0002);
}

#[test]
fn abort_ends_a_held_aer() {
    let mut t = target();
    ready_admin(&mut t, ADMIN, NQN);
    assert_eq!(
        t.execute(ADMIN, &aer(0x33), DataBuffer::none(), 0),
        Execution::Held
    );
    let mut abort = Command::new(admin_opcode::ABORT, 0x34);
    abort.set_cdw10(0x99 << 16);
    assert_eq!(
        run0(&mut t, ADMIN, &abort).cdw0,
        1,
        "unknown cid: not aborted"
    );
    abort.set_cdw10(0x33 << 16);
    let c = run0(&mut t, ADMIN, &abort);
    assert_status(&c, Status::SUCCESS);
    assert_eq!(c.cdw0, 0);
    let done = t.take_completions();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].completion.cid, 0x33);
    assert_status(&done[0].completion, Status::ABORTED_BY_REQUEST);
}

#[test]
fn admin_disconnect_destroys_controller_and_releases_aers() {
    let mut t = target();
    let cntlid = ready_io(&mut t);
    assert_eq!(
        t.execute(ADMIN, &aer(1), DataBuffer::none(), 0),
        Execution::Held
    );
    t.qpair_disconnected(ADMIN);
    assert!(t.controller_ids().is_empty());
    t.add_namespace(512).unwrap();
    assert!(
        t.take_completions().is_empty(),
        "held AER released, not completed"
    );
    let d = t.poll(0);
    assert_eq!(
        d,
        vec![Disconnect {
            qpair: IO1,
            cntlid,
            qid: 1,
            reason: DisconnectReason::AdminQueueGone
        }]
    );
    let c = run(
        &mut t,
        IO1,
        &rw(io_opcode::READ, 1, 0, 1),
        &mut [0u8; 512],
        0,
    );
    assert_status(&c, Status::ABORTED_SQ_DELETION);
    t.qpair_disconnected(IO1);
    assert_eq!(t.qpair_count(), 0);
    // Unknown qpairs are ignored.
    t.qpair_disconnected(QpairId(77));
}

// ---------------------------------------------------------------- log pages

#[test]
fn log_pages() {
    let mut t = target();
    ready_io(&mut t);
    let mut buf = vec![0u8; 4096];
    assert_status(
        &run(
            &mut t,
            IO1,
            &rw(io_opcode::WRITE, 1, 0, 4),
            &mut buf[..2048],
            0,
        ),
        Status::SUCCESS,
    );
    assert_status(
        &run(&mut t, IO1, &rw(io_opcode::READ, 1, 0, 8), &mut buf, 0),
        Status::SUCCESS,
    );
    let bad = run(&mut t, IO1, &rw(io_opcode::READ, 1, 4096, 1), &mut buf, 0);
    assert_status(&bad, Status::LBA_OUT_OF_RANGE);
    // SMART: one unit (rounded up) each way, one command each way.
    let mut log = vec![0xffu8; 512];
    assert_status(
        &get_log(&mut t, 0x02, false, 512, 0, &mut log),
        Status::SUCCESS,
    );
    assert_eq!(le16(&log, 1), 293);
    assert_eq!(log[3], 100);
    assert_eq!((le64(&log, 32), le64(&log, 48)), (1, 1));
    assert_eq!((le64(&log, 64), le64(&log, 80)), (1, 1));
    // Error log: the LBA_OUT_OF_RANGE read.
    assert_status(
        &get_log(&mut t, 0x01, false, 512, 0, &mut log),
        Status::SUCCESS,
    );
    assert_eq!(le64(&log, 0), 1);
    assert_eq!((le16(&log, 8), le16(&log, 10)), (1, 0x40));
    assert_eq!(
        le16(&log, 12),
        (Status::LBA_OUT_OF_RANGE.with_dnr()).to_field()
    );
    assert_eq!((le64(&log, 16), le32(&log, 24)), (4096, 1));
    assert_eq!(le64(&log, 64), 0, "one entry");
    // Offset into the page, and zero fill past its end.
    let mut part = vec![0xffu8; 16];
    assert_status(
        &get_log(&mut t, 0x01, false, 16, 504, &mut part),
        Status::SUCCESS,
    );
    assert!(part.iter().all(|&b| b == 0));
    // Errors: misaligned offset, offset past the page, short buffer,
    // unsupported LID (and the discovery log on an NVM controller).
    assert_status(
        &get_log(&mut t, 0x01, false, 16, 2, &mut part),
        Status::INVALID_FIELD,
    );
    assert_status(
        &get_log(&mut t, 0x01, false, 16, 1024, &mut part),
        Status::INVALID_FIELD,
    );
    assert_status(
        &get_log(&mut t, 0x02, false, 512, 0, &mut part),
        Status::DATA_SGL_LENGTH_INVALID,
    );
    assert_status(
        &get_log(&mut t, 0x03, false, 16, 0, &mut part),
        Status::INVALID_FIELD,
    );
    assert_status(
        &get_log(&mut t, 0x70, false, 16, 0, &mut part),
        Status::INVALID_FIELD,
    );
}

// ---------------------------------------------------------------- discovery

#[test]
fn discovery_controller_serves_the_discovery_log() {
    let mut t = target();
    t.add_listener(Listener::rdma("[::1]:4421".parse().unwrap()))
        .unwrap();
    let c = connect_admin(&mut t, ADMIN, DISCOVERY_NQN, 0);
    assert_status(&c, Status::SUCCESS);
    let cntlid = c.cdw0 as u16;
    assert_eq!(t.next_timeout(), Some(120 * SEC), "discovery default KATO");
    assert_status(
        &prop_set(&mut t, ADMIN, prop::CC, CC_ENABLE),
        Status::SUCCESS,
    );
    let mut id = vec![0u8; 4096];
    assert_status(&identify(&mut t, 1, 0, &mut id), Status::SUCCESS);
    assert_eq!(id[111], 2, "CNTRLTYPE discovery");
    assert_eq!(
        &id[768..768 + DISCOVERY_NQN.len()],
        DISCOVERY_NQN.as_bytes()
    );
    assert_eq!(le32(&id, 516), 0, "no namespaces");
    assert_status(&identify(&mut t, 0, 1, &mut id), Status::INVALID_FIELD);

    let mut log = vec![0u8; 3072];
    assert_status(
        &get_log(&mut t, 0x70, false, 3072, 0, &mut log),
        Status::SUCCESS,
    );
    assert_eq!(le64(&log, 0), 1, "GENCTR bumped by add_listener");
    assert_eq!(le64(&log, 8), 2, "NUMREC");
    let e = &log[1024..2048];
    assert_eq!(
        (e[0], e[1], e[2], e[3]),
        (1, 1, 2, 2),
        "RDMA, IPv4, NVM subsystem, no secure channel"
    );
    assert_eq!(le16(e, 6), 0xffff);
    assert_eq!(le16(e, 8), 128, "ASQSZ");
    assert_eq!(&e[32..36], b"4420");
    assert_eq!(e[36], b' ');
    assert_eq!(&e[256..256 + NQN.len()], NQN.as_bytes());
    assert_eq!(&e[512..521], b"127.0.0.1");
    assert_eq!(e[521], b' ');
    assert_eq!(
        (e[768], e[769], e[770]),
        (1, 1, 1),
        "TSAS: RC, no provider, RDMA CM"
    );
    let e = &log[2048..3072];
    assert_eq!((e[1], le16(e, 4)), (2, 1), "IPv6, PORTID 1");
    assert_eq!(&e[512..515], b"::1");
    // Header only, with an offset.
    let mut hdr = vec![0u8; 16];
    assert_status(
        &get_log(&mut t, 0x70, false, 16, 8, &mut hdr),
        Status::SUCCESS,
    );
    assert_eq!(le64(&hdr, 0), 2);

    // No I/O queues, no NVM-only commands or logs.
    let c = connect_with(&mut t, IO1, 1, 31, 0, cntlid, DISCOVERY_NQN, HOST, 0);
    assert_eq!((sc(&c), c.cdw0), ((1, 0x82), 42));
    assert_status(
        &get_log(&mut t, 0x02, false, 512, 0, &mut log),
        Status::INVALID_FIELD,
    );
    assert_status(
        &run0(&mut t, ADMIN, &Command::new(admin_opcode::ABORT, 1)),
        Status::INVALID_OPCODE,
    );
    let nq = features(admin_opcode::SET_FEATURES, fid::NUMBER_OF_QUEUES, 0, 0);
    assert_status(&run0(&mut t, ADMIN, &nq), Status::INVALID_FIELD);
    assert_status(
        &run0(&mut t, ADMIN, &Command::new(admin_opcode::KEEP_ALIVE, 1)),
        Status::SUCCESS,
    );
    // An I/O Connect naming an NVM-subsystem cntlid that is a discovery controller.
    let c = connect_io(&mut t, IO1, 1, cntlid);
    assert_eq!((sc(&c), c.cdw0), ((1, 0x82), 256 | 1 << 16));
}

// ---------------------------------------------------------------------- I/O

#[test]
fn io_errors() {
    let mut t = target();
    ready_io(&mut t);
    let mut buf = vec![0u8; 256 * 1024];
    let mut io = |t: &mut Target, cmd: &Command, len: usize| run(t, IO1, cmd, &mut buf[..len], 0);
    // Namespaces: 0, unknown, broadcast.
    for nsid in [0, 9, 0xffff_ffff] {
        let c = io(&mut t, &rw(io_opcode::READ, nsid, 0, 1), 512);
        assert_status(&c, Status::INVALID_NAMESPACE_OR_FORMAT);
        assert!(c.status.dnr);
    }
    // Past the end (namespace 2 has 8 blocks), and SLBA + NLB overflowing.
    assert_status(
        &io(&mut t, &rw(io_opcode::WRITE, 2, 7, 2), 1024),
        Status::LBA_OUT_OF_RANGE,
    );
    assert_status(
        &io(&mut t, &rw(io_opcode::READ, 2, u64::MAX, 2), 1024),
        Status::LBA_OUT_OF_RANGE,
    );
    assert_status(
        &io(&mut t, &rw(io_opcode::WRITE_ZEROES, 2, 0, 9), 0),
        Status::LBA_OUT_OF_RANGE,
    );
    assert_status(
        &io(&mut t, &rw(io_opcode::WRITE, 2, 7, 1), 512),
        Status::SUCCESS,
    );
    // More than MDTS (128 KiB = 256 blocks).
    assert_status(
        &io(&mut t, &rw(io_opcode::READ, 1, 0, 257), 257 * 512),
        Status::INVALID_FIELD,
    );
    assert_status(
        &io(&mut t, &rw(io_opcode::READ, 1, 0, 256), 256 * 512),
        Status::SUCCESS,
    );
    // Data buffer shorter than the blocks.
    assert_status(
        &io(&mut t, &rw(io_opcode::READ, 1, 0, 2), 1000),
        Status::DATA_SGL_LENGTH_INVALID,
    );
    assert_status(
        &io(&mut t, &rw(io_opcode::WRITE, 1, 0, 2), 512),
        Status::DATA_SGL_LENGTH_INVALID,
    );
    // Unsupported I/O opcodes, fused commands.
    for op in [
        io_opcode::COMPARE,
        io_opcode::DATASET_MANAGEMENT,
        io_opcode::WRITE_UNCORRECTABLE,
        0x7e,
    ] {
        assert_status(&io(&mut t, &rw(op, 1, 0, 1), 512), Status::INVALID_OPCODE);
    }
    let mut fused = rw(io_opcode::READ, 1, 0, 1);
    fused.set_fuse(Fuse::First);
    assert_status(&io(&mut t, &fused, 512), Status::INVALID_FIELD);
    // Fabrics commands other than Connect on an I/O queue.
    assert_status(
        &io(&mut t, &Command::new_fabrics(fctype::DISCONNECT, 1), 0),
        Status::INVALID_OPCODE,
    );
}

#[test]
fn unsupported_admin_commands() {
    let mut t = target();
    ready_admin(&mut t, ADMIN, NQN);
    for op in [
        admin_opcode::CREATE_IO_SQ,
        admin_opcode::DELETE_IO_CQ,
        admin_opcode::NS_MANAGEMENT,
        admin_opcode::FIRMWARE_COMMIT,
        0x80, // Format NVM
        0xc0, // vendor specific
    ] {
        let c = run0(&mut t, ADMIN, &Command::new(op, 2));
        assert_status(&c, Status::INVALID_OPCODE);
        assert_eq!(c.status.sct, sct::GENERIC);
        assert!(c.status.dnr);
    }
}

// ------------------------------------------------------------------- config

#[test]
fn config_validation() {
    let bad = |f: fn(&mut TargetConfig)| {
        let mut c = config();
        f(&mut c);
        Target::new(c).unwrap_err()
    };
    assert!(matches!(bad(|c| c.subnqn.clear()), ConfigError::Nqn(_)));
    assert!(matches!(
        bad(|c| c.subnqn = "n".repeat(224)),
        ConfigError::Nqn(_)
    ));
    assert_eq!(
        bad(|c| c.subnqn = DISCOVERY_NQN.into()),
        ConfigError::DiscoveryNqn
    );
    assert_eq!(
        bad(|c| c.namespaces = vec![100]),
        ConfigError::NamespaceSize(100)
    );
    assert!(matches!(
        bad(|c| c.serial = "s".repeat(21)),
        ConfigError::Serial(_)
    ));
    assert!(matches!(
        bad(|c| c.max_namespaces = 1),
        ConfigError::TooManyNamespaces { .. }
    ));
    assert_eq!(
        bad(|c| c.transport.max_queue_depth = 1),
        ConfigError::QueueDepth(1)
    );
    assert_eq!(
        bad(|c| c.transport.max_qpairs_per_ctrlr = 1),
        ConfigError::QpairsPerController(1)
    );
    let mut t = target();
    assert_eq!(t.add_namespace(10), Err(ConfigError::NamespaceSize(10)));
    assert!(t
        .add_listener(Listener {
            traddr: "x".repeat(300),
            ..Listener::rdma("127.0.0.1:1".parse().unwrap())
        })
        .is_err());
}

#[test]
fn transport_config_values() {
    let t = TransportConfig::rdma();
    assert_eq!(t.ioccsz(), 260);
    assert_eq!(t.mdts(), 5);
    let small = TransportConfig {
        in_capsule_data_size: 0,
        max_io_size: 2048,
        ..TransportConfig::rdma()
    };
    assert_eq!((small.ioccsz(), small.mdts()), (4, 0));
}

#[test]
fn disconnecting_releases_held_aers_and_aborts_commands() {
    let mut t = target();
    let cntlid = ready_io(&mut t);
    assert_eq!(
        t.execute(ADMIN, &aer(1), DataBuffer::none(), 0),
        Execution::Held
    );
    assert_eq!(
        t.execute(ADMIN, &aer(2), DataBuffer::none(), 0),
        Execution::Held
    );
    // AER 1 completes, but the transport has not taken it yet.
    t.add_namespace(512).unwrap();
    // An I/O qpair going away frees its QID at once and holds nothing.
    assert!(t.qpair_disconnecting(IO1).is_empty());
    let c = run(
        &mut t,
        IO1,
        &rw(io_opcode::READ, 1, 0, 1),
        &mut [0u8; 512],
        0,
    );
    assert_status(&c, Status::ABORTED_SQ_DELETION);
    assert_status(&connect_io(&mut t, QpairId(8), 1, cntlid), Status::SUCCESS);
    // The admin qpair: both AERs come back to be freed, nothing to deliver.
    let mut released = t.qpair_disconnecting(ADMIN);
    released.sort_unstable();
    assert_eq!(released, vec![1, 2]);
    assert!(t.take_completions().is_empty());
    assert_status(&run0(&mut t, ADMIN, &aer(3)), Status::ABORTED_SQ_DELETION);
    assert!(
        t.poll(0).is_empty(),
        "nothing to ask: the transport is on it"
    );
    t.qpair_disconnected(ADMIN);
    assert!(t.controller_ids().is_empty());
    assert_eq!(t.poll(0).len(), 1, "the remaining I/O qpair goes");
    assert!(t.qpair_disconnecting(QpairId(99)).is_empty());
}

#[test]
fn read_only_data_serves_writes_and_connect_but_not_reads() {
    let mut t = target();
    let d = connect_data(HOSTID, 0xffff, NQN, HOST);
    let c = t
        .execute(ADMIN, &connect_cmd(0, 31, 0), DataBuffer::read_only(&d), 0)
        .completion()
        .unwrap();
    assert_status(&c, Status::SUCCESS);
    assert_status(
        &prop_set(&mut t, ADMIN, prop::CC, CC_ENABLE),
        Status::SUCCESS,
    );
    assert_status(&connect_io(&mut t, IO1, 1, c.cdw0 as u16), Status::SUCCESS);
    let src = [0x5au8; 512];
    let w = t.execute(
        IO1,
        &rw(io_opcode::WRITE, 1, 3, 1),
        DataBuffer::read_only(&src),
        0,
    );
    assert_status(&w.completion().unwrap(), Status::SUCCESS);
    let r = t.execute(
        IO1,
        &rw(io_opcode::READ, 1, 3, 1),
        DataBuffer::read_only(&src),
        0,
    );
    assert_status(&r.completion().unwrap(), Status::DATA_SGL_LENGTH_INVALID);
    let mut back = [0u8; 512];
    assert_status(
        &run(&mut t, IO1, &rw(io_opcode::READ, 1, 3, 1), &mut back, 0),
        Status::SUCCESS,
    );
    assert_eq!(back, src);
}

#[test]
fn set_features_keep_alive_restarts_the_timer() {
    let mut t = target();
    ready_admin(&mut t, ADMIN, NQN);
    assert_eq!(t.next_timeout(), None);
    let set = features(admin_opcode::SET_FEATURES, fid::KEEP_ALIVE_TIMER, 0, 30_000);
    assert_status(&run(&mut t, ADMIN, &set, &mut [], 5 * SEC), Status::SUCCESS);
    assert_eq!(t.next_timeout(), Some(35 * SEC));
    assert!(t.poll(35 * SEC).is_empty());
    assert_eq!(t.poll(35 * SEC + 1).len(), 1);
}

#[test]
fn discovery_controller_holds_aers_and_sets_kato() {
    let mut t = target();
    // A host asking for a persistent discovery connection keeps its KATO.
    let c = connect_with(&mut t, ADMIN, 0, 31, 30_000, 0xffff, DISCOVERY_NQN, HOST, 0);
    assert_status(&c, Status::SUCCESS);
    assert_eq!(t.next_timeout(), Some(30 * SEC));
    assert_status(
        &prop_set(&mut t, ADMIN, prop::CC, CC_ENABLE),
        Status::SUCCESS,
    );
    assert_eq!(
        t.execute(ADMIN, &aer(5), DataBuffer::none(), 0),
        Execution::Held
    );
    let get = features(
        admin_opcode::GET_FEATURES,
        fid::ASYNC_EVENT_CONFIG,
        2 << 8,
        0,
    );
    assert_eq!(run0(&mut t, ADMIN, &get).cdw0, 0, "no notices by default");
    let set = features(admin_opcode::SET_FEATURES, fid::KEEP_ALIVE_TIMER, 0, 60_000);
    assert_status(&run0(&mut t, ADMIN, &set), Status::SUCCESS);
    assert_eq!(t.next_timeout(), Some(60 * SEC));
    // Namespace changes do not concern discovery controllers.
    t.add_namespace(512).unwrap();
    assert!(t.take_completions().is_empty());
    assert_eq!(t.qpair_disconnecting(ADMIN), vec![5]);
}
