//! The `spdk_nvmf_transport_ops` table, its entry points and the load-time
//! constructor that registers it as `RDMA_RS` (transport type RDMA).
//!
//! Every member upstream's RDMA transport implements: the transport-level
//! ones here (`opts_init`, `create`, `dump_opts`, `destroy`, `listen`,
//! `stop_listen`, `listener_discover`, `cdata_init`), the poll group, qpair and
//! request ones in `ops_data.rs`. Every entry runs inside [`guard`].

use std::ffi::{c_char, c_int, c_void, CStr};

use super::api::{api, probe, Probe};
use super::guard::guard;
use super::json::write_named;
use super::ops_data::*;
use super::opts::{decode_and_validate, init_defaults, rdma_dump_entries, write_back};
use super::sys;
use super::transport::RsTransport;
use super::trid::{fill_discovery_entry, trid_addr};
use crate::transport::Transport;

/// The name SPDK knows this transport by (`nvmf_create_transport -t RDMA_RS`).
#[cfg(not(feature = "link-mode"))]
pub(crate) const TRANSPORT_NAME: &CStr = c"RDMA_RS";
/// Link mode (spdk-patch/): upstream's name, in place of rdma.c.
#[cfg(feature = "link-mode")]
pub(crate) const TRANSPORT_NAME: &CStr = c"RDMA";
/// Said after the name in the registration line.
const REGISTERED_AS: &str = if cfg!(feature = "link-mode") {
    "(trtype RDMA, link mode: in place of SPDK's rdma.c)"
} else {
    "(trtype RDMA)"
};

/// The table, as SPDK copies it at registration.
fn ops_table() -> sys::spdk_nvmf_transport_ops {
    let mut ops = sys::spdk_nvmf_transport_ops {
        type_: sys::SPDK_NVME_TRANSPORT_RDMA,
        opts_init: Some(opts_init),
        create: Some(create),
        dump_opts: Some(dump_opts),
        destroy: Some(destroy),
        listen: Some(listen),
        stop_listen: Some(stop_listen),
        cdata_init: Some(cdata_init),
        listener_discover: Some(listener_discover),
        get_optimal_poll_group: Some(get_optimal_poll_group),
        poll_group_create: Some(poll_group_create),
        poll_group_destroy: Some(poll_group_destroy),
        poll_group_add: Some(poll_group_add),
        poll_group_remove: Some(poll_group_remove),
        poll_group_poll: Some(poll_group_poll),
        req_free: Some(req_free),
        req_complete: Some(req_complete),
        qpair_fini: Some(qpair_fini),
        qpair_get_peer_trid: Some(qpair_get_peer_trid),
        qpair_get_local_trid: Some(qpair_get_local_trid),
        qpair_get_listen_trid: Some(qpair_get_listen_trid),
        qpair_abort_request: Some(qpair_abort_request),
        poll_group_dump_stat: Some(super::stats::poll_group_dump_stat),
        ..Default::default()
    };
    for (dst, src) in ops.name.iter_mut().zip(TRANSPORT_NAME.to_bytes()) {
        *dst = *src as c_char;
    }
    ops
}

unsafe extern "C" fn opts_init(opts: *mut sys::spdk_nvmf_transport_opts) {
    guard("opts_init", (), || {
        // SAFETY: SPDK passes its opts struct, exclusively, for the call
        // (transport.c `spdk_nvmf_transport_opts_init`).
        if let Some(opts) = unsafe { opts.as_mut() } {
            init_defaults(opts);
        }
    })
}

