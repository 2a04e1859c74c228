//! Configuration of a [`Target`](super::Target): the subsystem, its RAM
//! namespaces and listeners, and the transport values that appear in
//! Identify Controller and the CAP property.

use thiserror::Error;

/// The well-known NQN of the discovery subsystem (NVMe-oF 1.1, 7.1).
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Logical block size of every RAM namespace, in bytes.
pub const LBA_SIZE: u32 = 512;

/// Longest NQN accepted (NVMe base spec: 223 bytes of UTF-8).
pub const MAX_NQN_LEN: usize = 223;

/// Transport type code for RDMA (discovery log `TRTYPE`).
pub const TRTYPE_RDMA: u8 = 1;
/// Transport type code for TCP (discovery log `TRTYPE`).
pub const TRTYPE_TCP: u8 = 3;

/// Address family of a listener (discovery log `ADRFAM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// IPv4 (1).
    Ipv4,
    /// IPv6 (2).
    Ipv6,
    /// InfiniBand (3).
    Ib,
    /// Fibre Channel (4).
    Fc,
    /// Intra-host (254).
    IntraHost,
}

impl AddressFamily {
    /// The `ADRFAM` wire value.
    pub const fn code(self) -> u8 {
        match self {
            AddressFamily::Ipv4 => 1,
            AddressFamily::Ipv6 => 2,
            AddressFamily::Ib => 3,
            AddressFamily::Fc => 4,
            AddressFamily::IntraHost => 0xfe,
        }
    }
}

/// One address the subsystem is reachable at; listed in the discovery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Transport type (`TRTYPE`), e.g. [`TRTYPE_RDMA`].
    pub trtype: u8,
    /// Address family.
    pub adrfam: AddressFamily,
    /// Transport address, e.g. `127.0.0.1` (at most 256 bytes).
    pub traddr: String,
    /// Transport service id, e.g. `4420` (at most 32 bytes).
    pub trsvcid: String,
}

impl Listener {
    /// An RDMA listener on an IPv4 or IPv6 address and port.
    pub fn rdma(addr: std::net::SocketAddr) -> Listener {
        Listener {
            trtype: TRTYPE_RDMA,
            adrfam: if addr.is_ipv4() {
                AddressFamily::Ipv4
            } else {
                AddressFamily::Ipv6
            },
            traddr: addr.ip().to_string(),
            trsvcid: addr.port().to_string(),
        }
    }
}

/// Values owned by the transport that the controller reports: queue limits
/// (CAP.MQES, Connect checks, Number of Queues) and the NVMe-oF part of
/// Identify Controller (IOCCSZ, IORCSZ, ICDOFF, MSDBD, SGLS, MDTS).
///
/// The transport fills it from its own options; [`TransportConfig::rdma`]
/// gives upstream SPDK's RDMA values (`nvmf_rdma_cdata_init`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// Deepest I/O queue (entries); CAP.MQES is this minus one.
    pub max_queue_depth: u16,
    /// Deepest admin queue (entries).
    pub max_aq_depth: u16,
    /// Queues per controller including the admin queue.
    pub max_qpairs_per_ctrlr: u16,
    /// Bytes of in-capsule data a command capsule may carry.
    pub in_capsule_data_size: u32,
    /// Largest data transfer of one command, bytes (MDTS).
    pub max_io_size: u32,
    /// Maximum SGL data block descriptors per command (MSDBD).
    pub msdbd: u8,
    /// Identify Controller SGLS field.
    pub sgls: u32,
}

/// SGLS bits 1:0 = 01b: SGLs supported, no alignment requirement.
pub const SGLS_SUPPORTED: u32 = 0x1;
/// SGLS bit 2: keyed SGL data block descriptors supported.
pub const SGLS_KEYED: u32 = 1 << 2;
/// SGLS bit 20: the address field of a data block may be an offset.
pub const SGLS_OFFSET: u32 = 1 << 20;

