//! Transport options: upstream's names, defaults, create-time validation,
//! `dump_opts` JSON and decoding of the `nvmf_create_transport` parameters.
//!
//! Facts from SPDK v26.01 (`nvmf_rdma_opts_init`, `rdma_transport_opts_decoder`,
//! `nvmf_rdma_create`, `nvmf_rdma_dump_opts`, the generic `nvmf_transport_create`
//! checks and the `nvmf_create_transport` RPC decoder). Upstream doc §7.1–§7.4.

use serde_json::{Map, Value};

/// `SPDK_NVMF_RDMA_MIN_IO_BUFFER_SIZE`: default `io_unit_size` and the floor
/// when it is adjusted for the device SGE limit (131072 / 16).
pub const MIN_IO_BUFFER_SIZE: u32 = 8192;
/// `NVMF_DATA_BUFFER_ALIGNMENT`: granularity of the `io_unit_size` round-up.
pub const DATA_BUFFER_ALIGNMENT: u32 = 4096;
/// `SPDK_NVMF_MAX_SGL_ENTRIES`: data buffers / SGEs per request.
pub const MAX_SGL_ENTRIES: u32 = 16;
/// `SPDK_NVMF_MIN_ADMIN_MAX_SQ_SIZE`: the smallest admin queue the spec allows.
pub const MIN_ADMIN_MAX_SQ_SIZE: u32 = 32;
/// Size of one SGL descriptor (`struct spdk_nvme_sgl_descriptor`).
pub const SGL_DESCRIPTOR_SIZE: u32 = 16;
/// Default size of an SPDK iobuf "large" buffer (`iobuf_set_options`
/// `large_bufsize`, 132 KiB); `io_unit_size` may not exceed it.
pub const IOBUF_LARGE_BUFSIZE: u32 = 135168;
/// `buf_cache_size` value meaning "computed per poll group".
pub const BUF_CACHE_SIZE_AUTO: u32 = u32::MAX;
/// Default `acceptor_backlog` (and the value that replaces a non-positive one).
pub const DEFAULT_ACCEPTOR_BACKLOG: i32 = 100;

/// Every option of the RDMA transport: the generic `spdk_nvmf_transport_opts`
/// fields the RDMA transport uses plus the RDMA-specific keys. Field names are
/// the JSON keys (except [`TransportOptions::max_qpairs_per_ctrlr`], whose JSON
/// key is `max_io_qpairs_per_ctrlr` = value − 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportOptions {
    /// Max outstanding commands per queue pair (default 128).
    pub max_queue_depth: u16,
    /// Max queue pairs per controller including the admin queue (default 128).
    pub max_qpairs_per_ctrlr: u16,
    /// Max in-capsule data bytes per command (default 4096).
    pub in_capsule_data_size: u32,
    /// Max bytes per I/O (default 131072).
    pub max_io_size: u32,
    /// Size of one data buffer (default 8192).
    pub io_unit_size: u32,
    /// Max admin queue depth, checked by the controller at CONNECT (default 128).
    pub max_aq_depth: u32,
    /// Number of pooled data buffers (default 4095).
    pub num_shared_buffers: u32,
    /// Buffers reserved per poll group; `u32::MAX` = computed (default).
    pub buf_cache_size: u32,
    /// DIF insert/strip (default false; not supported by this transport).
    pub dif_insert_or_strip: bool,
    /// Abort execution timeout in seconds (default 1).
    pub abort_timeout_sec: u32,
    /// Controller association timeout in ms (default 120000; unused by RDMA).
    pub association_timeout: u32,
    /// Acceptor poll period in microseconds (default 10000).
    pub acceptor_poll_rate: u32,
    /// Zero-copy (default false; ignored by RDMA).
    pub zcopy: bool,
    /// ACK timeout in ms (default 0; ignored by RDMA).
    pub ack_timeout: u32,
    /// Data WR pool size (default 4095).
    pub data_wr_pool_size: u32,
    /// Disallow command passthru (default false).
    pub disable_command_passthru: bool,
    /// Keep-alive support granularity in units of 100 ms (default 100).
    pub kas: u16,
    /// Minimum keep-alive timeout in ms (default 10000).
    pub min_kato: u32,
    /// RDMA: CQ entries when no SRQ is used (default 4096).
    pub num_cqe: i32,
    /// RDMA: SRQ depth per poller (default 4096).
    pub max_srq_depth: u32,
    /// RDMA: disable shared receive queues (default false).
    pub no_srq: bool,
    /// RDMA: post every WR immediately instead of batching per poll (default false).
    pub no_wr_batching: bool,
    /// RDMA: listen backlog (default 100).
    pub acceptor_backlog: i32,
}

