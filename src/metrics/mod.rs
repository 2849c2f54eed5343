//! Reading the serving pods (I/O): scraping their `/metrics` endpoints, or
//! querying the Prometheus the operator is configured with.

pub mod prometheus;
pub mod prometheus_auth;
pub mod scrape;
