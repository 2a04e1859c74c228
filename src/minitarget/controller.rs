//! One controller: its registers (properties), features, keep-alive timer,
//! asynchronous events and error log. The [`Target`](super::Target) owns
//! the controllers and the qpair bindings; this module only keeps state.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::engine::codec::admin::{cc, csts, property};
use crate::engine::codec::nvme::Status;

use super::config::TargetConfig;
use super::QpairId;

/// Version reported in VS and Identify VER: NVMe 1.3.0.
pub(crate) const NVME_VERSION: u32 = 0x0001_0300;
/// CAP.TO, in 500 ms units: how long a host waits for CSTS.RDY to follow CC.EN.
const CAP_TIMEOUT: u64 = 30;

/// Error log entries kept (Identify ELPE + 1).
pub(crate) const ERROR_LOG_ENTRIES: usize = 8;
/// Events kept for a host that has no AER outstanding.
const MAX_PENDING_EVENTS: usize = 16;

/// Async event configuration bit 8: namespace attribute notices.
pub(crate) const AEC_NS_ATTR: u32 = 1 << 8;
/// Asynchronous event: type Notice (2), info 0 (namespace attribute
/// changed), log page 04h (Changed Namespace List).
pub(crate) const AEN_NS_ATTR_CHANGED: u32 = 0x2 | (0x04 << 16);

/// Which subsystem a controller belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerKind {
    /// A controller of the NVM subsystem: namespaces and I/O queues.
    Nvm,
    /// A controller of the discovery subsystem: Identify, the discovery
    /// log page, keep-alive; no I/O queues.
    Discovery,
}

/// What a CC write asked for beyond storing the register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CcChange {
    /// Nothing that affects queues.
    None,
    /// CC.EN 0 -> 1: the controller is ready.
    Enabled,
    /// CC.EN 1 -> 0: controller reset; I/O queues go, registers clear.
    Reset,
    /// CC.SHN set: shutdown; I/O queues go.
    Shutdown,
}

/// A failed command as kept in the error log page.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorEntry {
    pub count: u64,
    pub sqid: u16,
    pub cid: u16,
    pub status: Status,
    pub nsid: u32,
    pub lba: u64,
}

/// A completion for a command that was held (an AER) and ends later.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LateCompletion {
    pub cid: u16,
    pub status: Status,
    pub cdw0: u32,
}

/// One controller of the dynamic controller model.
#[derive(Debug)]
pub(crate) struct Controller {
    pub cntlid: u16,
    pub kind: ControllerKind,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub admin_qpair: QpairId,
    /// Live I/O queues by QID.
    pub io_qpairs: BTreeMap<u16, QpairId>,
    pub cap: u64,
    pub cc: u32,
    pub csts: u32,
    /// Keep-alive timeout in ms; 0 = disabled (the default until set).
    pub kato_ms: u32,
    pub last_keep_alive_ns: u64,
    /// Keep-alive expired: the controller is failed and being torn down.
    pub expired: bool,
    pub aec: u32,
    pub volatile_write_cache: bool,
    /// Command ids of held Asynchronous Event Requests, oldest first.
    pub held_aers: VecDeque<u16>,
    /// Events waiting for an AER.
    pub pending_events: VecDeque<u32>,
    /// Namespace notices are masked until the host reads log page 04h.
    pub ns_notice_masked: bool,
    pub changed_ns: BTreeSet<u32>,
    /// Held commands that completed, for the admin queue.
    pub late: Vec<LateCompletion>,
    pub errors: VecDeque<ErrorEntry>,
    pub error_count: u64,
}

impl Controller {
    pub(crate) fn new(
        cntlid: u16,
        kind: ControllerKind,
        hostnqn: String,
        hostid: [u8; 16],
        admin_qpair: QpairId,
        now_ns: u64,
        config: &TargetConfig,
    ) -> Controller {
        let mqes = u64::from(config.transport.max_queue_depth - 1);
        // MQES | CQR (bit 16) | TO (31:24) | CSS bit 37 = NVM command set;
        // DSTRD, MPSMIN and MPSMAX are 0 (4 KiB pages).
        let cap = mqes | (1 << 16) | (CAP_TIMEOUT << 24) | (1 << 37);
        Controller {
            cntlid,
            kind,
            hostnqn,
            hostid,
            admin_qpair,
            io_qpairs: BTreeMap::new(),
            cap,
            cc: 0,
            csts: 0,
            kato_ms: 0,
            last_keep_alive_ns: now_ns,
            expired: false,
            aec: if kind == ControllerKind::Nvm {
                AEC_NS_ATTR
            } else {
                0
            },
            volatile_write_cache: true,
            held_aers: VecDeque::new(),
            pending_events: VecDeque::new(),
            ns_notice_masked: false,
            changed_ns: BTreeSet::new(),
            late: Vec::new(),
            errors: VecDeque::new(),
            error_count: 0,
        }
    }

    /// CC.EN is set and the controller is ready.
    pub(crate) fn enabled(&self) -> bool {
        self.cc & cc::EN != 0 && self.csts & csts::RDY != 0
    }

