//! Admin commands (queue 0) and the Fabrics commands of an established
//! admin queue (Property Get / Set).

use crate::engine::codec::admin::{cns, feature as fid, log_page as lid, property};
use crate::engine::codec::nvme::{admin_opcode, fctype, Command, Status};

use super::config::TargetConfig;
use super::controller::{CcChange, Controller, ControllerKind, AEC_NS_ATTR};
use super::data::DataBuffer;
use super::identify::{self, IDENTIFY_LEN};
use super::log_page;
use super::subsystem::Subsystem;
use super::Outcome;

/// Get Features SEL = 3: report capabilities (bit 2: changeable).
const SEL_SUPPORTED_CAPABILITIES: u32 = 3;
const FEATURE_CHANGEABLE: u32 = 1 << 2;

/// Property Get / Set on an established admin queue; `qid` is the queue
/// the command arrived on.
pub(crate) fn fabrics(ctrl: &mut Controller, qid: u16, cmd: &Command) -> (Outcome, CcChange) {
    if qid != 0 {
        return (Outcome::fail(Status::INVALID_OPCODE), CcChange::None);
    }
    // ATTRIB.SIZE: 0 = 4 bytes, 1 = 8 bytes.
    let size8 = match cmd.cdw10() & 0x7 {
        0 => false,
        1 => true,
        _ => {
            return (
                Outcome::fail(Status::CONNECT_INVALID_PARAMETERS),
                CcChange::None,
            )
        }
    };
    let offset = cmd.cdw11();
    match cmd.fctype() {
        fctype::PROPERTY_GET => match ctrl.property_get(offset, size8) {
            Some(v) => (Outcome::value64(v), CcChange::None),
            None => {
                tracing::debug!(
                    cntlid = ctrl.cntlid,
                    offset,
                    size8,
                    "property get: unknown property"
                );
                (
                    Outcome::fail(Status::CONNECT_INVALID_PARAMETERS),
                    CcChange::None,
                )
            }
        },
        fctype::PROPERTY_SET => {
            if offset != property::CC || size8 {
                tracing::debug!(
                    cntlid = ctrl.cntlid,
                    offset,
                    size8,
                    "property set: not writable"
                );
                return (
                    Outcome::fail(Status::CONNECT_INVALID_PARAMETERS),
                    CcChange::None,
                );
            }
            let value = cmd.cdw12();
            match ctrl.set_cc(value) {
                Ok(change) => (Outcome::success(), change),
                Err(()) => {
                    tracing::debug!(
                        cntlid = ctrl.cntlid,
                        cc = value,
                        "property set CC: unsupported value"
                    );
                    (
                        Outcome::fail(Status::CONNECT_INVALID_PARAMETERS),
                        CcChange::None,
                    )
                }
            }
        }
        other => {
            tracing::debug!(
                cntlid = ctrl.cntlid,
                fctype = other,
                "unsupported fabrics command on admin queue"
            );
            (Outcome::fail(Status::INVALID_OPCODE), CcChange::None)
        }
    }
}

/// An admin command on an established admin queue.
pub(crate) fn execute(
    ctrl: &mut Controller,
    sub: &mut Subsystem,
    cmd: &Command,
    data: &mut DataBuffer<'_>,
    now_ns: u64,
) -> Outcome {
    if !ctrl.enabled() {
        return Outcome::fail(Status::COMMAND_SEQUENCE_ERROR);
    }
    let op = cmd.opcode();
    if ctrl.kind == ControllerKind::Discovery
        && !matches!(
            op,
            admin_opcode::IDENTIFY
                | admin_opcode::GET_LOG_PAGE
                | admin_opcode::KEEP_ALIVE
                | admin_opcode::ASYNC_EVENT_REQUEST
                | admin_opcode::SET_FEATURES
                | admin_opcode::GET_FEATURES
        )
    {
        return Outcome::fail(Status::INVALID_OPCODE);
    }
    match op {
        admin_opcode::IDENTIFY => identify(ctrl, sub, cmd, data),
        admin_opcode::GET_LOG_PAGE => get_log_page(ctrl, sub, cmd, data),
        admin_opcode::SET_FEATURES => set_features(ctrl, &sub.config, cmd, now_ns),
        admin_opcode::GET_FEATURES => get_features(ctrl, &sub.config, cmd),
        admin_opcode::ASYNC_EVENT_REQUEST => async_event_request(ctrl, &sub.config, cmd),
        admin_opcode::ABORT => abort(ctrl, cmd),
        admin_opcode::KEEP_ALIVE => {
            ctrl.last_keep_alive_ns = now_ns;
            Outcome::success()
        }
        // Queue creation and deletion are reserved on NVMe-oF (Connect
        // creates queues); everything else is not implemented.
        _ => Outcome::fail(Status::INVALID_OPCODE),
    }
}

