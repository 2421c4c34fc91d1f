//! The screencast of the tab in front: its parameters, and a watchdog that
//! restarts it when a tab shows no frame after it came to the front or
//! navigated.
//!
//! Chromium sends a frame soon after `Page.startScreencast` and after every
//! navigation that paints. A screencast started while a navigation swaps the
//! page's renderer can stay silent for good, and the viewer would then watch
//! a frozen page with no sign of trouble.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The number of tries, and the pause between them, to start the
/// screencast of the tab in front when Chromium rejects the start.
pub const START_ATTEMPTS: u32 = 20;
pub const START_RETRY: Duration = Duration::from_millis(100);

/// The time a tab may show no frame, after it came to the front or
/// navigated, before its screencast restarts.
pub const SILENCE: Duration = Duration::from_millis(1500);

/// The number of restarts of a silent screencast before the watchdog waits
/// for the tab's next navigation.
pub const MAX_RESTARTS: u32 = 3;

/// The interval between the watchdog's checks.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Returns the parameters of `Emulation.setDeviceMetricsOverride` for a viewport.
pub fn metrics((width, height): (u32, u32)) -> Value {
    json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false })
}

/// Returns the parameters of `Page.startScreencast` for a viewport.
pub fn params((width, height): (u32, u32)) -> Value {
    json!({ "format": "jpeg", "quality": 75, "maxWidth": width, "maxHeight": height, "everyNthFrame": 1 })
}

/// The watchdog's record of the screencast of the tab in front.
#[derive(Debug, Default)]
pub struct Watchdog {
    /// The target session of the tab in front, once its screencast started.
    session: Option<String>,
    /// When the tab came to the front, last navigated or was restarted.
    since: Option<Instant>,
    /// Whether a frame arrived after `since`.
    framed: bool,
    restarts: u32,
}

impl Watchdog {
    /// Records that the screencast of `session` started.
    pub fn started(&mut self, session: &str, now: Instant) {
        *self = Watchdog { session: Some(session.to_string()), since: Some(now), framed: false, restarts: 0 };
    }

    /// Records that the main frame of `session` navigated.
    pub fn navigated(&mut self, session: &str, now: Instant) {
        if self.session.as_deref() == Some(session) {
            self.since = Some(now);
            self.framed = false;
            self.restarts = 0;
        }
    }

    /// Records a frame of `session`.
    pub fn frame(&mut self, session: &str) {
        if self.session.as_deref() == Some(session) {
            self.framed = true;
        }
    }

    /// Returns the session whose screencast is due for a restart, with the
    /// restart's number from 1, and counts the restart. Returns `None`
    /// while frames arrive, before [`SILENCE`] has passed, or after
    /// [`MAX_RESTARTS`].
    pub fn due(&mut self, now: Instant) -> Option<(String, u32)> {
        let since = self.since?;
        if self.framed || now.duration_since(since) < SILENCE || self.restarts >= MAX_RESTARTS {
            return None;
        }
        self.restarts += 1;
        self.since = Some(now);
        Some((self.session.clone()?, self.restarts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_tab_restarts_at_most_three_times() {
        let start = Instant::now();
        let mut watchdog = Watchdog::default();
        assert_eq!(watchdog.due(start + SILENCE), None, "nothing is watched before a screencast starts");
        watchdog.started("A", start);
        assert_eq!(watchdog.due(start + SILENCE / 2), None, "the silence is not long enough yet");
        let mut now = start;
        for restart in 1..=MAX_RESTARTS {
            now += SILENCE;
            assert_eq!(watchdog.due(now), Some(("A".to_string(), restart)));
            assert_eq!(watchdog.due(now), None, "a restart waits for a new silence");
        }
        assert_eq!(watchdog.due(now + SILENCE * 2), None, "the watchdog gives up");
    }

    #[test]
    fn frames_and_navigations_reset_the_watch() {
        let start = Instant::now();
        let mut watchdog = Watchdog::default();
        watchdog.started("A", start);
        watchdog.frame("B");
        assert_eq!(watchdog.due(start + SILENCE), Some(("A".to_string(), 1)), "another tab's frame does not count");
        watchdog.frame("A");
        assert_eq!(watchdog.due(start + SILENCE * 3), None, "a frame arrived");

        watchdog.navigated("A", start + SILENCE * 3);
        assert_eq!(watchdog.due(start + SILENCE * 4), Some(("A".to_string(), 1)), "no frame since the navigation");
        watchdog.navigated("B", start + SILENCE * 5);
        assert_eq!(watchdog.due(start + SILENCE * 5), Some(("A".to_string(), 2)), "another tab's navigation does not count");
    }
}
