//! Build script of the nvmf-rdma-rs crate.
//!
//! When `SPDK_DIR` names an SPDK tree (one with `include/spdk/nvmf_transport.h`),
//! it generates Rust bindings to SPDK's public headers with bindgen into
//! `OUT_DIR/spdk_bindings.rs` (never committed) and compiles the crate with
//! `cfg(spdk)`, which turns on the SPDK plugin glue in `src/spdk/`. Without
//! `SPDK_DIR` nothing SPDK-related is built, every other part of the crate
//! works unchanged, and the build prints one line saying so.
//!
//! The bindings are generated, never written by hand, so the same source builds
//! against SPDK releases whose struct layouts differ; bindgen's layout tests
//! check them against the C compiler. SPDK's *functions* are bound in bindgen's
//! dynamic-library form (a struct of function pointers filled by `dlsym`), so
//! the library has no undefined SPDK symbol and loads into any process
//! (docs/spdk-plugin.md, "Loading").
//!
//! No C code is compiled: everything the glue needs today (the inline helpers
//! included) is expressible in Rust.
use std::path::{Path, PathBuf};

/// SPDK types the glue uses (the transport ops table and everything it hands
/// out, JSON, logging, tracing, threads and memory maps). Types they reference
/// are pulled in by bindgen.
const TYPES: &[&str] = &[
    "spdk_nvmf_transport_ops",
    "spdk_nvmf_transport",
    "spdk_nvmf_transport_opts",
    "spdk_nvmf_transport_poll_group",
    "spdk_nvmf_poll_group",
    "spdk_nvmf_request",
    "spdk_nvmf_qpair",
    "spdk_nvmf_qpair_state",
    "spdk_nvmf_ctrlr_data",
    "spdk_nvmf_discovery_log_page_entry",
    "spdk_nvme_transport_id",
    "spdk_nvme_transport_type",
    "spdk_json_val",
    "spdk_json_val_type",
    "spdk_json_write_ctx",
    "spdk_log_level",
    "spdk_log_flag",
    "spdk_trace_tpoint_opts",
    "spdk_thread",
    "spdk_poller",
    "spdk_mem_map",
    "spdk_mem_map_ops",
    "spdk_mem_map_notify_action",
    "spdk_nvmf_listen_opts",
    "spdk_interrupt",
    "spdk_nvme_data_transfer",
    "spdk_nvmf_trtype",
    "spdk_nvmf_treq_secure_channel",
    "spdk_nvmf_rdma_qptype",
    "spdk_nvmf_rdma_prtype",
    "spdk_nvmf_rdma_cms",
];

/// SPDK functions the glue calls. Each is resolved at run time; the plugin
/// registers only when every one of them resolved. The list is also emitted as
/// `NEEDED_SYMBOLS` so the loader can name the missing ones.
const FUNCTIONS: &[&str] = &[
    "spdk_nvmf_transport_register",
    "spdk_env_get_core_count",
    "spdk_log",
    "spdk_log_register_flag",
    "spdk_json_write_named_bool",
    "spdk_json_write_named_int64",
    "spdk_json_write_named_uint64",
    // The data path (qpairs, requests, buffers, memory maps, threads).
    "spdk_nvmf_tgt_new_qpair",
    "spdk_nvmf_qpair_disconnect",
    "spdk_nvmf_request_exec",
    "spdk_nvmf_request_complete",
    "spdk_nvmf_request_get_buffers",
    "spdk_nvmf_request_free_buffers",
    "spdk_nvmf_request_get_bdev",
    "spdk_nvmf_bdev_ctrlr_abort_cmd",
    "spdk_get_thread",
    "spdk_thread_send_msg",
    "spdk_poller_register_named",
    "spdk_poller_unregister",
    "spdk_interrupt_mode_is_enabled",
    "spdk_interrupt_register",
    "spdk_interrupt_unregister",
    "spdk_mem_map_alloc",
    "spdk_mem_map_free",
    "spdk_mem_map_set_translation",
    "spdk_mem_map_clear_translation",
    "spdk_mem_map_translate",
    // Receive and completion buffers (src/spdk/dma.rs).
    "spdk_zmalloc",
    "spdk_free",
];

