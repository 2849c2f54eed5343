pub mod analysis;
pub mod api;
