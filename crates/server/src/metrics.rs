//! Prometheus metrics: HTTP requests by route and status, request durations, and sandboxes
//! by state (read from the runtime at scrape time, so it is never stale).

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// The server's metrics and their registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    sandboxes: IntGaugeVec,
    sessions: IntGaugeVec,
    pool: IntGaugeVec,
    pull_requests: GaugeVec,
}

impl Metrics {
    /// A fresh registry with Hangar's metrics.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new("hangar_http_requests_total", "HTTP requests answered"),
            &["method", "route", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "hangar_http_request_duration_seconds",
                "Time to answer an HTTP request",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["method", "route"],
        )?;
        let sandboxes = IntGaugeVec::new(
            Opts::new("hangar_sandboxes", "Sandboxes by state"),
            &["state"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(sandboxes.clone()))?;
        let sessions = IntGaugeVec::new(
            Opts::new(
                "hangar_sessions",
                "Sessions loaded now, and loads and unloads (hibernations) since start",
            ),
            &["what"],
        )?;
        registry.register(Box::new(sessions.clone()))?;
        let pool = IntGaugeVec::new(
            Opts::new(
                "hangar_pool",
                "Warm pool: idle sandboxes per repository, claims served warm (hits) and started \
                 (misses), hits already synced to the latest base (presynced), microseconds spent claiming, reservations held for drafts",
            ),
            &["what", "repo"],
        )?;
        registry.register(Box::new(pool.clone()))?;
        let pull_requests = GaugeVec::new(
            Opts::new(
                "hangar_pull_requests",
                "Pull requests per repository (repo=\"\" for all): opened, merged, \
                 closed_unmerged, revisions (pushes after the first review), \
                 median_time_to_merge_seconds, approval_rate, agent_code_share",
            ),
            &["what", "repo"],
        )?;
        registry.register(Box::new(pull_requests.clone()))?;
        Ok(Metrics {
            registry,
            http_requests,
            http_duration,
            sandboxes,
            sessions,
            pool,
            pull_requests,
        })
    }

    /// Sets the pool gauges from its figures.
    pub fn set_pool(&self, stats: &hangar_pool::PoolStats) {
        self.pool.reset();
        for (repo, idle) in &stats.idle {
            self.pool
                .with_label_values(&["idle", repo])
                .set(*idle as i64);
        }
        for (what, n) in [
            ("hits", stats.hits as i64),
            ("misses", stats.misses as i64),
            ("presynced", stats.presynced as i64),
            ("claim_micros_total", stats.claim_micros_total as i64),
            ("reservations", stats.reservations as i64),
        ] {
            self.pool.with_label_values(&[what, ""]).set(n);
        }
    }

    /// Sets the pull request gauges from the figures per repository and overall.
    pub fn set_pull_requests(
        &self,
        per_repo: &std::collections::BTreeMap<String, hangar_store::PrStats>,
        overall: &hangar_store::PrStats,
    ) {
        self.pull_requests.reset();
        for (repo, s) in per_repo
            .iter()
            .map(|(r, s)| (r.as_str(), s))
            .chain([("", overall)])
        {
            let set = |what: &str, v: f64| {
                self.pull_requests.with_label_values(&[what, repo]).set(v);
            };
            set("opened", s.opened as f64);
            set("merged", s.merged as f64);
            set("closed_unmerged", s.closed_unmerged as f64);
            set("revisions", s.revisions as f64);
            if let Some(v) = s.median_time_to_merge_secs {
                set("median_time_to_merge_seconds", v);
            }
            if let Some(v) = s.approval_rate {
                set("approval_rate", v);
            }
            if let Some(v) = s.agent_code_share {
                set("agent_code_share", v);
            }
        }
    }

    /// Counts one answered request. `route` is the matched route template, never the raw
    /// path, so label cardinality stays bounded.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.http_requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.http_duration
            .with_label_values(&[method, route])
            .observe(seconds);
    }

    /// Sets the sandbox gauge from a fresh count per state.
    pub fn set_sandboxes(&self, counts: &[(&str, i64)]) {
        self.sandboxes.reset();
        for (state, n) in counts {
            self.sandboxes.with_label_values(&[state]).set(*n);
        }
    }

    /// Sets the session gauges: loaded now, loads and unloads since start.
    pub fn set_sessions(&self, loaded: usize, loads: u64, unloads: u64) {
        for (what, n) in [
            ("loaded", loaded as i64),
            ("loads", loads as i64),
            ("unloads", unloads as i64),
        ] {
            self.sessions.with_label_values(&[what]).set(n);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<String, String> {
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .map_err(|e| e.to_string())?;
        String::from_utf8(buf).map_err(|e| e.to_string())
    }
}