/// SPDK types of the trace group (`src/spdk/trace.rs`): the trace file whose
/// tpoint mask is checked before recording, and the group registration.
/// v26.05 moved the mask and the tables into sections (`spdk_trace_section_*`,
/// absent before: no match is fine).
const TRACE_TYPES: &[&str] = &[
    "spdk_trace_file",
    "spdk_trace_register_fn",
    "spdk_trace_tpoint",
    "spdk_trace_object",
    "spdk_trace_section_.*",
];

/// Trace limits the trace group's unit tests check its ids against, and the
/// `spdk_zmalloc` flags of `src/spdk/dma.rs`.
const TRACE_VARS: &[&str] = &[
    "SPDK_TRACE_MAX_.*",
    "SPDK_MALLOC_DMA",
    "SPDK_ENV_NUMA_ID_ANY",
];

/// SPDK functions of the trace group (`src/spdk/trace.rs`) and the
/// `poll_group_dump_stat` writer (`src/spdk/stats.rs`); required like
/// `FUNCTIONS`.
const TRACE_AND_STATS_FUNCTIONS: &[&str] = &[
    "spdk_trace_add_register_fn",
    "spdk_trace_get_first_register_fn",
    "spdk_trace_get_next_register_fn",
    "spdk_trace_register_object",
    "spdk_trace_register_description_ext",
    "spdk_trace_tpoint_register_relation",
    "_spdk_trace_record",
    "spdk_json_write_named_string",
    "spdk_json_write_named_array_begin",
    "spdk_json_write_array_end",
    "spdk_json_write_object_begin",
    "spdk_json_write_object_end",
    "spdk_get_ticks_hz",
    // The core's clock (src/spdk/clock.rs).
    "spdk_get_ticks",
];

/// NVMe spec types bindgen cannot lay out (bitfields inside packed unions:
/// its layout tests fail for them) and that the glue never looks inside: they
/// become opaque blobs of the right size and alignment. The glue reads a
/// command or completion as bytes through the engine's codec.
const OPAQUE: &[&str] = &[
    "spdk_nvme_cmd",
    "spdk_nvme_cpl",
    "spdk_nvme_cmd_cdw.*",
    "spdk_nvme_feat_.*",
    "spdk_nvme_cdata_oacs",
    "spdk_nvme_cdata_sgls",
    "spdk_nvmf_fabric_.*",
    "nvmf_h2c_msg",
    "nvmf_c2h_msg",
];

/// Unions of one `uint16_t raw` and bitfields that sit inside the *packed*
/// `spdk_nvmf_transport_opts`: Rust refuses an aligned (or opaque-aligned)
/// type inside a packed one, so they are bound as their `raw` member. The
/// layout tests of the structs holding them still check size and offsets.
const RAW_U16_UNIONS: &[&str] = &["spdk_nvme_cdata_oncs", "spdk_nvme_cdata_fuses"];

/// The public headers the bindings are generated from.
const HEADERS: &[&str] = &[
    "spdk/stdinc.h",
    "spdk/nvmf_transport.h",
    "spdk/nvmf.h",
    "spdk/json.h",
    "spdk/log.h",
    "spdk/trace.h",
    "spdk/thread.h",
    "spdk/env.h",
    "spdk/nvmf_cmd.h",
];

