//! A lock for state that every message reads and few events change.

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};
use std::sync::PoisonError;

/// A reader-writer lock whose readers on different threads touch different cache lines.
///
/// A plain reader-writer lock keeps one reader count, so two cores routing messages at once pass
/// that count's cache line back and forth on every lookup; with the subscription table and the
/// online map read for every message this cost more than the routing itself. Readers here take
/// one of several per-thread locks; a writer (a subscription, a connect) takes them all.
///
/// Poisoning is ignored, as with `parking_lot`: the guarded maps are changed by single inserts
/// and removals that leave them consistent.
pub struct ReadMostly<T>(ShardedLock<T>);

impl<T> ReadMostly<T> {
    /// Guards `value`.
    pub fn new(value: T) -> Self {
        ReadMostly(ShardedLock::new(value))
    }

    /// Shared access.
    pub fn read(&self) -> ShardedLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Exclusive access.
    pub fn write(&self) -> ShardedLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Default> Default for ReadMostly<T> {
    fn default() -> Self {
        ReadMostly::new(T::default())
    }
}

#[cfg(test)]
mod tests {
    use super::ReadMostly;
    use std::sync::Arc;

    #[test]
    fn readers_on_other_threads_see_a_write() {
        let lock = Arc::new(ReadMostly::new(Vec::<u32>::new()));
        lock.write().push(7);
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let lock = lock.clone();
                std::thread::spawn(move || lock.read().clone())
            })
            .collect();
        for reader in readers {
            assert_eq!(reader.join().expect("reader thread"), vec![7]);
        }
        assert_eq!(*lock.read(), vec![7]);
    }
}
