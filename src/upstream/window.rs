//! A sliding window of two counts, kept in atomics: no lock on the request path.
//!
//! The window is cut into [`BUCKETS`] buckets, each stamped with the slice of time it counts.
//! A bucket whose stamp is old is reset by the first writer that finds it so; two writers
//! racing on that reset may lose a count or two, which a breaker threshold or a retry budget
//! does not notice. The counts over the window are the sum of the buckets still inside it.
//! The bucket length is passed on each call rather than stored, so a reload that changes a
//! window's length keeps the counts and reads them at the new length.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub const BUCKETS: usize = 10;

#[derive(Default)]
struct Bucket {
    /// Which slice of time (`now / bucket_ms`) the counts are for.
    slice: AtomicU64,
    counts: [AtomicU32; 2],
}

/// Two counts over the last `BUCKETS × bucket_ms` milliseconds.
#[derive(Default)]
pub struct Window {
    buckets: [Bucket; BUCKETS],
}

impl Window {
    /// Add `a` and `b` at `now_ms`.
    pub fn add(&self, now_ms: u64, bucket_ms: u64, a: u32, b: u32) {
        let slice = now_ms / bucket_ms.max(1);
        let bucket = &self.buckets[slice as usize % BUCKETS];
        let stamp = bucket.slice.load(Ordering::Acquire);
        if stamp != slice
            && bucket
                .slice
                .compare_exchange(stamp, slice, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.counts[0].store(0, Ordering::Relaxed);
            bucket.counts[1].store(0, Ordering::Relaxed);
        }
        if a > 0 {
            bucket.counts[0].fetch_add(a, Ordering::Relaxed);
        }
        if b > 0 {
            bucket.counts[1].fetch_add(b, Ordering::Relaxed);
        }
    }

    /// Both counts over the window ending at `now_ms`.
    pub fn sum(&self, now_ms: u64, bucket_ms: u64) -> (u64, u64) {
        let slice = now_ms / bucket_ms.max(1);
        let oldest = slice.saturating_sub(BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| (oldest..=slice).contains(&b.slice.load(Ordering::Acquire)))
            .fold((0, 0), |(a, b), bucket| {
                (
                    a + u64::from(bucket.counts[0].load(Ordering::Relaxed)),
                    b + u64::from(bucket.counts[1].load(Ordering::Relaxed)),
                )
            })
    }

    /// Forget every count.
    pub fn clear(&self) {
        for bucket in &self.buckets {
            bucket.slice.store(0, Ordering::Release);
            bucket.counts[0].store(0, Ordering::Relaxed);
            bucket.counts[1].store(0, Ordering::Relaxed);
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
        let w = Window::default();
        // A 1 s window in 100 ms buckets.
        w.add(1_000, 100, 1, 0);
        w.add(1_050, 100, 1, 1);
        w.add(1_500, 100, 1, 1);
        assert_eq!(w.sum(1_500, 100), (3, 2));
        // At 1.95 s the first bucket (1.0-1.1 s) is out; 1.5 s is still in.
        assert_eq!(w.sum(1_950, 100), (3, 2));
        assert_eq!(w.sum(2_050, 100), (1, 1));
        // A bucket reused for a later slice starts from zero.
        w.add(2_000, 100, 1, 0);
        assert_eq!(w.sum(2_000, 100), (2, 1));
        assert_eq!(w.sum(5_000, 100), (0, 0));
        w.clear();
        assert_eq!(w.sum(2_000, 100), (0, 0));
    }
}
