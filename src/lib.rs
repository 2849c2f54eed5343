pub mod api;
pub mod resources;
pub mod rollout;
