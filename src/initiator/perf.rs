//! A `perf`-style load generator: random/sequential reads and writes at any
//! queue depth and I/O size over one or more I/O queues, with optional data
//! verification, IOPS and a latency histogram.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::controller::{Controller, ControllerConfig};
use super::error::{InitiatorError, Result};
use super::histogram::{LatencyHistogram, LatencySummary};
use super::pattern::{self, Rng};
use super::queue::{Done, Payload, Queue, SglMode};
use super::wire;

/// What each I/O does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Random reads.
    RandRead,
    /// Random writes.
    RandWrite,
    /// Sequential reads.
    SeqRead,
    /// Sequential writes.
    SeqWrite,
    /// Random mix with `read_pct` percent reads.
    RandRw {
        /// Percentage of reads (0..=100).
        read_pct: u8,
    },
}

impl std::str::FromStr for Workload {
    type Err = InitiatorError;
    fn from_str(s: &str) -> Result<Workload> {
        Ok(match s {
            "randread" => Workload::RandRead,
            "randwrite" => Workload::RandWrite,
            "read" | "seqread" => Workload::SeqRead,
            "write" | "seqwrite" => Workload::SeqWrite,
            "randrw" | "verify" => Workload::RandRw { read_pct: 50 },
            other => {
                return Err(InitiatorError::Config(format!(
                    "unknown workload {other:?}"
                )))
            }
        })
    }
}

/// Load-generator settings.
#[derive(Debug, Clone)]
pub struct PerfConfig {
    /// Target and queue settings (`io_queues` workers, `io_depth` entries).
    pub controller: ControllerConfig,
    /// Namespace (0 = the first active one).
    pub nsid: u32,
    /// Access pattern.
    pub workload: Workload,
    /// Bytes per I/O (multiple of the block size).
    pub io_size: u32,
    /// Outstanding I/Os per queue.
    pub queue_depth: u16,
    /// Stop after this long (measured after warm-up)...
    pub duration: Duration,
    /// ...or after this many I/Os in total, whichever first (0 = no limit).
    pub io_limit: u64,
    /// How data is described (keyed, in-capsule, multi-descriptor).
    pub sgl: SglMode,
    /// Check every read against the last write to that chunk.
    pub verify: bool,
    /// Write the whole region once before the measured run (so reads verify).
    pub prefill: bool,
    /// Limit the region to this many bytes from LBA 0 (0 = whole namespace).
    pub region_bytes: u64,
    /// PRNG seed.
    pub seed: u64,
}

impl PerfConfig {
    /// Defaults: 4 KiB random reads at QD 32 for 5 s.
    pub fn new(controller: ControllerConfig) -> PerfConfig {
        PerfConfig {
            controller,
            nsid: 0,
            workload: Workload::RandRead,
            io_size: 4096,
            queue_depth: 32,
            duration: Duration::from_secs(5),
            io_limit: 0,
            sgl: SglMode::Keyed,
            verify: false,
            prefill: false,
            region_bytes: 0,
            seed: 1,
        }
    }
}

/// Results of [`run_perf`].
#[derive(Debug, Clone, Default)]
pub struct PerfReport {
    /// Completed I/Os.
    pub ios: u64,
    /// Completed reads.
    pub reads: u64,
    /// Completed writes.
    pub writes: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Measured wall time.
    pub elapsed: Duration,
    /// I/Os per second.
    pub iops: f64,
    /// MiB per second.
    pub mib_per_s: f64,
    /// Read latency.
    pub read_latency: LatencySummary,
    /// Write latency.
    pub write_latency: LatencySummary,
    /// All I/Os.
    pub latency: LatencySummary,
    /// Reads whose data was checked.
    pub verified: u64,
    /// Errors (one line each; the run stops a worker at its first error).
    pub errors: Vec<String>,
}

