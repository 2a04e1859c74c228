//! The one parser for byte sizes given on a command line (`--ram-ns`,
//! `perf --io-size`, `--region`, `--max-io-size`, the transport's size
//! options, …).
//!
//! Accepted: a whole number of bytes, optionally followed (with or without a
//! space, any letter case) by a unit: `B`; `K`, `KB`, `KiB`; `M`, `MB`,
//! `MiB`; `G`, `GB`, `GiB`; `T`, `TB`, `TiB`. Every unit is binary (`64MB` =
//! `64MiB` = 64 × 2^20 bytes), as SPDK and fio read them. Examples: `4096`,
//! `4k`, `64M`, `64MiB`, `64MB`, `1G`.

/// Why a size was refused. Clap prefixes it with the option
/// (`invalid value '64X' for '--ram-ns <SIZE>': …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No digits before the unit, or something that is not a number.
    #[error("{0:?} is not a size: expected a whole number with an optional unit (4096, 4k, 64M, 64MiB, 64MB, 1G)")]
    NotANumber(String),
    /// A unit this parser does not know.
    #[error(
        "{value:?} has unknown unit {unit:?}: expected B, K/KB/KiB, M/MB/MiB, G/GB/GiB or T/TB/TiB"
    )]
    UnknownUnit {
        /// The whole value given.
        value: String,
        /// The unit part.
        unit: String,
    },
    /// Zero where a size must be positive.
    #[error("{0:?} is zero; a size of at least 1 byte is needed")]
    Zero(String),
    /// More than the target type holds.
    #[error("{value:?} is too large (at most {max} bytes)")]
    TooLarge {
        /// The whole value given.
        value: String,
        /// The largest size accepted.
        max: u64,
    },
}

/// Parses a size in bytes; zero allowed.
pub fn parse_size_or_zero(value: &str) -> Result<u64, SizeError> {
    let s = value.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::NotANumber(value.to_string()));
    }
    let shift = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ if unit.starts_with(['.', ',']) => return Err(SizeError::NotANumber(value.to_string())),
        _ => {
            return Err(SizeError::UnknownUnit {
                value: value.to_string(),
                unit: unit.trim().to_string(),
            })
        }
    };
    let too_large = || SizeError::TooLarge {
        value: value.to_string(),
        max: u64::MAX,
    };
    let n: u64 = digits.parse().map_err(|_| too_large())?;
    n.checked_mul(1u64 << shift).ok_or_else(too_large)
}

/// Parses a size in bytes that must be at least 1.
pub fn parse_size(value: &str) -> Result<u64, SizeError> {
    match parse_size_or_zero(value)? {
        0 => Err(SizeError::Zero(value.to_string())),
        n => Ok(n),
    }
}

/// Parses a positive size that fits a `u32` (transport options, I/O sizes).
pub fn parse_size_u32(value: &str) -> Result<u32, SizeError> {
    u32::try_from(parse_size(value)?).map_err(|_| SizeError::TooLarge {
        value: value.to_string(),
        max: u64::from(u32::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_users_write() {
        for (s, want) in [
            ("4096", 4096u64),
            ("4096B", 4096),
            ("4k", 4 << 10),
            ("4K", 4 << 10),
            ("4KiB", 4 << 10),
            ("4kb", 4 << 10),
            ("64M", 64 << 20),
            ("64MiB", 64 << 20),
            ("64MB", 64 << 20),
            ("64 MiB", 64 << 20),
            (" 64mib ", 64 << 20),
            ("1G", 1 << 30),
            ("1GiB", 1 << 30),
            ("1gb", 1 << 30),
            ("2T", 2 << 40),
        ] {
            assert_eq!(parse_size(s), Ok(want), "{s:?}");
        }
        assert_eq!(parse_size_or_zero("0"), Ok(0));
        assert_eq!(parse_size_u32("128K"), Ok(128 << 10));
    }

    #[test]
    fn bad_sizes_are_named_errors() {
        assert_eq!(parse_size("0"), Err(SizeError::Zero("0".into())));
        assert_eq!(parse_size("0M"), Err(SizeError::Zero("0M".into())));
        for s in ["", "M", "x", "-1", "1.5G", "0x10"] {
            let e = parse_size(s).unwrap_err();
            assert!(
                matches!(e, SizeError::NotANumber(_) | SizeError::UnknownUnit { .. }),
                "{s:?}: {e:?}"
            );
            assert!(e.to_string().contains(&format!("{s:?}")), "{e}");
        }
        assert_eq!(
            parse_size("64X"),
            Err(SizeError::UnknownUnit {
                value: "64X".into(),
                unit: "X".into()
            })
        );
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(SizeError::TooLarge { .. })
        ));
        assert!(matches!(
            parse_size("16777216T"),
            Err(SizeError::TooLarge { .. })
        ));
        assert_eq!(
            parse_size_u32("4G"),
            Err(SizeError::TooLarge {
                value: "4G".into(),
                max: u64::from(u32::MAX)
            })
        );
    }
}
