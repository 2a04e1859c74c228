//! `include/nvmf_rdma_rs.h` is what cbindgen generates from `src/ffi.rs`
//! (the library's C exports) with `cbindgen.toml`. The test fails when the
//! committed header is stale; `NVMF_RDMA_RS_BLESS=1` rewrites it.

use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_c_header_is_current() {
    let config = cbindgen::Config::from_file(repo().join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(repo().join("src/ffi.rs"))
        .generate()
        .expect("cbindgen over src/ffi.rs");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("cbindgen writes UTF-8");
    assert!(
        generated.contains("nvmf_rdma_rs_spdk_status")
            && generated.contains("nvmf_rdma_rs_version"),
        "cbindgen output lacks the exports:\n{generated}"
    );
    let path = repo().join("include/nvmf_rdma_rs.h");
    if std::env::var_os("NVMF_RDMA_RS_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("writing include/nvmf_rdma_rs.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/nvmf_rdma_rs.h is stale: regenerate it with \
         `NVMF_RDMA_RS_BLESS=1 cargo test --test c_header`.\nExpected:\n{generated}"
    );
}
