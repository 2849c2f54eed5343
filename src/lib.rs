//! modeldeploy: a Kubernetes operator that releases machine-learning model
//! servers safely. Pure parts (`api`, `analysis`, `rollout`, `resources`) never
//! touch a client; `controller` and `telemetry` do the I/O.

pub mod analysis;
pub mod api;
#[cfg(feature = "operator")]
pub mod cli;
#[cfg(feature = "operator")]
pub mod controller;
pub mod exposition;
#[cfg(feature = "operator")]
pub mod metrics;
#[cfg(feature = "operator")]
pub mod notify;
#[cfg(feature = "operator")]
pub mod operator;
pub mod resources;
pub mod rollout;
pub mod routers;
#[cfg(feature = "operator")]
pub mod telemetry;

#[cfg(feature = "operator")]
/// One HTTP client setup for everything the operator fetches (pod metrics,
/// Prometheus, webhooks): TLS through ring, the same crypto the kube client uses.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    static CRYPTO: std::sync::Once = std::sync::Once::new();
    CRYPTO.call_once(|| {
        // Fails only when a provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}