unsafe extern "C" fn create(
    opts: *mut sys::spdk_nvmf_transport_opts,
) -> *mut sys::spdk_nvmf_transport {
    guard("create", std::ptr::null_mut(), || {
        let (Some(api), false) = (api(), opts.is_null()) else {
            return std::ptr::null_mut();
        };
        // SAFETY: SPDK passes its create context's opts, exclusively, for the
        // call (transport.c `_nvmf_transport_create_done`).
        let opts = unsafe { &mut *opts };
        // SAFETY: no arguments; SPDK's env is initialised before any RPC.
        let cores = unsafe { api.spdk_env_get_core_count() };
        // SAFETY: `transport_specific` is NULL or the RPC's parsed params,
        // alive during `create` (nvmf_rpc.c `rpc_nvmf_create_transport`).
        match unsafe { decode_and_validate(opts, cores) } {
            Ok((o, notices)) => {
                for n in &notices {
                    tracing::warn!("RDMA_RS: {n}");
                }
                if opts.zcopy {
                    tracing::warn!("RDMA_RS: zcopy true is not supported, using false");
                }
                let core = match Transport::create(o.clone(), cores) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!("RDMA_RS: nvmf_create_transport failed: {e}");
                        return std::ptr::null_mut();
                    }
                };
                // The core may have adjusted options to the devices (SGE limit).
                let o = core.options().clone();
                write_back(&o, opts);
                let mut shown = o.dump_opts();
                shown.shift_remove("trtype");
                tracing::info!(
                    "RDMA_RS: transport created ({cores} cores): {}",
                    serde_json::Value::Object(shown)
                );
                RsTransport::into_raw(o, core)
            }
            Err(e) => {
                tracing::error!("RDMA_RS: nvmf_create_transport refused: {e}");
                std::ptr::null_mut()
            }
        }
    })
}

unsafe extern "C" fn dump_opts(
    transport: *mut sys::spdk_nvmf_transport,
    w: *mut sys::spdk_json_write_ctx,
) {
    guard("dump_opts", (), || {
        let Some(api) = api() else { return };
        // SAFETY: SPDK passes a live transport of ours (made by `create`).
        let Some(t) = (unsafe { RsTransport::from_raw(transport) }) else {
            tracing::error!("RDMA_RS: dump_opts on a transport {transport:p} that is not RDMA_RS");
            return;
        };
        for (k, v) in rdma_dump_entries(&t.options) {
            // SAFETY: `w` is the writer SPDK passed, live for the call.
            unsafe { write_named(api, w, &k, &v) };
        }
    })
}

unsafe extern "C" fn destroy(
    transport: *mut sys::spdk_nvmf_transport,
    cb_fn: sys::spdk_nvmf_transport_destroy_done_cb,
    cb_arg: *mut c_void,
) {
    guard("destroy", (), || {
        // SAFETY: SPDK destroys a transport our `create` returned, once.
        if unsafe { RsTransport::from_raw(transport) }.is_some() {
            // SAFETY: ours (checked), and SPDK never uses it after destroy.
            unsafe { RsTransport::free(transport) };
            tracing::info!("RDMA_RS: transport {transport:p} destroyed");
        } else if !transport.is_null() {
            tracing::error!("RDMA_RS: destroy of a transport {transport:p} that is not RDMA_RS");
        }
    });
    // Outside the guard: SPDK's shutdown must go on even after a panic.
    if let Some(cb) = cb_fn {
        // SAFETY: SPDK's callback with its own argument, called once, as
        // upstream does at the end of destroy.
        unsafe { cb(cb_arg) };
    }
}

unsafe extern "C" fn listen(
    transport: *mut sys::spdk_nvmf_transport,
    trid: *const sys::spdk_nvme_transport_id,
    _opts: *mut sys::spdk_nvmf_listen_opts,
) -> c_int {
    guard("listen", -libc::EIO, || {
        // SAFETY: SPDK passes its live transport and the listener's trid.
        let (Some(t), Some(trid)) = (unsafe { RsTransport::from_raw(transport) }, unsafe {
            trid.as_ref()
        }) else {
            return -libc::EINVAL;
        };
        let addr = match trid_addr(trid) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("RDMA_RS: cannot listen: {e}");
                return -libc::EINVAL;
            }
        };
        match t.listen(addr, trid) {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("RDMA_RS: cannot listen on {addr}: {e}");
                -libc::EINVAL
            }
        }
    })
}