impl Default for TransportOptions {
    /// Upstream's RDMA defaults (`spdk_nvmf_transport_opts_init` then `nvmf_rdma_opts_init`).
    fn default() -> Self {
        TransportOptions {
            max_queue_depth: 128,
            max_qpairs_per_ctrlr: 128,
            in_capsule_data_size: 4096,
            max_io_size: 131072,
            io_unit_size: MIN_IO_BUFFER_SIZE,
            max_aq_depth: 128,
            num_shared_buffers: 4095,
            buf_cache_size: BUF_CACHE_SIZE_AUTO,
            dif_insert_or_strip: false,
            abort_timeout_sec: 1,
            association_timeout: 120000,
            acceptor_poll_rate: 10000,
            zcopy: false,
            ack_timeout: 0,
            data_wr_pool_size: 4095,
            disable_command_passthru: false,
            kas: 100,
            min_kato: 10000,
            num_cqe: 4096,
            max_srq_depth: 4096,
            no_srq: false,
            no_wr_batching: false,
            acceptor_backlog: DEFAULT_ACCEPTOR_BACKLOG,
        }
    }
}

/// An option value refused at create time (upstream fails `nvmf_create_transport`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// `max_io_size` must be a power of two and at least 8192.
    #[error("max_io_size {0} must be a power of 2 and at least 8192")]
    MaxIoSize(u32),
    /// `kas` must not be 0.
    #[error("kas 0 is invalid (keep-alive support granularity must be non-zero)")]
    KasZero,
    /// `min_kato` must not be 0.
    #[error("min_kato 0 is invalid")]
    MinKatoZero,
    /// `io_unit_size` must be non-zero.
    #[error("io_unit_size 0 is invalid")]
    IoUnitSizeZero,
    /// `io_unit_size` above the iobuf large buffer size.
    #[error("io_unit_size {value} exceeds the largest data buffer size {max}")]
    IoUnitSizeTooLarge {
        /// The value.
        value: u32,
        /// The limit.
        max: u32,
    },
    /// `num_shared_buffers` below 2 × 16.
    #[error("num_shared_buffers {0} is below the minimum {min}", min = 2 * MAX_SGL_ENTRIES)]
    NumSharedBuffers(u32),
    /// `buf_cache_size` × poll groups exceeds `num_shared_buffers`.
    #[error(
        "buf_cache_size {buf_cache_size} x {poll_groups} poll groups exceeds num_shared_buffers {num_shared_buffers}"
    )]
    BufCacheSize {
        /// The value.
        buf_cache_size: u32,
        /// Poll groups (upstream: core count).
        poll_groups: u32,
        /// `num_shared_buffers`.
        num_shared_buffers: u32,
    },
    /// More than 16 data buffers per I/O (`max_io_size / io_unit_size > 16`).
    #[error(
        "unsupported io_unit_size {io_unit_size}: max_io_size {max_io_size} would need more than 16 buffers"
    )]
    IoUnitSizeTooSmall {
        /// `io_unit_size`.
        io_unit_size: u32,
        /// `max_io_size`.
        max_io_size: u32,
    },
    /// `max_queue_depth` 0 or 65535 (upstream does not check; the engine needs 1..=65534).
    #[error("max_queue_depth {0} is out of range 1..=65534")]
    MaxQueueDepth(u16),
    /// `max_io_size` 0 (upstream divides by it and crashes; refused here).
    #[error("max_io_size 0 is not supported")]
    MaxIoSizeZero,
    /// `dif_insert_or_strip` is not implemented by this transport.
    #[error("dif_insert_or_strip is not supported by this transport")]
    DifNotSupported,
}