fn copy_out(data: &mut DataBuffer<'_>, page: &[u8]) -> Outcome {
    if data.writable_len() < page.len() {
        return Outcome::fail(Status::DATA_SGL_LENGTH_INVALID);
    }
    data.write_at(0, page);
    Outcome::success()
}

fn identify(
    ctrl: &Controller,
    sub: &Subsystem,
    cmd: &Command,
    data: &mut DataBuffer<'_>,
) -> Outcome {
    let nsid = cmd.nsid();
    let max_nsid = sub.config.max_namespaces;
    let page = match (ctrl.kind, cmd.cdw10() as u8) {
        (_, cns::CONTROLLER) => identify::controller(ctrl, sub),
        (ControllerKind::Discovery, _) => return Outcome::fail(Status::INVALID_FIELD),
        (ControllerKind::Nvm, cns::NAMESPACE) => {
            if nsid == 0 || nsid > max_nsid {
                return Outcome::fail(Status::INVALID_NAMESPACE_OR_FORMAT);
            }
            match sub.namespaces.get(&nsid) {
                Some(ns) => identify::namespace(ns),
                // An allocated-but-inactive NSID reads as all zeroes.
                None => vec![0u8; IDENTIFY_LEN],
            }
        }
        (ControllerKind::Nvm, cns::ACTIVE_NS_LIST) => {
            if nsid >= 0xffff_fffe {
                return Outcome::fail(Status::INVALID_NAMESPACE_OR_FORMAT);
            }
            identify::active_namespaces(sub, nsid)
        }
        (ControllerKind::Nvm, cns::NS_DESCRIPTORS) => match sub.namespaces.get(&nsid) {
            Some(ns) => identify::namespace_descriptors(ns),
            None => return Outcome::fail(Status::INVALID_NAMESPACE_OR_FORMAT),
        },
        (ControllerKind::Nvm, other) => {
            tracing::debug!(
                cntlid = ctrl.cntlid,
                cns = other,
                "identify: unsupported CNS"
            );
            return Outcome::fail(Status::INVALID_FIELD);
        }
    };
    copy_out(data, &page)
}

fn get_log_page(
    ctrl: &mut Controller,
    sub: &Subsystem,
    cmd: &Command,
    data: &mut DataBuffer<'_>,
) -> Outcome {
    let cdw10 = cmd.cdw10();
    let log_id = cdw10 as u8;
    let retain_event = cdw10 & (1 << 15) != 0;
    let numd = (u64::from(cmd.cdw11() & 0xffff) << 16 | u64::from(cdw10 >> 16)) + 1;
    let len = numd * 4;
    let offset = u64::from(cmd.cdw12()) | u64::from(cmd.cdw13()) << 32;
    if offset & 3 != 0 {
        return Outcome::fail(Status::INVALID_FIELD);
    }
    if len > data.writable_len() as u64 {
        return Outcome::fail(Status::DATA_SGL_LENGTH_INVALID);
    }
    let page = match (ctrl.kind, log_id) {
        (ControllerKind::Nvm, lid::ERROR) => log_page::error_log(ctrl),
        (ControllerKind::Nvm, lid::SMART) => log_page::smart(sub),
        (ControllerKind::Nvm, lid::CHANGED_NS_LIST) => log_page::changed_namespaces(ctrl),
        (ControllerKind::Discovery, lid::DISCOVERY) => log_page::discovery(sub),
        (_, other) => {
            tracing::debug!(
                cntlid = ctrl.cntlid,
                lid = other,
                "get log page: unsupported log"
            );
            return Outcome::fail(Status::INVALID_FIELD);
        }
    };
    if offset > page.len() as u64 {
        return Outcome::fail(Status::INVALID_FIELD);
    }
    // Both fit in usize: offset <= page.len() and len <= data.len().
    let (offset, len) = (offset as usize, len as usize);
    let n = (page.len() - offset).min(len);
    data.write_at(0, &page[offset..offset + n]);
    data.zero_at(n, len - n);
    if log_id == lid::CHANGED_NS_LIST && !retain_event {
        ctrl.changed_ns.clear();
        ctrl.ns_notice_masked = false;
    }
    Outcome::success()
}

/// Keep-alive timeout granted for `asked` ms: at least `min_kato_ms`,
/// rounded up to the KAS granularity (upstream's rule).
pub(crate) fn grant_kato(config: &TargetConfig, asked: u32) -> u32 {
    if asked == 0 || config.kas == 0 {
        return 0;
    }
    if asked <= config.min_kato_ms {
        return config.min_kato_ms;
    }
    let unit = u32::from(config.kas) * 100;
    asked.div_ceil(unit).saturating_mul(unit)
}

