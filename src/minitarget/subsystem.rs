//! The NVM subsystem: configuration, RAM namespaces, listeners and I/O
//! counters shared by all its controllers.

use std::collections::BTreeMap;

use super::config::{check_namespace_size, ConfigError, Listener, TargetConfig};
use super::namespace::RamNamespace;

/// Counters reported in the SMART / health log page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Read commands completed successfully.
    pub read_commands: u64,
    /// Write commands completed successfully.
    pub write_commands: u64,
    /// 512-byte units read.
    pub blocks_read: u64,
    /// 512-byte units written (Write Zeroes not included).
    pub blocks_written: u64,
}

#[derive(Debug)]
pub(crate) struct Subsystem {
    pub config: TargetConfig,
    pub namespaces: BTreeMap<u32, RamNamespace>,
    /// Discovery log generation counter: bumped when listeners change.
    pub discovery_genctr: u64,
    pub stats: IoStats,
}

impl Subsystem {
    pub(crate) fn new(config: TargetConfig) -> Result<Subsystem, ConfigError> {
        config.validate()?;
        let mut namespaces = BTreeMap::new();
        for (i, &size) in config.namespaces.iter().enumerate() {
            let nsid = i as u32 + 1;
            namespaces.insert(nsid, RamNamespace::new(&config.subnqn, nsid, size));
        }
        Ok(Subsystem {
            config,
            namespaces,
            discovery_genctr: 0,
            stats: IoStats::default(),
        })
    }

    pub(crate) fn listeners(&self) -> &[Listener] {
        &self.config.listeners
    }

    pub(crate) fn host_allowed(&self, hostnqn: &str) -> bool {
        match &self.config.allowed_hosts {
            None => true,
            Some(hosts) => hosts.iter().any(|h| h == hostnqn),
        }
    }

    /// Adds a namespace at the lowest free NSID.
    pub(crate) fn add_namespace(&mut self, size_bytes: u64) -> Result<u32, ConfigError> {
        check_namespace_size(size_bytes)?;
        let max = self.config.max_namespaces;
        let nsid = (1..=max).find(|n| !self.namespaces.contains_key(n)).ok_or(
            ConfigError::TooManyNamespaces {
                count: self.namespaces.len() + 1,
                max,
            },
        )?;
        self.namespaces.insert(
            nsid,
            RamNamespace::new(&self.config.subnqn, nsid, size_bytes),
        );
        Ok(nsid)
    }
}