/// An adjustment or warning produced by [`TransportOptions::validate`]; the
/// caller logs it (upstream logs the same conditions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionsNotice {
    /// `max_aq_depth` was raised to the spec minimum.
    MaxAqDepthRaised {
        /// Given value.
        from: u32,
        /// New value.
        to: u32,
    },
    /// `min_kato` was rounded up to a multiple of `kas` × 100 ms.
    MinKatoRounded {
        /// Given value.
        from: u32,
        /// New value.
        to: u32,
    },
    /// `io_unit_size` was lowered to `max_io_size`.
    IoUnitSizeLowered {
        /// Given value.
        from: u32,
        /// New value.
        to: u32,
    },
    /// A non-positive `acceptor_backlog` was replaced by 100.
    AcceptorBacklogReset {
        /// Given value.
        from: i32,
    },
    /// `in_capsule_data_size` was raised to 256 so 16 SGL descriptors fit.
    InCapsuleDataSizeRaised {
        /// Given value.
        from: u32,
        /// New value.
        to: u32,
    },
    /// `io_unit_size` was raised so that `max_io_size` fits the device SGE limit.
    IoUnitSizeRaisedForSge {
        /// Given value.
        from: u32,
        /// New value.
        to: u32,
        /// The device's SGE limit.
        max_sge: u32,
    },
    /// `max_srq_depth` was clamped to the device limit (or to 65535, the
    /// poller stores it in 16 bits).
    MaxSrqDepthClamped {
        /// Given value.
        from: u32,
        /// New value.
        to: u32,
    },
}

impl std::fmt::Display for OptionsNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionsNotice::MaxAqDepthRaised { from, to } => {
                write!(f, "max_aq_depth {from} is below the minimum, using {to}")
            }
            OptionsNotice::MinKatoRounded { from, to } => {
                write!(f, "min_kato {from} rounded up to {to} (multiple of kas)")
            }
            OptionsNotice::IoUnitSizeLowered { from, to } => {
                write!(f, "io_unit_size {from} larger than max_io_size, using {to}")
            }
            OptionsNotice::AcceptorBacklogReset { from } => write!(
                f,
                "acceptor_backlog {from} is invalid, using {DEFAULT_ACCEPTOR_BACKLOG}"
            ),
            OptionsNotice::InCapsuleDataSizeRaised { from, to } => write!(
                f,
                "in_capsule_data_size {from} cannot hold 16 SGL descriptors, using {to}"
            ),
            OptionsNotice::IoUnitSizeRaisedForSge { from, to, max_sge } => write!(
                f,
                "io_unit_size {from} needs more than {max_sge} SGEs per I/O, using {to}"
            ),
            OptionsNotice::MaxSrqDepthClamped { from, to } => {
                write!(
                    f,
                    "max_srq_depth {from} exceeds the device limit, using {to}"
                )
            }
        }
    }
}

