//! rdma_cm over softrdma, end to end through `rdma-sys`: connect/accept with private data
//! both ways (and the responder-resources / initiator-depth swap), reject with private data,
//! IPv6, peer `kill -9` → DISCONNECTED with the surviving QP in ERR, and the injected
//! "drop the CM connection" fault.
//!
//! The RDMA part runs in child processes (this test binary re-executed with
//! `LD_LIBRARY_PATH=<softrdma lib dir>`), so rdma-sys binds to softrdma's libraries.
//! The lib dir is `$SOFTRDMA_LIB_DIR`, else `<workspace>/target/softrdma`
//! (built by `bash scripts/build-softrdma.sh`).

use std::ffi::c_void;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rdma_sys::*;

const ROLE: &str = "SOFTRDMA_CM_TEST_ROLE";
/// Bound for every wait (a hang guard, not a performance assertion).
const WAIT_MS: i32 = 20_000;

// ----------------------------------------------------------------------------------------
// parent side

fn lib_dir() -> PathBuf {
    let dir = std::env::var_os("SOFTRDMA_LIB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/softrdma"));
    for lib in ["libibverbs.so.1", "librdmacm.so.1"] {
        assert!(
            dir.join(lib).exists(),
            "{} not found in {}: build softrdma first with `bash scripts/build-softrdma.sh` \
             (or point SOFTRDMA_LIB_DIR at the directory holding libibverbs.so.1 and librdmacm.so.1)",
            lib,
            dir.display()
        );
    }
    dir
}

/// The fabric directory of this test run (`$SOFTRDMA_SHM_DIR`, else a private one), so the
/// children never meet other runs' processes or a fabric file of another softrdma version.
fn shm_dir() -> String {
    std::env::var("SOFTRDMA_SHM_DIR").unwrap_or_else(|_| {
        std::env::temp_dir()
            .join(format!("softrdma-cm-test-{}", std::process::id()))
            .display()
            .to_string()
    })
}