    /// A shutdown was requested (CC.SHN != 0).
    pub(crate) fn shutting_down(&self) -> bool {
        (self.cc >> cc::SHN_SHIFT) & 0x3 != 0
    }

    /// CC.IOSQES / CC.IOCQES as set by the host.
    pub(crate) fn io_entry_sizes(&self) -> (u32, u32) {
        (
            (self.cc >> cc::IOSQES_SHIFT) & 0xf,
            (self.cc >> cc::IOCQES_SHIFT) & 0xf,
        )
    }

    /// Property Get: the value, or `None` for an unknown offset or wrong size.
    pub(crate) fn property_get(&self, offset: u32, size8: bool) -> Option<u64> {
        match (offset, size8) {
            (property::CAP, true) => Some(self.cap),
            (property::VS, false) => Some(u64::from(NVME_VERSION)),
            (property::CC, false) => Some(u64::from(self.cc)),
            (property::CSTS, false) => Some(u64::from(self.csts)),
            _ => None,
        }
    }

    /// Property Set of CC. `Err` when the value asks for something this
    /// controller does not support (other arbitration, page size or command
    /// set, a reserved shutdown value); nothing changes then.
    pub(crate) fn set_cc(&mut self, new: u32) -> Result<CcChange, ()> {
        let css = (new >> cc::CSS_SHIFT) & 0x7;
        let mps = (new >> cc::MPS_SHIFT) & 0xf;
        let ams = (new >> cc::AMS_SHIFT) & 0x7;
        let shn = (new >> cc::SHN_SHIFT) & 0x3;
        if css != 0 || mps != 0 || ams != 0 || shn == 3 {
            return Err(());
        }
        let was_enabled = self.cc & cc::EN != 0;
        let was_shn = self.shutting_down();
        if was_enabled && new & cc::EN == 0 {
            // Reset: only a subset of registers survive (upstream clears CC and CSTS).
            self.cc = 0;
            self.csts = 0;
            self.reset_state();
            return Ok(CcChange::Reset);
        }
        self.cc = new;
        if shn != 0 && !was_shn {
            self.csts = (self.csts & !csts::SHST_MASK) | csts::SHST_COMPLETE;
            return Ok(CcChange::Shutdown);
        }
        if !was_enabled && new & cc::EN != 0 {
            self.csts = (self.csts & !csts::SHST_MASK) | csts::RDY;
            return Ok(CcChange::Enabled);
        }
        Ok(CcChange::None)
    }

    /// Controller reset: held AERs end with "aborted, SQ deletion", events
    /// and features return to their defaults.
    fn reset_state(&mut self) {
        for cid in self.held_aers.drain(..) {
            self.late.push(LateCompletion {
                cid,
                status: Status::ABORTED_SQ_DELETION,
                cdw0: 0,
            });
        }
        self.pending_events.clear();
        self.ns_notice_masked = false;
        self.aec = if self.kind == ControllerKind::Nvm {
            AEC_NS_ATTR
        } else {
            0
        };
        self.volatile_write_cache = true;
    }

    /// When the keep-alive timer fires, if it runs.
    pub(crate) fn keep_alive_deadline(&self) -> Option<u64> {
        if self.expired || self.kato_ms == 0 {
            None
        } else {
            Some(
                self.last_keep_alive_ns
                    .saturating_add(u64::from(self.kato_ms) * 1_000_000),
            )
        }
    }

    /// Reports an asynchronous event: completes the oldest held AER, or
    /// keeps the event until the host sends one.
    pub(crate) fn post_event(&mut self, event: u32) {
        if let Some(cid) = self.held_aers.pop_front() {
            self.late.push(LateCompletion {
                cid,
                status: Status::SUCCESS,
                cdw0: event,
            });
        } else if self.pending_events.len() < MAX_PENDING_EVENTS
            && !self.pending_events.contains(&event)
        {
            self.pending_events.push_back(event);
        }
    }

    /// A namespace was added or removed: record it in the changed namespace
    /// list and send a notice if the host enabled them and has read the
    /// previous one.
    pub(crate) fn namespace_changed(&mut self, nsid: u32) {
        if self.kind != ControllerKind::Nvm {
            return;
        }
        self.changed_ns.insert(nsid);
        if self.aec & AEC_NS_ATTR != 0 && !self.ns_notice_masked {
            self.ns_notice_masked = true;
            self.post_event(AEN_NS_ATTR_CHANGED);
        }
    }

    /// Adds a failed command to the error log (newest first).
    pub(crate) fn record_error(
        &mut self,
        sqid: u16,
        cid: u16,
        status: Status,
        nsid: u32,
        lba: u64,
    ) {
        self.error_count += 1;
        if self.errors.len() == ERROR_LOG_ENTRIES {
            self.errors.pop_back();
        }
        self.errors.push_front(ErrorEntry {
            count: self.error_count,
            sqid,
            cid,
            status,
            nsid,
            lba,
        });
    }
}
