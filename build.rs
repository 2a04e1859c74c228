//! Build script of the nvmf-rdma-rs crate.
//!
//! Today it only detects an SPDK tree: when `SPDK_DIR` names a directory with
//! `include/spdk/nvmf_transport.h`, the crate is compiled with `cfg(spdk)`,
//! which gates the SPDK plugin glue (`src/spdk/`, not written yet). Without
//! `SPDK_DIR` nothing SPDK-related is built and every other part of the crate
//! works unchanged. Bindings to SPDK's headers are generated here at build time
//! from the user's tree once the plugin exists; they are never committed.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=SPDK_DIR");
    println!("cargo:rustc-check-cfg=cfg(spdk)");
    let Some(dir) = std::env::var_os("SPDK_DIR") else {
        return;
    };
    let header = Path::new(&dir).join("include/spdk/nvmf_transport.h");
    if header.is_file() {
        println!("cargo:rustc-cfg=spdk");
        println!("cargo:rerun-if-changed={}", header.display());
    } else {
        println!(
            "cargo:warning=SPDK_DIR={} has no include/spdk/nvmf_transport.h: building without SPDK support",
            Path::new(&dir).display()
        );
    }
}
