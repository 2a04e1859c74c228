//! Scatter/gather entries and reusable work-request lists.
//!
//! A list is allocated once with a fixed capacity and reused: pushing never
//! allocates (it fails with [`VerbsError::ListFull`] instead), and posting
//! links the WRs into one chain so a whole batch costs one doorbell
//! (`ibv_post_send` / `ibv_post_recv` / `ibv_post_srq_recv`).

use rdma_sys as sys;

use super::error::{Result, VerbsError};
use super::wr_id::WrId;

/// One local scatter/gather entry: address, length and the lkey of the MR
/// covering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sge {
    addr: u64,
    length: u32,
    lkey: u32,
}

impl Sge {
    /// Built by [`super::Mr::sge`] / [`super::DmaBuf::sge`]: inside a region
    /// whose memory outlives its registration.
    pub(crate) fn from_region(addr: u64, length: u32, lkey: u32) -> Sge {
        Sge { addr, length, lkey }
    }

    /// The part `[addr, addr + len)` of this SGE, if it lies inside it: a
    /// sub-range of registered memory is registered memory, so no second
    /// translation is needed.
    pub fn sub_range(&self, addr: u64, len: u32) -> Option<Sge> {
        let off = addr.checked_sub(self.addr)?;
        let end = off.checked_add(u64::from(len))?;
        (end <= u64::from(self.length)).then_some(Sge {
            addr,
            length: len,
            lkey: self.lkey,
        })
    }

    /// An SGE over arbitrary registered memory (e.g. SPDK buffers covered by
    /// a memory map).
    ///
    /// # Safety
    /// This is the posting contract: the `length` bytes at `addr` must lie in
    /// a region registered with `lkey`, and **must stay valid (allocated and
    /// not otherwise accessed through Rust references) from the moment a WR
    /// naming this SGE is posted until that WR's completion — success, error
    /// or flush — has been reaped** from its CQ (or the QP/SRQ it was posted
    /// to has been destroyed).
    pub unsafe fn from_raw(addr: u64, length: u32, lkey: u32) -> Sge {
        Sge { addr, length, lkey }
    }

    /// Address.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length in bytes.
    pub fn length(&self) -> u32 {
        self.length
    }

    /// Local key.
    pub fn lkey(&self) -> u32 {
        self.lkey
    }

    fn to_sys(self) -> sys::ibv_sge {
        sys::ibv_sge {
            addr: self.addr,
            length: self.length,
            lkey: self.lkey,
        }
    }
}

/// Send-side flags (`IBV_SEND_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendFlags {
    /// Generate a completion for this WR.
    pub signaled: bool,
    /// Copy the payload into the WQE at post time.
    pub inline: bool,
    /// Wait for prior RDMA READs to finish before this WR.
    pub fence: bool,
    /// Solicited event at the receiver.
    pub solicited: bool,
}

impl SendFlags {
    /// Signaled, nothing else.
    pub const SIGNALED: SendFlags = SendFlags {
        signaled: true,
        inline: false,
        fence: false,
        solicited: false,
    };
    /// Unsignaled, nothing else.
    pub const UNSIGNALED: SendFlags = SendFlags {
        signaled: false,
        inline: false,
        fence: false,
        solicited: false,
    };

    fn bits(self) -> u32 {
        (self.fence as u32)
            | (self.signaled as u32) << 1
            | (self.solicited as u32) << 2
            | (self.inline as u32) << 3
    }
}

/// The operation of a send-queue WR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOp {
    /// SEND.
    Send,
    /// SEND with invalidate of the given rkey at the receiver.
    SendWithInvalidate {
        /// rkey to invalidate.
        rkey: u32,
    },
    /// RDMA READ from remote memory into the local SGEs.
    RdmaRead {
        /// Remote address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
    },
    /// RDMA WRITE of the local SGEs to remote memory.
    RdmaWrite {
        /// Remote address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
    },
}

fn zeroed_send_wr() -> sys::ibv_send_wr {
    // SAFETY: ibv_send_wr is a C struct of integers, raw pointers and unions
    // of those; all-zero is a valid value (null pointers, zero counts).
    unsafe { std::mem::zeroed() }
}

/// The two C WR types a [`WrChain`] can link: they differ only in their
/// payload, not in how a chain of them is built.
trait ChainedWr {
    fn wr_id(&self) -> u64;
    fn num_sge(&self) -> i32;
    fn set_links(&mut self, sg_list: *mut sys::ibv_sge, next: *mut Self);
}

