//! Landing data from outside: the tables c360 itself defines (the Segment `events` table the
//! collector writes) and bulk loads of files into landed tables.

pub mod events;
pub mod load;