/// Decoding the `nvmf_create_transport` parameters failed (upstream: the
/// transport is not created).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The parameters are not valid JSON.
    #[error("transport parameters are not valid JSON: {0}")]
    Json(String),
    /// The parameters are not a JSON object.
    #[error("transport parameters must be a JSON object")]
    NotAnObject,
    /// A key has the wrong JSON type or is out of range for its field.
    #[error("option {key}: {value} is not {expected}")]
    BadValue {
        /// The JSON key.
        key: &'static str,
        /// The offending value as JSON text.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

impl TransportOptions {
    /// Upstream's create-time checks and adjustments (doc §7.3 steps 1–8), in
    /// upstream's order. `poll_groups` plays upstream's core count. Errors
    /// leave `self` partly adjusted; callers drop it.
    pub fn validate(&mut self, poll_groups: u32) -> Result<Vec<OptionsNotice>, OptionsError> {
        let mut notices = Vec::new();
        // 1. generic checks (lib/nvmf/transport.c)
        if self.max_io_size != 0 && (!self.max_io_size.is_power_of_two() || self.max_io_size < 8192)
        {
            return Err(OptionsError::MaxIoSize(self.max_io_size));
        }
        if self.max_aq_depth < MIN_ADMIN_MAX_SQ_SIZE {
            notices.push(OptionsNotice::MaxAqDepthRaised {
                from: self.max_aq_depth,
                to: MIN_ADMIN_MAX_SQ_SIZE,
            });
            self.max_aq_depth = MIN_ADMIN_MAX_SQ_SIZE;
        }
        if self.kas == 0 {
            return Err(OptionsError::KasZero);
        }
        if self.min_kato == 0 {
            return Err(OptionsError::MinKatoZero);
        }
        let kas_ms = u32::from(self.kas) * 100;
        let rounded = self.min_kato.div_ceil(kas_ms).saturating_mul(kas_ms);
        if rounded != self.min_kato {
            notices.push(OptionsNotice::MinKatoRounded {
                from: self.min_kato,
                to: rounded,
            });
            self.min_kato = rounded;
        }
        if self.io_unit_size == 0 {
            return Err(OptionsError::IoUnitSizeZero);
        }
        if self.io_unit_size > IOBUF_LARGE_BUFSIZE {
            return Err(OptionsError::IoUnitSizeTooLarge {
                value: self.io_unit_size,
                max: IOBUF_LARGE_BUFSIZE,
            });
        }
        // Checks of ours, where upstream would misbehave.
        if self.max_io_size == 0 {
            return Err(OptionsError::MaxIoSizeZero);
        }
        if self.max_queue_depth == 0 || self.max_queue_depth == u16::MAX {
            return Err(OptionsError::MaxQueueDepth(self.max_queue_depth));
        }
        if self.dif_insert_or_strip {
            return Err(OptionsError::DifNotSupported);
        }
        // 3. io_unit_size <= max_io_size
        if self.io_unit_size > self.max_io_size {
            notices.push(OptionsNotice::IoUnitSizeLowered {
                from: self.io_unit_size,
                to: self.max_io_size,
            });
            self.io_unit_size = self.max_io_size;
        }
        // 4. acceptor_backlog
        if self.acceptor_backlog <= 0 {
            notices.push(OptionsNotice::AcceptorBacklogReset {
                from: self.acceptor_backlog,
            });
            self.acceptor_backlog = DEFAULT_ACCEPTOR_BACKLOG;
        }
        // 5. enough shared buffers for two maximal requests
        if self.num_shared_buffers < 2 * MAX_SGL_ENTRIES {
            return Err(OptionsError::NumSharedBuffers(self.num_shared_buffers));
        }
        // 6. per-group caches fit in the pool
        if self.buf_cache_size != BUF_CACHE_SIZE_AUTO
            && u64::from(poll_groups) * u64::from(self.buf_cache_size)
                > u64::from(self.num_shared_buffers)
        {
            return Err(OptionsError::BufCacheSize {
                buf_cache_size: self.buf_cache_size,
                poll_groups,
                num_shared_buffers: self.num_shared_buffers,
            });
        }
        // 7. at most 16 buffers per I/O
        if self.max_io_size / self.io_unit_size > MAX_SGL_ENTRIES {
            return Err(OptionsError::IoUnitSizeTooSmall {
                io_unit_size: self.io_unit_size,
                max_io_size: self.max_io_size,
            });
        }
        // 8. ICD must hold 16 SGL descriptors
        let min_icd = SGL_DESCRIPTOR_SIZE * MAX_SGL_ENTRIES;
        if self.in_capsule_data_size < min_icd {
            notices.push(OptionsNotice::InCapsuleDataSizeRaised {
                from: self.in_capsule_data_size,
                to: min_icd,
            });
            self.in_capsule_data_size = min_icd;
        }
        Ok(notices)
    }

    /// Step 12 of upstream's create: with `max_sge` the smallest SGE limit of
    /// all devices, make sure one I/O fits in `max_sge` buffers.
    pub fn adjust_for_device_sge(&mut self, max_sge: u32) -> Option<OptionsNotice> {
        let max_sge = max_sge.clamp(1, MAX_SGL_ENTRIES);
        if u64::from(self.io_unit_size) * u64::from(max_sge) >= u64::from(self.max_io_size) {
            return None;
        }
        let from = self.io_unit_size;
        let needed = self.max_io_size.div_ceil(max_sge);
        let to = needed
            .div_ceil(DATA_BUFFER_ALIGNMENT)
            .saturating_mul(DATA_BUFFER_ALIGNMENT)
            .max(MIN_IO_BUFFER_SIZE);
        self.io_unit_size = to;
        Some(OptionsNotice::IoUnitSizeRaisedForSge { from, to, max_sge })
    }

    /// The SRQ depth used on a device whose `max_srq_wr` is given (upstream
    /// §4.3: clamped to the device and stored in 16 bits).
    pub fn srq_depth_for_device(&self, device_max_srq_wr: u32) -> (u16, Option<OptionsNotice>) {
        let limit = device_max_srq_wr.min(u32::from(u16::MAX));
        if self.max_srq_depth > limit {
            let to = limit as u16;
            (
                to,
                Some(OptionsNotice::MaxSrqDepthClamped {
                    from: self.max_srq_depth,
                    to: limit,
                }),
            )
        } else {
            (self.max_srq_depth as u16, None)
        }
    }

    /// The per-group buffer cache: `buf_cache_size`, or when automatic
    /// `(num_shared_buffers * 3 / 4) / poll_groups` (upstream §4.7).
    pub fn effective_buf_cache_size(&self, poll_groups: u32) -> u32 {
        if self.buf_cache_size == BUF_CACHE_SIZE_AUTO {
            (self.num_shared_buffers * 3 / 4) / poll_groups.max(1)
        } else {
            self.buf_cache_size
        }
    }

    /// The `params` object of `nvmf_get_transports` / `dump_opts`, keys in
    /// upstream's order (doc §7.4): generic keys, then the RDMA keys
    /// (`num_cqe` only with `no_srq`), then the trailing generic keys.
    pub fn dump_opts(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        put("trtype", Value::from("RDMA"));
        put("max_queue_depth", self.max_queue_depth.into());
        put(
            "max_io_qpairs_per_ctrlr",
            self.max_qpairs_per_ctrlr.saturating_sub(1).into(),
        );
        put("in_capsule_data_size", self.in_capsule_data_size.into());
        put("max_io_size", self.max_io_size.into());
        put("io_unit_size", self.io_unit_size.into());
        put("max_aq_depth", self.max_aq_depth.into());
        put("num_shared_buffers", self.num_shared_buffers.into());
        put("buf_cache_size", self.buf_cache_size.into());
        put("dif_insert_or_strip", self.dif_insert_or_strip.into());
        put("zcopy", self.zcopy.into());
        put("max_srq_depth", self.max_srq_depth.into());
        put("no_srq", self.no_srq.into());
        if self.no_srq {
            put("num_cqe", self.num_cqe.into());
        }
        put("acceptor_backlog", self.acceptor_backlog.into());
        put("no_wr_batching", self.no_wr_batching.into());
        put("abort_timeout_sec", self.abort_timeout_sec.into());
        put("ack_timeout", self.ack_timeout.into());
        put("data_wr_pool_size", self.data_wr_pool_size.into());
        put(
            "disable_command_passthru",
            self.disable_command_passthru.into(),
        );
        put("kas", self.kas.into());
        put("min_kato", self.min_kato.into());
        m
    }

    /// [`TransportOptions::dump_opts`] as a JSON string.
    pub fn dump_opts_json(&self) -> String {
        Value::Object(self.dump_opts()).to_string()
    }

    /// Decodes `nvmf_create_transport` parameters (a JSON object) over the
    /// defaults. Like upstream (`spdk_json_decode_object_relaxed`), unknown
    /// keys are ignored; a known key of the wrong type or out of its field's
    /// range is an error naming the key and the value.
    pub fn from_json_params(params: &str) -> Result<TransportOptions, DecodeError> {
        let v: Value =
            serde_json::from_str(params).map_err(|e| DecodeError::Json(e.to_string()))?;
        let obj = v.as_object().ok_or(DecodeError::NotAnObject)?;
        let mut o = TransportOptions::default();
        o.apply_json(obj)?;
        Ok(o)
    }

    /// Applies the known keys of `obj` to `self` (see [`TransportOptions::from_json_params`]).
    pub fn apply_json(&mut self, obj: &Map<String, Value>) -> Result<(), DecodeError> {
        let d = Decoder(obj);
        if let Some(v) = d.uint("max_queue_depth", u16::MAX.into())? {
            self.max_queue_depth = v as u16;
        }
        if let Some(v) = d.uint("max_io_qpairs_per_ctrlr", u64::from(u16::MAX) - 1)? {
            self.max_qpairs_per_ctrlr = v as u16 + 1;
        }
        let u32max = u64::from(u32::MAX);
        d.set_u32("in_capsule_data_size", &mut self.in_capsule_data_size)?;
        d.set_u32("max_io_size", &mut self.max_io_size)?;
        d.set_u32("io_unit_size", &mut self.io_unit_size)?;
        d.set_u32("max_aq_depth", &mut self.max_aq_depth)?;
        d.set_u32("num_shared_buffers", &mut self.num_shared_buffers)?;
        d.set_u32("buf_cache_size", &mut self.buf_cache_size)?;
        d.set_bool("dif_insert_or_strip", &mut self.dif_insert_or_strip)?;
        d.set_u32("abort_timeout_sec", &mut self.abort_timeout_sec)?;
        d.set_u32("association_timeout", &mut self.association_timeout)?;
        d.set_u32("acceptor_poll_rate", &mut self.acceptor_poll_rate)?;
        d.set_bool("zcopy", &mut self.zcopy)?;
        d.set_u32("ack_timeout", &mut self.ack_timeout)?;
        d.set_u32("data_wr_pool_size", &mut self.data_wr_pool_size)?;
        d.set_bool(
            "disable_command_passthru",
            &mut self.disable_command_passthru,
        )?;
        if let Some(v) = d.uint("kas", u16::MAX.into())? {
            self.kas = v as u16;
        }
        d.set_u32("min_kato", &mut self.min_kato)?;
        d.set_i32("num_cqe", &mut self.num_cqe)?;
        if let Some(v) = d.uint("max_srq_depth", u32max)? {
            self.max_srq_depth = v as u32;
        }
        d.set_bool("no_srq", &mut self.no_srq)?;
        d.set_bool("no_wr_batching", &mut self.no_wr_batching)?;
        d.set_i32("acceptor_backlog", &mut self.acceptor_backlog)?;
        Ok(())
    }
}

struct Decoder<'a>(&'a Map<String, Value>);

