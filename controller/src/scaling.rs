//! How many workers a beamline needs, from what the controller measures (not CPU): the event
//! backlog (leased but unfinished events, against the lease window) and the workers' load (the
//! share of time they spent processing since the last look). Pure; the Kubernetes side only
//! reads the answer.
//!
//! Hysteresis: scale up when workers are busier than `up_busy` or the backlog fills
//! `up_backlog` of the window; scale down (one at a time) only when they are idler than
//! `down_busy` and the backlog is under `down_backlog`; in between, nothing. Each direction has
//! its cooldown since the last change, so a burst does not make the replica count flap.

use std::collections::BTreeMap;
use std::time::Duration;

/// The bounds and thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePolicy {
    /// Fewest workers.
    pub min: u32,
    /// Most workers.
    pub max: u32,
    /// Mean busy share above which to add workers.
    pub up_busy: f64,
    /// Mean busy share below which one worker may go.
    pub down_busy: f64,
    /// Backlog share of the window above which to add workers.
    pub up_backlog: f64,
    /// Backlog share of the window under which one worker may go.
    pub down_backlog: f64,
    /// Time since the last change before scaling up again.
    pub up_cooldown: Duration,
    /// Time since the last change before scaling down.
    pub down_cooldown: Duration,
}

impl ScalePolicy {
    /// Defaults around the given bounds.
    pub fn between(min: u32, max: u32) -> Self {
        Self {
            min,
            max: max.max(min),
            up_busy: 0.8,
            down_busy: 0.3,
            up_backlog: 0.5,
            down_backlog: 0.1,
            up_cooldown: Duration::from_secs(30),
            down_cooldown: Duration::from_secs(120),
        }
    }
}

/// One look at the pipeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Replicas the worker Deployment has now.
    pub replicas: u32,
    /// Mean share of time the workers spent processing since the last look (0 to 1).
    pub busy: f64,
    /// Events leased but not finished.
    pub backlog: u64,
    /// The lease window (the backlog's ceiling).
    pub window: u64,
}

/// The replica count to set, or `None` to leave it.
pub fn desired(policy: &ScalePolicy, sample: Sample, since_change: Duration) -> Option<u32> {
    let replicas = sample.replicas;
    if replicas < policy.min {
        return Some(policy.min);
    }
    if replicas > policy.max {
        return Some(policy.max);
    }
    let backlog = if sample.window == 0 {
        0.0
    } else {
        sample.backlog as f64 / sample.window as f64
    };
    let busy = if sample.busy.is_finite() {
        sample.busy
    } else {
        0.0
    };
    let target = (policy.up_busy + policy.down_busy) / 2.0;
    if (busy > policy.up_busy || backlog > policy.up_backlog)
        && since_change >= policy.up_cooldown
        && replicas < policy.max
    {
        // Enough workers to bring the load back to the middle of the band, one more at least.
        let enough = (f64::from(replicas.max(1)) * busy / target).ceil() as u32;
        return Some(enough.max(replicas + 1).min(policy.max));
    }
    if busy < policy.down_busy
        && backlog < policy.down_backlog
        && since_change >= policy.down_cooldown
        && replicas > policy.min
    {
        return Some(replicas - 1);
    }
    None
}

/// Turns the workers' cumulative busy time (`busy_seconds` in their status) into the mean busy
/// share since the previous call.
#[derive(Debug, Default)]
pub struct LoadMeter {
    previous: BTreeMap<String, f64>,
}

impl LoadMeter {
    /// The mean busy share over `elapsed` of the workers in `busy_seconds` (name → cumulative
    /// seconds); workers new since the last call count from zero, restarted ones (their
    /// counter went down) from their new value.
    pub fn busy(&mut self, busy_seconds: &BTreeMap<String, f64>, elapsed: Duration) -> f64 {
        let seconds = elapsed.as_secs_f64();
        if busy_seconds.is_empty() || seconds <= 0.0 {
            self.previous = busy_seconds.clone();
            return 0.0;
        }
        let total: f64 = busy_seconds
            .iter()
            .map(|(name, &now)| {
                let before = self.previous.get(name).copied().unwrap_or(0.0);
                if now >= before { now - before } else { now }
            })
            .sum();
        self.previous = busy_seconds.clone();
        (total / seconds / busy_seconds.len() as f64).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(replicas: u32, busy: f64, backlog: u64) -> Sample {
        Sample {
            replicas,
            busy,
            backlog,
            window: 1000,
        }
    }

    const LONG: Duration = Duration::from_secs(600);

    #[test]
    fn busy_workers_or_a_full_window_add_workers_in_proportion() {
        let policy = ScalePolicy::between(1, 8);
        // 4 workers at 95 %: enough to bring them to 55 %: ceil(4 × 0.95 / 0.55) = 7.
        assert_eq!(desired(&policy, sample(4, 0.95, 0), LONG), Some(7));
        // Idle workers but a backlog over half the window: at least one more.
        assert_eq!(desired(&policy, sample(2, 0.2, 600), LONG), Some(3));
        // Never above the maximum.
        assert_eq!(desired(&policy, sample(8, 1.0, 1000), LONG), None);
        assert_eq!(desired(&policy, sample(6, 1.0, 1000), LONG), Some(8));
    }

    #[test]
    fn idle_workers_go_one_at_a_time_and_the_band_between_holds() {
        let policy = ScalePolicy::between(2, 8);
        assert_eq!(desired(&policy, sample(5, 0.1, 10), LONG), Some(4));
        assert_eq!(
            desired(&policy, sample(2, 0.0, 0), LONG),
            None,
            "not below the minimum"
        );
        // In the band: nothing.
        assert_eq!(desired(&policy, sample(5, 0.5, 200), LONG), None);
        // Idle but a backlog: nothing either.
        assert_eq!(desired(&policy, sample(5, 0.1, 300), LONG), None);
    }

    #[test]
    fn cooldowns_keep_a_burst_from_flapping_and_bounds_apply_at_once() {
        let policy = ScalePolicy::between(1, 8);
        assert_eq!(
            desired(&policy, sample(3, 0.99, 0), Duration::from_secs(10)),
            None
        );
        assert_eq!(
            desired(&policy, sample(3, 0.05, 0), Duration::from_secs(60)),
            None
        );
        assert_eq!(
            desired(&policy, sample(3, 0.05, 0), Duration::from_secs(121)),
            Some(2)
        );
        // Outside the bounds (edited by hand): back inside, whatever the cooldown.
        assert_eq!(desired(&policy, sample(0, 0.0, 0), Duration::ZERO), Some(1));
        assert_eq!(
            desired(&policy, sample(12, 0.9, 0), Duration::ZERO),
            Some(8)
        );
        // A NaN load is no load.
        assert_eq!(desired(&policy, sample(3, f64::NAN, 0), LONG), Some(2));
    }

    #[test]
    fn the_load_meter_averages_busy_time_over_workers_and_survives_restarts() {
        let mut meter = LoadMeter::default();
        let at = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
            pairs.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect()
        };
        assert_eq!(
            meter.busy(&at(&[("w1", 1.0), ("w2", 2.0)]), Duration::from_secs(10)),
            0.15
        );
        // 10 s later: w1 busy 8 s, w2 restarted and busy 1 s since.
        let busy = meter.busy(&at(&[("w1", 9.0), ("w2", 1.0)]), Duration::from_secs(10));
        assert!((busy - 0.45).abs() < 1e-12, "{busy}");
    }
}
