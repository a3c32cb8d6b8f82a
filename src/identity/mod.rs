//! Identity resolution.

mod batch;
pub mod graph;
mod hubs;
pub mod manager;
mod intern;
mod load;
pub mod normalize;
mod output;
mod rules;
pub mod state;
