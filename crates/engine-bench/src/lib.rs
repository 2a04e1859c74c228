//! This package holds the engine's benchmarks
//! (`cargo bench -p nvmf-rdma-engine-bench --bench engine`), built against
//! `nvmf-rdma-engine` without its `sim` feature, and the one helper the
//! engine and transport benches share (`benches/transport.rs` of the main
//! crate uses it as a dev-dependency). See `docs/benchmarks.md`.

/// Parses a fixed-count spec `<scenario>:<ios>` (the value of the bench's
/// environment variable `var`, named in the panic messages) against the
/// scenarios `all`, named by `name`. Panics with the variable and the value
/// on a malformed spec or an unknown scenario: a bench run, not a service.
pub fn parse_count<S: Copy>(
    var: &str,
    spec: &str,
    all: &[S],
    name: impl Fn(S) -> &'static str,
) -> (S, u64) {
    let (n, ios) = spec
        .split_once(':')
        .and_then(|(n, c)| Some((n, c.parse::<u64>().ok()?)))
        .unwrap_or_else(|| panic!("{var}={spec:?}: expected <scenario>:<ios>"));
    let sc = all
        .iter()
        .copied()
        .find(|&sc| name(sc) == n)
        .unwrap_or_else(|| panic!("{var}: unknown scenario {n:?}"));
    (sc, ios)
}

#[cfg(test)]
mod tests {
    use super::parse_count;

    #[test]
    fn parses_and_refuses() {
        let all = [1u8, 2];
        let name = |s: u8| if s == 1 { "one" } else { "two" };
        assert_eq!(parse_count("X", "two:5", &all, name), (2, 5));
        assert!(std::panic::catch_unwind(|| parse_count("X", "two", &all, name)).is_err());
        assert!(std::panic::catch_unwind(|| parse_count("X", "three:1", &all, name)).is_err());
    }
}
