//! Prometheus metrics of integrations. Like the store's metrics they are
//! one set per process (recorded deep in the source and the workers),
//! registered by every replica's registry.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a webhook request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `delivered`, `retry` or `failed`.
    pub outcome: &'static str,
}

/// Integration metrics of this process.
#[derive(Debug)]
pub struct IntegrationMetrics {
    enqueued: Counter,
    requests: Family<OutcomeLabels, Counter>,
    delivered: Counter,
    dead: Counter,
    delay: Histogram,
    gaps: Counter,
    coalesced: Counter,
}

static METRICS: LazyLock<IntegrationMetrics> = LazyLock::new(|| {
    let requests = Family::<OutcomeLabels, Counter>::default();
    // every outcome's series exists from the start at zero
    for outcome in ["delivered", "retry", "failed"] {
        let _created = requests.get_or_create(&OutcomeLabels { outcome });
    }
    IntegrationMetrics {
        enqueued: Counter::default(),
        requests,
        delivered: Counter::default(),
        dead: Counter::default(),
        // 1 ms to about 9 min
        delay: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
        gaps: Counter::default(),
        coalesced: Counter::default(),
    }
});

/// The process's integration metrics.
pub fn metrics() -> &'static IntegrationMetrics {
    &METRICS
}

impl IntegrationMetrics {
    /// Entries this replica's source appended to rule queues.
    pub fn enqueued(&self, n: usize) {
        self.enqueued.inc_by(n as u64);
    }

    /// One request's outcome.
    pub fn request(&self, outcome: &'static str) {
        self.requests.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Events delivered (2xx), each `delay` after its change's commit.
    pub fn delivered(&self, delays: impl Iterator<Item = Duration>) {
        for d in delays {
            self.delivered.inc();
            self.delay.observe(d.as_secs_f64());
        }
    }

    /// A batch given up to the dead letters.
    pub fn dead(&self) {
        self.dead.inc();
    }

    /// Changes the source dropped or may have missed.
    pub fn gap(&self) {
        self.gaps.inc();
    }

    /// A change the source replaced by a later one of its channel.
    pub fn coalesced(&self) {
        self.coalesced.inc();
    }

    /// Registers every metric in `registry` (the `occupancy_` namespace
    /// is the registry's).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "webhook_events_enqueued",
            "Events this replica's source appended to integration rules' queues",
            self.enqueued.clone(),
        );
        registry.register(
            "webhook_requests",
            "Webhook requests by outcome (delivered: 2xx; retry: 5xx, 408, 429, timeout or connection failure; failed: any other answer)",
            self.requests.clone(),
        );
        registry.register(
            "webhook_events_delivered",
            "Events delivered to integration targets (a batch counts each of its events)",
            self.delivered.clone(),
        );
        registry.register(
            "webhook_dead_letters",
            "Batches given up to the dead letters",
            self.dead.clone(),
        );
        registry.register(
            "webhook_delivery_delay_seconds",
            "Time from a change's commit to its event's delivery (includes vacated delays, debounces and retries)",
            self.delay.clone(),
        );
        registry.register(
            "webhook_source_gaps",
            "Times this replica's integration source may have missed changes (its event feed was lost or trimmed past it)",
            self.gaps.clone(),
        );
        registry.register(
            "webhook_source_coalesced",
            "Changes this replica's integration source replaced by a later change of the same channel while the store was behind",
            self.coalesced.clone(),
        );
    }
}