impl TransportConfig {
    /// Upstream's RDMA defaults: queue depth 128, admin queue depth 128,
    /// 128 queues per controller, 4096 bytes of in-capsule data, 128 KiB
    /// max I/O, MSDBD 16, SGLS = supported | keyed | offset.
    pub fn rdma() -> TransportConfig {
        TransportConfig {
            max_queue_depth: 128,
            max_aq_depth: 128,
            max_qpairs_per_ctrlr: 128,
            in_capsule_data_size: 4096,
            max_io_size: 131072,
            msdbd: 16,
            sgls: SGLS_SUPPORTED | SGLS_KEYED | SGLS_OFFSET,
        }
    }

    /// IOCCSZ: command capsule size in 16-byte units (SQE + in-capsule data).
    pub fn ioccsz(&self) -> u32 {
        (64 + self.in_capsule_data_size) / 16
    }

    /// IORCSZ: response capsule size in 16-byte units (a bare CQE).
    pub fn iorcsz(&self) -> u32 {
        1
    }

    /// MDTS: log2 of the max transfer in 4 KiB units (CAP.MPSMIN = 0);
    /// 0 means "no limit" and is used when `max_io_size` is below 4 KiB.
    pub fn mdts(&self) -> u8 {
        let pages = self.max_io_size / 4096;
        if pages == 0 {
            0
        } else {
            // floor(log2(pages)) <= 31, so the cast cannot truncate.
            (31 - pages.leading_zeros()) as u8
        }
    }
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig::rdma()
    }
}

/// Everything a [`Target`](super::Target) is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    /// NQN of the NVM subsystem.
    pub subnqn: String,
    /// Serial number (Identify SN, at most 20 ASCII characters).
    pub serial: String,
    /// Model number (Identify MN, at most 40 ASCII characters).
    pub model: String,
    /// Sizes in bytes of the RAM namespaces, NSIDs 1, 2, ... in order. Each
    /// is rounded down to whole 512-byte blocks and must hold at least one.
    pub namespaces: Vec<u64>,
    /// Highest NSID the subsystem can hold (Identify NN).
    pub max_namespaces: u32,
    /// Addresses listed in the discovery log.
    pub listeners: Vec<Listener>,
    /// Host NQNs allowed to connect; `None` allows any host.
    pub allowed_hosts: Option<Vec<String>>,
    /// Transport limits and Identify values.
    pub transport: TransportConfig,
    /// Keep Alive granularity (Identify KAS) in 100 ms units; 0 disables
    /// keep-alive.
    pub kas: u16,
    /// Smallest keep-alive timeout granted, ms (upstream `min_kato`).
    pub min_kato_ms: u32,
    /// Keep-alive timeout of a discovery controller whose host asked for 0, ms.
    pub discovery_kato_ms: u32,
    /// Asynchronous Event Request limit, 0-based (Identify AERL).
    pub aerl: u8,
}

impl TargetConfig {
    /// A target for `subnqn` with one RAM namespace per entry of
    /// `namespace_sizes` and upstream's defaults for everything else.
    pub fn new(subnqn: impl Into<String>, namespace_sizes: Vec<u64>) -> TargetConfig {
        TargetConfig {
            subnqn: subnqn.into(),
            serial: "NVMFRDMARS0001".to_string(),
            model: "nvmf-rdma-rs minitarget".to_string(),
            namespaces: namespace_sizes,
            max_namespaces: 32,
            listeners: Vec::new(),
            allowed_hosts: None,
            transport: TransportConfig::rdma(),
            kas: 100,
            min_kato_ms: 10_000,
            discovery_kato_ms: 120_000,
            aerl: 3,
        }
    }

