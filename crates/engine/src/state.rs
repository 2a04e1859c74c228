//! Request states and the queue each state implies.
//!
//! The 15 states keep the meaning (and order) of upstream SPDK's
//! `enum spdk_nvmf_rdma_request_state` (v26.01); `docs/engine.md` maps them
//! one to one. The queue a request is linked into is a pure function of its
//! state ([`ReqState::queue`]); [`crate::Qpair`] changes both in one
//! method, so the two cannot disagree.

/// The lifecycle state of one request.
// `repr(u8)`: a plain tag byte, so matching on the state is a table lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReqState {
    /// Unused; on the free queue (upstream `FREE`).
    Free,
    /// Paired with a received capsule, not yet classified (`NEW`).
    New,
    /// Waiting for data buffers; on the pending-buffer queue (`NEED_BUFFER`).
    NeedBuffer,
    /// Buffers granted, data WRs built (`HAVE_BUFFER`).
    HaveBuffer,
    /// Waiting for read/send depth to READ the host's data; on the
    /// pending-read queue (`DATA_TRANSFER_TO_CONTROLLER_PENDING`).
    DataTransferToControllerPending,
    /// RDMA READs in flight (`TRANSFERRING_HOST_TO_CONTROLLER`). With
    /// `partial` set, part of the READ chain is not posted yet and the request
    /// stays at the head of the pending-read queue (upstream e53bd98a3a).
    TransferringHostToController {
        /// Some READ WRs of the chain are still unposted.
        partial: bool,
    },
    /// Ready to be handed to the host, or waiting for its fused partner
    /// (`READY_TO_EXECUTE`).
    ReadyToExecute,
    /// Owned by the host (`EXECUTING`).
    Executing,
    /// The host completed it (`EXECUTED`).
    Executed,
    /// Waiting for send depth to WRITE data and SEND the response; on the
    /// pending-write queue (`DATA_TRANSFER_TO_HOST_PENDING`).
    DataTransferToHostPending,
    /// Waiting for send depth to SEND the response; on the pending-send
    /// queue (`READY_TO_COMPLETE_PENDING`).
    ReadyToCompletePending,
    /// About to post its response (`READY_TO_COMPLETE`).
    ReadyToComplete,
    /// RDMA WRITEs + response SEND in flight (`TRANSFERRING_CONTROLLER_TO_HOST`).
    TransferringControllerToHost,
    /// Response SEND in flight (`COMPLETING`).
    Completing,
    /// Done; resources are being returned (`COMPLETED`).
    Completed,
}

/// The per-qpair queues a request can be linked into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueKind {
    /// Unused request objects.
    Free = 0,
    /// Requests waiting for data buffers.
    PendingBuffer = 1,
    /// Requests waiting to RDMA READ (or finishing a split READ chain).
    PendingRead = 2,
    /// Requests waiting to RDMA WRITE + SEND.
    PendingWrite = 3,
    /// Requests waiting to SEND their response.
    PendingSend = 4,
}

impl QueueKind {
    /// All queues, in index order.
    pub const ALL: [QueueKind; 5] = [
        QueueKind::Free,
        QueueKind::PendingBuffer,
        QueueKind::PendingRead,
        QueueKind::PendingWrite,
        QueueKind::PendingSend,
    ];

    /// Index into per-queue arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// [`ReqState::code`] of a partly posted READ chain (beyond upstream's 0..=14).
const PARTIAL_READ_CODE: usize = 15;

impl ReqState {
    /// The queue a request in this state must be linked into (and no other).
    #[inline]
    pub fn queue(self) -> Option<QueueKind> {
        // One table lookup (a `match` here compiles to a jump table, and
        // set_state asks on every transition).
        const BY_CODE: [Option<QueueKind>; 16] = {
            let mut t = [None; 16];
            t[ReqState::Free.upstream_number() as usize] = Some(QueueKind::Free);
            t[ReqState::NeedBuffer.upstream_number() as usize] = Some(QueueKind::PendingBuffer);
            t[ReqState::DataTransferToControllerPending.upstream_number() as usize] =
                Some(QueueKind::PendingRead);
            t[PARTIAL_READ_CODE] = Some(QueueKind::PendingRead);
            t[ReqState::DataTransferToHostPending.upstream_number() as usize] =
                Some(QueueKind::PendingWrite);
            t[ReqState::ReadyToCompletePending.upstream_number() as usize] =
                Some(QueueKind::PendingSend);
            t
        };
        BY_CODE[self.code()]
    }

