//! Link librdmacm.so.1: node-only version script, SONAME, and libibverbs.so.1
//! as DT_NEEDED (the public ibv_* API binds to softrdma's libibverbs at run time).

use std::io::Write;

fn main() {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let map = out.join("librdmacm.map");
    // Only the version nodes are declared here; every symbol gets its version
    // from a `.symver` directive in `src/exports.rs` (see softrdma-scope §4.1).
    let mut f = std::fs::File::create(&map).expect("create version script");
    f.write_all(
        b"RDMACM_1.0 { };\nRDMACM_1.1 { } RDMACM_1.0;\nRDMACM_1.2 { } RDMACM_1.1;\nRDMACM_1.3 { } RDMACM_1.2;\n",
    )
    .expect("write version script");
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
        map.display()
    );
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librdmacm.so.1");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-lib=dylib=ibverbs");
    println!("cargo:rerun-if-changed=build.rs");
}
