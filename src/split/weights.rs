//! What a split keeps across reloads that leave it unchanged: the weights now (an operator's
//! or the canary's), the cycle of picks they make, the counts per backend, the canary's window
//! and state. A reload that edits the split starts again from the file.

use super::canary::CanaryState;
use super::sequence;
use crate::upstream::window::Window;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

pub struct SplitState {
    weights: Box<[AtomicU32]>,
    cycle: ArcSwap<Box<[u16]>>,
    cursor: AtomicUsize,
    pub requests: Box<[AtomicU64]>,
    pub errors: Box<[AtomicU64]>,
    /// The canary's requests, errors and requests slower than its `max_p99`.
    pub window: Window<3>,
    /// Serializes changes: weights are read, worked out and stored as one.
    canary: Mutex<Option<CanaryState>>,
}

impl SplitState {
    pub fn new(weights: &[u32], canary: Option<CanaryState>) -> SplitState {
        let zeros = || weights.iter().map(|_| AtomicU64::new(0)).collect();
        SplitState {
            weights: weights.iter().map(|w| AtomicU32::new(*w)).collect(),
            cycle: ArcSwap::from_pointee(sequence::cycle(weights)),
            cursor: AtomicUsize::new(0),
            requests: zeros(),
            errors: zeros(),
            window: Window::default(),
            canary: Mutex::new(canary),
        }
    }

    pub fn weight(&self, backend: usize) -> u32 {
        self.weights[backend].load(Ordering::Relaxed)
    }

    pub fn weights(&self) -> Vec<u32> {
        self.weights
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect()
    }

    /// The canary's state, locked for a change of it or of the weights.
    pub fn lock(&self) -> MutexGuard<'_, Option<CanaryState>> {
        self.canary.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take `weights` from now on (the lock held).
    pub fn set(&self, _held: &MutexGuard<'_, Option<CanaryState>>, weights: &[u32]) {
        for (slot, w) in self.weights.iter().zip(weights) {
            slot.store(*w, Ordering::Relaxed);
        }
        self.cycle.store(Arc::new(sequence::cycle(weights)));
    }

    /// The next backend of the weighted cycle that `usable` accepts, the ones it refuses
    /// giving their turn to the next; `None` when every weight is 0 or none is usable.
    pub fn next(&self, mut usable: impl FnMut(usize) -> bool) -> Option<usize> {
        let cycle = self.cycle.load();
        let len = cycle.len();
        if len == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..len)
            .map(|k| usize::from(cycle[(start + k) % len]))
            .find(|&i| usable(i))
    }
}

/// Weights where `backend` has `weight` and the others share the rest of the configured
/// total in their configured proportions (largest remainders rounded up), so a canary's ramp
/// takes its share from the others and the total stays what the file says.
pub fn spread(configured: &[u32], backend: usize, weight: u32) -> Vec<u32> {
    let total: u64 = configured.iter().map(|w| u64::from(*w)).sum();
    let weight = u64::from(weight).min(total);
    let rest = total - weight;
    let others: u64 = total - u64::from(configured[backend]);
    let mut out = vec![0u32; configured.len()];
    out[backend] = weight as u32;
    if others == 0 {
        return out;
    }
    let mut remainders = Vec::new();
    let mut given = 0;
    for (i, w) in configured.iter().enumerate().filter(|(i, _)| *i != backend) {
        let exact = u64::from(*w) * rest;
        out[i] = (exact / others) as u32;
        given += exact / others;
        remainders.push((exact % others, i));
    }
    // The largest remainders first; between equals, the earlier backend.
    remainders.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in remainders.into_iter().take((rest - given) as usize) {
        out[i] += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canary_takes_its_share_from_the_others() {
        assert_eq!(spread(&[90, 10], 1, 20), [80, 20]);
        assert_eq!(spread(&[90, 10], 1, 0), [100, 0]);
        assert_eq!(spread(&[60, 30, 10], 2, 40), [40, 20, 40]);
        assert_eq!(spread(&[1, 1, 1], 2, 2), [1, 0, 2]);
        assert_eq!(spread(&[0, 5], 1, 9), [0, 5]);
    }

    #[test]
    fn the_cycle_skips_backends_that_cannot_take_a_request() {
        let s = SplitState::new(&[90, 10], None);
        let mut seen = [0; 2];
        for _ in 0..1000 {
            seen[s.next(|_| true).unwrap()] += 1;
        }
        assert_eq!(seen, [900, 100]);
        assert_eq!(s.next(|i| i == 1), Some(1));
        assert_eq!(s.next(|_| false), None);
        let held = s.lock();
        s.set(&held, &[0, 0]);
        assert_eq!(s.next(|_| true), None);
        assert_eq!(s.weights(), [0, 0]);
    }
}
