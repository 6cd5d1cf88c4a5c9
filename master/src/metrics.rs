//! The master's Prometheus metrics: the counters and histograms events update as they
//! happen ([`Metrics`], owned by the farm), and the text exposition format (version
//! 0.0.4) `GET /metrics` writes them in ([`Exposition`]). Gauges (workers by state,
//! queued tests, the gate) are read from the farm when scraped, not kept here: each fact
//! has one owner.
//!
//! Names follow Prometheus's conventions: a `greenlight_` prefix, base units (seconds,
//! bytes), `_total` for counters; histograms have `_bucket{le=…}`, `_sum` and `_count`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonic count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Observations counted into cumulative buckets by upper bound.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations at most each bound (not cumulative; summed when written).
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// The sum of observations, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds (increasing; `+Inf` is implied).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Counts one observation (a non-finite one is ignored).
    pub fn observe(&self, value: f64) {
        if !value.is_finite() {
            return;
        }
        if let Some(bucket) = self.bounds.iter().position(|bound| value <= *bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + value).to_bits()));
    }
}

/// Bounds for a build's duration: 10 s to 4 h.
const BUILD_SECONDS: &[f64] = &[10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0];

/// Bounds for an HTTP request's duration: 1 ms to 30 s (a lease request long-polls).
const REQUEST_SECONDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// How builds end, as `greenlight_builds_total{state}` counts them.
pub const BUILD_STATES: [&str; 4] = ["green", "red", "error", "cancelled"];

/// What the master counts as it goes (since it started).
#[derive(Debug)]
pub struct Metrics {
    /// Builds that ended, by [`BUILD_STATES`].
    pub builds: [Counter; 4],
    /// How long builds took, from their start to their verdict.
    pub build_seconds: Histogram,
    /// Leases granted to workers.
    pub leases_granted: Counter,
    /// Leases whose worker went silent past the lease timeout.
    pub leases_expired: Counter,
    /// Running leases split: their unstarted tests went to an idle worker.
    pub leases_split: Counter,
    /// Test results stored (each (build, test, attempt) once).
    pub results: Counter,
    /// Results of tests that passed on a retry after failing.
    pub flaky_results: Counter,
    /// Fetches of the watched repository that failed.
    pub poll_errors: Counter,
    /// HTTP requests by (method, route, status class), with their durations.
    requests: Mutex<BTreeMap<(String, String, &'static str), Histogram>>,
    /// Forge statuses and notifications by (kind, outcome): `notify`'s deliveries.
    notifications: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            builds: Default::default(),
            build_seconds: Histogram::new(BUILD_SECONDS),
            leases_granted: Counter::default(),
            leases_expired: Counter::default(),
            leases_split: Counter::default(),
            results: Counter::default(),
            flaky_results: Counter::default(),
            poll_errors: Counter::default(),
            requests: Mutex::default(),
            notifications: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Counts a build that ended in `state` (one of [`BUILD_STATES`]) after `seconds`.
    pub fn build_ended(&self, state: &str, seconds: Option<f64>) {
        if let Some(index) = BUILD_STATES.iter().position(|known| *known == state) {
            self.builds[index].inc();
        }
        if let Some(seconds) = seconds {
            self.build_seconds.observe(seconds);
        }
    }

    /// Counts an HTTP request to `route` (the router's pattern, e.g.
    /// `/api/v1/builds/{build_id}`, so that ids do not make a series each).
    pub fn request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let mut requests = self.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        requests
            .entry((method.to_owned(), route.to_owned(), class))
            .or_insert_with(|| Histogram::new(REQUEST_SECONDS))
            .observe(seconds);
    }

    /// Counts a forge status or a notification (`kind`: `status`, `gate_closed`, ...) that
    /// ended in `outcome` (`delivered`, `gave_up`, `superseded`).
    pub fn notification(&self, kind: &'static str, outcome: &'static str) {
        let mut notifications = self.notifications.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *notifications.entry((kind, outcome)).or_insert(0) += 1;
    }