fn queue_count(config: &TargetConfig) -> u32 {
    // 0-based counts of I/O submission and completion queues.
    let n = u32::from(config.transport.max_qpairs_per_ctrlr) - 2;
    n | n << 16
}

fn set_features(
    ctrl: &mut Controller,
    config: &TargetConfig,
    cmd: &Command,
    now_ns: u64,
) -> Outcome {
    let cdw10 = cmd.cdw10();
    let cdw11 = cmd.cdw11();
    if cdw10 & (1 << 31) != 0 {
        return Outcome::fail(Status::FEATURE_ID_NOT_SAVEABLE);
    }
    let nvm = ctrl.kind == ControllerKind::Nvm;
    match cdw10 as u8 {
        fid::NUMBER_OF_QUEUES if nvm => {
            if !ctrl.io_qpairs.is_empty() {
                return Outcome::fail(Status::COMMAND_SEQUENCE_ERROR);
            }
            if cdw11 & 0xffff == 0xffff || cdw11 >> 16 == 0xffff {
                return Outcome::fail(Status::INVALID_FIELD);
            }
            Outcome::value(queue_count(config))
        }
        fid::KEEP_ALIVE_TIMER if config.kas != 0 => {
            if cdw11 == 0 {
                return Outcome::fail(Status::KEEP_ALIVE_INVALID);
            }
            ctrl.kato_ms = grant_kato(config, cdw11);
            ctrl.last_keep_alive_ns = now_ns;
            Outcome::success()
        }
        fid::ASYNC_EVENT_CONFIG => {
            ctrl.aec = cdw11;
            Outcome::success()
        }
        fid::VOLATILE_WRITE_CACHE if nvm => {
            ctrl.volatile_write_cache = cdw11 & 1 != 0;
            Outcome::success()
        }
        other => {
            tracing::debug!(
                cntlid = ctrl.cntlid,
                fid = other,
                "set features: unsupported feature"
            );
            Outcome::fail(Status::INVALID_FIELD)
        }
    }
}

fn get_features(ctrl: &Controller, config: &TargetConfig, cmd: &Command) -> Outcome {
    let cdw10 = cmd.cdw10();
    let sel = (cdw10 >> 8) & 0x7;
    let nvm = ctrl.kind == ControllerKind::Nvm;
    // (current, default) of each supported feature.
    let (current, default) = match cdw10 as u8 {
        fid::NUMBER_OF_QUEUES if nvm => (queue_count(config), queue_count(config)),
        fid::KEEP_ALIVE_TIMER if config.kas != 0 => (ctrl.kato_ms, 0),
        fid::ASYNC_EVENT_CONFIG => (ctrl.aec, if nvm { AEC_NS_ATTR } else { 0 }),
        fid::VOLATILE_WRITE_CACHE if nvm => (u32::from(ctrl.volatile_write_cache), 1),
        _ => return Outcome::fail(Status::INVALID_FIELD),
    };
    match sel {
        0 => Outcome::value(current),
        // Nothing is saveable, so "saved" is the default.
        1 | 2 => Outcome::value(default),
        SEL_SUPPORTED_CAPABILITIES => Outcome::value(FEATURE_CHANGEABLE),
        _ => Outcome::fail(Status::INVALID_FIELD),
    }
}

fn async_event_request(ctrl: &mut Controller, config: &TargetConfig, cmd: &Command) -> Outcome {
    if ctrl.held_aers.len() > usize::from(config.aerl) {
        return Outcome::fail(Status::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED);
    }
    if let Some(event) = ctrl.pending_events.pop_front() {
        return Outcome::value(event);
    }
    ctrl.held_aers.push_back(cmd.cid());
    Outcome::Held
}

fn abort(ctrl: &mut Controller, cmd: &Command) -> Outcome {
    let sqid = cmd.cdw10() as u16;
    let victim = (cmd.cdw10() >> 16) as u16;
    // Only held AERs are still outstanding here; everything else already
    // completed inside `execute`. Dword 0 bit 0 = 1: not aborted.
    if sqid == 0 {
        if let Some(pos) = ctrl.held_aers.iter().position(|&c| c == victim) {
            ctrl.held_aers.remove(pos);
            ctrl.late.push(super::controller::LateCompletion {
                cid: victim,
                status: Status::ABORTED_BY_REQUEST,
                cdw0: 0,
            });
            return Outcome::value(0);
        }
    }
    Outcome::value(1)
}