    /// A dense code: upstream's number, or [`PARTIAL_READ_CODE`] for
    /// `TransferringHostToController { partial: true }`.
    #[inline]
    fn code(self) -> usize {
        match self {
            ReqState::TransferringHostToController { partial: true } => PARTIAL_READ_CODE,
            s => usize::from(s.upstream_number()),
        }
    }

    /// Upstream's state number (v26.01 `enum spdk_nvmf_rdma_request_state`).
    #[inline]
    pub const fn upstream_number(self) -> u8 {
        match self {
            ReqState::Free => 0,
            ReqState::New => 1,
            ReqState::NeedBuffer => 2,
            ReqState::HaveBuffer => 3,
            ReqState::DataTransferToControllerPending => 4,
            ReqState::TransferringHostToController { .. } => 5,
            ReqState::ReadyToExecute => 6,
            ReqState::Executing => 7,
            ReqState::Executed => 8,
            ReqState::DataTransferToHostPending => 9,
            ReqState::ReadyToCompletePending => 10,
            ReqState::ReadyToComplete => 11,
            ReqState::TransferringControllerToHost => 12,
            ReqState::Completing => 13,
            ReqState::Completed => 14,
        }
    }

    /// True while the host owns the request (it must come back through
    /// `handle_command_executed`).
    pub fn host_owned(self) -> bool {
        self == ReqState::Executing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every state, both `partial` values included.
    const ALL: [ReqState; 16] = [
        ReqState::Free,
        ReqState::New,
        ReqState::NeedBuffer,
        ReqState::HaveBuffer,
        ReqState::DataTransferToControllerPending,
        ReqState::TransferringHostToController { partial: false },
        ReqState::TransferringHostToController { partial: true },
        ReqState::ReadyToExecute,
        ReqState::Executing,
        ReqState::Executed,
        ReqState::DataTransferToHostPending,
        ReqState::ReadyToCompletePending,
        ReqState::ReadyToComplete,
        ReqState::TransferringControllerToHost,
        ReqState::Completing,
        ReqState::Completed,
    ];

    /// The table in `queue()` against the mapping written out as a match.
    #[test]
    fn queue_table_matches_the_mapping() {
        for s in ALL {
            let expected = match s {
                ReqState::Free => Some(QueueKind::Free),
                ReqState::NeedBuffer => Some(QueueKind::PendingBuffer),
                ReqState::DataTransferToControllerPending
                | ReqState::TransferringHostToController { partial: true } => {
                    Some(QueueKind::PendingRead)
                }
                ReqState::DataTransferToHostPending => Some(QueueKind::PendingWrite),
                ReqState::ReadyToCompletePending => Some(QueueKind::PendingSend),
                _ => None,
            };
            assert_eq!(s.queue(), expected, "{s:?}");
        }
    }

    #[test]
    fn queue_mapping_matches_upstream_invariant() {
        assert_eq!(ReqState::Free.queue(), Some(QueueKind::Free));
        assert_eq!(
            ReqState::TransferringHostToController { partial: true }.queue(),
            Some(QueueKind::PendingRead)
        );
        assert_eq!(
            ReqState::TransferringHostToController { partial: false }.queue(),
            None
        );
        assert_eq!(ReqState::Completed.queue(), None);
        assert_eq!(
            ReqState::DataTransferToControllerPending.queue(),
            Some(QueueKind::PendingRead)
        );
        assert_eq!(ReqState::NeedBuffer.queue(), Some(QueueKind::PendingBuffer));
        assert_eq!(
            ReqState::DataTransferToHostPending.queue(),
            Some(QueueKind::PendingWrite)
        );
        assert_eq!(
            ReqState::ReadyToCompletePending.queue(),
            Some(QueueKind::PendingSend)
        );
        assert_eq!(ReqState::Executing.queue(), None);
        assert_eq!(ReqState::Completed.upstream_number(), 14);
    }
}