    /// Writes the counters and histograms.
    pub fn write(&self, out: &mut Exposition) {
        out.family("greenlight_builds_total", "counter", "Builds that ended, by state.");
        for (state, count) in BUILD_STATES.iter().zip(&self.builds) {
            out.sample("greenlight_builds_total", &[("state", state)], count.get() as f64);
        }
        out.family("greenlight_build_duration_seconds", "histogram", "How long builds took, start to verdict.");
        out.histogram("greenlight_build_duration_seconds", &[], &self.build_seconds);
        for (name, help, counter) in [
            ("greenlight_leases_granted_total", "Leases granted to workers.", &self.leases_granted),
            (
                "greenlight_leases_expired_total",
                "Leases whose worker went silent past the lease timeout.",
                &self.leases_expired,
            ),
            (
                "greenlight_leases_split_total",
                "Running leases split: their unstarted tests went to an idle worker.",
                &self.leases_split,
            ),
            ("greenlight_results_total", "Test results stored.", &self.results),
            (
                "greenlight_flaky_results_total",
                "Results of tests that passed on a retry after failing.",
                &self.flaky_results,
            ),
            ("greenlight_poll_errors_total", "Fetches of the watched repository that failed.", &self.poll_errors),
        ] {
            out.single(name, "counter", help, counter.get() as f64);
        }
        out.family(
            "greenlight_notifications_total",
            "counter",
            "Forge statuses and notifications by kind and outcome (delivered, gave_up, superseded).",
        );
        let notifications = self.notifications.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((kind, outcome), count) in notifications.iter() {
            out.sample("greenlight_notifications_total", &[("kind", kind), ("outcome", outcome)], *count as f64);
        }
        drop(notifications);
        let requests = self.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        out.family(
            "greenlight_http_request_duration_seconds",
            "histogram",
            "HTTP requests by method, route and status class.",
        );
        for ((method, route, class), histogram) in requests.iter() {
            let labels = [("method", method.as_str()), ("route", route.as_str()), ("status", *class)];
            out.histogram("greenlight_http_request_duration_seconds", &labels, histogram);
        }
    }
}

/// Text in the Prometheus exposition format, written family by family.
#[derive(Debug, Default)]
pub struct Exposition(String);

impl Exposition {
    /// Starts a metric family: its `HELP` and `TYPE` lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// One sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (index, (label, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.0.push(',');
                }
                let value = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.0, "{label}=\"{value}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A histogram's cumulative buckets, sum and count.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], histogram: &Histogram) {
        let mut cumulative = 0;
        let bucket = format!("{name}_bucket");
        for (bound, count) in histogram.bounds.iter().zip(&histogram.buckets) {
            cumulative += count.load(Ordering::Relaxed);
            let le = bound.to_string();
            let with_le: Vec<(&str, &str)> = labels.iter().copied().chain([("le", le.as_str())]).collect();
            self.sample(&bucket, &with_le, cumulative as f64);
        }
        let count = histogram.count.load(Ordering::Relaxed);
        let with_inf: Vec<(&str, &str)> = labels.iter().copied().chain([("le", "+Inf")]).collect();
        self.sample(&bucket, &with_inf, count as f64);
        self.sample(&format!("{name}_sum"), labels, f64::from_bits(histogram.sum.load(Ordering::Relaxed)));
        self.sample(&format!("{name}_count"), labels, count as f64);
    }

    /// The text.
    pub fn into_text(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_is_written_cumulatively_with_its_sum_and_count() {
        let histogram = Histogram::new(&[1.0, 10.0]);
        for value in [0.5, 2.0, 3.0, 50.0, f64::NAN] {
            histogram.observe(value);
        }
        let mut out = Exposition::default();
        out.family("x_seconds", "histogram", "X.");
        out.histogram("x_seconds", &[("route", "/a")], &histogram);
        assert_eq!(
            out.into_text(),
            "# HELP x_seconds X.\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{route=\"/a\",le=\"1\"} 1\n\
             x_seconds_bucket{route=\"/a\",le=\"10\"} 3\n\
             x_seconds_bucket{route=\"/a\",le=\"+Inf\"} 4\n\
             x_seconds_sum{route=\"/a\"} 55.5\n\
             x_seconds_count{route=\"/a\"} 4\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::default();
        out.sample("greenlight_gate_open", &[("branch", "we\"ird\\branch\nx")], 1.0);
        assert_eq!(out.into_text(), "greenlight_gate_open{branch=\"we\\\"ird\\\\branch\\nx\"} 1\n");
    }

    #[test]
    fn requests_are_kept_by_route_pattern_and_status_class() {
        let metrics = Metrics::default();
        metrics.request("GET", "/api/v1/builds/{build_id}", 200, 0.002);
        metrics.request("GET", "/api/v1/builds/{build_id}", 204, 0.004);
        metrics.request("GET", "/api/v1/builds/{build_id}", 404, 0.001);
        metrics.build_ended("red", Some(95.0));
        metrics.build_ended("cancelled", None);
        let mut out = Exposition::default();
        metrics.write(&mut out);
        let text = out.into_text();
        let route = "method=\"GET\",route=\"/api/v1/builds/{build_id}\"";
        assert!(
            text.contains(&format!("greenlight_http_request_duration_seconds_count{{{route},status=\"2xx\"}} 2\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("greenlight_http_request_duration_seconds_count{{{route},status=\"4xx\"}} 1\n")),
            "{text}"
        );
        assert!(text.contains("greenlight_builds_total{state=\"red\"} 1\n"), "{text}");
        assert!(text.contains("greenlight_builds_total{state=\"cancelled\"} 1\n"), "{text}");
        assert!(text.contains("greenlight_build_duration_seconds_bucket{le=\"120\"} 1\n"), "{text}");
        assert!(text.contains("greenlight_build_duration_seconds_count 1\n"), "{text}");
    }
}
