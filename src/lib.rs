//! modeldeploy: a Kubernetes operator that releases machine-learning model
//! servers safely. Pure parts (`api`, `analysis`, `rollout`, `resources`) never
//! touch a client; `controller` and `telemetry` do the I/O.

pub mod analysis;
pub mod api;
pub mod cli;
pub mod controller;
pub mod operator;
pub mod resources;
pub mod rollout;
pub mod telemetry;