struct Proc {
    name: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(name: &'static str, role: &str, env: &[(&str, String)]) -> Proc {
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(exe);
        cmd.args(["child_main", "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env("LD_LIBRARY_PATH", lib_dir())
            .env("SOFTRDMA_SHM_DIR", shm_dir())
            .env_remove("SOFTRDMA_FAULTS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn child");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Proc {
            name,
            child,
            lines: rx,
        }
    }

    /// Wait for a line starting with `prefix`; returns the rest.
    fn expect(&mut self, prefix: &str) -> String {
        loop {
            match self
                .lines
                .recv_timeout(Duration::from_millis(WAIT_MS as u64))
            {
                Ok(l) => {
                    eprintln!("[{}] {l}", self.name);
                    // The harness prints "test child_main ... " without a newline first.
                    if let Some(i) = l.find(prefix) {
                        return l[i + prefix.len()..].trim().to_string();
                    }
                    if l.contains("FAIL ") {
                        panic!("{} failed while waiting for '{prefix}': {l}", self.name);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("{}: no '{prefix}' line within {WAIT_MS} ms", self.name);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = self.child.wait().map(|s| s.to_string());
                    panic!(
                        "{} exited ({st:?}) before printing '{prefix}' (crash? see its stderr above)",
                        self.name
                    );
                }
            }
        }
    }

    fn finish(mut self) {
        // Drain remaining output, then the exit status.
        while let Ok(l) = self
            .lines
            .recv_timeout(Duration::from_millis(WAIT_MS as u64))
        {
            eprintln!("[{}] {l}", self.name);
            assert!(!l.contains("FAIL "), "{}: {l}", self.name);
        }
        let st = self.child.wait().expect("wait child");
        assert!(st.success(), "{} exited with {st}", self.name);
    }
}

/// Starts a CM server child in `server_mode` on `ip`, waits for its port, and
/// starts a client child that connects to it and then does `client_then`
/// (plus `client_env`).
fn spawn_pair(
    ip: &str,
    server_mode: &str,
    client_then: &str,
    client_env: &[(&str, String)],
) -> (Proc, Proc) {
    let mut server = Proc::spawn(
        "server",
        "server",
        &[("CM_ADDR", ip.into()), ("CM_MODE", server_mode.into())],
    );
    let port = server.expect("PORT ");
    let mut env = vec![
        ("CM_ADDR", ip.to_string()),
        ("CM_PORT", port),
        ("CM_THEN", client_then.to_string()),
    ];
    env.extend(client_env.iter().cloned());
    let client = Proc::spawn("client", "client", &env);
    (server, client)
}

fn run_pair(ip: &str, server_mode: &str, client_then: &str, client_env: &[(&str, String)]) {
    let mut env = vec![("SOFTRDMA_CM_TIMEWAIT_MS", "50".to_string())];
    env.extend(client_env.iter().cloned());
    let (mut server, mut client) = spawn_pair(ip, server_mode, client_then, &env);
    let req = server.expect("REQ ");
    assert_eq!(req, "rr=2 id=4 pdata=ok", "CONNECT_REQUEST view");
    match server_mode {
        "reject" => {
            client.expect("REJECTED ok");
            client.finish();
            server.finish();
        }
        _ => {
            server.expect("ESTABLISHED");
            let est = client.expect("ESTABLISHED ");
            // Server accepted with responder_resources=1, initiator_depth=3: the client's
            // event shows them swapped.
            assert_eq!(est, "rr=3 id=1 pdata=ok");
            if client_then == "sleep" {
                client.expect("READY");
                client.child.kill().expect("kill -9 client");
                let _ = client.child.wait();
            }
            if client_then == "ctl" {
                // Trigger the drop at a chosen moment through the runtime control channel.
                let pid = client.expect("READY ");
                let ctl = lib_dir().join("softrdma-ctl");
                let out = Command::new(&ctl)
                    .env("SOFTRDMA_SHM_DIR", shm_dir())
                    .args(["send", &pid, "cmdrop", "qp=*"])
                    .output()
                    .unwrap_or_else(|e| panic!("run {}: {e}", ctl.display()));
                assert!(out.status.success(), "softrdma-ctl failed: {out:?}");
            }
            server.expect("DISCONNECTED");
            let before = server.expect("QPSTATE_BEFORE ");
            if client_then == "disconnect" {
                assert_eq!(before, "3", "an orderly DREQ leaves the server QP in RTS");
            } else {
                assert_eq!(before, "6", "peer gone: librdmacm must move the QP to ERR");
            }
            assert_eq!(server.expect("QPSTATE "), "6", "server QP must be in ERR");
            server.expect("FLUSHED");
            if client_then != "sleep" {
                client.expect("DISCONNECTED");
                client.expect("TIMEWAIT_EXIT");
                client.finish();
            }
            server.finish();
        }
    }
}

#[test]
fn connect_accept_private_data_disconnect_ipv4() {
    run_pair("127.0.0.1", "accept", "disconnect", &[]);
}

#[test]
fn connect_accept_private_data_disconnect_ipv6_qp_ex() {
    run_pair(
        "::1",
        "accept",
        "disconnect",
        &[("CM_QP_EX", "1".to_string())],
    );
}

#[test]
fn reject_with_private_data() {
    run_pair("127.0.0.1", "reject", "disconnect", &[]);
}

#[test]
fn peer_kill9_gives_disconnected_and_qp_error() {
    run_pair("127.0.0.1", "accept", "sleep", &[]);
}

#[test]
fn cm_drop_from_control_channel_disconnects_both_sides() {
    run_pair("127.0.0.1", "accept", "ctl", &[]);
}

#[test]
fn injected_cm_drop_disconnects_both_sides() {
    run_pair(
        "127.0.0.1",
        "accept",
        "fault",
        &[("SOFTRDMA_FAULTS", "cmdrop:qp=*".to_string())],
    );
}

/// A host process that dies between CONNECT_REQUEST and ESTABLISHED: the passive side gets
/// what the dead host's kernel CM sends (REJECTED on the new id, IB_CM_REJ_TIMEOUT = 4 while
/// the REQ waits for `rdma_accept`, consumer reason 28 once the REP was sent), its QP goes to
/// ERR, and a late `rdma_accept` fails.
fn peer_dies_while_connecting(server_mode: &str) -> Vec<String> {
    let (mut server, mut client) = spawn_pair("127.0.0.1", server_mode, "hang_connecting", &[]);
    client.expect("CONNECTING");
    server.expect("REQ ");
    if server_mode == "peer_dies_after_accept" {
        server.expect("ACCEPTED");
    }
    client.child.kill().expect("kill -9 client");
    let _ = client.child.wait();
    let mut got = vec![server.expect("GONE ")];
    if server_mode == "peer_dies_after_accept" {
        got.push(server.expect("QPSTATE "));
    } else {
        got.push(server.expect("ACCEPT "));
    }
    server.finish();
    got
}

#[test]
fn peer_death_before_accept_gives_rejected_timeout() {
    let got = peer_dies_while_connecting("peer_dies_before_accept");
    let rejected = rdma_cm_event_type::RDMA_CM_EVENT_REJECTED;
    assert_eq!(got[0], format!("event={rejected} status=4 same_id=true"));
    assert_eq!(got[1], "failed", "rdma_accept after the host died");
}

#[test]
fn peer_death_after_accept_gives_rejected_and_qp_error() {
    let got = peer_dies_while_connecting("peer_dies_after_accept");
    let rejected = rdma_cm_event_type::RDMA_CM_EVENT_REJECTED;
    assert_eq!(got[0], format!("event={rejected} status=28 same_id=true"));
    assert_eq!(got[1], "6", "the passive QP must be in ERR");
}

/// The application frees the QP with plain `ibv_destroy_qp` (not `rdma_destroy_qp`) and the
/// peer then dies: DISCONNECTED arrives and nothing touches the freed QP.
#[test]
fn peer_death_after_app_freed_the_qp() {
    let (mut server, mut client) = spawn_pair("127.0.0.1", "free_qp", "sleep", &[]);
    server.expect("REQ ");
    server.expect("ESTABLISHED");
    client.expect("READY");
    server.expect("QP_FREED");
    client.child.kill().expect("kill -9 client");
    let _ = client.child.wait();
    server.expect("DISCONNECTED");
    server.finish();
}

/// `softrdma-ctl send <pid> <cmd…>` must succeed (the command is in force when it returns).
fn ctl(pid: &str, cmd: &[&str]) {
    let ctl = lib_dir().join("softrdma-ctl");
    let out = Command::new(&ctl)
        .env("SOFTRDMA_SHM_DIR", shm_dir())
        .args(["send", pid])
        .args(cmd)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", ctl.display()));
    assert!(out.status.success(), "softrdma-ctl {cmd:?} failed: {out:?}");
}

impl Proc {
    /// Write one line to the child's stdin.
    fn tell(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to child");
    }
}

/// Device removal under an established connection (fault `async device_remove` through the
/// control channel) and its return (`async device_add`): the listener and the connection ids
/// get RDMA_CM_EVENT_DEVICE_REMOVAL, the context gets IBV_EVENT_DEVICE_FATAL, the device
/// leaves ibv_get_device_list / rdma_get_devices, verbs on the old context fail with EIO while
/// destroying everything works; the peer's SEND to the removed QP times out
/// (RETRY_EXC_ERR) and it gets DISCONNECTED when the ids are destroyed; once back, the device
/// is a new context that a new listener binds to.
#[test]
fn device_removal_and_return() {
    let (mut server, mut client) = spawn_pair("127.0.0.1", "device_removal", "removal", &[]);
    server.expect("REQ ");
    server.expect("ESTABLISHED");
    client.expect("ESTABLISHED ");
    let pid = server.expect("READY ");
    ctl(&pid, &["async", "device_remove"]);
    assert_eq!(
        server.expect("REMOVED "),
        "conn=1 listen=1 fatal=1 devices=0/0 eio=1 cq_event_eio=1"
    );
    client.tell("go");
    let retry_exc = ibv_wc_status::IBV_WC_RETRY_EXC_ERR;
    assert_eq!(client.expect("SEND status="), retry_exc.to_string());
    server.tell("cleanup");
    server.expect("CLEANED");
    client.expect("DISCONNECTED");
    ctl(&pid, &["async", "device_add"]);
    server.tell("added");
    assert_eq!(
        server.expect("BACK "),
        "devices=1/1 new_ctx=1 old_ctx_still_gone=1 listen=1 pd=1"
    );
    client.finish();
    server.finish();
}

/// The control command `addr_change` (and `async addr_change`): each listening id gets
/// RDMA_CM_EVENT_ADDR_CHANGE once per command, a bound id that does not listen gets nothing,
/// and the listener keeps working (a connection to it is requested after the event).
#[test]
fn addr_change_on_listeners() {
    let mut p = Proc::spawn("addr_change", "addr_change", &[]);
    let pid = p.expect("READY ");
    for cmd in [&["addr_change"][..], &["async", "addr_change"]] {
        ctl(&pid, cmd);
        p.tell("sent");
        assert_eq!(p.expect("ADDR_CHANGE "), "listener=1");
        // No second event (200 ms) before the next command.
        p.expect("QUIET");
    }
    p.expect("STILL_LISTENING");
    p.finish();
}

/// One process: non-blocking channel (EAGAIN), bind conflicts, listen backlog (a REQ beyond
/// the backlog of not-yet-retrieved CONNECT_REQUESTs is rejected with status 1), rejecting a
/// QP-less connection, and destroying a listener with a pending request.
#[test]
fn nonblocking_channel_bind_conflicts_and_backlog() {
    let mut p = Proc::spawn("misc", "misc", &[]);
    // Everything destroyed: softrdma's counters show no live cm id or channel.
    let pid = p.expect("COUNTERS ");
    // The CM thread may still hold a last reference for a moment: poll (bounded).
    let ctl = lib_dir().join("softrdma-ctl");
    let mut text = String::new();
    for _ in 0..200 {
        let out = Command::new(&ctl)
            .env("SOFTRDMA_SHM_DIR", shm_dir())
            .args(["stats", &pid])
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", ctl.display()));
        assert!(out.status.success(), "softrdma-ctl stats {pid}: {out:?}");
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        let words: Vec<&str> = text.split_whitespace().collect();
        if words.contains(&"cm_ids=0") && words.contains(&"cm_channels=0") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for c in ["cm_ids=0", "cm_channels=0"] {
        assert!(
            text.split_whitespace().any(|w| w == c),
            "want {c} in: {text}"
        );
    }
    use std::io::Write;
    writeln!(p.child.stdin.as_mut().expect("stdin"), "go").expect("write stdin");
    p.expect("DONE");
    p.finish();
}

/// The synchronous endpoint API rdma-sys programs use: rdma_getaddrinfo, rdma_create_ep
/// (QP created from the endpoint attributes), rdma_get_request, blocking rdma_accept /
/// rdma_connect, and a SEND/RECV through the rdma_verbs.h helpers (CQs and comp channels
/// created by librdmacm with cq_context = id).
#[test]
fn sync_endpoints_get_request_and_send() {
    let mut server = Proc::spawn("ep_server", "ep_server", &[]);
    let port = server.expect("PORT ");
    let mut client = Proc::spawn("ep_client", "ep_client", &[("CM_PORT", port)]);
    assert_eq!(server.expect("RECV "), "hello-ep");
    client.expect("SENT");
    client.finish();
    server.finish();
}

// ----------------------------------------------------------------------------------------
// child side

/// Entry point of the re-executed children; a no-op in a normal test run.
#[test]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let r = match role.as_str() {
        "server" => server(),
        "client" => client(),
        "ep_server" => ep_server(),
        "misc" => misc(),
        "addr_change" => addr_change_child(),
        "ep_client" => ep_client(),
        r => Err(format!("unknown role {r}")),
    };
    match r {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            println!("FAIL {e}");
            std::process::exit(1);
        }
    }
}

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_default()
}