impl Decoder<'_> {
    fn bad(key: &'static str, v: &Value, expected: &'static str) -> DecodeError {
        DecodeError::BadValue {
            key,
            value: v.to_string(),
            expected,
        }
    }

    fn uint(&self, key: &'static str, max: u64) -> Result<Option<u64>, DecodeError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= max => Ok(Some(n)),
                _ => Err(Self::bad(
                    key,
                    v,
                    if max == u64::from(u16::MAX) {
                        "an unsigned 16-bit integer"
                    } else if max == u64::from(u16::MAX) - 1 {
                        "an integer in 0..=65534"
                    } else {
                        "an unsigned 32-bit integer"
                    },
                )),
            },
        }
    }

    fn set_u32(&self, key: &'static str, field: &mut u32) -> Result<(), DecodeError> {
        if let Some(v) = self.uint(key, u64::from(u32::MAX))? {
            *field = v as u32;
        }
        Ok(())
    }

    fn set_i32(&self, key: &'static str, field: &mut i32) -> Result<(), DecodeError> {
        if let Some(v) = self.0.get(key) {
            *field = v
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| Self::bad(key, v, "a signed 32-bit integer"))?;
        }
        Ok(())
    }

    fn set_bool(&self, key: &'static str, field: &mut bool) -> Result<(), DecodeError> {
        if let Some(v) = self.0.get(key) {
            *field = v.as_bool().ok_or_else(|| Self::bad(key, v, "a boolean"))?;
        }
        Ok(())
    }
}

