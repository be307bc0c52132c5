//! The relay writer's queue: many producers (every connection that publishes), one consumer
//! that takes work in batches. A locked ring buffer: a push moves the item into memory the
//! queue already holds, where a channel would allocate a block every few dozen items, and the
//! consumer is woken only when it may be waiting (the queue was empty).

use parking_lot::Mutex;
use std::collections::VecDeque;
use tokio::sync::Notify;

/// A first-in first-out queue of work for one consumer task.
pub struct WorkQueue<T> {
    state: Mutex<State<T>>,
    ready: Notify,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> State<T> {
    /// How many items from the front fit in `limit` in total weight, counting `already`.
    fn fitting(&self, limit: usize, already: usize, weight: impl Fn(&T) -> usize) -> usize {
        let mut total = already;
        self.items
            .iter()
            .take_while(|item| {
                total += weight(item);
                total <= limit
            })
            .count()
    }
}

impl<T> Default for WorkQueue<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
            }),
            ready: Notify::new(),
        }
    }
}

impl<T> WorkQueue<T> {
    /// Adds an item at the back; gives it back if the queue is closed.
    pub fn push(&self, item: T) -> Result<(), T> {
        let was_empty = {
            let mut state = self.state.lock();
            if state.closed {
                return Err(item);
            }
            state.items.push_back(item);
            state.items.len() == 1
        };
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Moves items, in order, to the back of `into` while their total `weight` stays within
    /// `limit` (the first item always goes), waiting while the queue is empty. Returns how many;
    /// 0 only once the queue is closed and empty.
    pub async fn take(
        &self,
        into: &mut Vec<T>,
        limit: usize,
        weight: impl Fn(&T) -> usize,
    ) -> usize {
        loop {
            // Registered before looking, so a push between the look and the wait is not missed.
            let ready = self.ready.notified();
            {
                let mut state = self.state.lock();
                if !state.items.is_empty() {
                    // At least one item, however heavy.
                    let n = state.fitting(limit, 0, &weight).max(1);
                    into.extend(state.items.drain(..n));
                    return n;
                }
                if state.closed {
                    return 0;
                }
            }
            ready.await;
        }
    }

    /// Like [`Self::take`], without waiting: moves what is queued now (up to `limit` in total
    /// weight, counting `already` as taken) into `into`; returns how many items it moved.
    pub fn take_now(
        &self,
        into: &mut Vec<T>,
        limit: usize,
        already: usize,
        weight: impl Fn(&T) -> usize,
    ) -> usize {
        let mut state = self.state.lock();
        let n = state.fitting(limit, already, &weight);
        into.extend(state.items.drain(..n));
        n
    }

    /// Refuses new items and wakes the consumer; what is queued can still be taken.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn items_come_out_in_order_in_batches_of_at_most_the_limit() {
        let queue = WorkQueue::default();
        for i in 0..5 {
            queue.push(i).unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(queue.take(&mut out, 3, |_| 1).await, 3);
        assert_eq!(queue.take(&mut out, 3, |_| 1).await, 2);
        assert_eq!(out, vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_batch_holds_items_up_to_their_total_weight_and_always_one() {
        let queue = WorkQueue::default();
        for weight in [2, 3, 4, 10, 1] {
            queue.push(weight).unwrap();
        }
        let mut out = Vec::new();
        // 2 + 3 fit in 6, 4 more would not.
        assert_eq!(queue.take(&mut out, 6, |w| *w).await, 2);
        assert_eq!(queue.take(&mut out, 6, |w| *w).await, 1);
        // Heavier than the limit on its own: taken alone.
        assert_eq!(queue.take(&mut out, 6, |w| *w).await, 1);
        assert_eq!(queue.take(&mut out, 6, |w| *w).await, 1);
        assert_eq!(out, vec![2, 3, 4, 10, 1]);
    }

    #[test]
    fn taking_now_moves_what_is_queued_within_the_limit_and_never_waits() {
        let queue = WorkQueue::default();
        let mut out = Vec::new();
        assert_eq!(queue.take_now(&mut out, 6, 0, |w| *w), 0, "empty");
        for weight in [2, 3, 4] {
            queue.push(weight).unwrap();
        }
        // 1 already taken: 2 and 3 fit in 6, 4 does not.
        assert_eq!(queue.take_now(&mut out, 6, 1, |w| *w), 2);
        assert_eq!(out, vec![2, 3]);
        assert_eq!(
            queue.take_now(&mut out, 3, 0, |w| *w),
            0,
            "4 is over the limit"
        );
        assert_eq!(queue.take_now(&mut out, 4, 0, |w| *w), 1);
    }

    #[tokio::test]
    async fn a_waiting_consumer_is_woken_by_a_push_from_another_thread() {
        let queue = Arc::new(WorkQueue::default());
        let producer = queue.clone();
        let pushing = std::thread::spawn(move || {
            for i in 0..10_000 {
                producer.push(i).unwrap();
            }
            producer.close();
        });
        let mut out = Vec::new();
        while queue.take(&mut out, 64, |_| 1).await > 0 {}
        pushing.join().unwrap();
        assert_eq!(out, (0..10_000).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_closed_queue_refuses_items_but_gives_out_what_it_holds() {
        let queue = WorkQueue::default();
        queue.push("kept").unwrap();
        queue.close();
        assert_eq!(queue.push("late"), Err("late"));
        let mut out = Vec::new();
        assert_eq!(queue.take(&mut out, 8, |_| 1).await, 1);
        assert_eq!(queue.take(&mut out, 8, |_| 1).await, 0);
        assert_eq!(out, vec!["kept"]);
    }
}
