//! Runs the callgrind measurement: each target's `nvmf_tgt` in interrupt
//! mode under `valgrind --tool=callgrind`; a short and a long run of 4 KiB
//! I/Os from this project's initiator (`--ios`), a callgrind dump after
//! each; the transport's self cost (its code and the verbs libraries) of
//! the long dump minus the short one, divided by the I/O difference, is its
//! cost per I/O (connection set-up and teardown cancel out; interrupt mode
//! keeps idle polling out, so the figure does not depend on wall time). The
//! target serves only an aio bdev on a file in /dev/shm: SPDK's aio bdev
//! sleeps in interrupt mode, while malloc and null bdevs have period-0
//! pollers that keep the reactor spinning, so whole-`nvmf_tgt` figures
//! would follow wall time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::child::Proc;
use crate::env::{Env, TargetSpec};
use crate::icount::{annotate, calls_to, in_transport, parse_annotate, transport_cost, Icount};
use crate::target::{StartError, Target, TargetConfig, NQN_AIO};

/// Size of the aio bdev's file in /dev/shm (sparse).
const AIO_FILE_BYTES: u64 = 64 << 20;
/// I/Os of the short and the long run.
const SHORT_IOS: u64 = 500;
const LONG_IOS: u64 = 4500;

/// Measures every target for 4 KiB randread and randwrite.
pub fn run(env: &Env, targets: &[TargetSpec], progress: &mut dyn FnMut(&str)) -> Vec<Icount> {
    let mut out = Vec::new();
    if Command::new("valgrind").arg("--version").output().is_err() {
        for t in targets {
            out.push(skipped(
                t,
                "4k randread",
                "valgrind is not installed".into(),
            ));
        }
        return out;
    }
    for spec in targets {
        for wl in ["randread", "randwrite"] {
            let name = format!("4k {wl}");
            let r = measure(env, spec, wl).unwrap_or_else(|why| skipped(spec, &name, why));
            progress(&format!(
                "callgrind {} {name}: {}",
                spec.label,
                match &r.skipped {
                    Some(s) => format!("skipped: {}", s.lines().next().unwrap_or("")),
                    None => format!("{:.0} Ir per I/O", r.ir_per_io),
                }
            ));
            out.push(r);
        }
    }
    out
}

fn skipped(t: &TargetSpec, wl: &str, why: String) -> Icount {
    Icount {
        target: t.label.clone(),
        workload: wl.into(),
        ios: 0,
        transport_ir: 0,
        ir_per_io: 0.0,
        own_per_io: 0.0,
        verbs_per_io: 0.0,
        total_per_io: 0.0,
        wakeups_per_io: 0.0,
        top: vec![],
        skipped: Some(why),
    }
}

fn measure(env: &Env, spec: &TargetSpec, wl: &str) -> Result<Icount, String> {
    let cg_dir = env
        .scratch(&format!("callgrind-{}-{wl}", spec.label))
        .map_err(|e| e.to_string())?;
    let out_file = cg_dir.join("callgrind.out");
    // The aio bdev sleeps in interrupt mode (malloc and null bdevs have period-0 pollers that
    // would keep the reactor spinning): its file lives in memory, in /dev/shm.
    let img = AioFile::create(&format!("{}-{wl}", spec.label))?;
    let cfg = TargetConfig {
        mask: "0x1".into(),
        wrapper: vec![
            "valgrind".into(),
            "--tool=callgrind".into(),
            format!("--callgrind-out-file={}", out_file.display()),
            "--collect-atstart=yes".into(),
        ],
        extra_args: vec!["--interrupt-mode".into()],
        start_timeout: Some(Duration::from_secs(240)),
        aio_file: Some(img.0.clone()),
        ..TargetConfig::default()
    };
    let mut t = Target::start(env, spec, &cfg).map_err(|e| match e {
        StartError::ListenRefused(r) => format!("listener refused: {r}"),
        e => e.to_string(),
    })?;
    let pid = t.proc.pid();
    let result = (|| {
        io_run(env, &t, wl, 50, &cg_dir.join("warm.log"))?;
        control(pid, "-z")?;
        io_run(env, &t, wl, SHORT_IOS, &cg_dir.join("short.log"))?;
        control(pid, "-d")?;
        io_run(env, &t, wl, LONG_IOS, &cg_dir.join("long.log"))?;
        control(pid, "-d")?;
        Ok::<(), String>(())
    })();
    t.stop(Duration::from_secs(60));
    result?;
    let dumps = dump_files(&out_file);
    if dumps.len() < 2 {
        return Err(format!(
            "expected 2 callgrind dumps next to {}, found {}",
            out_file.display(),
            dumps.len()
        ));
    }
    let wakeups = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|d| calls_to(&d, "epoll_wait"))
            .map_err(|e| format!("read {}: {e}", p.display()))
    };
    let (wake_s, wake_l) = (wakeups(&dumps[0])?, wakeups(&dumps[1])?);
    let (short, short_total) = parse_annotate(&annotate(&dumps[0])?);
    let (long, long_total) = parse_annotate(&annotate(&dumps[1])?);
    let ours = spec.is_ours();
    let ios = LONG_IOS - SHORT_IOS;
    let (own_l, verbs_l) = transport_cost(&long, ours);
    let (own_s, verbs_s) = transport_cost(&short, ours);
    let own = own_l.saturating_sub(own_s);
    let verbs = verbs_l.saturating_sub(verbs_s);
    let ir = own + verbs;
    let mut top: Vec<(String, f64)> = long
        .iter()
        .filter(|r| in_transport(r, ours))
        .map(|r| {
            let before = short.iter().find(|s| s.func == r.func).map_or(0, |s| s.ir);
            (
                r.func.clone(),
                r.ir.saturating_sub(before) as f64 / ios as f64,
            )
        })
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.truncate(10);
    Ok(Icount {
        target: spec.label.clone(),
        workload: format!("4k {wl}"),
        ios,
        transport_ir: ir,
        ir_per_io: ir as f64 / ios as f64,
        own_per_io: own as f64 / ios as f64,
        verbs_per_io: verbs as f64 / ios as f64,
        total_per_io: long_total.saturating_sub(short_total) as f64 / ios as f64,
        wakeups_per_io: wake_l.saturating_sub(wake_s) as f64 / ios as f64,
        top,
        skipped: None,
    })
}

