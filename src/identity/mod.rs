//! Identity resolution.

mod batch;
pub mod graph;
pub mod manager;
mod intern;
mod load;
pub mod normalize;
mod output;
mod rules;
pub mod state;