impl std::fmt::Display for PerfReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        writeln!(
            f,
            "ios {} (reads {}, writes {}) in {:.3} s: {:.0} IOPS, {:.1} MiB/s",
            self.ios,
            self.reads,
            self.writes,
            self.elapsed.as_secs_f64(),
            self.iops,
            self.mib_per_s
        )?;
        for (name, l) in [
            ("all", &self.latency),
            ("read", &self.read_latency),
            ("write", &self.write_latency),
        ] {
            if l.count > 0 {
                writeln!(
                    f,
                    "latency {name:5} us: mean {:.1} min {:.1} p50 {:.1} p90 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}",
                    us(l.mean),
                    us(l.min),
                    us(l.p50),
                    us(l.p90),
                    us(l.p99),
                    us(l.p999),
                    us(l.max)
                )?;
            }
        }
        writeln!(
            f,
            "verified reads {}, errors {}",
            self.verified,
            self.errors.len()
        )?;
        for e in &self.errors {
            writeln!(f, "error: {e}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct InFlight {
    write: bool,
    chunk: u64,
    generation: u32,
}

struct Worker<'a> {
    q: &'a mut Queue,
    cfg: &'a PerfConfig,
    nsid: u32,
    block_size: u32,
    first_chunk: u64,
    chunks: u64,
    generations: Vec<u32>,
    busy: Vec<bool>,
    seq_next: u64,
    rng: Rng,
    inflight: Vec<InFlight>,
    buf: Vec<u8>,
    done: Vec<Done>,
    hist_r: LatencyHistogram,
    hist_w: LatencyHistogram,
    verified: u64,
    bytes: u64,
    submitted: u64,
}

impl Worker<'_> {
    fn pick_chunk(&mut self) -> Option<u64> {
        let seq = matches!(self.cfg.workload, Workload::SeqRead | Workload::SeqWrite);
        for attempt in 0..(self.chunks.min(64) + 8) {
            let c = if seq || attempt > 8 {
                let c = self.seq_next % self.chunks;
                self.seq_next += 1;
                c
            } else {
                self.rng.below(self.chunks)
            };
            if !self.busy[c as usize] {
                return Some(c);
            }
        }
        (0..self.chunks).find(|&c| !self.busy[c as usize])
    }

    fn is_write(&mut self) -> bool {
        match self.cfg.workload {
            Workload::RandRead | Workload::SeqRead => false,
            Workload::RandWrite | Workload::SeqWrite => true,
            Workload::RandRw { read_pct } => self.rng.below(100) >= read_pct as u64,
        }
    }

    fn lba(&self, chunk: u64) -> u64 {
        (self.first_chunk + chunk) * (self.cfg.io_size / self.block_size) as u64
    }

    fn submit_one(&mut self, write: bool, chunk: u64) -> Result<()> {
        let cid = self.q.alloc()?;
        let lba = self.lba(chunk);
        let nlb = self.cfg.io_size / self.block_size;
        let mut generation = self.generations[chunk as usize];
        if write {
            generation = generation.wrapping_add(1).max(1);
            pattern::fill(&mut self.buf, self.cfg.seed, lba, generation);
            if let Err(e) = self.q.write_data(cid, 0, &self.buf) {
                self.q.release(cid);
                return Err(e);
            }
            self.generations[chunk as usize] = generation;
        }
        let payload = if write {
            Payload::Write(self.cfg.io_size)
        } else {
            Payload::Read(self.cfg.io_size)
        };
        let cmd = wire::read_write(0, write, self.nsid, lba, nlb);
        if let Err(e) = self.q.submit(cid, cmd, payload, self.cfg.sgl) {
            self.q.release(cid);
            return Err(e);
        }
        self.busy[chunk as usize] = true;
        self.inflight[cid as usize] = InFlight {
            write,
            chunk,
            generation,
        };
        self.submitted += 1;
        Ok(())
    }

    fn complete(&mut self, d: Done) -> Result<()> {
        let f = self.inflight[d.cid as usize];
        self.busy[f.chunk as usize] = false;
        let qid = self.q.qid();
        if !d.completion.status.is_success() {
            self.q.release(d.cid);
            return Err(InitiatorError::Nvme {
                qid,
                opcode: d.opcode,
                cid: d.cid,
                status: d.completion.status,
            });
        }
        if f.write {
            self.hist_w.record(d.latency);
        } else {
            self.hist_r.record(d.latency);
            if self.cfg.verify && f.generation != 0 {
                let r = self.q.read_data(d.cid, 0, &mut self.buf);
                if let Err(e) = r {
                    self.q.release(d.cid);
                    return Err(e);
                }
                let lba = self.lba(f.chunk);
                if let Some((offset, expected, got)) =
                    pattern::check(&self.buf, self.cfg.seed, lba, f.generation)
                {
                    self.q.release(d.cid);
                    return Err(InitiatorError::Verify {
                        lba,
                        offset,
                        expected,
                        got,
                    });
                }
                self.verified += 1;
            }
        }
        self.bytes += self.cfg.io_size as u64;
        self.q.release(d.cid);
        Ok(())
    }

    /// Run until `stop` is set / the deadline / the I/O budget; drains all
    /// outstanding I/Os before returning (unless the queue failed).
    fn run(
        &mut self,
        deadline: Instant,
        budget: u64,
        stop: &AtomicBool,
        force: Option<bool>,
    ) -> Result<()> {
        let qd = self.cfg.queue_depth.min(self.q.depth());
        loop {
            let stopping = stop.load(Ordering::Relaxed)
                || Instant::now() >= deadline
                || (budget > 0 && self.submitted >= budget);
            if !stopping {
                while self.q.outstanding() < qd && (budget == 0 || self.submitted < budget) {
                    let write = force.unwrap_or_else(|| self.is_write());
                    let Some(chunk) = self.pick_chunk() else {
                        break;
                    };
                    self.submit_one(write, chunk)?;
                }
            } else if self.q.outstanding() == 0 {
                return Ok(());
            }
            let mut done = std::mem::take(&mut self.done);
            let r = self.q.wait(&mut done, Duration::from_millis(50));
            let mut res = r.map(|_| ());
            for d in done.drain(..) {
                if res.is_ok() {
                    res = self.complete(d);
                } else {
                    self.q.release(d.cid);
                }
            }
            self.done = done;
            res?;
        }
    }
}

