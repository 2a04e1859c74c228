//! RDMA devices used by the transport (upstream `create_ib_device`, doc §4.1).

use crate::verbs::{Context, DeviceAttr, Pd, VerbsError, DEVICE_MEM_MGT_EXTENSIONS};

/// One device: its context, protection domain and attributes.
pub(crate) struct Device {
    /// Device name (`ibv_get_device_name`).
    pub name: String,
    /// The verbs context.
    pub ctx: Context,
    /// The protection domain every object of the transport uses.
    pub pd: Pd,
    /// Device attributes.
    pub attr: DeviceAttr,
    /// Respond with SEND_WITH_INV when asked (needs memory-management
    /// extensions; upstream turns it off for SoftRoCE vendor ids).
    pub send_with_invalidate: bool,
    /// Vendor id 0 or 0xFFFFFF: SoftRoCE in upstream's eyes (no
    /// IBV_EVENT_QP_LAST_WQE_REACHED, no send with invalidate).
    pub soft_roce: bool,
}

impl Device {
    /// Opens the transport's view of `ctx`.
    pub(crate) fn new(ctx: Context) -> Result<Device, VerbsError> {
        let attr = ctx.query_device()?;
        let pd = Pd::new(&ctx)?;
        if let Err(e) = ctx.set_async_nonblocking() {
            tracing::warn!(device = %ctx.name(), "async fd non-blocking: {e}");
        }
        let soft_roce = attr.vendor_id == 0 || attr.vendor_id == 0x00ff_ffff;
        let send_with_invalidate =
            attr.device_cap_flags & DEVICE_MEM_MGT_EXTENSIONS != 0 && !soft_roce;
        Ok(Device {
            name: ctx.name(),
            ctx,
            pd,
            attr,
            send_with_invalidate,
            soft_roce,
        })
    }
}
