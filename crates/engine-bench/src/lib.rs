//! No library: this package holds the engine's benchmarks
//! (`cargo bench -p nvmf-rdma-engine-bench --bench engine`), built against
//! `nvmf-rdma-engine` without its `sim` feature. See `docs/benchmarks.md`.
