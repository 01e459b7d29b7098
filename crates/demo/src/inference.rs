//! Simulated inference: how long a completion takes and what it says.
//!
//! Latency is lognormal around the configured base (the median; sigma 0.35, so p99
//! is about 2.3x without the tail), and one request in a hundred lands in a tail of
//! 3-8x (a cold cache, a long generation). The factor is kept within 0.5x..10x so
//! that a sample can never stall a test. Token count follows the same factor: a
//! longer completion takes longer, as it does on a real model.

use std::time::Duration;

use rand::Rng;

const SIGMA: f64 = 0.35;
const TAIL_PROBABILITY: f64 = 0.01;
const TAIL: std::ops::Range<f64> = 3.0..8.0;
const FLOOR: f64 = 0.5;
const CAP: f64 = 10.0;
const MEDIAN_TOKENS: f64 = 24.0;

const WORDS: &[&str] = &[
    "the",
    "model",
    "suggests",
    "that",
    "a",
    "resilient",
    "service",
    "keeps",
    "its",
    "promise",
    "under",
    "load",
    "and",
    "recovers",
    "quickly",
    "when",
    "faults",
    "end",
    "latency",
    "budgets",
    "matter",
    "more",
    "than",
    "averages",
    "so",
    "measure",
    "tails",
];

/// One simulated completion.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inference {
    /// How long "inference" takes.
    pub(crate) latency: Duration,
    /// Tokens in the completion (words, here).
    pub(crate) tokens: u32,
    /// The completion text.
    pub(crate) completion: String,
}

/// A completion around `base` latency, from the thread's generator.
pub(crate) fn infer(base: Duration) -> Inference {
    sample(&mut rand::rng(), base)
}

/// A completion around `base` latency, from `rng`.
pub(crate) fn sample<R: Rng + ?Sized>(rng: &mut R, base: Duration) -> Inference {
    let factor = factor(rng);
    // Within 1..=240 after the clamps above: the cast cannot truncate.
    let tokens = (MEDIAN_TOKENS * factor).round().max(1.0) as u32;
    let completion = (0..tokens)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ");
    Inference {
        latency: base.mul_f64(factor),
        tokens,
        completion,
    }
}

/// The latency multiplier: lognormal with median 1, a rare tail, clamped.
fn factor<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    // Box-Muller: a standard normal from two uniforms; u1 in (0, 1] keeps ln finite.
    let u1 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    let mut factor = (SIGMA * z).exp();
    if rng.random_bool(TAIL_PROBABILITY) {
        factor *= rng.random_range(TAIL);
    }
    factor.clamp(FLOOR, CAP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn samples(n: usize) -> Vec<Inference> {
        let mut rng = StdRng::seed_from_u64(7);
        (0..n)
            .map(|_| sample(&mut rng, Duration::from_millis(8)))
            .collect()
    }

    fn quantile(sorted: &[Duration], q: f64) -> Duration {
        sorted[((sorted.len() - 1) as f64 * q) as usize]
    }

    #[test]
    fn latency_is_centred_on_the_base_with_a_bounded_tail() {
        let all = samples(20_000);
        let mut latencies: Vec<Duration> = all.iter().map(|i| i.latency).collect();
        latencies.sort();
        let median = quantile(&latencies, 0.5);
        let p99 = quantile(&latencies, 0.99);
        let p999 = quantile(&latencies, 0.999);
        assert!(
            (Duration::from_micros(7_400)..=Duration::from_micros(8_600)).contains(&median),
            "median {median:?}"
        );
        assert!(
            (Duration::from_millis(14)..=Duration::from_millis(32)).contains(&p99),
            "p99 {p99:?}"
        );
        assert!(
            p999 > Duration::from_millis(24),
            "a tail exists: p999 {p999:?}"
        );
        assert!(latencies[0] >= Duration::from_millis(4));
        assert!(latencies[latencies.len() - 1] <= Duration::from_millis(80));
    }

    #[test]
    fn longer_completions_take_longer() {
        let mut all = samples(2_000);
        all.sort_by_key(|i| i.latency);
        let short = &all[..100];
        let long = &all[all.len() - 100..];
        let mean = |s: &[Inference]| s.iter().map(|i| i.tokens as f64).sum::<f64>() / 100.0;
        assert!(mean(long) > 2.0 * mean(short));
        for i in &all {
            assert_eq!(i.completion.split(' ').count(), i.tokens as usize);
            assert!(i.tokens >= 1);
        }
    }

    #[test]
    fn zero_base_means_no_wait() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(sample(&mut rng, Duration::ZERO).latency, Duration::ZERO);
    }
}
