//! NVM command set I/O commands against RAM namespaces.

use crate::engine::codec::nvme::{io_opcode, Command, Status};

use super::config::LBA_SIZE;
use super::controller::Controller;
use super::data::DataBuffer;
use super::subsystem::Subsystem;
use super::Outcome;

/// SLBA (dwords 10-11) and the 1-based block count (dword 12 bits 15:0 + 1).
pub(crate) fn lba_range(cmd: &Command) -> (u64, u64) {
    let slba = u64::from(cmd.cdw10()) | u64::from(cmd.cdw11()) << 32;
    let nlb = u64::from(cmd.cdw12() & 0xffff) + 1;
    (slba, nlb)
}

/// An I/O command on an established I/O queue.
pub(crate) fn execute(
    ctrl: &Controller,
    sub: &mut Subsystem,
    cmd: &Command,
    data: &mut DataBuffer<'_>,
) -> Outcome {
    if !ctrl.enabled() || ctrl.shutting_down() {
        return Outcome::fail(Status::COMMAND_SEQUENCE_ERROR);
    }
    let max_io_size = u64::from(sub.config.transport.max_io_size);
    let Some(ns) = sub.namespaces.get_mut(&cmd.nsid()) else {
        return Outcome::fail(Status::INVALID_NAMESPACE_OR_FORMAT);
    };
    let stats = &mut sub.stats;
    let op = cmd.opcode();
    match op {
        io_opcode::READ | io_opcode::WRITE => {
            let (slba, nlb) = lba_range(cmd);
            if !ns.in_range(slba, nlb) {
                return Outcome::fail(Status::LBA_OUT_OF_RANGE);
            }
            let bytes = nlb * u64::from(LBA_SIZE);
            if bytes > max_io_size {
                // Larger than MDTS allows.
                return Outcome::fail(Status::INVALID_FIELD);
            }
            let available = if op == io_opcode::READ {
                data.writable_len()
            } else {
                data.len()
            };
            if bytes > available as u64 {
                return Outcome::fail(Status::DATA_SGL_LENGTH_INVALID);
            }
            if op == io_opcode::READ {
                ns.read(slba, nlb, data);
                stats.read_commands += 1;
                stats.blocks_read += nlb;
            } else {
                ns.write(slba, nlb, data);
                stats.write_commands += 1;
                stats.blocks_written += nlb;
            }
            Outcome::success()
        }
        io_opcode::WRITE_ZEROES => {
            let (slba, nlb) = lba_range(cmd);
            if !ns.in_range(slba, nlb) {
                return Outcome::fail(Status::LBA_OUT_OF_RANGE);
            }
            ns.write_zeroes(slba, nlb);
            Outcome::success()
        }
        // RAM has nothing to flush.
        io_opcode::FLUSH => Outcome::success(),
        _ => Outcome::fail(Status::INVALID_OPCODE),
    }
}
