//! Identity resolution.

mod batch;
mod bits;
pub mod graph;
mod hubs;
mod intern;
mod load;
mod log_rows;
pub mod manager;
pub mod normalize;
mod output;
mod rules;
mod spill;
pub mod state;
pub mod tables;