    /// Checks every field; [`Target::new`](super::Target::new) calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_nqn(&self.subnqn)?;
        if self.subnqn == DISCOVERY_NQN {
            return Err(ConfigError::DiscoveryNqn);
        }
        if !self.serial.is_ascii() || self.serial.len() > 20 {
            return Err(ConfigError::Serial(self.serial.clone()));
        }
        if !self.model.is_ascii() || self.model.len() > 40 {
            return Err(ConfigError::Model(self.model.clone()));
        }
        if self.max_namespaces == 0 || self.max_namespaces >= 0xffff_fffe {
            return Err(ConfigError::MaxNamespaces(self.max_namespaces));
        }
        if self.namespaces.len() as u64 > u64::from(self.max_namespaces) {
            return Err(ConfigError::TooManyNamespaces {
                count: self.namespaces.len(),
                max: self.max_namespaces,
            });
        }
        for &size in &self.namespaces {
            check_namespace_size(size)?;
        }
        for l in &self.listeners {
            if l.traddr.len() > 256 || l.trsvcid.len() > 32 {
                return Err(ConfigError::Listener(format!("{}:{}", l.traddr, l.trsvcid)));
            }
        }
        if let Some(hosts) = &self.allowed_hosts {
            for h in hosts {
                check_nqn(h)?;
            }
        }
        let t = &self.transport;
        if t.max_queue_depth < 2 {
            return Err(ConfigError::QueueDepth(t.max_queue_depth));
        }
        if t.max_aq_depth < 2 {
            return Err(ConfigError::QueueDepth(t.max_aq_depth));
        }
        if t.max_qpairs_per_ctrlr < 2 {
            return Err(ConfigError::QpairsPerController(t.max_qpairs_per_ctrlr));
        }
        if t.max_io_size < LBA_SIZE {
            return Err(ConfigError::MaxIoSize(t.max_io_size));
        }
        Ok(())
    }
}

pub(crate) fn check_nqn(nqn: &str) -> Result<(), ConfigError> {
    if nqn.is_empty() || nqn.len() > MAX_NQN_LEN || nqn.contains('\0') {
        return Err(ConfigError::Nqn(nqn.to_string()));
    }
    Ok(())
}

pub(crate) fn check_namespace_size(size: u64) -> Result<(), ConfigError> {
    if size < u64::from(LBA_SIZE) {
        return Err(ConfigError::NamespaceSize(size));
    }
    Ok(())
}

/// Why a [`TargetConfig`] (or a runtime change) was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The NQN is empty, longer than 223 bytes or contains NUL.
    #[error("invalid NQN {0:?}: must be 1..=223 bytes without NUL")]
    Nqn(String),
    /// The subsystem NQN is the discovery NQN.
    #[error("the subsystem NQN must not be the discovery NQN")]
    DiscoveryNqn,
    /// The serial number is not ASCII or longer than 20 bytes.
    #[error("invalid serial number {0:?}: at most 20 ASCII characters")]
    Serial(String),
    /// The model number is not ASCII or longer than 40 bytes.
    #[error("invalid model number {0:?}: at most 40 ASCII characters")]
    Model(String),
    /// `max_namespaces` is 0 or collides with the broadcast NSIDs.
    #[error("invalid max_namespaces {0}")]
    MaxNamespaces(u32),
    /// More namespaces than `max_namespaces`, or no free NSID left.
    #[error("{count} namespaces exceed max_namespaces {max}")]
    TooManyNamespaces {
        /// Namespaces asked for.
        count: usize,
        /// The limit.
        max: u32,
    },
    /// A namespace smaller than one 512-byte block.
    #[error("namespace size {0} bytes is smaller than one 512-byte block")]
    NamespaceSize(u64),
    /// No namespace with this NSID.
    #[error("no namespace with NSID {0}")]
    NoSuchNamespace(u32),
    /// A listener address or service id too long for the discovery log.
    #[error("listener {0} too long for the discovery log")]
    Listener(String),
    /// A queue depth below 2.
    #[error("queue depth {0} is below 2")]
    QueueDepth(u16),
    /// `max_qpairs_per_ctrlr` below 2 (admin + one I/O queue).
    #[error("max_qpairs_per_ctrlr {0} is below 2")]
    QpairsPerController(u16),
    /// `max_io_size` below one block.
    #[error("max_io_size {0} is below one 512-byte block")]
    MaxIoSize(u32),
}
