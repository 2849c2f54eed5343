//! Pure statistics for judging model versions: histograms and PromQL
//! quantiles, drift distances, multiple-testing corrections and
//! classification quality. No I/O.

pub mod abtest;
pub mod checks;
pub mod collect_plan;
pub mod drift;
pub mod error_rate;
pub mod histogram;
pub mod multiple_testing;
pub mod pods;
pub mod quality;
mod run;
pub mod window;

pub use run::AnalysisRun;
