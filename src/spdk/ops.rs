//! The `spdk_nvmf_transport_ops` table, its entry points and the load-time
//! constructor that registers it as `RDMA_RS` (transport type RDMA).
//!
//! Implemented: `opts_init`, `create`, `dump_opts`, `destroy`, `cdata_init`,
//! `listen` / `stop_listen` (refusing: the data path is not built yet), and
//! `poll_group_create` / `poll_group_poll` / `poll_group_destroy` for empty
//! groups (SPDK calls them unconditionally when the transport is added to the
//! target). Left NULL, which SPDK tolerates or never reaches while no qpair
//! can exist: `get_optimal_poll_group` (checked for NULL), `poll_group_add`,
//! `poll_group_remove`, `req_free`, `req_complete`, `qpair_fini`, the trid
//! getters, `listener_discover` (only for listeners, and none can be made),
//! `qpair_abort_request` and `poll_group_dump_stat` (both checked for NULL).
//! Every entry runs inside [`guard`].

use std::ffi::{c_char, c_int, c_void, CStr};

use super::api::{api, probe, Probe};
use super::guard::guard;
use super::json::write_named;
use super::objects::{RsPollGroup, RsTransport};
use super::opts::{decode_and_validate, init_defaults, rdma_dump_entries, write_back};
use super::sys;

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
        poll_group_create: Some(poll_group_create),
        poll_group_destroy: Some(poll_group_destroy),
        poll_group_poll: Some(poll_group_poll),
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
                write_back(&o, opts);
                let mut shown = o.dump_opts();
                shown.shift_remove("trtype");
                tracing::info!(
                    "RDMA_RS: transport created ({cores} cores): {}",
                    serde_json::Value::Object(shown)
                );
                RsTransport::into_raw(o)
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

/// `traddr:trsvcid` of a trid, for messages.
fn trid_text(trid: *const sys::spdk_nvme_transport_id) -> String {
    // SAFETY: SPDK passes a valid trid (or NULL) for the call.
    let Some(t) = (unsafe { trid.as_ref() }) else {
        return "?".to_string();
    };
    format!("{}:{}", c_chars(&t.traddr), c_chars(&t.trsvcid))
}

/// A fixed C char array as text, up to its NUL.
fn c_chars(a: &[c_char]) -> String {
    let bytes: Vec<u8> = a
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

unsafe extern "C" fn listen(
    _transport: *mut sys::spdk_nvmf_transport,
    trid: *const sys::spdk_nvme_transport_id,
    _opts: *mut sys::spdk_nvmf_listen_opts,
) -> c_int {
    guard("listen", -libc::EIO, || {
        tracing::error!(
            "RDMA_RS: cannot listen on {}: the RDMA_RS data path is not built yet (options, \
             config and logs only; use -t RDMA for I/O)",
            trid_text(trid)
        );
        -libc::ENOTSUP
    })
}

unsafe extern "C" fn stop_listen(
    _transport: *mut sys::spdk_nvmf_transport,
    trid: *const sys::spdk_nvme_transport_id,
) {
    guard("stop_listen", (), || {
        // `listen` never succeeds, so SPDK has no listener of ours to stop.
        tracing::debug!("RDMA_RS: stop_listen {}: no listener", trid_text(trid));
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

unsafe extern "C" fn poll_group_create(
    _transport: *mut sys::spdk_nvmf_transport,
    _group: *mut sys::spdk_nvmf_poll_group,
) -> *mut sys::spdk_nvmf_transport_poll_group {
    guard(
        "poll_group_create",
        std::ptr::null_mut(),
        RsPollGroup::into_raw,
    )
}

unsafe extern "C" fn poll_group_poll(group: *mut sys::spdk_nvmf_transport_poll_group) -> c_int {
    guard("poll_group_poll", -libc::EIO, || {
        let _ = group;
        0
    })
}

unsafe extern "C" fn poll_group_destroy(group: *mut sys::spdk_nvmf_transport_poll_group) {
    guard("poll_group_destroy", (), || {
        // SAFETY: SPDK destroys a poll group our `poll_group_create` returned.
        if unsafe { RsPollGroup::is_ours(group) } {
            // SAFETY: ours (checked); SPDK never uses it after destroy.
            unsafe { RsPollGroup::free(group) };
        } else if !group.is_null() {
            tracing::error!("RDMA_RS: poll_group_destroy of {group:p}, not an RDMA_RS poll group");
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
