//! The least a fill must receive to keep its upstream slot (`proxy.maxfetches`).
//!
//! An upstream trickling a byte a second would otherwise hold a slot for days, and a few such
//! blobs would stop every cold pull. A fill nobody reads is abandoned after one window below
//! the floor (`proxy.fillminrate` bytes per second over `proxy.fillratewindow`). A fill a client
//! is reading gets `ATTENDED_WINDOWS` windows in a row below the floor: the client chose to
//! wait, and a client reading slowly does not slow the fill (it reads the spool), so only
//! upstream's own trickle can trip it.

use std::time::{Duration, Instant};

/// Windows in a row below the floor that end a fill a client is reading.
pub const ATTENDED_WINDOWS: u32 = 10;

#[derive(Clone, Copy, Debug)]
pub struct RateFloor {
    /// Bytes per second; 0 turns the floor off.
    pub min_bytes_per_sec: u64,
    pub window: Duration,
}

impl RateFloor {
    /// Starts measuring now.
    pub fn watch(&self) -> RateWatch {
        RateWatch {
            floor: *self,
            window_start: Instant::now(),
            received_at_start: 0,
            windows_below: 0,
        }
    }

    fn is_off(&self) -> bool {
        self.min_bytes_per_sec == 0 || self.window.is_zero()
    }
}

/// One fill's measurement, window after window.
#[derive(Debug)]
pub struct RateWatch {
    floor: RateFloor,
    window_start: Instant,
    received_at_start: u64,
    windows_below: u32,
}

impl RateWatch {
    /// When the current window ends (None when the floor is off): the receiver wakes up then
    /// to `check` even if nothing arrived.
    pub fn window_end(&self) -> Option<Instant> {
        // A window too long to add to a clock reading (`fillratewindow: 1000y`) never ends.
        (!self.floor.is_off())
            .then(|| self.window_start.checked_add(self.floor.window))
            .flatten()
    }

    /// Closes the window if it is over; `Err` says why the fill should give up. `received` is
    /// the fill's byte count so far; `attended` whether a client is reading it.
    pub fn check(&mut self, now: Instant, received: u64, attended: bool) -> Result<(), String> {
        let Some(end) = self.window_end() else {
            return Ok(());
        };
        if now < end {
            return Ok(());
        }
        let got = received.saturating_sub(self.received_at_start);
        let floor = (self.floor.min_bytes_per_sec as f64 * self.floor.window.as_secs_f64()) as u64;
        self.window_start = now;
        self.received_at_start = received;
        if got >= floor {
            self.windows_below = 0;
            return Ok(());
        }
        self.windows_below += 1;
        let allowed = if attended { ATTENDED_WINDOWS } else { 1 };
        if self.windows_below < allowed {
            return Ok(());
        }
        let window = humantime::format_duration(self.floor.window);
        let who = if attended {
            "with clients waiting"
        } else {
            "with no client reading"
        };
        Err(format!(
            "{got} bytes in the last {window} ({} windows below {} bytes/s, proxy.fillminrate) {who}",
            self.windows_below, self.floor.min_bytes_per_sec
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn floor() -> RateFloor {
        RateFloor {
            min_bytes_per_sec: 1000,
            window: 10 * SECOND,
        }
    }

    #[test]
    fn an_unread_fill_below_the_floor_gives_up_after_one_window() {
        let mut watch = floor().watch();
        let start = watch.window_start;
        assert!(
            watch.check(start + 9 * SECOND, 0, false).is_ok(),
            "window not over"
        );
        assert!(watch.check(start + 10 * SECOND, 9_999, false).is_err());
    }

    #[test]
    fn a_fill_at_the_floor_goes_on() {
        let mut watch = floor().watch();
        let start = watch.window_start;
        for window in 1..=20 {
            let received = window * 10_000;
            let now = start + Duration::from_secs(10 * window);
            assert!(watch.check(now, received, false).is_ok());
        }
    }

    #[test]
    fn a_read_fill_gets_several_windows_below_the_floor() {
        let mut watch = floor().watch();
        let start = watch.window_start;
        for window in 1..ATTENDED_WINDOWS {
            let now = start + Duration::from_secs(10 * window as u64);
            assert!(watch.check(now, 0, true).is_ok(), "window {window}");
        }
        let last = start + Duration::from_secs(10 * ATTENDED_WINDOWS as u64);
        assert!(watch.check(last, 0, true).is_err());
    }

    #[test]
    fn the_reader_leaving_ends_a_trickle_at_the_next_window() {
        let mut watch = floor().watch();
        let start = watch.window_start;
        assert!(watch.check(start + 10 * SECOND, 5, true).is_ok());
        assert!(watch.check(start + 20 * SECOND, 6, false).is_err());
    }

    #[test]
    fn zero_turns_the_floor_off() {
        let off = RateFloor {
            min_bytes_per_sec: 0,
            window: 10 * SECOND,
        };
        let mut watch = off.watch();
        assert_eq!(watch.window_end(), None);
        let later = Instant::now() + 1000 * SECOND;
        assert!(watch.check(later, 0, false).is_ok());
    }

    #[test]
    fn an_endless_window_never_closes() {
        let endless = RateFloor {
            min_bytes_per_sec: 1000,
            window: Duration::MAX,
        };
        let mut watch = endless.watch();
        assert_eq!(watch.window_end(), None);
        assert!(watch.check(Instant::now() + SECOND, 0, false).is_ok());
    }
}