struct Ev {
    kind: u32,
    status: i32,
    id: *mut rdma_cm_id,
    pdata: Vec<u8>,
    rr: u8,
    id_depth: u8,
}

fn wait_event(ch: *mut rdma_event_channel, want: u32) -> Result<Ev, String> {
    let ev = wait_any(ch)?;
    if ev.kind != want {
        return Err(format!(
            "got CM event {} status {}, wanted {want}",
            ev.kind, ev.status
        ));
    }
    Ok(ev)
}

fn wait_any(ch: *mut rdma_event_channel) -> Result<Ev, String> {
    // SAFETY: ch is a live channel created by this process; poll gets a valid pollfd;
    // the event is read before it is acked and not used afterwards.
    unsafe {
        let mut pfd = libc::pollfd {
            fd: (*ch).fd,
            events: libc::POLLIN,
            revents: 0,
        };
        if libc::poll(&mut pfd, 1, WAIT_MS) != 1 {
            return Err(format!("no CM event within {WAIT_MS} ms"));
        }
        let mut e: *mut rdma_cm_event = std::ptr::null_mut();
        if rdma_get_cm_event(ch, &mut e) != 0 {
            return Err(format!(
                "rdma_get_cm_event: {}",
                std::io::Error::last_os_error()
            ));
        }
        let c = &(*e).param.conn;
        let pdata = if c.private_data.is_null() {
            Vec::new()
        } else {
            std::slice::from_raw_parts(c.private_data as *const u8, c.private_data_len as usize)
                .to_vec()
        };
        let ev = Ev {
            kind: (*e).event,
            status: (*e).status,
            id: (*e).id,
            pdata,
            rr: c.responder_resources,
            id_depth: c.initiator_depth,
        };
        rdma_ack_cm_event(e);
        Ok(ev)
    }
}

fn sockaddr(a: &SocketAddr) -> libc::sockaddr_storage {
    // SAFETY: all-zero is a valid sockaddr_storage; we write a sockaddr_in/in6 into its
    // prefix, which the storage is large and aligned enough for.
    unsafe {
        let mut s: libc::sockaddr_storage = std::mem::zeroed();
        match a {
            SocketAddr::V4(v4) => {
                let p = &mut s as *mut _ as *mut libc::sockaddr_in;
                (*p).sin_family = libc::AF_INET as u16;
                (*p).sin_port = v4.port().to_be();
                (*p).sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            }
            SocketAddr::V6(v6) => {
                let p = &mut s as *mut _ as *mut libc::sockaddr_in6;
                (*p).sin6_family = libc::AF_INET6 as u16;
                (*p).sin6_port = v6.port().to_be();
                (*p).sin6_addr.s6_addr = v6.ip().octets();
            }
        }
        s
    }
}

fn create_qp(id: *mut rdma_cm_id) -> Result<(), String> {
    if std::env::var_os("CM_QP_EX").is_some() {
        // rdma_create_qp_ex with the PD given in the extended attributes.
        // SAFETY: as below; comp_mask says only `pd` is valid among the extensions.
        unsafe {
            let mut attr: ibv_qp_init_attr_ex = std::mem::zeroed();
            attr.cap.max_send_wr = 8;
            attr.cap.max_recv_wr = 8;
            attr.cap.max_send_sge = 1;
            attr.cap.max_recv_sge = 1;
            attr.qp_type = ibv_qp_type::IBV_QPT_RC;
            attr.comp_mask = ibv_qp_init_attr_mask::IBV_QP_INIT_ATTR_PD.0;
            attr.pd = (*id).pd;
            if rdma_create_qp_ex(id, &mut attr) != 0 {
                return Err(format!(
                    "rdma_create_qp_ex: {}",
                    std::io::Error::last_os_error()
                ));
            }
            if (*id).qp.is_null() || attr.send_cq.is_null() || attr.cap.max_send_wr < 8 {
                return Err("rdma_create_qp_ex did not report the QP / CQs / caps".into());
            }
        }
        return Ok(());
    }
    // SAFETY: id is live and bound to a device; the attr struct is zero-initialised
    // and fully valid; NULL CQs make librdmacm create them.
    unsafe {
        let mut attr: ibv_qp_init_attr = std::mem::zeroed();
        attr.cap.max_send_wr = 8;
        attr.cap.max_recv_wr = 8;
        attr.cap.max_send_sge = 1;
        attr.cap.max_recv_sge = 1;
        attr.qp_type = ibv_qp_type::IBV_QPT_RC;
        if rdma_create_qp(id, std::ptr::null_mut(), &mut attr) != 0 {
            return Err(format!(
                "rdma_create_qp: {}",
                std::io::Error::last_os_error()
            ));
        }
        if (*id).qp.is_null() || (*id).send_cq.is_null() || (*id).recv_cq.is_null() {
            return Err("rdma_create_qp left qp/send_cq/recv_cq NULL".into());
        }
    }
    Ok(())
}

fn qp_state(id: *mut rdma_cm_id) -> Result<u32, String> {
    // SAFETY: id->qp is a live QP; attr structs are valid out buffers.
    unsafe {
        let mut attr: ibv_qp_attr = std::mem::zeroed();
        let mut init: ibv_qp_init_attr = std::mem::zeroed();
        let r = ibv_query_qp(
            (*id).qp,
            &mut attr,
            ibv_qp_attr_mask::IBV_QP_STATE.0 as i32,
            &mut init,
        );
        if r != 0 {
            return Err(format!("ibv_query_qp: errno {r}"));
        }
        Ok(attr.qp_state)
    }
}

fn param(pdata: &'static [u8], rr: u8, id: u8) -> rdma_conn_param {
    // SAFETY: all-zero is a valid rdma_conn_param.
    let mut p: rdma_conn_param = unsafe { std::mem::zeroed() };
    p.private_data = pdata.as_ptr() as *const c_void;
    p.private_data_len = pdata.len() as u8;
    p.responder_resources = rr;
    p.initiator_depth = id;
    p.retry_count = 7;
    p.rnr_retry_count = 7;
    p
}