impl ChainedWr for sys::ibv_send_wr {
    fn wr_id(&self) -> u64 {
        self.wr_id
    }
    fn num_sge(&self) -> i32 {
        self.num_sge
    }
    fn set_links(&mut self, sg_list: *mut sys::ibv_sge, next: *mut Self) {
        self.sg_list = sg_list;
        self.next = next;
    }
}

impl ChainedWr for sys::ibv_recv_wr {
    fn wr_id(&self) -> u64 {
        self.wr_id
    }
    fn num_sge(&self) -> i32 {
        self.num_sge
    }
    fn set_links(&mut self, sg_list: *mut sys::ibv_sge, next: *mut Self) {
        self.sg_list = sg_list;
        self.next = next;
    }
}

/// Fixed-capacity storage of WRs and their SGEs, linked into one chain
/// right before posting. Shared by [`SendWrList`] and [`RecvWrList`].
///
/// The WR slots are allocated (zeroed) once and filled in place: a push
/// writes only the fields its WR uses, not a whole C struct, and a WR's
/// SGEs are the next `num_sge` entries of `sges` (no per-WR range kept).
struct WrChain<W> {
    /// `max_wrs` slots; the first `len` are queued.
    wrs: Box<[W]>,
    /// `max_sges` slots; the first `nsges` belong to the queued WRs, in order.
    sges: Box<[sys::ibv_sge]>,
    len: usize,
    nsges: usize,
}

impl<W: ChainedWr> WrChain<W> {
    fn with_capacity(empty: impl Fn() -> W, max_wrs: usize, max_sges: usize) -> Self {
        let sge = sys::ibv_sge {
            addr: 0,
            length: 0,
            lkey: 0,
        };
        WrChain {
            wrs: (0..max_wrs).map(|_| empty()).collect(),
            sges: vec![sge; max_sges].into_boxed_slice(),
            len: 0,
            nsges: 0,
        }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.nsges = 0;
    }

    fn raw_wr_id(&self, i: usize) -> Option<u64> {
        self.wrs[..self.len].get(i).map(ChainedWr::wr_id)
    }

    /// Appends `sges` and then fills the next WR slot with `fill(slot,
    /// num_sge)`; on overflow nothing is appended.
    #[inline]
    fn push(
        &mut self,
        sges: impl IntoIterator<Item = Sge>,
        fill: impl FnOnce(&mut W, i32),
    ) -> Result<()> {
        let max_wrs = self.wrs.len();
        let Some(wr) = self.wrs.get_mut(self.len) else {
            return Err(VerbsError::ListFull {
                what: "wr",
                capacity: max_wrs,
            });
        };
        let first = self.nsges;
        let mut n = first;
        for sge in sges {
            let Some(slot) = self.sges.get_mut(n) else {
                // `nsges` is unchanged: the SGEs written so far are dropped.
                return Err(VerbsError::ListFull {
                    what: "sge",
                    capacity: self.sges.len(),
                });
            };
            *slot = sge.to_sys();
            n += 1;
        }
        fill(wr, (n - first) as i32);
        self.len += 1;
        self.nsges = n;
        Ok(())
    }

    /// Links WRs and SGEs into one chain; returns the head (null if empty).
    fn link(&mut self) -> *mut W {
        let n = self.len;
        if n == 0 {
            return std::ptr::null_mut();
        }
        let sge_base = self.sges.as_mut_ptr();
        let wr_base = self.wrs.as_mut_ptr();
        let mut off = 0usize;
        for i in 0..n {
            // SAFETY: `i < n <= wrs.len()`, and the `num_sge` of the queued
            // WRs add up to `nsges <= sges.len()` (written together in
            // `push`), so every pointer formed is inside its slice; they
            // stay valid while `self` is mutably borrowed by the posting
            // call (the slices are never reallocated).
            unsafe {
                let wr = wr_base.add(i);
                let count = (*wr).num_sge() as usize;
                let sg_list = if count == 0 {
                    std::ptr::null_mut()
                } else {
                    sge_base.add(off)
                };
                off += count;
                let next = if i + 1 < n {
                    wr_base.add(i + 1)
                } else {
                    std::ptr::null_mut()
                };
                (*wr).set_links(sg_list, next);
            }
        }
        wr_base
    }

