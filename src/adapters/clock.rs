//! Clocks: the system clock, and a clock moved by hand for tests and demos.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::app::ports::Clock;
use crate::domain::time::{Span, Timestamp};

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timestamp::from_millis(ms)
    }
}

/// The system clock plus an offset that can be moved forward by hand, so the
/// console can show an expiry without waiting for it.
#[derive(Debug, Default, Clone)]
pub struct OffsetClock {
    offset_ms: Arc<AtomicI64>,
}

impl OffsetClock {
    pub fn advance(&self, by: Span) {
        self.offset_ms.fetch_add(by.as_millis(), Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> Timestamp {
        SystemClock
            .now()
            .plus(Span::from_millis(self.offset_ms.load(Ordering::SeqCst)))
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now_ms: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        Self {
            now_ms: Arc::new(AtomicI64::new(start.as_millis())),
        }
    }

    pub fn set(&self, at: Timestamp) {
        self.now_ms.store(at.as_millis(), Ordering::SeqCst);
    }

    pub fn advance(&self, by: Span) {
        self.now_ms.fetch_add(by.as_millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.now_ms.load(Ordering::SeqCst))
    }
}