/// The aio bdev's file in /dev/shm, removed on drop.
struct AioFile(PathBuf);

impl AioFile {
    fn create(tag: &str) -> Result<AioFile, String> {
        let p = PathBuf::from(format!(
            "/dev/shm/nvmf-rdma-compare-{}-{tag}.img",
            std::process::id()
        ));
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(AIO_FILE_BYTES))
            .map_err(|e| format!("aio bdev file {}: {e}", p.display()))?;
        Ok(AioFile(p))
    }
}

impl Drop for AioFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `callgrind.out.<n>` dump files, in dump order.
fn dump_files(out_file: &Path) -> Vec<PathBuf> {
    let dir = out_file.parent().unwrap_or(Path::new("."));
    let stem = out_file
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut v: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let k: u32 = n.strip_prefix(&format!("{stem}."))?.parse().ok()?;
                    Some((k, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

fn control(pid: u32, op: &str) -> Result<(), String> {
    let o = Command::new("callgrind_control")
        .arg(op)
        .arg(pid.to_string())
        .output()
        .map_err(|e| format!("callgrind_control: {e}"))?;
    if o.status.success() {
        // A dump is written asynchronously by the next instrumented block.
        std::thread::sleep(Duration::from_secs(2));
        Ok(())
    } else {
        Err(format!(
            "callgrind_control {op} {pid}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// `n` 4 KiB I/Os at QD 8 from this project's initiator.
fn io_run(env: &Env, t: &Target, wl: &str, n: u64, log: &Path) -> Result<(), String> {
    let mut cmd = Command::new(&env.initiator);
    cmd.args([
        "perf",
        "--addr",
        &format!("127.0.0.1:{}", t.port),
        "--nqn",
        NQN_AIO,
    ])
    .args([
        "--workload",
        wl,
        "--io-size",
        "4096",
        "-q",
        "8",
        "--time",
        "600",
    ])
    .args([
        "--ios",
        &n.to_string(),
        "--command-timeout-ms",
        "60000",
        "--connect-timeout-ms",
        "60000",
    ])
    .env("LD_LIBRARY_PATH", &env.softrdma)
    .env("SOFTRDMA_SHM_DIR", &t.shm)
    .env("SOFTRDMA_QUIET", "1")
    .env("NVMF_RDMA_RS_LOG", "warn");
    let mut p = Proc::spawn("nvmf-rdma-rs perf", cmd, log).map_err(|e| e.to_string())?;
    match p.wait_for(Duration::from_secs(300)) {
        Some(e) if e.success() => Ok(()),
        Some(e) => Err(format!("{n} I/Os under callgrind: {e}: {}", p.log_tail(2))),
        None => Err(format!("{n} I/Os under callgrind did not finish in 300 s")),
    }
}
