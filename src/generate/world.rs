//! The read-only context of one run, shared by every chunk and thread: seed, ids, catalog, calendar.

use super::calendar::Calendar;
use super::catalog::Catalog;
use super::ids::Ids;
use super::names;

pub struct World {
    pub seed: u64,
    pub customers: u64,
    pub ids: Ids,
    pub catalog: Catalog,
    pub calendar: Calendar,
    /// Cumulative frequency tables of `names::FEMALE`, `MALE` and `LAST`.
    pub female_names: Vec<u64>,
    pub male_names: Vec<u64>,
    pub last_names: Vec<u64>,
}

impl World {
    pub fn new(seed: u64, customers: u64) -> Self {
        World {
            seed,
            customers,
            ids: Ids::new(seed, customers),
            catalog: Catalog::new(),
            calendar: Calendar::new(),
            female_names: names::rank_weights(names::FEMALE.len()),
            male_names: names::rank_weights(names::MALE.len()),
            last_names: names::rank_weights(names::LAST.len()),
        }
    }
}
