//! Compile-time layout checks of the generated verbs mirrors against rdma-core 44 on x86_64
//! (offsets from `softrdma-scope.md` §2, printed there with `offsetof`).

use crate::verbs::*;
use core::mem::{offset_of, size_of};

macro_rules! check {
    ($t:ty, size $s:expr) => {
        const _: () = assert!(size_of::<$t>() == $s);
    };
    ($t:ty, $f:ident == $o:expr) => {
        const _: () = assert!(offset_of!($t, $f) == $o);
    };
}

check!(ibv_context, size 328);
check!(verbs_context, size 648);
check!(verbs_context, context == 320);
check!(verbs_context, sz == 312);
check!(verbs_context, query_port == 0);
check!(verbs_context, query_device_ex == 216);
check!(verbs_context, create_qp_ex == 264);
check!(verbs_context, create_cq_ex == 200);
check!(ibv_context, ops == 8);
check!(ibv_context, cmd_fd == 264);
check!(ibv_context, async_fd == 268);
check!(ibv_context, num_comp_vectors == 272);
check!(ibv_context, mutex == 280);
check!(ibv_context, abi_compat == 320);
check!(ibv_context_ops, poll_cq == 88);
check!(ibv_context_ops, req_notify_cq == 96);
check!(ibv_context_ops, post_srq_recv == 160);
check!(ibv_context_ops, post_send == 200);
check!(ibv_context_ops, post_recv == 208);
check!(ibv_context_ops, alloc_mw == 56);
check!(ibv_device, size 664);
check!(ibv_device, node_type == 16);
check!(ibv_device, transport_type == 20);
check!(ibv_device, name == 24);
check!(ibv_device, dev_name == 88);
check!(ibv_device, dev_path == 152);
check!(ibv_device, ibdev_path == 408);
check!(ibv_pd, size 16);
check!(ibv_mr, size 48);
check!(ibv_mr, lkey == 36);
check!(ibv_mr, rkey == 40);
check!(ibv_comp_channel, size 16);
check!(ibv_comp_channel, fd == 8);
check!(ibv_cq, size 128);
check!(ibv_cq, cqe == 28);
check!(ibv_cq, comp_events_completed == 120);
check!(ibv_srq, size 128);
check!(ibv_qp, size 160);
check!(ibv_qp, qp_num == 52);
check!(ibv_qp, state == 56);
check!(ibv_async_event, size 16);
check!(ibv_async_event, event_type == 8);
check!(ibv_wc, size 48);
check!(ibv_wc, qp_num == 28);
check!(ibv_wc, wc_flags == 36);
check!(ibv_wc, slid == 42);
check!(ibv_send_wr, size 128);
check!(ibv_send_wr, opcode == 28);
check!(ibv_send_wr, send_flags == 32);
check!(ibv_send_wr, wr == 40);
check!(ibv_send_wr, qp_type == 72);
check!(ibv_recv_wr, size 32);
check!(ibv_sge, size 16);
check!(ibv_port_attr, size 52);
check!(ibv_device_attr, size 232);
check!(ibv_device_attr_ex, size 400);
check!(ibv_qp_attr, size 144);
check!(ibv_qp_init_attr, size 64);