fn main() {
    println!("cargo:rerun-if-env-changed=SPDK_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-check-cfg=cfg(spdk)");
    println!("cargo:rustc-check-cfg=cfg(spdk_buf_cache_union)");
    println!("cargo:rustc-check-cfg=cfg(spdk_trace_sections)");
    let Some(dir) = std::env::var_os("SPDK_DIR") else {
        println!(
            "cargo:warning=SPDK_DIR not set: the SPDK plugin glue (src/spdk/) was not built (see docs/spdk-plugin.md)"
        );
        refuse_link_mode_without_glue();
        return;
    };
    let dir = PathBuf::from(dir);
    let include = dir.join("include");
    let probe = include.join("spdk/nvmf_transport.h");
    if !probe.is_file() {
        println!(
            "cargo:warning=SPDK_DIR={} has no include/spdk/nvmf_transport.h: the SPDK plugin glue (src/spdk/) was not built",
            dir.display()
        );
        refuse_link_mode_without_glue();
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    generate_bindings(&include, &out);
    println!("cargo:rustc-cfg=spdk");
}

/// The `link-mode` feature builds the library that replaces SPDK's rdma.c
/// (spdk-patch/): without the glue it would register no transport at all, so
/// the build stops instead.
fn refuse_link_mode_without_glue() {
    if std::env::var_os("CARGO_FEATURE_LINK_MODE").is_some() {
        panic!(
            "the link-mode feature needs SPDK_DIR naming an SPDK tree: without the SPDK glue \
             the library would register no RDMA transport (spdk-patch/README.md)"
        );
    }
}

fn generate_bindings(include: &Path, out: &Path) {
    let wrapper: String = HEADERS
        .iter()
        .map(|h| format!("#include <{h}>\n"))
        .collect();
    for h in HEADERS {
        println!("cargo:rerun-if-changed={}", include.join(h).display());
    }
    let mut builder = bindgen::Builder::default()
        .header_contents("nvmf_rdma_rs_spdk.h", &wrapper)
        .clang_arg(format!("-I{}", include.display()))
        .layout_tests(true)
        .derive_default(true)
        .derive_debug(false)
        .generate_comments(false)
        .prepend_enum_name(false)
        .dynamic_library_name("SpdkApi")
        .dynamic_link_require_all(true)
        .allowlist_recursively(true);
    for t in TYPES.iter().chain(TRACE_TYPES) {
        builder = builder.allowlist_type(t);
    }
    for v in TRACE_VARS {
        builder = builder.allowlist_var(v);
    }
    for t in OPAQUE {
        builder = builder.opaque_type(t);
    }
    for t in RAW_U16_UNIONS {
        builder = builder
            .blocklist_type(t)
            .raw_line(format!(
                "/// `union {t}` bound as its `uint16_t raw` member (build.rs)."
            ))
            .raw_line(format!("pub type {t} = u16;"));
    }
    for f in FUNCTIONS.iter().chain(TRACE_AND_STATS_FUNCTIONS) {
        builder = builder.allowlist_function(f);
    }
    let bindings = builder
        .generate()
        .unwrap_or_else(|e| panic!("bindgen over {} failed: {e}", include.display()));
    bindings
        .write_to_file(out.join("spdk_bindings.rs"))
        .expect("write OUT_DIR/spdk_bindings.rs");
    // Layout differences between releases the glue must spell differently
    // (read off the generated bindings, never assumed from a version):
    // v26.05 puts `buf_cache_size` in an anonymous union.
    let text = bindings.to_string();
    if text.contains("pub union spdk_nvmf_transport_opts__bindgen_ty_1") {
        println!("cargo:rustc-cfg=spdk_buf_cache_union");
    }
    // v26.05 splits the trace file into sections (src/spdk/trace_file.rs).
    if text.contains("pub struct spdk_trace_section_tpoint_mask") {
        println!("cargo:rustc-cfg=spdk_trace_sections");
    }
    let names: String = FUNCTIONS
        .iter()
        .chain(TRACE_AND_STATS_FUNCTIONS)
        .map(|f| format!("    \"{f}\",\n"))
        .collect();
    std::fs::write(
        out.join("spdk_symbols.rs"),
        format!(
            "/// Every SPDK function the glue calls (build.rs `FUNCTIONS`).\n\
             pub const NEEDED_SYMBOLS: &[&str] = &[\n{names}];\n"
        ),
    )
    .expect("write OUT_DIR/spdk_symbols.rs");
}