    /// Index of `bad` (a pointer the provider returned) in this chain.
    fn index_of(&self, bad: *const W) -> usize {
        let base = self.wrs.as_ptr() as usize;
        let size = std::mem::size_of::<W>();
        let off = (bad as usize).wrapping_sub(base) / size;
        off.min(self.len)
    }
}

/// A reusable chain of send-queue WRs with their SGEs.
pub struct SendWrList {
    chain: WrChain<sys::ibv_send_wr>,
}

// SAFETY: the raw pointers inside the stored WRs only ever point into this
// list's own vectors (set right before posting) or are null.
unsafe impl Send for SendWrList {}

impl std::fmt::Debug for SendWrList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendWrList")
            .field("len", &self.len())
            .field("max_wrs", &self.chain.wrs.len())
            .finish()
    }
}

impl SendWrList {
    /// A list holding up to `max_wrs` WRs and `max_sges` SGEs in total.
    pub fn with_capacity(max_wrs: usize, max_sges: usize) -> SendWrList {
        SendWrList {
            chain: WrChain::with_capacity(zeroed_send_wr, max_wrs, max_sges),
        }
    }

    /// Number of WRs queued.
    pub fn len(&self) -> usize {
        self.chain.len
    }

    /// True if no WR is queued.
    pub fn is_empty(&self) -> bool {
        self.chain.len == 0
    }

    /// Remove all WRs (keeps the storage).
    pub fn clear(&mut self) {
        self.chain.clear();
    }

    /// The raw wr_id of WR `i`.
    pub fn raw_wr_id(&self, i: usize) -> Option<u64> {
        self.chain.raw_wr_id(i)
    }

    /// Append one WR.
    #[inline]
    pub fn push(&mut self, id: WrId, op: SendOp, sges: &[Sge], flags: SendFlags) -> Result<()> {
        self.push_sges(id, op, sges.iter().copied(), flags)
    }

    /// Append one WR whose SGEs come from an iterator (no intermediate
    /// collection on the I/O path).
    pub fn push_sges(
        &mut self,
        id: WrId,
        op: SendOp,
        sges: impl IntoIterator<Item = Sge>,
        flags: SendFlags,
    ) -> Result<()> {
        self.chain.push(sges, |wr, num_sge| {
            // Every field a send WR of this list uses is written; the
            // others stay zero from creation.
            wr.wr_id = id.to_raw();
            wr.send_flags = flags.bits();
            wr.num_sge = num_sge;
            let (opcode, invalidated_rkey, remote_addr, rkey) = match op {
                SendOp::Send => (sys::ibv_wr_opcode::IBV_WR_SEND, 0, 0, 0),
                SendOp::SendWithInvalidate { rkey } => {
                    (sys::ibv_wr_opcode::IBV_WR_SEND_WITH_INV, rkey, 0, 0)
                }
                SendOp::RdmaRead { remote_addr, rkey } => {
                    (sys::ibv_wr_opcode::IBV_WR_RDMA_READ, 0, remote_addr, rkey)
                }
                SendOp::RdmaWrite { remote_addr, rkey } => {
                    (sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE, 0, remote_addr, rkey)
                }
            };
            wr.opcode = opcode;
            wr.imm_data_invalidated_rkey_union.invalidated_rkey = invalidated_rkey;
            wr.wr.rdma = sys::rdma_t { remote_addr, rkey };
        })
    }

    /// Link WRs and SGEs into one chain; returns the head (null if empty).
    pub(crate) fn link(&mut self) -> *mut sys::ibv_send_wr {
        self.chain.link()
    }

    /// Index of `bad` in this list.
    pub(crate) fn index_of(&self, bad: *const sys::ibv_send_wr) -> usize {
        self.chain.index_of(bad)
    }
}

/// A reusable chain of receive WRs with their SGEs.
pub struct RecvWrList {
    chain: WrChain<sys::ibv_recv_wr>,
}

// SAFETY: as for SendWrList: internal pointers only point into own storage.
unsafe impl Send for RecvWrList {}

impl std::fmt::Debug for RecvWrList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvWrList")
            .field("len", &self.len())
            .field("max_wrs", &self.chain.wrs.len())
            .finish()
    }
}