/// Controller data fields the transport sets (`cdata_init`, doc §7.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportCdata {
    /// I/O queue command capsule supported size, in 16-byte units.
    pub ioccsz: u32,
    /// I/O queue response capsule supported size, in 16-byte units.
    pub iorcsz: u32,
    /// In-capsule data offset, in 16-byte units.
    pub icdoff: u16,
    /// Max SGL data block descriptors.
    pub msdbd: u8,
    /// SGL support (`sgls.supported`).
    pub sgls_supported: bool,
    /// Keyed SGL data block descriptors supported.
    pub keyed_sgl: bool,
    /// SGL offsets supported.
    pub sgl_offset: bool,
    /// Maximum data transfer size as a power of two of 4 KiB pages.
    pub mdts: u8,
    /// ICD above 4 KiB: upstream warns about Linux hosts 5.4–5.12.
    pub large_icd_warning: bool,
}

impl TransportOptions {
    /// The cdata values the generic layer plus the RDMA `cdata_init` produce.
    pub fn cdata(&self) -> TransportCdata {
        let mut ioccsz = (64 + self.in_capsule_data_size) / 16;
        if self.dif_insert_or_strip {
            ioccsz = 4;
        }
        let pages = (self.max_io_size / 4096).max(1);
        TransportCdata {
            ioccsz,
            iorcsz: 1,
            icdoff: 0,
            msdbd: 16,
            sgls_supported: true,
            keyed_sgl: true,
            sgl_offset: true,
            mdts: pages.ilog2() as u8,
            large_icd_warning: ioccsz > (64 + 4096) / 16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_upstream() {
        let o = TransportOptions::default();
        assert_eq!(o.max_queue_depth, 128);
        assert_eq!(o.max_qpairs_per_ctrlr, 128);
        assert_eq!(o.in_capsule_data_size, 4096);
        assert_eq!(o.max_io_size, 131072);
        assert_eq!(o.io_unit_size, 8192);
        assert_eq!(o.num_shared_buffers, 4095);
        assert_eq!(o.buf_cache_size, u32::MAX);
        assert_eq!(o.num_cqe, 4096);
        assert_eq!(o.max_srq_depth, 4096);
        assert_eq!(o.acceptor_backlog, 100);
        assert_eq!(o.data_wr_pool_size, 4095);
        let mut v = o.clone();
        assert_eq!(v.validate(1), Ok(vec![]));
        assert_eq!(v, o);
    }

    #[test]
    fn validation_order_and_adjustments() {
        let mut o = TransportOptions {
            max_io_size: 12288,
            ..Default::default()
        };
        assert_eq!(o.validate(1), Err(OptionsError::MaxIoSize(12288)));

        let mut o = TransportOptions {
            max_io_size: 65536,
            io_unit_size: 131072,
            acceptor_backlog: -3,
            in_capsule_data_size: 16,
            max_aq_depth: 4,
            ..Default::default()
        };
        let n = o.validate(2).unwrap();
        assert_eq!(
            n,
            vec![
                OptionsNotice::MaxAqDepthRaised { from: 4, to: 32 },
                OptionsNotice::IoUnitSizeLowered {
                    from: 131072,
                    to: 65536
                },
                OptionsNotice::AcceptorBacklogReset { from: -3 },
                OptionsNotice::InCapsuleDataSizeRaised { from: 16, to: 256 },
            ]
        );
        assert_eq!(o.io_unit_size, 65536);
        assert_eq!(o.acceptor_backlog, 100);
        assert_eq!(o.in_capsule_data_size, 256);
    }

    #[test]
    fn validation_failures_name_the_value() {
        let mut o = TransportOptions {
            num_shared_buffers: 31,
            ..Default::default()
        };
        assert_eq!(o.validate(1), Err(OptionsError::NumSharedBuffers(31)));
        let mut o = TransportOptions {
            buf_cache_size: 2000,
            ..Default::default()
        };
        assert_eq!(
            o.validate(3),
            Err(OptionsError::BufCacheSize {
                buf_cache_size: 2000,
                poll_groups: 3,
                num_shared_buffers: 4095
            })
        );
        let mut o = TransportOptions {
            io_unit_size: 4096,
            ..Default::default()
        };
        assert_eq!(
            o.validate(1),
            Err(OptionsError::IoUnitSizeTooSmall {
                io_unit_size: 4096,
                max_io_size: 131072
            })
        );
        let mut o = TransportOptions {
            io_unit_size: 0,
            ..Default::default()
        };
        assert_eq!(o.validate(1), Err(OptionsError::IoUnitSizeZero));
        let mut o = TransportOptions {
            max_io_size: 0,
            ..Default::default()
        };
        assert_eq!(o.validate(1), Err(OptionsError::MaxIoSizeZero));
        let mut o = TransportOptions {
            max_queue_depth: 0,
            ..Default::default()
        };
        assert_eq!(o.validate(1), Err(OptionsError::MaxQueueDepth(0)));
        assert!(OptionsError::NumSharedBuffers(31)
            .to_string()
            .contains("31"));
    }

    #[test]
    fn min_kato_rounds_to_kas() {
        let mut o = TransportOptions {
            min_kato: 10001,
            ..Default::default()
        };
        o.validate(1).unwrap();
        assert_eq!(o.min_kato, 20000);
    }

    #[test]
    fn device_sge_adjustment() {
        let mut o = TransportOptions::default();
        assert_eq!(o.adjust_for_device_sge(16), None);
        // 131072 / 4 = 32768
        assert_eq!(
            o.adjust_for_device_sge(4),
            Some(OptionsNotice::IoUnitSizeRaisedForSge {
                from: 8192,
                to: 32768,
                max_sge: 4
            })
        );
        let mut o = TransportOptions {
            max_io_size: 16384,
            io_unit_size: 4096,
            ..Default::default()
        };
        // needs 8192 with 2 SGEs; floor 8192
        o.adjust_for_device_sge(2).unwrap();
        assert_eq!(o.io_unit_size, 8192);
        let mut o = TransportOptions {
            max_io_size: 131072,
            io_unit_size: 8192,
            ..Default::default()
        };
        o.adjust_for_device_sge(3).unwrap();
        // ceil(131072/3) = 43691 -> 45056
        assert_eq!(o.io_unit_size, 45056);
    }

    #[test]
    fn srq_depth_is_clamped() {
        let o = TransportOptions::default();
        assert_eq!(o.srq_depth_for_device(100000), (4096, None));
        assert_eq!(o.srq_depth_for_device(1024).0, 1024);
        let o = TransportOptions {
            max_srq_depth: 70000,
            ..Default::default()
        };
        assert_eq!(o.srq_depth_for_device(1 << 20).0, 65535);
    }

    #[test]
    fn dump_opts_keys_in_upstream_order() {
        let o = TransportOptions::default();
        let keys: Vec<String> = o.dump_opts().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "trtype",
                "max_queue_depth",
                "max_io_qpairs_per_ctrlr",
                "in_capsule_data_size",
                "max_io_size",
                "io_unit_size",
                "max_aq_depth",
                "num_shared_buffers",
                "buf_cache_size",
                "dif_insert_or_strip",
                "zcopy",
                "max_srq_depth",
                "no_srq",
                "acceptor_backlog",
                "no_wr_batching",
                "abort_timeout_sec",
                "ack_timeout",
                "data_wr_pool_size",
                "disable_command_passthru",
                "kas",
                "min_kato"
            ]
        );
        let o = TransportOptions {
            no_srq: true,
            ..Default::default()
        };
        let d = o.dump_opts();
        assert_eq!(d["num_cqe"], 4096);
        assert_eq!(d["max_io_qpairs_per_ctrlr"], 127);
        assert!(o.dump_opts_json().starts_with("{\"trtype\":\"RDMA\""));
    }

