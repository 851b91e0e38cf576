//! The engine's side of the event channel: sends an event, wakes the listener, and remembers
//! when nobody listens any more (the engine then stops at its next chance).

use std::sync::Arc;

use crossbeam_channel::Sender;

use super::messages::Event;
use super::WakeUp;

/// Sends events and wakes the listener; remembers whether the listener is gone.
pub(super) struct Outbox {
    events: Sender<Event>,
    wake: WakeUp,
    listener_gone: std::cell::Cell<bool>,
}

impl Outbox {
    pub(super) fn new(events: Sender<Event>, wake: WakeUp) -> Self {
        Self {
            events,
            wake,
            listener_gone: std::cell::Cell::new(false),
        }
    }

    /// An outbox for another thread, to the same listener.
    pub(super) fn detached(&self) -> Outbox {
        Outbox::new(self.events.clone(), Arc::clone(&self.wake))
    }

    /// Sends `event`; false when nobody listens any more. The engine then stops at the next
    /// point where it can (see `listener_gone`), since nobody could see its results.
    pub(super) fn send(&self, event: Event) -> bool {
        let delivered = self.events.send(event).is_ok();
        if delivered {
            (self.wake)();
        } else {
            self.listener_gone.set(true);
        }
        delivered
    }

    /// Whether a send has found the event receiver dropped.
    pub(super) fn listener_gone(&self) -> bool {
        self.listener_gone.get()
    }
}
