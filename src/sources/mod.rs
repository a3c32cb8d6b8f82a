//! Landing data from outside: the tables c360 itself defines (the Segment `events` table the
//! collector writes), bulk loads of files into landed tables, and the rows of
//! `COPY … FROM STDIN`, which go through the same loader.

pub mod copy;
pub mod events;
pub mod load;
