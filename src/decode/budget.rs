//! budget: the memory that decoding in flight may hold, shared by every request.
//!
//! A decoder learns what an image will cost only from its headers (a 7 KB JPEG may declare
//! 65500x65500), so each request carries a [`Reservation`] that the decoders grow, before
//! they allocate, by what the headers say they are about to allocate. The sum over all
//! requests never passes the budget: a request that would pass it waits a bounded time for
//! others to finish and is then refused with RESOURCE_EXHAUSTED; one that could never fit
//! (more than the whole budget on its own) is refused at once. A cancelled or expired call
//! stops at its next reservation or checkpoint, and its bytes return when its decode ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::DecodeError;
use crate::metrics;

/// Shared accounting of the bytes decodes in flight hold. Cheap to clone.
#[derive(Clone)]
pub struct DecodeBudget {
    inner: Arc<Inner>,
}

struct Inner {
    /// Bytes all reservations together may hold.
    total: u64,
    /// Bytes held now.
    used: Mutex<u64>,
    /// Signalled whenever bytes are released, so waiting decodes re-check.
    released: Condvar,
    /// Longest a decode waits for others to release bytes before it is refused.
    max_wait: Duration,
}

impl Inner {
    /// The server's budget is exported as `medsentry_decode_memory_bytes`; an unlimited one
    /// (the command line's) is not.
    fn export(&self, used: u64) {
        if self.total != u64::MAX {
            metrics::set_decode_memory(used, self.total);
        }
    }
}

impl DecodeBudget {
    pub fn new(total_bytes: u64, max_wait: Duration) -> Self {
        let inner = Inner { total: total_bytes, used: Mutex::new(0), released: Condvar::new(), max_wait };
        inner.export(0);
        DecodeBudget { inner: Arc::new(inner) }
    }

    /// No limit: for the command line, which decodes one file at a time.
    pub fn unlimited() -> Self {
        DecodeBudget::new(u64::MAX, Duration::ZERO)
    }

    pub fn total(&self) -> u64 {
        self.inner.total
    }

    /// Bytes held by decodes in flight now.
    pub fn in_use(&self) -> u64 {
        *self.inner.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An empty reservation for one request; `deadline` (the call's) shortens the wait.
    pub fn reserve(&self, cancel: CancelFlag, deadline: Option<Instant>) -> Reservation {
        Reservation { budget: self.inner.clone(), held: 0, cancel, deadline }
    }
}

/// Set when the caller has gone (cancelled, disconnected) or its deadline has passed:
/// decoding stops at its next checkpoint.
#[derive(Clone, Default, Debug)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// A guard that cancels when dropped, unless disarmed: held by the async side of a
    /// request, so that a call dropped by its caller stops its blocking decode.
    pub fn guard(&self) -> CancelOnDrop {
        CancelOnDrop(Some(self.clone()))
    }
}

pub struct CancelOnDrop(Option<CancelFlag>);

impl CancelOnDrop {
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.cancel();
        }
    }
}

/// The bytes one request's decode holds; released when dropped.
pub struct Reservation {
    budget: Arc<Inner>,
    held: u64,
    cancel: CancelFlag,
    deadline: Option<Instant>,
}

impl Reservation {
    /// Bytes this reservation holds.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Stops the decode when its caller has gone or its deadline has passed.
    pub fn checkpoint(&self) -> Result<(), DecodeError> {
        if self.cancel.is_cancelled() {
            return Err(DecodeError::Cancelled);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(DecodeError::DeadlineExceeded);
        }
        Ok(())
    }

    /// Adds `bytes` before the decoder allocates them; `what` names the allocation in
    /// refusals. Waits (bounded) while other decodes hold the budget.
    pub fn grow(&mut self, bytes: u64, what: &str) -> Result<(), DecodeError> {
        self.checkpoint()?;
        let b = &*self.budget;
        let needed = self.held.saturating_add(bytes);
        if needed > b.total {
            return Err(DecodeError::OverBudget { what: what.to_string(), needed, budget: b.total });
        }
        let waited_since = Instant::now();
        let give_up = self.deadline.map_or(waited_since + b.max_wait, |d| d.min(waited_since + b.max_wait));
        let mut used = b.used.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if used.saturating_add(bytes) <= b.total {
                *used += bytes;
                self.held += bytes;
                b.export(*used);
                return Ok(());
            }
            let now = Instant::now();
            if now >= give_up || self.cancel.is_cancelled() {
                return Err(DecodeError::BudgetExhausted { needed: bytes, in_use: *used, budget: b.total });
            }
            // Woken by a release, or at the latest every 50 ms to notice a cancellation.
            let slice = (give_up - now).min(Duration::from_millis(50));
            used = b.released.wait_timeout(used, slice).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held == 0 {
            return;
        }
        let mut used = self.budget.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(self.held);
        self.budget.export(*used);
        drop(used);
        self.budget.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_add_up_and_release_on_drop() {
        let budget = DecodeBudget::new(1000, Duration::from_millis(20));
        let mut a = budget.reserve(CancelFlag::default(), None);
        a.grow(600, "a").unwrap();
        let mut b = budget.reserve(CancelFlag::default(), None);
        assert!(matches!(b.grow(500, "b"), Err(DecodeError::BudgetExhausted { needed: 500, in_use: 600, budget: 1000 })));
        b.grow(400, "b").unwrap();
        assert_eq!(budget.in_use(), 1000);
        drop(a);
        assert_eq!(budget.in_use(), 400);
        b.grow(500, "b").unwrap();
        drop(b);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn more_than_the_whole_budget_is_refused_at_once() {
        let budget = DecodeBudget::new(1000, Duration::from_secs(60));
        let mut r = budget.reserve(CancelFlag::default(), None);
        let started = Instant::now();
        assert!(matches!(r.grow(1001, "pixels"), Err(DecodeError::OverBudget { needed: 1001, .. })));
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_waiting_decode_proceeds_when_another_releases() {
        let budget = DecodeBudget::new(1000, Duration::from_secs(30));
        let mut a = budget.reserve(CancelFlag::default(), None);
        a.grow(900, "a").unwrap();
        let waiter = {
            let budget = budget.clone();
            std::thread::spawn(move || {
                let mut b = budget.reserve(CancelFlag::default(), None);
                b.grow(500, "b").map(|_| b.held())
            })
        };
        std::thread::sleep(Duration::from_millis(30));
        drop(a);
        assert_eq!(waiter.join().unwrap().unwrap(), 500);
    }

    #[test]
    fn cancelled_and_expired_reservations_stop() {
        let budget = DecodeBudget::new(1000, Duration::from_secs(30));
        let flag = CancelFlag::default();
        let guard = flag.guard();
        let mut r = budget.reserve(flag.clone(), None);
        r.grow(10, "x").unwrap();
        drop(guard);
        assert!(matches!(r.grow(10, "x"), Err(DecodeError::Cancelled)));
        let disarmed = CancelFlag::default();
        disarmed.guard().disarm();
        assert!(!disarmed.is_cancelled());
        let past = budget.reserve(CancelFlag::default(), Some(Instant::now()));
        assert!(matches!(past.checkpoint(), Err(DecodeError::DeadlineExceeded)));
    }
}
