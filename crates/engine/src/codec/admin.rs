//! NVMe / NVMe-oF admin-side numbers used by both the initiator and the
//! standalone controller: property (register) offsets and their CC / CSTS
//! bits, Identify CNS values, feature ids, log page ids and the Fabrics
//! Connect constants (NVMe base 2.x, NVMe-oF 1.1). Each lives here once,
//! typed as the field it goes into.

/// Property offsets (Fabrics Property Get / Set `OFST`, CDW11).
pub mod property {
    /// Controller Capabilities (8 bytes).
    pub const CAP: u32 = 0x00;
    /// Version (4 bytes).
    pub const VS: u32 = 0x08;
    /// Controller Configuration (4 bytes).
    pub const CC: u32 = 0x14;
    /// Controller Status (4 bytes).
    pub const CSTS: u32 = 0x1c;
}

/// Controller Configuration (CC) fields.
pub mod cc {
    /// CC.EN: enable.
    pub const EN: u32 = 1;
    /// CC.CSS shift (I/O command set selected).
    pub const CSS_SHIFT: u32 = 4;
    /// CC.MPS shift (memory page size).
    pub const MPS_SHIFT: u32 = 7;
    /// CC.AMS shift (arbitration mechanism).
    pub const AMS_SHIFT: u32 = 11;
    /// CC.SHN shift (shutdown notification).
    pub const SHN_SHIFT: u32 = 14;
    /// CC.SHN = 01b: normal shutdown.
    pub const SHN_NORMAL: u32 = 1 << SHN_SHIFT;
    /// CC.IOSQES shift (I/O submission queue entry size, log2).
    pub const IOSQES_SHIFT: u32 = 16;
    /// CC.IOCQES shift (I/O completion queue entry size, log2).
    pub const IOCQES_SHIFT: u32 = 20;
    /// CC.IOSQES = 6 (64-byte SQEs) | CC.IOCQES = 4 (16-byte CQEs).
    pub const QUEUE_ENTRY_SIZES: u32 = (6 << IOSQES_SHIFT) | (4 << IOCQES_SHIFT);
}

/// Controller Status (CSTS) fields.
pub mod csts {
    /// CSTS.RDY: ready.
    pub const RDY: u32 = 1;
    /// CSTS.CFS: controller fatal status.
    pub const CFS: u32 = 1 << 1;
    /// CSTS.SHST shift (shutdown status).
    pub const SHST_SHIFT: u32 = 2;
    /// CSTS.SHST mask.
    pub const SHST_MASK: u32 = 0x3 << SHST_SHIFT;
    /// CSTS.SHST = 10b: shutdown processing complete.
    pub const SHST_COMPLETE: u32 = 2 << SHST_SHIFT;
}

/// Identify CNS values (CDW10 bits 7:0).
pub mod cns {
    /// Identify Namespace.
    pub const NAMESPACE: u8 = 0x00;
    /// Identify Controller.
    pub const CONTROLLER: u8 = 0x01;
    /// Active Namespace ID list.
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    /// Namespace Identification Descriptor list.
    pub const NS_DESCRIPTORS: u8 = 0x03;
}

/// Feature identifiers (Get / Set Features CDW10 bits 7:0).
pub mod feature {
    /// Volatile Write Cache.
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    /// Number of Queues.
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    /// Asynchronous Event Configuration.
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    /// Keep Alive Timer.
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
}

/// Log page identifiers (Get Log Page CDW10 bits 7:0).
pub mod log_page {
    /// Error Information.
    pub const ERROR: u8 = 0x01;
    /// SMART / Health Information.
    pub const SMART: u8 = 0x02;
    /// Changed Namespace List.
    pub const CHANGED_NS_LIST: u8 = 0x04;
    /// Discovery log (discovery controllers only).
    pub const DISCOVERY: u8 = 0x70;
}

/// Size of the Fabrics Connect command data.
pub const CONNECT_DATA_SIZE: usize = 1024;

/// Controller id meaning "any controller" (dynamic controller model): sent
/// by a host on an admin Connect, and reported in discovery log entries.
pub const CNTLID_DYNAMIC: u16 = 0xffff;
