//! What cistern tells its operator: one log line per request, Prometheus metrics, and the
//! tracing subscriber that writes logs as text or JSON.

mod metrics;
mod problems;
mod readings;
mod request_id;
mod request_log;
mod subscriber;

pub use metrics::{FillGuard, Metrics, CONTENT_TYPE as METRICS_CONTENT_TYPE};
pub use problems::{Problem, ProblemKind, Problems};
pub use readings::Readings;
pub use request_id::RequestId;
pub use request_log::{log_requests, EndpointLabel, FailedRepository, StorageFailed};
pub use subscriber::init_logging;
