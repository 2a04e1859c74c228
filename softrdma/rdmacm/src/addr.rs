//! IP addresses, abstract UNIX socket names keyed by IP:port, and port reservation rules.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Errors turning a C `sockaddr` into an address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrError {
    /// NULL address pointer.
    #[error("NULL address")]
    Null,
    /// A family other than AF_INET / AF_INET6 (AF_IB is not supported).
    #[error("unsupported address family {0}")]
    Family(i32),
}

/// The name namespace: the effective uid, plus a hash of the fabric directory when one is
/// chosen with `SOFTRDMA_SHM_DIR` (separate softrdma fabrics never see each other's CM).
pub fn namespace(euid: u32, shm_dir: Option<&str>) -> String {
    match shm_dir {
        None | Some("") => euid.to_string(),
        Some(d) => {
            // FNV-1a, 64 bit.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in d.as_bytes() {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            format!("{euid}-{h:016x}")
        }
    }
}

/// Which kind of abstract name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// Port reservation held from `rdma_bind_addr` until the id is destroyed.
    Bind,
    /// Listening socket created by `rdma_listen`.
    Listen,
}

/// The abstract socket name (without the leading NUL) for `ps`/`addr`.
pub fn socket_name(ns: &str, kind: NameKind, ps: u32, addr: &SocketAddr) -> String {
    let k = match kind {
        NameKind::Bind => "bind",
        NameKind::Listen => "cm",
    };
    format!(
        "softrdma/{ns}/{k}/{ps:x}/{}/{}",
        canonical_ip(&addr.ip()),
        addr.port()
    )
}

/// Canonical text form of an IP; IPv4-mapped IPv6 addresses become IPv4.
pub fn canonical_ip(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// The listener names a connect to `dst` tries, most specific first: the exact address,
/// the wildcard of its family, then the IPv6 wildcard for IPv4 (dual-stack listeners).
pub fn connect_candidates(dst: &SocketAddr) -> Vec<SocketAddr> {
    let port = dst.port();
    let mut v = vec![*dst];
    match dst.ip() {
        IpAddr::V4(_) => {
            v.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
            v.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                v[0] = SocketAddr::new(IpAddr::V4(v4), port);
                v.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
            }
            v.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
        }
    }
    v
}

/// True if binding `new` conflicts with an existing reservation `old` of the same port
/// (TCP rules: equal addresses, or either side a wildcard of a compatible family).
pub fn conflicts(new: &IpAddr, old: &IpAddr) -> bool {
    if new == old {
        return true;
    }
    let fam_compatible = |wild: &IpAddr, other: &IpAddr| match (wild, other) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), _) => true,
        (IpAddr::V4(_), IpAddr::V6(o)) => o.to_ipv4_mapped().is_some() || o.is_unspecified(),
    };
    (new.is_unspecified() && fam_compatible(new, old))
        || (old.is_unspecified() && fam_compatible(old, new))
}

/// Parse the reservations of port `port` in space `ps` out of `/proc/net/unix` text.
pub fn reservations_in(proc_net_unix: &str, ns: &str, ps: u32, port: u16) -> Vec<IpAddr> {
    let prefix = format!("@softrdma/{ns}/bind/{ps:x}/");
    let suffix = format!("/{port}");
    proc_net_unix
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|name| name.strip_prefix(&prefix))
        .filter_map(|rest| rest.strip_suffix(&suffix))
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

/// True for an IPv4-mapped IPv6 socket address (`::ffff:a.b.c.d`).
pub fn is_v4_mapped(a: &SocketAddr) -> bool {
    matches!(a.ip(), IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

/// Write `addr` into a C `sockaddr_storage`; returns the length used.
pub fn to_storage(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    // Start from all-zero bytes so padding and sin_zero are clean.
    *out = zeroed_storage();
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            let bytes = sockaddr_bytes_v4(&sin);
            storage_bytes_mut(out)[..bytes.len()].copy_from_slice(&bytes);
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            let bytes = sockaddr_bytes_v6(&sin6);
            storage_bytes_mut(out)[..bytes.len()].copy_from_slice(&bytes);
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Read an address out of a `sockaddr_storage` (AF_INET / AF_INET6 only).
pub fn from_storage(s: &libc::sockaddr_storage) -> Result<SocketAddr, AddrError> {
    let b = storage_bytes(s);
    let family = i32::from(u16::from_ne_bytes([b[0], b[1]]));
    let port = u16::from_be_bytes([b[2], b[3]]);
    match family {
        libc::AF_INET => {
            let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            Ok(SocketAddr::new(IpAddr::V4(ip), port))
        }
        libc::AF_INET6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[8..24]);
            let scope = u32::from_ne_bytes([b[24], b[25], b[26], b[27]]);
            let flow = u32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
            Ok(SocketAddr::V6(std::net::SocketAddrV6::new(
                Ipv6Addr::from(o),
                port,
                flow,
                scope,
            )))
        }
        f => Err(AddrError::Family(f)),
    }
}

/// An all-zero `sockaddr_storage`.
pub fn zeroed_storage() -> libc::sockaddr_storage {
    let bytes = [0u8; std::mem::size_of::<libc::sockaddr_storage>()];
    storage_from_bytes(&bytes)
}

fn storage_from_bytes(bytes: &[u8; 128]) -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain data; all-zero bytes are a valid value.
    let mut s: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    storage_bytes_mut(&mut s).copy_from_slice(bytes);
    s
}

