//! libphonenumber's metadata, one copy per batch that normalizes phones at the same time.
//!
//! The `phonenumber` crate keeps a database's compiled regular expressions in one cache behind
//! one mutex, and holds that mutex while each expression runs. Every thread that uses the
//! crate's built-in database therefore takes turns, and a 2-core build parsed phones on one
//! core. A [`Database`] built here has a cache, and so a mutex, of its own. It is built from the
//! metadata file the crate itself embeds, vendored as `assets/PhoneNumberMetadata.xml` (a test
//! checks that the two agree). Building one takes about 150 ms, so copies are made only when
//! batches actually overlap, and at most one per core.
//!
//! Measured on the 2-core development machine at 1M customers: reading the demo's phone
//! identifiers (814k numbers) took 7.5 s with every batch on the built-in database, and
//! 4.8 to 5.3 s with copies.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

use phonenumber::metadata::{DATABASE, Database};

/// The metadata of the `phonenumber` version in `Cargo.lock` (see the test below).
const METADATA_XML: &str = include_str!("../../assets/PhoneNumberMetadata.xml");

/// The process's copies, and its turn on the built-in database.
static LIBRARY: Library = Library::new(None);

/// Copies of the metadata, and who holds the crate's built-in database.
struct Library {
    /// Copies not lent out right now.
    idle: Mutex<Vec<Database>>,
    /// Copies built so far, lent out or idle.
    built: AtomicUsize,
    /// `None`: one per core.
    max_copies: Option<usize>,
    /// Taken by whoever uses the crate's built-in database, so that a batch holding it runs its
    /// expressions without waiting on the crate's mutex at every one (which put a quarter of
    /// the phone time in the kernel, switching threads).
    built_in: Mutex<()>,
}

/// A database lent to one batch until dropped.
pub(super) struct PhoneDatabase<'l> {
    library: &'l Library,
    own: Option<Database>,
    _built_in: Option<MutexGuard<'l, ()>>,
}

impl PhoneDatabase<'static> {
    /// A database no other batch is using: an idle copy, else the built-in one if it is free,
    /// else a new copy (up to one per core), else the built-in one once it is free.
    pub(super) fn lend() -> PhoneDatabase<'static> {
        LIBRARY.lend()
    }
}

impl PhoneDatabase<'_> {
    pub(super) fn get(&self) -> &Database {
        self.own.as_ref().unwrap_or(&DATABASE)
    }
}

impl Drop for PhoneDatabase<'_> {
    fn drop(&mut self) {
        if let Some(own) = self.own.take() {
            self.library
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(own);
        }
    }
}

impl Library {
    const fn new(max_copies: Option<usize>) -> Library {
        Library {
            idle: Mutex::new(Vec::new()),
            built: AtomicUsize::new(0),
            max_copies,
            built_in: Mutex::new(()),
        }
    }

    fn lend(&self) -> PhoneDatabase<'_> {
        let own = |database| PhoneDatabase {
            library: self,
            own: Some(database),
            _built_in: None,
        };
        let built_in = |guard| PhoneDatabase {
            library: self,
            own: None,
            _built_in: Some(guard),
        };
        if let Some(copy) = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
        {
            return own(copy);
        }
        match self.built_in.try_lock() {
            Ok(guard) => return built_in(guard),
            Err(TryLockError::Poisoned(poisoned)) => return built_in(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => {}
        }
        if let Some(copy) = self.build_copy() {
            return own(copy);
        }
        built_in(self.built_in.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A new copy, unless there are enough already. `None` too if the vendored metadata does
    /// not load, which the test below rules out; callers then share the built-in database.
    fn build_copy(&self) -> Option<Database> {
        let max = self
            .max_copies
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        if self.built.fetch_add(1, Ordering::SeqCst) >= max {
            self.built.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        match Database::parse(METADATA_XML) {
            Ok(database) => Some(database),
            Err(error) => {
                tracing::warn!(%error, "phone metadata copy failed to load; phones are parsed on one core");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vendored file must be the crate's own metadata: a copy that drifted would make
    /// `normalize_phone` answer differently depending on which database a batch was lent.
    /// After upgrading `phonenumber`, copy its `assets/PhoneNumberMetadata.xml` over ours.
    #[test]
    fn vendored_metadata_is_the_crates() {
        let copy = Database::parse(METADATA_XML).expect("vendored metadata loads");
        let mut regions = 0;
        for built_in in DATABASE.iter() {
            regions += 1;
            let ours = copy
                .by_id(built_in.id())
                .unwrap_or_else(|| panic!("region {} missing from the copy", built_in.id()));
            assert_eq!(ours.country_code(), built_in.country_code());
            assert_eq!(ours.national_prefix(), built_in.national_prefix());
            let patterns = |m: &phonenumber::metadata::Metadata| {
                let d = m.descriptors();
                [
                    Some(d.general()),
                    d.fixed_line(),
                    d.mobile(),
                    d.toll_free(),
                    d.voip(),
                ]
                .map(|d| d.map(|d| d.national_number().as_str().to_owned()))
            };
            assert_eq!(
                patterns(ours),
                patterns(built_in),
                "region {}",
                built_in.id()
            );
        }
        assert_eq!(copy.iter().count(), regions);
        assert!(regions > 200, "only {regions} regions");
    }

    #[test]
    fn overlapping_batches_get_different_databases_and_copies_are_reused() {
        let library = Library::new(Some(1));
        let first = library.lend();
        let second = library.lend();
        assert!(
            std::ptr::eq(first.get(), &*DATABASE),
            "the first takes the built-in one"
        );
        assert!(
            !std::ptr::eq(second.get(), first.get()),
            "the second gets a copy"
        );
        drop(second);
        // The copy is lent again, not rebuilt; with one copy at most, a third batch waits for
        // the built-in database (so this thread must give it back first).
        let third = library.lend();
        assert!(!std::ptr::eq(third.get(), &*DATABASE));
        assert_eq!(library.built.load(Ordering::SeqCst), 1);
        drop(first);
        let fourth = library.lend();
        assert!(std::ptr::eq(fourth.get(), &*DATABASE));
        assert_eq!(library.built.load(Ordering::SeqCst), 1);
        drop((third, fourth));
    }
}
