//! Transport ids (`spdk_nvme_transport_id`) to and from socket addresses, and
//! the discovery log entry of a listener.

use std::ffi::c_char;
use std::net::{IpAddr, SocketAddr};

use super::ops::TRANSPORT_NAME;
use super::sys;

/// A trid that does not name an IP address and port.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TridError {
    /// `traddr` is not an IPv4 or IPv6 address.
    #[error("traddr {0:?} is not an IP address")]
    Addr(String),
    /// `trsvcid` is not a port number.
    #[error("trsvcid {0:?} is not a port number")]
    Port(String),
}

/// A fixed C char array as text, up to its NUL.
pub(crate) fn c_chars(a: &[c_char]) -> String {
    let bytes: Vec<u8> = a
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Writes `text` into a C char array, NUL-padded (truncated to leave a NUL).
fn set_c_chars(dst: &mut [c_char], text: &str) {
    dst.fill(0);
    let room = dst.len().saturating_sub(1);
    for (d, b) in dst.iter_mut().zip(text.bytes().take(room)) {
        *d = b as c_char;
    }
}

/// Writes `text` space-padded, without NUL (SPDK's `spdk_strcpy_pad`, as the
/// discovery log page wants).
fn set_padded(dst: &mut [u8], text: &str) {
    dst.fill(b' ');
    for (d, b) in dst.iter_mut().zip(text.bytes()) {
        *d = b;
    }
}

/// The socket address a trid names.
pub(crate) fn trid_addr(trid: &sys::spdk_nvme_transport_id) -> Result<SocketAddr, TridError> {
    let addr = c_chars(&trid.traddr);
    let port = c_chars(&trid.trsvcid);
    let ip: IpAddr = addr.parse().map_err(|_| TridError::Addr(addr.clone()))?;
    let port: u16 = port.parse().map_err(|_| TridError::Port(port.clone()))?;
    Ok(SocketAddr::new(ip, port))
}

/// Fills `trid` for `addr` (upstream `nvmf_rdma_trid_from_cm_id`).
pub(crate) fn fill_trid(trid: &mut sys::spdk_nvme_transport_id, addr: SocketAddr) {
    trid.trtype = sys::SPDK_NVME_TRANSPORT_RDMA;
    set_c_chars(&mut trid.trstring, &TRANSPORT_NAME.to_string_lossy());
    trid.adrfam = if addr.is_ipv4() {
        sys::SPDK_NVMF_ADRFAM_IPV4
    } else {
        sys::SPDK_NVMF_ADRFAM_IPV6
    };
    set_c_chars(&mut trid.traddr, &addr.ip().to_string());
    set_c_chars(&mut trid.trsvcid, &addr.port().to_string());
}

/// The discovery log entry of a listener (upstream
/// `nvmf_rdma_discover`): RDMA, reliable connected, no provider type, RDMA CM.
pub(crate) fn fill_discovery_entry(
    trid: &sys::spdk_nvme_transport_id,
    entry: &mut sys::spdk_nvmf_discovery_log_page_entry,
) {
    entry.trtype = sys::SPDK_NVMF_TRTYPE_RDMA as u8;
    entry.adrfam = trid.adrfam as u8;
    entry
        .treq
        .set_secure_channel(sys::SPDK_NVMF_TREQ_SECURE_CHANNEL_NOT_REQUIRED as u8);
    set_padded(&mut entry.trsvcid, &c_chars(&trid.trsvcid));
    set_padded(&mut entry.traddr, &c_chars(&trid.traddr));
    entry.tsas.rdma.rdma_qptype = sys::SPDK_NVMF_RDMA_QPTYPE_RELIABLE_CONNECTED as u8;
    entry.tsas.rdma.rdma_prtype = sys::SPDK_NVMF_RDMA_PRTYPE_NONE as u8;
    entry.tsas.rdma.rdma_cms = sys::SPDK_NVMF_RDMA_CMS_RDMA_CM as u8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trids_round_trip_ipv4_and_ipv6() {
        for a in ["127.0.0.1:4420", "[::1]:4421"] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut t = sys::spdk_nvme_transport_id::default();
            fill_trid(&mut t, addr);
            assert_eq!(trid_addr(&t).unwrap(), addr);
            assert_eq!(c_chars(&t.trstring), "RDMA_RS");
        }
    }

    #[test]
    fn bad_trids_name_the_field() {
        let mut t = sys::spdk_nvme_transport_id::default();
        set_c_chars(&mut t.traddr, "nothost");
        set_c_chars(&mut t.trsvcid, "4420");
        assert!(trid_addr(&t).unwrap_err().to_string().contains("nothost"));
        set_c_chars(&mut t.traddr, "127.0.0.1");
        set_c_chars(&mut t.trsvcid, "70000");
        assert!(trid_addr(&t).unwrap_err().to_string().contains("70000"));
    }
}
