//! RDMA devices used by the transport (upstream `create_ib_device`, doc §4.1)
//! and the table of them, whose slots are retired when a device is removed
//! and appended when one comes back (upstream doc §5.9).

use std::sync::{Arc, Mutex, MutexGuard};

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

/// Where a device slot stands (upstream: `is_ready`, `need_destroy`, and the
/// device's removal from the transport's list).
enum SlotState {
    /// Usable: new qpairs and pollers may be made on it.
    Live(Arc<Device>),
    /// Removed or fatal (upstream `need_destroy`): its qpairs and pollers are
    /// going; nothing new is made on it. Retired once both counts are 0.
    Dying(Arc<Device>),
    /// Gone: the transport holds nothing of it any more.
    Retired,
}

struct Slot {
    state: SlotState,
    /// Poll groups holding a poller on this device.
    pollers: u32,
}

/// The transport's devices by index. A removed device's slot is retired once
/// every poll group dropped its poller on it, and a device that comes back
/// (as a new context, or the same one after a fatal error) gets a new slot:
/// an index never names two devices, so a late event naming an old index
/// cannot reach the new device. Used on connection setup and device events
/// only, never per I/O.
#[derive(Default)]
pub(crate) struct DeviceTable {
    slots: Mutex<Vec<Slot>>,
}

impl DeviceTable {
    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a live device; returns its index.
    pub(crate) fn push(&self, d: Device) -> usize {
        let mut s = self.lock();
        s.push(Slot {
            state: SlotState::Live(Arc::new(d)),
            pollers: 0,
        });
        s.len() - 1
    }

    /// Slots ever made (live, dying or retired): device indices are below.
    pub(crate) fn slot_count(&self) -> usize {
        self.lock().len()
    }

    /// The live devices with their indices.
    pub(crate) fn live(&self) -> Vec<(usize, Arc<Device>)> {
        self.lock()
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &s.state {
                SlotState::Live(d) => Some((i, d.clone())),
                _ => None,
            })
            .collect()
    }

    /// The live device whose context is `ctx`.
    pub(crate) fn live_index(&self, ctx: &Context) -> Option<usize> {
        self.lock()
            .iter()
            .position(|s| matches!(&s.state, SlotState::Live(d) if d.ctx == *ctx))
    }

    /// Device `i` if it is live.
    pub(crate) fn get_live(&self, i: usize) -> Option<Arc<Device>> {
        match self.lock().get(i).map(|s| &s.state) {
            Some(SlotState::Live(d)) => Some(d.clone()),
            _ => None,
        }
    }

    /// Device `i`'s name, if it is live or dying.
    pub(crate) fn name(&self, i: usize) -> Option<String> {
        match self.lock().get(i).map(|s| &s.state) {
            Some(SlotState::Live(d) | SlotState::Dying(d)) => Some(d.name.clone()),
            _ => None,
        }
    }

    /// A poll group makes a poller on device `i`: counted, and the device
    /// handed out, only while it is live.
    pub(crate) fn claim(&self, i: usize) -> Option<Arc<Device>> {
        let mut s = self.lock();
        let slot = s.get_mut(i)?;
        match &slot.state {
            SlotState::Live(d) => {
                let d = d.clone();
                slot.pollers += 1;
                Some(d)
            }
            _ => None,
        }
    }

    /// A poll group dropped its poller on device `i`.
    pub(crate) fn release(&self, i: usize) {
        if let Some(slot) = self.lock().get_mut(i) {
            slot.pollers = slot.pollers.saturating_sub(1);
        }
    }

    /// Marks live device `i` dying; false if it was not live.
    pub(crate) fn mark_dying(&self, i: usize) -> bool {
        let mut s = self.lock();
        let Some(slot) = s.get_mut(i) else {
            return false;
        };
        let state = std::mem::replace(&mut slot.state, SlotState::Retired);
        match state {
            SlotState::Live(d) => {
                slot.state = SlotState::Dying(d);
                true
            }
            other => {
                slot.state = other;
                false
            }
        }
    }

    /// Whether any device is dying (the rescan waits for them, upstream).
    pub(crate) fn any_dying(&self) -> bool {
        self.lock()
            .iter()
            .any(|s| matches!(s.state, SlotState::Dying(_)))
    }

    /// Retires every dying device no poller uses any more and for which
    /// `qpairs_left(index)` is 0; returns their indices and names. The
    /// table's reference to each is dropped here (its PD goes with the last
    /// one).
    pub(crate) fn retire_unused(&self, qpairs_left: impl Fn(usize) -> u64) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (i, slot) in self.lock().iter_mut().enumerate() {
            let SlotState::Dying(d) = &slot.state else {
                continue;
            };
            if slot.pollers == 0 && qpairs_left(i) == 0 {
                out.push((i, d.name.clone()));
                slot.state = SlotState::Retired;
            }
        }
        out
    }
}
