//! A small seeded PRNG (splitmix64) and the count distributions scenarios use. Written here,
//! not taken from a crate, so that a seed gives the same traffic in every release.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// splitmix64: fast, good enough for traffic, stable forever.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`: the same seed gives the same numbers.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits (SplitMix64).
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [low, high] (inclusive).
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        low + self.next_u64() % (high - low + 1)
    }

    /// `true` with `probability`.
    pub fn chance(&mut self, probability: f64) -> bool {
        self.unit() < probability
    }

    /// Exponential with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// Poisson with the given mean (Knuth's method for small means, a rounded normal for large).
    pub fn poisson(&mut self, mean: f64) -> u64 {
        if mean <= 0.0 {
            return 0;
        }
        if mean > 50.0 {
            // Normal approximation.
            let (u1, u2) = (self.unit().max(1e-12), self.unit());
            let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            return (mean + normal * mean.sqrt()).round().max(0.0) as u64;
        }
        let limit = (-mean).exp();
        let (mut k, mut product) = (0, self.unit());
        while product > limit {
            k += 1;
            product *= self.unit();
        }
        k
    }

    /// Pareto with scale `minimum` and shape `alpha` (heavy tailed for small alpha).
    pub fn pareto(&mut self, minimum: f64, alpha: f64) -> f64 {
        minimum / (1.0 - self.unit()).max(1e-12).powf(1.0 / alpha)
    }

    /// Picks an index with probability proportional to `weights`.
    pub fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut target = self.unit() * total;
        for (i, weight) in weights.iter().enumerate() {
            if target < *weight {
                return i;
            }
            target -= weight;
        }
        weights.len().saturating_sub(1)
    }
}

/// How many calls one execution makes.
#[derive(Clone, Debug, PartialEq)]
pub enum Count {
    /// Always this many.
    Fixed(u64),
    /// Uniform in [low, high].
    Uniform(u64, u64),
    /// Poisson with this mean.
    Poisson(f64),
    /// Pareto(minimum, alpha), rounded down, capped at 10,000.
    Pareto(f64, f64),
}

impl Count {
    /// One call.
    pub fn one() -> Count {
        Count::Fixed(1)
    }

    /// A message's usual wait in a queue: 5 to 50 ms.
    pub fn default_lag() -> Count {
        Count::Uniform(5, 50)
    }

    /// One draw.
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        match *self {
            Count::Fixed(n) => n,
            Count::Uniform(low, high) => rng.between(low, high),
            Count::Poisson(mean) => rng.poisson(mean),
            Count::Pareto(minimum, alpha) => rng.pareto(minimum, alpha).floor().min(10_000.0) as u64,
        }
    }

    /// Parses `3`, `uniform(1,5)`, `poisson(4)`, `pareto(1,1.5)`.
    pub(crate) fn parse(text: &str) -> Result<Count, String> {
        let text = text.trim();
        if let Ok(n) = text.parse::<u64>() {
            return Ok(Count::Fixed(n));
        }
        let (name, rest) = text.split_once('(').ok_or_else(|| format!("{text:?}: expected N or name(args)"))?;
        let args: Vec<f64> = rest
            .strip_suffix(')')
            .ok_or_else(|| format!("{text:?}: missing ')'"))?
            .split(',')
            .map(|a| a.trim().parse::<f64>().map_err(|_| format!("{text:?}: {a:?} is not a number")))
            .collect::<Result<_, _>>()?;
        let bad = || format!("{text:?}: wrong arguments");
        match (name.trim(), args.as_slice()) {
            ("uniform", [low, high]) if *low >= 0.0 && high >= low => Ok(Count::Uniform(*low as u64, *high as u64)),
            ("poisson", [mean]) if *mean >= 0.0 => Ok(Count::Poisson(*mean)),
            ("pareto", [minimum, alpha]) if *minimum > 0.0 && *alpha > 0.0 => Ok(Count::Pareto(*minimum, *alpha)),
            ("uniform" | "poisson" | "pareto", _) => Err(bad()),
            (other, _) => Err(format!("{text:?}: unknown distribution {other:?} (fixed N, uniform, poisson, pareto)")),
        }
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Count::Fixed(n) => write!(f, "{n}"),
            Count::Uniform(low, high) => write!(f, "uniform({low},{high})"),
            Count::Poisson(mean) => write!(f, "poisson({mean})"),
            Count::Pareto(minimum, alpha) => write!(f, "pareto({minimum},{alpha})"),
        }
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Count, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(Count::Fixed(n)),
            Raw::Text(text) => Count::parse(&text).map_err(de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_samples() {
        let mut rng = Rng::new(7);
        assert_eq!(Count::parse("3").unwrap().sample(&mut rng), 3);
        let uniform = Count::parse("uniform(1, 5)").unwrap();
        let samples: Vec<u64> = (0..1000).map(|_| uniform.sample(&mut rng)).collect();
        assert!(samples.iter().all(|s| (1..=5).contains(s)));
        assert!(samples.contains(&1) && samples.contains(&5));
        let poisson = Count::parse("poisson(4)").unwrap();
        let mean = (0..10_000).map(|_| poisson.sample(&mut rng)).sum::<u64>() as f64 / 10_000.0;
        assert!((mean - 4.0).abs() < 0.2, "{mean}");
        assert!(Count::parse("zipf(2)").unwrap_err().contains("unknown distribution"));
        assert!(Count::parse("uniform(5,1)").is_err());
    }

    #[test]
    fn same_seed_same_sequence() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_eq!(
            Rng::new(1).next_u64(),
            16_834_447_057_089_888_969,
            "splitmix64 must never change: seeds would give other traffic"
        );
    }
}
