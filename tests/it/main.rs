//! The integration test binary: one module per area, sharing `support`.

#![allow(unreachable_pub)]

/// Runs each named `async fn(Harness)` of the calling module as two tests,
/// `memory::NAME` and `redis::NAME`, with the module's `TTL`.
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Harness::memory(super::TTL)).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Harness::redis(super::TTL)).await;
                }
            )*
        }
    };
}

/// [`both_stores!`] plus two modules: `partitioned`, running each test on
/// in-memory partitions behind the partition router, and `cluster`, on a
/// private Redis Cluster (three primaries, a replica each).
macro_rules! all_stores {
    ($($name:ident),* $(,)?) => {
        both_stores!($($name),*);
        mod partitioned {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Harness::partitioned(super::TTL)).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Harness::cluster(
                        super::TTL.max($crate::support::CLUSTER_MIN_TTL),
                    ))
                    .await;
                }
            )*
        }
    };
}

mod abuse;
mod auth;
mod bench;
mod cli;
mod client;
mod cluster;
mod conformance;
mod dashboard;
mod deploy;
mod epochs;
mod examples;
mod faults;
mod fixture;
mod fuzz;
mod http;
mod integrations;
mod model;
mod model_check;
mod nginx;
mod process;
mod readme;
mod redis_store;
mod subscribe;
mod support;
mod tls;