    #[test]
    fn json_decode_relaxed_and_typed() {
        let o = TransportOptions::from_json_params(
            r#"{"trtype":"RDMA","max_queue_depth":64,"max_io_qpairs_per_ctrlr":3,
                "no_srq":true,"num_cqe":-1,"acceptor_backlog":7,"c2h_success":true,
                "tgt_name":"x","max_srq_depth":1024}"#,
        )
        .unwrap();
        assert_eq!(o.max_queue_depth, 64);
        assert_eq!(o.max_qpairs_per_ctrlr, 4);
        assert!(o.no_srq);
        assert_eq!(o.num_cqe, -1);
        assert_eq!(o.acceptor_backlog, 7);
        assert_eq!(o.max_srq_depth, 1024);

        let e = TransportOptions::from_json_params(r#"{"max_queue_depth":70000}"#).unwrap_err();
        assert!(
            matches!(e, DecodeError::BadValue { key: "max_queue_depth", ref value, .. } if value == "70000")
        );
        let e = TransportOptions::from_json_params(r#"{"no_srq":"yes"}"#).unwrap_err();
        assert!(matches!(e, DecodeError::BadValue { key: "no_srq", .. }));
        let e = TransportOptions::from_json_params(r#"{"io_unit_size":-1}"#).unwrap_err();
        assert!(matches!(
            e,
            DecodeError::BadValue {
                key: "io_unit_size",
                ..
            }
        ));
        assert_eq!(
            TransportOptions::from_json_params("[1]"),
            Err(DecodeError::NotAnObject)
        );
        assert!(matches!(
            TransportOptions::from_json_params("{"),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn dump_then_decode_round_trips() {
        let o = TransportOptions {
            max_queue_depth: 32,
            no_srq: true,
            num_cqe: 1024,
            no_wr_batching: true,
            ..Default::default()
        };
        let back = TransportOptions::from_json_params(&o.dump_opts_json()).unwrap();
        assert_eq!(back, o);
    }

    #[test]
    fn cdata_values() {
        let c = TransportOptions::default().cdata();
        assert_eq!(c.ioccsz, (64 + 4096) / 16);
        assert_eq!(c.iorcsz, 1);
        assert_eq!(c.msdbd, 16);
        assert_eq!(c.mdts, 5);
        assert!(!c.large_icd_warning);
        let c = TransportOptions {
            in_capsule_data_size: 8192,
            ..Default::default()
        }
        .cdata();
        assert!(c.large_icd_warning);
    }
}
