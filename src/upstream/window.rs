//! A sliding window of `N` counts (two unless said), kept in atomics: no lock on the request
//! path.
//!
//! The window is cut into [`BUCKETS`] buckets, each stamped with the slice of time it counts.
//! A bucket whose stamp is old is reset by the first writer that finds it so; two writers
//! racing on that reset may lose a count or two, which a breaker threshold or a retry budget
//! does not notice. The counts over the window are the sum of the buckets still inside it.
//! The bucket length is passed on each call rather than stored, so a reload that changes a
//! window's length keeps the counts and reads them at the new length.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub const BUCKETS: usize = 10;

struct Bucket<const N: usize> {
    /// Which slice of time (`now / bucket_ms`) the counts are for.
    slice: AtomicU64,
    counts: [AtomicU32; N],
}

/// `N` counts over the last `BUCKETS × bucket_ms` milliseconds.
pub struct Window<const N: usize = 2> {
    buckets: [Bucket<N>; BUCKETS],
}

impl<const N: usize> Default for Window<N> {
    fn default() -> Self {
        Window {
            buckets: std::array::from_fn(|_| Bucket {
                slice: AtomicU64::new(0),
                counts: std::array::from_fn(|_| AtomicU32::new(0)),
            }),
        }
    }
}

impl<const N: usize> Window<N> {
    /// Add `counts` at `now_ms`.
    pub fn add(&self, now_ms: u64, bucket_ms: u64, counts: [u32; N]) {
        let slice = now_ms / bucket_ms.max(1);
        let bucket = &self.buckets[slice as usize % BUCKETS];
        let stamp = bucket.slice.load(Ordering::Acquire);
        if stamp != slice
            && bucket
                .slice
                .compare_exchange(stamp, slice, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket
                .counts
                .iter()
                .for_each(|c| c.store(0, Ordering::Relaxed));
        }
        for (count, n) in bucket.counts.iter().zip(counts) {
            if n > 0 {
                count.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// The counts over the window ending at `now_ms`.
    pub fn sum(&self, now_ms: u64, bucket_ms: u64) -> [u64; N] {
        let slice = now_ms / bucket_ms.max(1);
        let oldest = slice.saturating_sub(BUCKETS as u64 - 1);
        let mut sum = [0; N];
        let live = self.buckets.iter();
        for bucket in live.filter(|b| (oldest..=slice).contains(&b.slice.load(Ordering::Acquire))) {
            for (total, count) in sum.iter_mut().zip(&bucket.counts) {
                *total += u64::from(count.load(Ordering::Relaxed));
            }
        }
        sum
    }

    /// Forget every count.
    pub fn clear(&self) {
        for bucket in &self.buckets {
            bucket.slice.store(0, Ordering::Release);
            bucket
                .counts
                .iter()
                .for_each(|c| c.store(0, Ordering::Relaxed));
        }
    }
}

/// The bucket length for a window of `window_ms`.
pub fn bucket_ms(window_ms: u64) -> u64 {
    (window_ms / BUCKETS as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_slide_out_of_the_window() {
        let w = Window::<2>::default();
        // A 1 s window in 100 ms buckets.
        w.add(1_000, 100, [1, 0]);
        w.add(1_050, 100, [1, 1]);
        w.add(1_500, 100, [1, 1]);
        assert_eq!(w.sum(1_500, 100), [3, 2]);
        // At 1.95 s the first bucket (1.0-1.1 s) is out; 1.5 s is still in.
        assert_eq!(w.sum(1_950, 100), [3, 2]);
        assert_eq!(w.sum(2_050, 100), [1, 1]);
        // A bucket reused for a later slice starts from zero.
        w.add(2_000, 100, [1, 0]);
        assert_eq!(w.sum(2_000, 100), [2, 1]);
        assert_eq!(w.sum(5_000, 100), [0, 0]);
        w.clear();
        assert_eq!(w.sum(2_000, 100), [0, 0]);
    }
}