fn server() -> Result<(), String> {
    use rdma_cm_event_type::*;
    let ip: std::net::IpAddr = env("CM_ADDR")
        .parse()
        .map_err(|e| format!("CM_ADDR: {e}"))?;
    let mode = env("CM_MODE");
    // SAFETY: straight-line use of the librdmacm API with live objects created here.
    unsafe {
        let ch = rdma_create_event_channel();
        if ch.is_null() {
            return Err(format!(
                "rdma_create_event_channel: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut listen: *mut rdma_cm_id = std::ptr::null_mut();
        if rdma_create_id(
            ch,
            &mut listen,
            std::ptr::null_mut(),
            rdma_port_space::RDMA_PS_TCP,
        ) != 0
        {
            return Err("rdma_create_id".into());
        }
        let mut sa = sockaddr(&SocketAddr::new(ip, 0));
        if rdma_bind_addr(listen, &mut sa as *mut _ as *mut libc::sockaddr) != 0 {
            return Err(format!(
                "rdma_bind_addr: {}",
                std::io::Error::last_os_error()
            ));
        }
        if (*listen).verbs.is_null() {
            return Err("listen id has no verbs after binding a specific address".into());
        }
        if rdma_listen(listen, 4) != 0 {
            return Err("rdma_listen".into());
        }
        let port = u16::from_be(rdma_get_src_port(listen));
        if port == 0 {
            return Err("rdma_get_src_port returned 0 after binding port 0".into());
        }
        println!("PORT {port}");
        let req = wait_event(ch, RDMA_CM_EVENT_CONNECT_REQUEST)?;
        let ok = req.pdata.starts_with(b"req-data") && req.pdata.len() == 56;
        println!(
            "REQ rr={} id={} pdata={}",
            req.rr,
            req.id_depth,
            if ok { "ok" } else { "bad" }
        );
        let id = req.id;
        let mut ndev = 0;
        let devs = rdma_get_devices(&mut ndev);
        if devs.is_null() || ndev < 1 || *devs != (*id).verbs {
            return Err("rdma_get_devices()[0] is not the context of the new cm id".into());
        }
        rdma_free_devices(devs);
        if mode == "reject" {
            let msg = b"nope-reject";
            if rdma_reject(id, msg.as_ptr() as *const c_void, msg.len() as u8) != 0 {
                return Err("rdma_reject".into());
            }
            // Give the REJ time to leave before the id (and its socket) goes away.
            std::thread::sleep(Duration::from_millis(200));
            rdma_destroy_id(id);
            rdma_destroy_id(listen);
            rdma_destroy_event_channel(ch);
            return Ok(());
        }
        if mode == "peer_dies_before_accept" {
            // The parent kills the client now; the dead host's CM rejects the pending REQ.
            let ev = wait_any(ch)?;
            println!(
                "GONE event={} status={} same_id={}",
                ev.kind,
                ev.status,
                ev.id == id
            );
            create_qp(id)?;
            let mut p = param(b"rep-data", 1, 3);
            let r = rdma_accept(id, &mut p);
            println!("ACCEPT {}", if r == 0 { "ok" } else { "failed" });
            rdma_destroy_qp(id);
            rdma_destroy_id(id);
            rdma_destroy_id(listen);
            rdma_destroy_event_channel(ch);
            return Ok(());
        }
        create_qp(id)?;
        if mode == "peer_dies_after_accept" {
            let mut p = param(b"rep-data", 1, 3);
            if rdma_accept(id, &mut p) != 0 {
                return Err(format!("rdma_accept: {}", std::io::Error::last_os_error()));
            }
            println!("ACCEPTED");
            let ev = wait_any(ch)?;
            println!(
                "GONE event={} status={} same_id={}",
                ev.kind,
                ev.status,
                ev.id == id
            );
            println!("QPSTATE {}", qp_state(id)?);
            rdma_destroy_qp(id);
            rdma_destroy_id(id);
            rdma_destroy_id(listen);
            rdma_destroy_event_channel(ch);
            return Ok(());
        }
        // One receive that the peer never fills: it must come back flushed at the end.
        let mut rbuf = vec![0u8; 64];
        let mr = rdma_reg_msgs(id, rbuf.as_mut_ptr().cast(), rbuf.len());
        if mr.is_null() {
            return Err("rdma_reg_msgs".into());
        }
        if rdma_post_recv(
            id,
            0x5eed as *mut c_void,
            rbuf.as_mut_ptr().cast(),
            rbuf.len(),
            mr,
        ) != 0
        {
            return Err("rdma_post_recv".into());
        }
        let mut p = param(b"rep-data", 1, 3);
        if rdma_accept(id, &mut p) != 0 {
            return Err(format!("rdma_accept: {}", std::io::Error::last_os_error()));
        }
        wait_event(ch, RDMA_CM_EVENT_ESTABLISHED)?;
        println!("ESTABLISHED");
        if mode == "device_removal" {
            return device_removal(ch, listen, id, mr);
        }
        if mode == "free_qp" {
            // Like rping: free the QP with plain ibv_destroy_qp while the id lives on; the
            // peer's death must then not make librdmacm touch the freed QP.
            ibv_dereg_mr(mr);
            if ibv_destroy_qp((*id).qp) != 0 {
                return Err("ibv_destroy_qp".into());
            }
            // Recycle the freed memory with junk, so touching the old QP would crash.
            let mut junk = Vec::new();
            for size in (16..=4096).step_by(16) {
                for _ in 0..2 {
                    let b = libc::malloc(size) as *mut u8;
                    if !b.is_null() {
                        std::ptr::write_bytes(b, 0xa5, size);
                        junk.push(b);
                    }
                }
            }
            println!("QP_FREED");
            wait_event(ch, RDMA_CM_EVENT_DISCONNECTED)?;
            println!("DISCONNECTED");
            for b in junk {
                libc::free(b.cast());
            }
            rdma_destroy_id(id);
            rdma_destroy_id(listen);
            rdma_destroy_event_channel(ch);
            return Ok(());
        }
        wait_event(ch, RDMA_CM_EVENT_DISCONNECTED)?;
        println!("DISCONNECTED");
        // Peer death / dropped CM connection: librdmacm already moved the QP to ERR. An
        // orderly DREQ leaves it alone (as the kernel does) until rdma_disconnect.
        println!("QPSTATE_BEFORE {}", qp_state(id)?);
        // The application calls rdma_disconnect itself (SPDK does): the QP ends in ERR.
        rdma_disconnect(id);
        println!("QPSTATE {}", qp_state(id)?);
        let (n, wc) = poll_one((*id).recv_cq);
        if n != 1 || wc.wr_id != 0x5eed || wc.status != ibv_wc_status::IBV_WC_WR_FLUSH_ERR {
            return Err(format!(
                "posted receive: poll {n}, wr_id {:#x}, status {} (want WR_FLUSH_ERR)",
                wc.wr_id, wc.status
            ));
        }
        println!("FLUSHED");
        ibv_dereg_mr(mr);
        rdma_destroy_qp(id);
        rdma_destroy_id(id);
        rdma_destroy_id(listen);
        rdma_destroy_event_channel(ch);
    }
    Ok(())
}

fn client() -> Result<(), String> {
    use rdma_cm_event_type::*;
    let ip: std::net::IpAddr = env("CM_ADDR")
        .parse()
        .map_err(|e| format!("CM_ADDR: {e}"))?;
    let port: u16 = env("CM_PORT")
        .parse()
        .map_err(|e| format!("CM_PORT: {e}"))?;
    let then = env("CM_THEN");
    // SAFETY: straight-line use of the librdmacm API with live objects created here.
    unsafe {
        let ch = rdma_create_event_channel();
        let mut id: *mut rdma_cm_id = std::ptr::null_mut();
        if ch.is_null()
            || rdma_create_id(
                ch,
                &mut id,
                std::ptr::null_mut(),
                rdma_port_space::RDMA_PS_TCP,
            ) != 0
        {
            return Err("create channel/id".into());
        }
        let mut dst = sockaddr(&SocketAddr::new(ip, port));
        if rdma_resolve_addr(
            id,
            std::ptr::null_mut(),
            &mut dst as *mut _ as *mut libc::sockaddr,
            2000,
        ) != 0
        {
            return Err(format!(
                "rdma_resolve_addr: {}",
                std::io::Error::last_os_error()
            ));
        }
        wait_event(ch, RDMA_CM_EVENT_ADDR_RESOLVED)?;
        if rdma_resolve_route(id, 2000) != 0 {
            return Err("rdma_resolve_route".into());
        }
        wait_event(ch, RDMA_CM_EVENT_ROUTE_RESOLVED)?;
        create_qp(id)?;
        let mut p = param(b"req-data", 4, 2);
        if rdma_connect(id, &mut p) != 0 {
            return Err(format!("rdma_connect: {}", std::io::Error::last_os_error()));
        }
        if then == "hang_connecting" {
            // Never take the REP: the connection stays short of ESTABLISHED until the
            // parent kills this process.
            println!("CONNECTING");
            std::thread::sleep(Duration::from_secs(60));
            return Err("was not killed".into());
        }
        let ev = wait_any(ch)?;
        if ev.kind == RDMA_CM_EVENT_REJECTED {
            if ev.status != 28 || !ev.pdata.starts_with(b"nope-reject") {
                return Err(format!(
                    "REJECTED with status {} private data {:?}",
                    ev.status, ev.pdata
                ));
            }
            println!("REJECTED ok");
            rdma_destroy_qp(id);
            rdma_destroy_id(id);
            rdma_destroy_event_channel(ch);
            return Ok(());
        }
        if ev.kind != RDMA_CM_EVENT_ESTABLISHED {
            return Err(format!("got event {} status {}", ev.kind, ev.status));
        }
        let ok = ev.pdata.starts_with(b"rep-data") && ev.pdata.len() == 196;
        println!(
            "ESTABLISHED rr={} id={} pdata={}",
            ev.rr,
            ev.id_depth,
            if ok { "ok" } else { "bad" }
        );
        match then.as_str() {
            "sleep" => {
                println!("READY");
                std::thread::sleep(Duration::from_secs(60));
                return Err("was not killed".into());
            }
            "fault" => {
                // SOFTRDMA_FAULTS=cmdrop:qp=* drops the connection once established.
                wait_event(ch, RDMA_CM_EVENT_DISCONNECTED)?;
            }
            "ctl" => {
                println!("READY {}", std::process::id());
                wait_event(ch, RDMA_CM_EVENT_DISCONNECTED)?;
            }
            "removal" => {
                // The server's device is removed: a SEND to its QP is retried until the
                // transport timeout (nothing answers), then RETRY_EXC_ERR.
                read_stdin_line("go")?;
                let mut buf = vec![7u8; 16];
                let mr = rdma_reg_msgs(id, buf.as_mut_ptr().cast(), buf.len());
                if mr.is_null()
                    || rdma_post_send(id, 0x51 as *mut c_void, buf.as_mut_ptr().cast(), 16, mr, 0)
                        != 0
                {
                    return Err("rdma_reg_msgs / rdma_post_send".into());
                }
                let (n, wc) = poll_one((*id).send_cq);
                println!("SEND status={}", if n == 1 { wc.status as i64 } else { -1 });
                wait_event(ch, RDMA_CM_EVENT_DISCONNECTED)?;
                println!("DISCONNECTED");
                ibv_dereg_mr(mr);
                rdma_destroy_qp(id);
                rdma_destroy_id(id);
                rdma_destroy_event_channel(ch);
                return Ok(());
            }
            _ => {
                if rdma_disconnect(id) != 0 {
                    return Err("rdma_disconnect".into());
                }
                wait_event(ch, RDMA_CM_EVENT_DISCONNECTED)?;
            }
        }
        println!("DISCONNECTED");
        let st = qp_state(id)?;
        if st != ibv_qp_state::IBV_QPS_ERR {
            return Err(format!("client QP state {st} after disconnect, want ERR"));
        }
        // The parent sets SOFTRDMA_CM_TIMEWAIT_MS small: the id leaves timewait.
        wait_event(ch, RDMA_CM_EVENT_TIMEWAIT_EXIT)?;
        println!("TIMEWAIT_EXIT");
        rdma_destroy_qp(id);
        rdma_destroy_id(id);
        rdma_destroy_event_channel(ch);
    }
    Ok(())
}

/// Poll `cq` for one completion for up to `WAIT_MS` ms: (poll result, the completion).
///
/// # Safety
/// `cq` must be a live CQ of this process.
unsafe fn poll_one(cq: *mut ibv_cq) -> (i32, ibv_wc) {
    // SAFETY: all-zero is a valid ibv_wc; cq is live per the contract.
    unsafe {
        let mut wc: ibv_wc = std::mem::zeroed();
        for _ in 0..WAIT_MS {
            let n = ibv_poll_cq(cq, 1, &mut wc);
            if n != 0 {
                return (n, wc);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        (0, wc)
    }
}

/// Wait for the parent to write `want` on our stdin.
fn read_stdin_line(want: &str) -> Result<(), String> {
    let mut l = String::new();
    std::io::stdin()
        .read_line(&mut l)
        .map_err(|e| format!("stdin: {e}"))?;
    if l.trim() != want {
        return Err(format!("expected '{want}' on stdin, got '{}'", l.trim()));
    }
    Ok(())
}

/// The server side of `device_removal_and_return` (after ESTABLISHED).
///
/// # Safety
/// `ch`, `listen`, `id` and `mr` are live objects of this process.
unsafe fn device_removal(
    ch: *mut rdma_event_channel,
    listen: *mut rdma_cm_id,
    id: *mut rdma_cm_id,
    mr: *mut ibv_mr,
) -> Result<(), String> {
    use rdma_cm_event_type::*;
    // SAFETY: per the contract; every pointer used below is live until destroyed here.
    unsafe {
        let ctx = (*id).verbs;
        println!("READY {}", std::process::id());
        // Both ids bound to the device get DEVICE_REMOVAL, once each.
        let (a, b) = (wait_any(ch)?, wait_any(ch)?);
        let removal = |e: &Ev, who: *mut rdma_cm_id| {
            (e.kind == RDMA_CM_EVENT_DEVICE_REMOVAL && e.id == who) as u8
        };
        let conn = removal(&a, id) | removal(&b, id);
        let lst = removal(&a, listen) | removal(&b, listen);
        // The context gets IBV_EVENT_DEVICE_FATAL.
        let mut pfd = libc::pollfd {
            fd: (*ctx).async_fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut fatal = 0;
        if libc::poll(&mut pfd, 1, WAIT_MS) == 1 {
            let mut ev: ibv_async_event = std::mem::zeroed();
            if ibv_get_async_event(ctx, &mut ev) == 0 {
                fatal = (ev.event_type == ibv_event_type::IBV_EVENT_DEVICE_FATAL) as u8;
                ibv_ack_async_event(&mut ev);
            }
        }
        // The device is gone from both lists.
        let (mut nv, mut nc) = (-1, -1);
        let l = ibv_get_device_list(&mut nv);
        if !l.is_null() {
            ibv_free_device_list(l);
        }
        let d = rdma_get_devices(&mut nc);
        if !d.is_null() {
            rdma_free_devices(d);
        }
        // Verbs on the old context fail with EIO.
        let eio = |r: i32| r == libc::EIO;
        let mut pa: ibv_port_attr = std::mem::zeroed();
        let pd_fails = ibv_alloc_pd(ctx).is_null()
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EIO);
        let mut bad: *mut ibv_recv_wr = std::ptr::null_mut();
        let mut wr: ibv_recv_wr = std::mem::zeroed();
        let all_eio = pd_fails
            && eio(ibv_query_port(
                ctx,
                1,
                &mut pa as *mut ibv_port_attr as *mut _compat_ibv_port_attr,
            ))
            && eio(ibv_post_recv((*id).qp, &mut wr, &mut bad))
            && std::ptr::eq(bad, &wr)
            && eio(ibv_req_notify_cq((*id).recv_cq, 0));
        // A reader of the completion channel gets EIO once it is drained.
        let mut cq: *mut ibv_cq = std::ptr::null_mut();
        let mut cq_ctx: *mut c_void = std::ptr::null_mut();
        let cq_event_eio = ibv_get_cq_event((*(*id).recv_cq).channel, &mut cq, &mut cq_ctx) != 0;
        println!(
            "REMOVED conn={conn} listen={lst} fatal={fatal} devices={nv}/{nc} eio={} cq_event_eio={}",
            all_eio as u8, cq_event_eio as u8
        );
        // Nothing else arrives on the removed ids (the peer's SEND times out meanwhile).
        read_stdin_line("cleanup")?;
        let mut pfd = libc::pollfd {
            fd: (*ch).fd,
            events: libc::POLLIN,
            revents: 0,
        };
        if libc::poll(&mut pfd, 1, 0) != 0 {
            return Err("a CM event after DEVICE_REMOVAL".into());
        }
        // Destroying works.
        if ibv_dereg_mr(mr) != 0 {
            return Err("ibv_dereg_mr after removal".into());
        }
        rdma_destroy_qp(id);
        if rdma_destroy_id(id) != 0 || rdma_destroy_id(listen) != 0 {
            return Err("rdma_destroy_id after removal".into());
        }
        println!("CLEANED");
        read_stdin_line("added")?;
        // Back as a new context; a new listener binds to it and it works.
        let (mut nv, mut nc) = (-1, -1);
        let l = ibv_get_device_list(&mut nv);
        if !l.is_null() {
            ibv_free_device_list(l);
        }
        let d = rdma_get_devices(&mut nc);
        let new_ctx = if d.is_null() || nc < 1 {
            std::ptr::null_mut()
        } else {
            *d
        };
        if !d.is_null() {
            rdma_free_devices(d);
        }
        let mut pa: ibv_port_attr = std::mem::zeroed();
        let old_gone = eio(ibv_query_port(
            ctx,
            1,
            &mut pa as *mut ibv_port_attr as *mut _compat_ibv_port_attr,
        ));
        let mut l2: *mut rdma_cm_id = std::ptr::null_mut();
        let mut sa = sockaddr(&"127.0.0.1:0".parse().unwrap());
        let listen_ok = rdma_create_id(
            ch,
            &mut l2,
            std::ptr::null_mut(),
            rdma_port_space::RDMA_PS_TCP,
        ) == 0
            && rdma_bind_addr(l2, &mut sa as *mut _ as *mut libc::sockaddr) == 0
            && (*l2).verbs == new_ctx
            && rdma_listen(l2, 4) == 0;
        let pd = if new_ctx.is_null() {
            std::ptr::null_mut()
        } else {
            ibv_alloc_pd(new_ctx)
        };
        println!(
            "BACK devices={nv}/{nc} new_ctx={} old_ctx_still_gone={} listen={} pd={}",
            (!new_ctx.is_null() && new_ctx != ctx) as u8,
            old_gone as u8,
            listen_ok as u8,
            (!pd.is_null()) as u8
        );
        if !pd.is_null() {
            ibv_dealloc_pd(pd);
        }
        if !l2.is_null() {
            rdma_destroy_id(l2);
        }
        rdma_destroy_event_channel(ch);
    }
    Ok(())
}

fn ep_attr() -> ibv_qp_init_attr {
    // SAFETY: all-zero is a valid ibv_qp_init_attr.
    let mut attr: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
    attr.cap.max_send_wr = 4;
    attr.cap.max_recv_wr = 4;
    attr.cap.max_send_sge = 1;
    attr.cap.max_recv_sge = 1;
    attr.qp_type = ibv_qp_type::IBV_QPT_RC;
    attr.sq_sig_all = 1;
    attr
}

fn addrinfo(node: &str, service: &str, passive: bool) -> Result<*mut rdma_addrinfo, String> {
    let node = std::ffi::CString::new(node).expect("no NUL");
    let service = std::ffi::CString::new(service).expect("no NUL");
    // SAFETY: valid C strings and hints; res is an out pointer.
    unsafe {
        let mut hints: rdma_addrinfo = std::mem::zeroed();
        hints.ai_port_space = rdma_port_space::RDMA_PS_TCP as i32;
        if passive {
            hints.ai_flags = RAI_PASSIVE as i32;
        }
        let mut res: *mut rdma_addrinfo = std::ptr::null_mut();
        if rdma_getaddrinfo(node.as_ptr(), service.as_ptr(), &hints, &mut res) != 0 {
            return Err(format!(
                "rdma_getaddrinfo: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(res)
    }
}

fn ep_server() -> Result<(), String> {
    let res = addrinfo("127.0.0.1", "0", true)?;
    // SAFETY: straight-line use of the librdmacm API with objects created here.
    unsafe {
        let mut listen: *mut rdma_cm_id = std::ptr::null_mut();
        let mut attr = ep_attr();
        if rdma_create_ep(&mut listen, res, std::ptr::null_mut(), &mut attr) != 0 {
            return Err(format!(
                "rdma_create_ep: {}",
                std::io::Error::last_os_error()
            ));
        }
        rdma_freeaddrinfo(res);
        if rdma_listen(listen, 1) != 0 {
            return Err("rdma_listen".into());
        }
        println!("PORT {}", u16::from_be(rdma_get_src_port(listen)));
        let mut id: *mut rdma_cm_id = std::ptr::null_mut();
        if rdma_get_request(listen, &mut id) != 0 {
            return Err(format!(
                "rdma_get_request: {}",
                std::io::Error::last_os_error()
            ));
        }
        if (*id).qp.is_null() || (*id).event.is_null() {
            return Err("rdma_get_request: new id lacks its QP or its event".into());
        }
        let mut buf = [0u8; 16];
        let mr = rdma_reg_msgs(id, buf.as_mut_ptr().cast(), buf.len());
        if mr.is_null() {
            return Err("rdma_reg_msgs".into());
        }
        if rdma_post_recv(
            id,
            std::ptr::null_mut(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            mr,
        ) != 0
        {
            return Err("rdma_post_recv".into());
        }
        if rdma_accept(id, std::ptr::null_mut()) != 0 {
            return Err(format!(
                "rdma_accept (sync): {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut wc: ibv_wc = std::mem::zeroed();
        if rdma_get_recv_comp(id, &mut wc) != 1 || wc.status != ibv_wc_status::IBV_WC_SUCCESS {
            return Err(format!("recv completion status {}", wc.status));
        }
        let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        println!("RECV {}", String::from_utf8_lossy(&buf[..n]));
        rdma_disconnect(id);
        ibv_dereg_mr(mr);
        rdma_destroy_ep(id);
        rdma_destroy_ep(listen);
    }
    Ok(())
}

fn ep_client() -> Result<(), String> {
    let res = addrinfo("127.0.0.1", &env("CM_PORT"), false)?;
    // SAFETY: straight-line use of the librdmacm API with objects created here.
    unsafe {
        let mut id: *mut rdma_cm_id = std::ptr::null_mut();
        let mut attr = ep_attr();
        if rdma_create_ep(&mut id, res, std::ptr::null_mut(), &mut attr) != 0 {
            return Err(format!(
                "rdma_create_ep: {}",
                std::io::Error::last_os_error()
            ));
        }
        rdma_freeaddrinfo(res);
        let mut buf = *b"hello-ep\0\0\0\0\0\0\0\0";
        let mr = rdma_reg_msgs(id, buf.as_mut_ptr().cast(), buf.len());
        if mr.is_null() {
            return Err("rdma_reg_msgs".into());
        }
        if rdma_connect(id, std::ptr::null_mut()) != 0 {
            return Err(format!(
                "rdma_connect (sync): {}",
                std::io::Error::last_os_error()
            ));
        }
        if rdma_post_send(
            id,
            std::ptr::null_mut(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            mr,
            0,
        ) != 0
        {
            return Err("rdma_post_send".into());
        }
        let mut wc: ibv_wc = std::mem::zeroed();
        if rdma_get_send_comp(id, &mut wc) != 1 || wc.status != ibv_wc_status::IBV_WC_SUCCESS {
            return Err(format!("send completion status {}", wc.status));
        }
        println!("SENT");
        rdma_disconnect(id);
        ibv_dereg_mr(mr);
        rdma_destroy_ep(id);
    }
    Ok(())
}

fn active(ch: *mut rdma_event_channel, port: u16) -> Result<*mut rdma_cm_id, String> {
    use rdma_cm_event_type::*;
    // SAFETY: straight-line librdmacm use with a live channel.
    unsafe {
        let mut id: *mut rdma_cm_id = std::ptr::null_mut();
        if rdma_create_id(
            ch,
            &mut id,
            std::ptr::null_mut(),
            rdma_port_space::RDMA_PS_TCP,
        ) != 0
        {
            return Err("rdma_create_id".into());
        }
        let mut dst = sockaddr(&SocketAddr::new([127, 0, 0, 1].into(), port));
        if rdma_resolve_addr(
            id,
            std::ptr::null_mut(),
            &mut dst as *mut _ as *mut libc::sockaddr,
            2000,
        ) != 0
        {
            return Err("rdma_resolve_addr".into());
        }
        let e = wait_event(ch, RDMA_CM_EVENT_ADDR_RESOLVED)?;
        if e.id != id {
            return Err("ADDR_RESOLVED for another id".into());
        }
        if rdma_resolve_route(id, 2000) != 0 {
            return Err("rdma_resolve_route".into());
        }
        wait_event(ch, RDMA_CM_EVENT_ROUTE_RESOLVED)?;
        // QP-less connect: the QPN travels in the conn param.
        let mut p = param(b"x", 1, 1);
        p.qp_num = 0x1234;
        if rdma_connect(id, &mut p) != 0 {
            return Err(format!("rdma_connect: {}", std::io::Error::last_os_error()));
        }
        Ok(id)
    }
}

/// `poll(2)` of a channel's fd for IN and OUT with a 0 timeout: (readable, writable).
fn fd_ready(ch: *mut rdma_event_channel) -> (bool, bool) {
    // SAFETY: live channel; valid pollfd.
    unsafe {
        let mut pfd = libc::pollfd {
            fd: (*ch).fd,
            events: libc::POLLIN | libc::POLLOUT,
            revents: 0,
        };
        libc::poll(&mut pfd, 1, 0);
        (
            pfd.revents & libc::POLLIN != 0,
            pfd.revents & libc::POLLOUT != 0,
        )
    }
}

fn readable(ch: *mut rdma_event_channel) -> bool {
    // SAFETY: live channel; valid pollfd.
    unsafe {
        let mut pfd = libc::pollfd {
            fd: (*ch).fd,
            events: libc::POLLIN,
            revents: 0,
        };
        libc::poll(&mut pfd, 1, WAIT_MS) == 1
    }
}

/// Child of `addr_change_on_listeners`: a listener and a bound, non-listening id on one
/// channel; after each "sent" line exactly one ADDR_CHANGE, on the listener; then a connect
/// from a second id is still requested on the listener.
fn addr_change_child() -> Result<(), String> {
    use rdma_cm_event_type::*;
    // SAFETY: straight-line use of the librdmacm API with live objects created here.
    unsafe {
        let ch = rdma_create_event_channel();
        if ch.is_null() {
            return Err("rdma_create_event_channel".into());
        }
        let mut ids = [std::ptr::null_mut::<rdma_cm_id>(); 2];
        for id in &mut ids {
            if rdma_create_id(ch, id, std::ptr::null_mut(), rdma_port_space::RDMA_PS_TCP) != 0 {
                return Err("rdma_create_id".into());
            }
            let mut sa = sockaddr(&"127.0.0.1:0".parse().expect("addr"));
            if rdma_bind_addr(*id, &mut sa as *mut _ as *mut libc::sockaddr) != 0 {
                return Err("rdma_bind_addr".into());
            }
        }
        let [listen, bound] = ids;
        if rdma_listen(listen, 4) != 0 {
            return Err("rdma_listen".into());
        }
        println!("READY {}", std::process::id());
        for _ in 0..2 {
            read_stdin_line("sent")?;
            let ev = wait_event(ch, RDMA_CM_EVENT_ADDR_CHANGE)?;
            println!("ADDR_CHANGE listener={}", u8::from(ev.id == listen));
            let mut pfd = libc::pollfd {
                fd: (*ch).fd,
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut pfd, 1, 200) == 1 {
                return Err(format!(
                    "a second event after ADDR_CHANGE: {}",
                    wait_any(ch)?.kind
                ));
            }
            println!("QUIET");
        }
        let port = u16::from_be(rdma_get_src_port(listen));
        let client_ch = rdma_create_event_channel();
        let client = active(client_ch, port)?;
        let req = wait_event(ch, RDMA_CM_EVENT_CONNECT_REQUEST)?;
        println!("STILL_LISTENING");
        rdma_reject(req.id, std::ptr::null(), 0);
        rdma_destroy_id(req.id);
        rdma_destroy_id(client);
        rdma_destroy_event_channel(client_ch);
        rdma_destroy_id(bound);
        rdma_destroy_id(listen);
        rdma_destroy_event_channel(ch);
    }
    Ok(())
}

fn misc() -> Result<(), String> {
    use rdma_cm_event_type::*;
    // SAFETY: straight-line librdmacm use with objects created here.
    unsafe {
        let chl = rdma_create_event_channel();
        let cha = rdma_create_event_channel();
        if chl.is_null() || cha.is_null() {
            return Err("rdma_create_event_channel".into());
        }
        // Non-blocking empty channel: EAGAIN.
        let fl = libc::fcntl((*chl).fd, libc::F_GETFL);
        libc::fcntl((*chl).fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        let mut e: *mut rdma_cm_event = std::ptr::null_mut();
        if rdma_get_cm_event(chl, &mut e) != -1
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN)
        {
            return Err(
                "non-blocking rdma_get_cm_event on an empty channel must fail with EAGAIN".into(),
            );
        }
        // Like the kernel's rdma_cm event file, the fd is readable exactly while an event is
        // queued and never writable.
        if fd_ready(chl) != (false, false) {
            return Err(format!("empty channel fd: (IN, OUT) = {:?}", fd_ready(chl)));
        }
        let mut listen: *mut rdma_cm_id = std::ptr::null_mut();
        rdma_create_id(
            chl,
            &mut listen,
            std::ptr::null_mut(),
            rdma_port_space::RDMA_PS_TCP,
        );
        let mut sa = sockaddr(&SocketAddr::new([127, 0, 0, 1].into(), 0));
        if rdma_bind_addr(listen, &mut sa as *mut _ as *mut libc::sockaddr) != 0 {
            return Err("bind listener".into());
        }
        let port = u16::from_be(rdma_get_src_port(listen));
        // Wildcard bind of the same port conflicts (TCP rules).
        let mut other: *mut rdma_cm_id = std::ptr::null_mut();
        rdma_create_id(
            chl,
            &mut other,
            std::ptr::null_mut(),
            rdma_port_space::RDMA_PS_TCP,
        );
        let mut any = sockaddr(&SocketAddr::new([0, 0, 0, 0].into(), port));
        if rdma_bind_addr(other, &mut any as *mut _ as *mut libc::sockaddr) != -1
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::EADDRINUSE)
        {
            return Err("0.0.0.0:port must conflict with 127.0.0.1:port (EADDRINUSE)".into());
        }
        rdma_destroy_id(other);
        if rdma_listen(listen, 1) != 0 {
            return Err("rdma_listen".into());
        }
        let id1 = active(cha, port)?;
        if !readable(chl) {
            return Err("no CONNECT_REQUEST for the first connection".into());
        }
        if fd_ready(chl) != (true, false) {
            return Err(format!(
                "channel fd with an event queued: (IN, OUT) = {:?}",
                fd_ready(chl)
            ));
        }
        // Backlog 1 is used up by the unretrieved request: the next REQ is rejected.
        let id2 = active(cha, port)?;
        let e2 = wait_event(cha, RDMA_CM_EVENT_REJECTED)?;
        if e2.id != id2 || e2.status != 1 {
            return Err(format!(
                "over-backlog connect: status {}, want 1",
                e2.status
            ));
        }
        let req = wait_event(chl, RDMA_CM_EVENT_CONNECT_REQUEST)?;
        if fd_ready(chl) != (false, false) {
            return Err(format!(
                "channel fd after its event was read: (IN, OUT) = {:?}",
                fd_ready(chl)
            ));
        }
        if rdma_reject(req.id, std::ptr::null(), 0) != 0 {
            return Err("rdma_reject".into());
        }
        let e1 = wait_event(cha, RDMA_CM_EVENT_REJECTED)?;
        if e1.id != id1 || e1.status != 28 {
            return Err(format!("rejected connect: status {}, want 28", e1.status));
        }
        rdma_destroy_id(req.id);
        // The backlog slot is free again; then the listener goes away with the request pending.
        let id3 = active(cha, port)?;
        if !readable(chl) {
            return Err("no CONNECT_REQUEST for the third connection".into());
        }
        rdma_destroy_id(listen);
        let e3 = wait_any(cha)?;
        if e3.id != id3 || e3.kind != RDMA_CM_EVENT_REJECTED {
            return Err(format!(
                "listener destroyed with a pending request: event {} status {}",
                e3.kind, e3.status
            ));
        }
        // Nobody listens any more: REJECTED with status 8 (invalid service id).
        let id4 = active(cha, port)?;
        let e4 = wait_event(cha, RDMA_CM_EVENT_REJECTED)?;
        if e4.id != id4 || e4.status != 8 {
            return Err(format!(
                "connect without listener: status {}, want 8",
                e4.status
            ));
        }
        for id in [id1, id2, id3, id4] {
            rdma_destroy_id(id);
        }
        // IPv6 wildcard listeners are dual-stack unless RDMA_OPTION_ID_AFONLY is set.
        for afonly in [1i32, 0] {
            let mut l6: *mut rdma_cm_id = std::ptr::null_mut();
            rdma_create_id(
                chl,
                &mut l6,
                std::ptr::null_mut(),
                rdma_port_space::RDMA_PS_TCP,
            );
            if rdma_set_option(
                l6,
                0, // RDMA_OPTION_ID (rdma_cma.h; not in rdma-sys)
                2, // RDMA_OPTION_ID_AFONLY
                &afonly as *const i32 as *mut c_void,
                std::mem::size_of::<i32>(),
            ) != 0
            {
                return Err("rdma_set_option(AFONLY)".into());
            }
            let mut any6 = sockaddr(&"[::]:0".parse().expect("literal"));
            if rdma_bind_addr(l6, &mut any6 as *mut _ as *mut libc::sockaddr) != 0
                || rdma_listen(l6, 0) != 0
            {
                return Err("bind/listen [::]:0".into());
            }
            if !(*l6).verbs.is_null() {
                return Err("a wildcard bind must leave cm_id->verbs NULL".into());
            }
            let p6 = u16::from_be(rdma_get_src_port(l6));
            let id5 = active(cha, p6)?;
            if afonly == 1 {
                let e5 = wait_event(cha, RDMA_CM_EVENT_REJECTED)?;
                if e5.id != id5 || e5.status != 8 {
                    return Err(format!("AFONLY listener: status {}, want 8", e5.status));
                }
            } else {
                let r5 = wait_event(chl, RDMA_CM_EVENT_CONNECT_REQUEST)?;
                if (*r5.id).verbs.is_null() {
                    return Err("a CONNECT_REQUEST id must be bound to the device".into());
                }
                rdma_reject(r5.id, std::ptr::null(), 0);
                wait_event(cha, RDMA_CM_EVENT_REJECTED)?;
                rdma_destroy_id(r5.id);
            }
            rdma_destroy_id(id5);
            rdma_destroy_id(l6);
        }
        rdma_destroy_event_channel(cha);
        rdma_destroy_event_channel(chl);
    }
    println!("COUNTERS {}", std::process::id());
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    println!("DONE");
    Ok(())
}
