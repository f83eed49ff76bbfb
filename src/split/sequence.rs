//! Smooth weighted round robin, as nginx picks among weighted servers: each pick adds every
//! backend's weight to its running score, takes the highest, and takes the total off it. Over
//! one cycle (the sum of the weights) each backend is picked exactly its weight's times, spread
//! as evenly as the weights allow, so any run of picks is within one of the exact share.
//!
//! The cycle is computed once per set of weights and walked with an atomic cursor: a pick takes
//! no lock.

/// The longest cycle kept: weights are reduced by their greatest common divisor first, and
/// scaled down past this.
const MAX_CYCLE: u64 = 1 << 16;

/// One cycle of picks for `weights` (indexes into them); empty when every weight is 0.
pub fn cycle(weights: &[u32]) -> Box<[u16]> {
    let divisor = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
    if divisor == 0 {
        return Box::new([]);
    }
    let mut weights: Vec<u64> = weights.iter().map(|w| u64::from(w / divisor)).collect();
    let total: u64 = weights.iter().sum();
    if total > MAX_CYCLE {
        // Keep each nonzero weight at least 1: a backend with a share keeps it.
        for w in weights.iter_mut().filter(|w| **w > 0) {
            *w = (*w * MAX_CYCLE / total).max(1);
        }
    }
    let total: i64 = weights.iter().sum::<u64>() as i64;
    let mut score = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                score[i] += *w as i64;
                if score[i] > score[best] {
                    best = i;
                }
            }
            score[best] -= total;
            best as u16
        })
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(picks: &[u16], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        picks.iter().for_each(|p| c[*p as usize] += 1);
        c
    }

    #[test]
    fn a_cycle_gives_each_backend_its_weight_evenly() {
        assert_eq!(cycle(&[90, 10]).len(), 10);
        assert_eq!(counts(&cycle(&[90, 10]), 2), [9, 1]);
        assert_eq!(&*cycle(&[2, 1]), &[0, 1, 0]);
        assert_eq!(&*cycle(&[5, 1, 1]), &[0, 0, 1, 0, 2, 0, 0]);
        assert!(cycle(&[0, 0]).is_empty());
        assert_eq!(&*cycle(&[0, 3]), &[1]);
        // Any window of picks is within one of the exact share: 1,000 picks of 90/10 from
        // any starting point are 900/100 give or take one.
        let c = cycle(&[90, 10]);
        for start in 0..c.len() {
            let picks: Vec<u16> = (0..1000).map(|i| c[(start + i) % c.len()]).collect();
            let n = counts(&picks, 2);
            assert!(n[1].abs_diff(100) <= 1, "{n:?}");
        }
    }

    #[test]
    fn large_weights_are_scaled_into_a_bounded_cycle() {
        let c = cycle(&[1_000_000, 999_999, 1]);
        assert!(c.len() as u64 <= MAX_CYCLE + 3);
        let n = counts(&c, 3);
        assert!(n[2] >= 1);
        assert!(n[0].abs_diff(n[1]) <= 1);
    }
}
