//! The in-flight leases of this replica's requests: held from admission until settled, renewed meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use usage_tracker::{Reservation, UsageStore};

/// Reservations of this replica's requests in flight, by reservation id: their leases are renewed until they
/// are settled.
#[derive(Default)]
pub(crate) struct Leases {
    held: Mutex<HashMap<String, Reservation>>,
}

impl Leases {
    /// Starts renewing `reservation`'s lease.
    pub(crate) fn hold(&self, reservation: &Reservation) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(reservation.id.clone(), reservation.clone());
    }

    /// Stops renewing the lease of reservation `id` (it is being settled).
    pub(crate) fn release(&self, id: &str) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    fn held(&self) -> Vec<Reservation> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

/// Renews the in-flight leases of this replica's requests every third of the lease (`inflight_lease`):
/// one backend call per model group with requests in flight, whatever their number. Ends on `shutdown` or
/// when the leases are gone with the router.
pub(crate) async fn renew_leases(
    leases: Weak<Leases>,
    usage: Arc<dyn UsageStore>,
    lease: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let Some(leases) = leases.upgrade() else {
            return;
        };
        let held = leases.held();
        drop(leases);
        if held.is_empty() {
            continue;
        }
        if let Err(e) = usage.renew(&held, lease).await {
            tracing::warn!(error = %e, "renewing in-flight leases failed (retried at the next tick)");
        }
    }
}