unsafe extern "C" fn stop_listen(
    transport: *mut sys::spdk_nvmf_transport,
    trid: *const sys::spdk_nvme_transport_id,
) {
    guard("stop_listen", (), || {
        // SAFETY: SPDK passes its live transport and the listener's trid.
        let (Some(t), Some(trid)) = (unsafe { RsTransport::from_raw(transport) }, unsafe {
            trid.as_ref()
        }) else {
            return;
        };
        match trid_addr(trid) {
            Ok(addr) => {
                if !t.stop_listen(addr) {
                    tracing::warn!("RDMA_RS: stop_listen {addr}: not listening there");
                }
            }
            Err(e) => tracing::error!("RDMA_RS: stop_listen: {e}"),
        }
    })
}

unsafe extern "C" fn listener_discover(
    _transport: *mut sys::spdk_nvmf_transport,
    trid: *mut sys::spdk_nvme_transport_id,
    entry: *mut sys::spdk_nvmf_discovery_log_page_entry,
) {
    guard("listener_discover", (), || {
        // SAFETY: SPDK passes the listener's trid and the entry to fill,
        // exclusively, for the call.
        if let (Some(trid), Some(entry)) = (unsafe { trid.as_ref() }, unsafe { entry.as_mut() }) {
            fill_discovery_entry(trid, entry);
        }
    })
}

unsafe extern "C" fn cdata_init(
    transport: *mut sys::spdk_nvmf_transport,
    _subsystem: *mut sys::spdk_nvmf_subsystem,
    cdata: *mut sys::spdk_nvmf_ctrlr_data,
) {
    guard("cdata_init", (), || {
        // SAFETY: SPDK passes a live transport of ours and its cdata,
        // exclusively, for the call (ctrlr.c `nvmf_ctrlr_cdata_init`).
        let (Some(t), Some(cdata)) = (unsafe { RsTransport::from_raw(transport) }, unsafe {
            cdata.as_mut()
        }) else {
            return;
        };
        let c = t.options.cdata();
        cdata.nvmf_specific.msdbd = c.msdbd;
        if t.options.dif_insert_or_strip {
            cdata.nvmf_specific.ioccsz = c.ioccsz;
        }
        if c.large_icd_warning {
            tracing::warn!(
                "RDMA_RS: in_capsule_data_size {} above 4096 can corrupt writes from Linux \
                 hosts 5.4 to 5.12 that are not a multiple of 4 KiB",
                t.options.in_capsule_data_size
            );
        }
    })
}

/// Runs at load in every process the library is loaded into.
extern "C" fn register_at_load() {
    guard("load", (), || match probe() {
        Probe::NotSpdk => crate::ffi::set_spdk_status(crate::ffi::NvmfRdmaRsSpdkStatus::NoSpdk),
        Probe::Missing(names) => {
            crate::ffi::set_spdk_status(crate::ffi::NvmfRdmaRsSpdkStatus::MissingSymbols);
            eprintln!(
                "nvmf-rdma-rs: RDMA_RS not registered: SPDK lacks {}",
                names.join(", ")
            );
        }
        Probe::Ready(api) => {
            super::log::install(api);
            let ops = ops_table();
            // SAFETY: SPDK copies the table by value (transport.c
            // `spdk_nvmf_transport_register`); the entries are our functions.
            unsafe { api.spdk_nvmf_transport_register(&ops) };
            crate::ffi::set_spdk_status(crate::ffi::NvmfRdmaRsSpdkStatus::Registered);
            // SPDK's print level is still 0 (errors only) while constructors
            // run, so spdk_log would drop this line: stderr, the log of an
            // SPDK app at this point.
            eprintln!(
                "nvmf-rdma-rs: registered NVMe-oF transport {} {REGISTERED_AS}",
                TRANSPORT_NAME.to_string_lossy()
            );
            super::trace::register(api);
        }
    })
}

/// The ELF constructor (what `SPDK_NVMF_TRANSPORT_REGISTER` expands to in C).
#[used]
#[link_section = ".init_array"]
static REGISTER_AT_LOAD: extern "C" fn() = register_at_load;