fn storage_bytes(s: &libc::sockaddr_storage) -> &[u8; 128] {
    const _: () = assert!(std::mem::size_of::<libc::sockaddr_storage>() == 128);
    // SAFETY: sockaddr_storage is 128 bytes of plain data (asserted above) and every byte
    // pattern is a valid [u8; 128]; the reference's lifetime is tied to `s`.
    unsafe { &*(s as *const libc::sockaddr_storage as *const [u8; 128]) }
}

fn storage_bytes_mut(s: &mut libc::sockaddr_storage) -> &mut [u8; 128] {
    // SAFETY: as in `storage_bytes`; every byte pattern is a valid sockaddr_storage, and the
    // exclusive borrow of `s` is carried over to the returned reference.
    unsafe { &mut *(s as *mut libc::sockaddr_storage as *mut [u8; 128]) }
}

fn sockaddr_bytes_v4(s: &libc::sockaddr_in) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..2].copy_from_slice(&s.sin_family.to_ne_bytes());
    b[2..4].copy_from_slice(&s.sin_port.to_ne_bytes());
    b[4..8].copy_from_slice(&s.sin_addr.s_addr.to_ne_bytes());
    b
}

fn sockaddr_bytes_v6(s: &libc::sockaddr_in6) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[0..2].copy_from_slice(&s.sin6_family.to_ne_bytes());
    b[2..4].copy_from_slice(&s.sin6_port.to_ne_bytes());
    b[4..8].copy_from_slice(&s.sin6_flowinfo.to_ne_bytes());
    b[8..24].copy_from_slice(&s.sin6_addr.s6_addr);
    b[24..28].copy_from_slice(&s.sin6_scope_id.to_ne_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_roundtrip_v4_v6() {
        for a in ["127.0.0.1:4420", "[::1]:1", "0.0.0.0:0", "[fd00::2]:65535"] {
            let sa: SocketAddr = a.parse().unwrap();
            let mut st = zeroed_storage();
            let len = to_storage(&sa, &mut st);
            assert!(len == 16 || len == 28);
            assert_eq!(from_storage(&st).unwrap(), sa);
        }
        let st = zeroed_storage();
        assert_eq!(from_storage(&st), Err(AddrError::Family(0)));
    }

    #[test]
    fn wildcard_conflicts_follow_tcp() {
        let any4: IpAddr = "0.0.0.0".parse().unwrap();
        let any6: IpAddr = "::".parse().unwrap();
        let lo4: IpAddr = "127.0.0.1".parse().unwrap();
        let lo6: IpAddr = "::1".parse().unwrap();
        assert!(conflicts(&lo4, &lo4));
        assert!(conflicts(&any4, &lo4));
        assert!(conflicts(&lo4, &any4));
        assert!(conflicts(&lo4, &any6));
        assert!(conflicts(&any6, &lo6));
        assert!(!conflicts(&lo4, &lo6));
        assert!(!conflicts(&any4, &lo6));
        assert!(!conflicts(&lo4, &"127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn names_and_candidates() {
        let a: SocketAddr = "[::ffff:127.0.0.1]:7".parse().unwrap();
        assert_eq!(
            socket_name("0", NameKind::Listen, 0x106, &a),
            "softrdma/0/cm/106/127.0.0.1/7"
        );
        let c = connect_candidates(&"127.0.0.1:7".parse().unwrap());
        assert_eq!(c.len(), 3);
        assert_eq!(c[2], "[::]:7".parse().unwrap());
        let c = connect_candidates(&"[::1]:7".parse().unwrap());
        assert_eq!(
            c,
            vec!["[::1]:7".parse().unwrap(), "[::]:7".parse().unwrap()]
        );
    }

    #[test]
    fn namespaces_separate_fabrics() {
        assert_eq!(namespace(0, None), "0");
        assert_eq!(namespace(5, Some("")), "5");
        let a = namespace(0, Some("/dev/shm/a"));
        let b = namespace(0, Some("/dev/shm/b"));
        assert!(a.starts_with("0-") && b.starts_with("0-") && a != b);
    }

    #[test]
    fn parses_proc_net_unix() {
        let text = "Num RefCount Protocol Flags Type St Inode Path\n\
            0000: 00000002 00000000 00000000 0005 01 1 @softrdma/0/bind/106/127.0.0.1/4420\n\
            0000: 00000002 00000000 00000000 0005 01 1 @softrdma/0/bind/106/::1/4420\n\
            0000: 00000002 00000000 00000000 0005 01 1 @softrdma/0/bind/111/::1/4420\n\
            0000: 00000002 00000000 00000000 0005 01 1 @softrdma/0/bind/106/::1/44200\n\
            0000: 00000002 00000000 00000000 0005 01 1 /run/x.sock\n";
        let r = reservations_in(text, "0", 0x106, 4420);
        assert_eq!(
            r,
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
    }
}