/// Connect to the target, run the workload on every I/O queue (one thread
/// each), and report. Connection failures are `Err`; I/O errors are listed
/// in the report (each stops its worker).
pub fn run_perf(cfg: &PerfConfig) -> Result<PerfReport> {
    let mut ctrl = Controller::connect(cfg.controller.clone())?;
    let ns = if cfg.nsid == 0 {
        *ctrl
            .namespaces()
            .first()
            .ok_or(InitiatorError::BadTargetData("no active namespace"))?
    } else {
        *ctrl
            .namespaces()
            .iter()
            .find(|n| n.nsid == cfg.nsid)
            .ok_or(InitiatorError::BadTargetData("namespace not found"))?
    };
    if cfg.io_size == 0 || cfg.io_size % ns.block_size != 0 {
        return Err(InitiatorError::Config(format!(
            "io_size {} is not a multiple of block size {}",
            cfg.io_size, ns.block_size
        )));
    }
    let mut queues = ctrl.take_io_queues();
    if queues.is_empty() {
        return Err(InitiatorError::Config("no I/O queues".into()));
    }
    if let Some(q) = queues.iter().find(|q| q.max_io_size() < cfg.io_size) {
        return Err(InitiatorError::TooLarge {
            qid: q.qid(),
            what: "io_size",
            value: cfg.io_size as u64,
            limit: q.max_io_size() as u64,
        });
    }
    let ns_bytes = ns.nsze * ns.block_size as u64;
    let region = if cfg.region_bytes == 0 {
        ns_bytes
    } else {
        cfg.region_bytes.min(ns_bytes)
    };
    let total_chunks = region / cfg.io_size as u64;
    let per_queue = total_chunks / queues.len() as u64;
    if per_queue < cfg.queue_depth as u64 || per_queue == 0 {
        return Err(InitiatorError::Config(format!(
            "region of {region} bytes has {total_chunks} chunks of {} B: fewer than queue_depth {} per queue",
            cfg.io_size, cfg.queue_depth
        )));
    }

    let stop = AtomicBool::new(false);
    let kato = cfg.controller.kato_ms;
    let results: Vec<(
        Result<()>,
        LatencyHistogram,
        LatencyHistogram,
        u64,
        u64,
        Duration,
    )> = std::thread::scope(|s| {
        let handles: Vec<_> = queues
            .iter_mut()
            .enumerate()
            .map(|(i, q)| {
                let stop = &stop;
                s.spawn(move || {
                    let depth = q.depth() as usize;
                    let mut w = Worker {
                        nsid: ns.nsid,
                        block_size: ns.block_size,
                        first_chunk: i as u64 * per_queue,
                        chunks: per_queue,
                        generations: vec![0; per_queue as usize],
                        busy: vec![false; per_queue as usize],
                        seq_next: 0,
                        rng: Rng::new(cfg.seed.wrapping_add(i as u64 * 7919)),
                        inflight: vec![InFlight::default(); depth],
                        buf: vec![0; cfg.io_size as usize],
                        done: Vec::with_capacity(depth),
                        hist_r: LatencyHistogram::new(),
                        hist_w: LatencyHistogram::new(),
                        verified: 0,
                        bytes: 0,
                        submitted: 0,
                        q,
                        cfg,
                    };
                    if cfg.prefill {
                        let far = Instant::now() + Duration::from_secs(3600);
                        let saved = w.seq_next;
                        let r = w.run(far, per_queue, stop, Some(true));
                        w.seq_next = saved;
                        if let Err(e) = r {
                            return (Err(e), w.hist_r, w.hist_w, 0, 0, Duration::ZERO);
                        }
                        w.hist_w = LatencyHistogram::new();
                        w.bytes = 0;
                        w.submitted = 0;
                    }
                    let budget = if cfg.io_limit == 0 {
                        0
                    } else {
                        cfg.io_limit
                            .div_ceil(cfg.controller.io_queues.max(1) as u64)
                    };
                    let t0 = Instant::now();
                    let r = w.run(t0 + cfg.duration, budget, stop, None);
                    let el = t0.elapsed();
                    if r.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    (r, w.hist_r, w.hist_w, w.verified, w.bytes, el)
                })
            })
            .collect();
        if kato > 0 {
            let period = Duration::from_millis((kato / 2).max(100) as u64);
            let mut next = Instant::now() + period;
            while !handles.iter().all(|h| h.is_finished()) {
                std::thread::sleep(Duration::from_millis(10));
                if Instant::now() >= next {
                    if let Err(e) = ctrl.keep_alive() {
                        tracing::warn!(error = %e, "keep alive failed");
                    }
                    next = Instant::now() + period;
                }
            }
        }
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    (
                        Err(InitiatorError::Config("worker panicked".into())),
                        LatencyHistogram::new(),
                        LatencyHistogram::new(),
                        0,
                        0,
                        Duration::ZERO,
                    )
                })
            })
            .collect()
    });

    let mut rep = PerfReport::default();
    let mut hr = LatencyHistogram::new();
    let mut hw = LatencyHistogram::new();
    for (r, a, b, verified, bytes, el) in results {
        if let Err(e) = r {
            rep.errors.push(e.to_string());
        }
        hr.merge(&a);
        hw.merge(&b);
        rep.verified += verified;
        rep.bytes += bytes;
        rep.elapsed = rep.elapsed.max(el);
    }
    rep.reads = hr.count();
    rep.writes = hw.count();
    rep.ios = rep.reads + rep.writes;
    let secs = rep.elapsed.as_secs_f64().max(1e-9);
    rep.iops = rep.ios as f64 / secs;
    rep.mib_per_s = rep.bytes as f64 / secs / (1024.0 * 1024.0);
    rep.read_latency = hr.summary();
    rep.write_latency = hw.summary();
    let mut all = hr;
    all.merge(&hw);
    rep.latency = all.summary();
    ctrl.return_io_queues(queues);
    if let Err(e) = ctrl.shutdown() {
        tracing::debug!(error = %e, "controller shutdown");
    }
    Ok(rep)
}