impl RecvWrList {
    /// A list holding up to `max_wrs` WRs and `max_sges` SGEs in total.
    pub fn with_capacity(max_wrs: usize, max_sges: usize) -> RecvWrList {
        let empty = || sys::ibv_recv_wr {
            wr_id: 0,
            next: std::ptr::null_mut(),
            sg_list: std::ptr::null_mut(),
            num_sge: 0,
        };
        RecvWrList {
            chain: WrChain::with_capacity(empty, max_wrs, max_sges),
        }
    }

    /// Number of WRs queued.
    pub fn len(&self) -> usize {
        self.chain.len
    }

    /// True if no WR is queued.
    pub fn is_empty(&self) -> bool {
        self.chain.len == 0
    }

    /// Remove all WRs (keeps the storage).
    pub fn clear(&mut self) {
        self.chain.clear();
    }

    /// The raw wr_id of WR `i`.
    pub fn raw_wr_id(&self, i: usize) -> Option<u64> {
        self.chain.raw_wr_id(i)
    }

    /// Append one receive WR.
    pub fn push(&mut self, id: WrId, sges: &[Sge]) -> Result<()> {
        self.chain.push(sges.iter().copied(), |wr, num_sge| {
            wr.wr_id = id.to_raw();
            wr.num_sge = num_sge;
        })
    }

    pub(crate) fn link(&mut self) -> *mut sys::ibv_recv_wr {
        self.chain.link()
    }

    pub(crate) fn index_of(&self, bad: *const sys::ibv_recv_wr) -> usize {
        self.chain.index_of(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sge(a: u64) -> Sge {
        Sge::from_region(a, 16, 7)
    }

    #[test]
    fn send_list_links_chain_and_respects_capacity() {
        let mut l = SendWrList::with_capacity(3, 4);
        l.push(
            WrId::data(1, 0),
            SendOp::RdmaWrite {
                remote_addr: 0x1000,
                rkey: 9,
            },
            &[sge(1), sge(2)],
            SendFlags::UNSIGNALED,
        )
        .unwrap();
        l.push(
            WrId::send(1, 0),
            SendOp::Send,
            &[sge(3)],
            SendFlags::SIGNALED,
        )
        .unwrap();
        assert!(matches!(
            l.push(
                WrId::send(1, 1),
                SendOp::Send,
                &[sge(4), sge(5)],
                SendFlags::SIGNALED
            ),
            Err(VerbsError::ListFull { what: "sge", .. })
        ));
        let sges_at = l.chain.sges.as_ptr();
        let head = l.link();
        assert_eq!(l.chain.sges.as_ptr(), sges_at, "no reallocation");
        // SAFETY: test-only walk of the chain we just linked.
        unsafe {
            assert_eq!((*head).opcode, sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE);
            assert_eq!((*head).wr.rdma.rkey, 9);
            assert_eq!((*head).num_sge, 2);
            assert_eq!((*(*head).sg_list.add(1)).addr, 2);
            let second = (*head).next;
            assert_eq!((*second).send_flags, 2);
            assert_eq!((*(*second).sg_list).addr, 3);
            assert!((*second).next.is_null());
            assert_eq!(l.index_of(second), 1);
        }
        l.push(WrId::send(1, 2), SendOp::Send, &[], SendFlags::SIGNALED)
            .unwrap();
        assert!(matches!(
            l.push(WrId::send(1, 3), SendOp::Send, &[], SendFlags::SIGNALED),
            Err(VerbsError::ListFull { what: "wr", .. })
        ));
        l.clear();
        assert!(l.is_empty());
        assert!(l.link().is_null());
    }

    #[test]
    fn recv_list_links() {
        let mut l = RecvWrList::with_capacity(2, 2);
        l.push(WrId::recv(0, 5), &[sge(10)]).unwrap();
        l.push(WrId::recv(0, 6), &[sge(20)]).unwrap();
        let head = l.link();
        // SAFETY: test-only walk of the chain we just linked.
        unsafe {
            assert_eq!(WrId::from_raw((*head).wr_id).unwrap().index(), 5);
            assert_eq!((*(*(*head).next).sg_list).addr, 20);
        }
        assert_eq!(l.raw_wr_id(1), Some(WrId::recv(0, 6).to_raw()));
    }

    #[test]
    fn flags_bits_match_ibverbs() {
        assert_eq!(SendFlags::SIGNALED.bits(), 2);
        assert_eq!(
            SendFlags {
                inline: true,
                fence: true,
                ..SendFlags::UNSIGNALED
            }
            .bits(),
            9
        );
    }
}
