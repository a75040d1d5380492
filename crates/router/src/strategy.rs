//! Routing strategies as pure functions: each produces an ORDER of candidates, since the usage store reserves
//! on the first candidate with headroom.

use rand::seq::SliceRandom;
use rand::Rng;
use usage_tracker::CandidateOrder;

/// How a model group spreads requests over its deployments (`router_settings.routing_strategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RoutingStrategy {
    /// `simple-shuffle`: random, weighted by `weight`, else `rpm`, else `tpm`.
    #[default]
    SimpleShuffle,
    /// `usage-based-routing` / `usage-based-routing-v2`: lowest TPM used in the current window first.
    UsageBased,
    /// `least-busy`: fewest requests in flight (across replicas) first.
    LeastBusy,
    /// `latency-based-routing`: lowest recent latency per output token first.
    LatencyBased,
}

pub(crate) use RoutingStrategy as Strategy;

impl RoutingStrategy {
    /// Parses LiteLLM's strategy name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.trim() {
            "simple-shuffle" => Self::SimpleShuffle,
            "usage-based-routing" | "usage-based-routing-v2" => Self::UsageBased,
            "least-busy" => Self::LeastBusy,
            "latency-based-routing" => Self::LatencyBased,
            _ => return None,
        })
    }

    /// How the reserve script orders the candidates this strategy hands it.
    pub(crate) fn candidate_order(self) -> CandidateOrder {
        match self {
            Self::SimpleShuffle | Self::LatencyBased => CandidateOrder::AsGiven,
            Self::UsageBased => CandidateOrder::LowestTpm,
            Self::LeastBusy => CandidateOrder::FewestInFlight,
        }
    }
}

/// A weighted random permutation of `0..weights.len()`: the first element is `i` with probability
/// `weights[i] / sum`, and so on for the rest (Efraimidis-Spirakis). Zero (or invalid) weights come last, in
/// random order.
pub(crate) fn weighted_order<R: Rng + ?Sized>(weights: &[f64], rng: &mut R) -> Vec<usize> {
    let mut keyed: Vec<(f64, usize)> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            // key = u^(1/w), compared through its log; larger first. Non-positive weights sort after all others.
            let key = if w > 0.0 && w.is_finite() {
                u.ln() / w
            } else {
                f64::NEG_INFINITY
            };
            (key, i)
        })
        .collect();
    // Ties (only among zero weights) get a random order through the shuffle before the stable sort.
    keyed.shuffle(rng);
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// Lowest latency first; deployments without samples count as 0 (they get explored). Those within
/// `(1 + buffer) * lowest` are shuffled among themselves at the front so load spreads over similar deployments.
pub(crate) fn latency_order<R: Rng + ?Sized>(
    latency: &[Option<f64>],
    buffer: f64,
    rng: &mut R,
) -> Vec<usize> {
    let lat = |i: usize| {
        latency[i]
            .filter(|v| v.is_finite() && *v >= 0.0)
            .unwrap_or(0.0)
    };
    let mut order: Vec<usize> = (0..latency.len()).collect();
    order.shuffle(rng);
    order.sort_by(|&a, &b| lat(a).total_cmp(&lat(b)));
    if let Some(&first) = order.first() {
        let limit = lat(first) * (1.0 + buffer);
        let near = order.iter().take_while(|&&i| lat(i) <= limit).count();
        order[..near].shuffle(rng);
    }
    order
}

/// Stable sort of an order by tier (`order` in litellm_params): lower tiers first.
pub(crate) fn by_tier(mut order: Vec<usize>, tiers: &[u32]) -> Vec<usize> {
    order.sort_by_key(|&i| tiers[i]);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Share of first places per index over `n` permutations.
    fn first_shares(weights: &[f64], n: u32, seed: u64) -> Vec<f64> {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut firsts = vec![0u32; weights.len()];
        for _ in 0..n {
            let order = weighted_order(weights, &mut rng);
            assert_eq!(order.len(), weights.len());
            firsts[order[0]] += 1;
        }
        firsts
            .iter()
            .map(|&c| f64::from(c) / f64::from(n))
            .collect()
    }

    #[test]
    fn weighted_shuffle_follows_the_weights() {
        // 10,000 picks: each share within 5% of its weight's share.
        for (seed, weights) in [
            (1, vec![2.0, 3.0]),
            (2, vec![1.0, 1.0, 2.0]),
            (3, vec![30.0, 70.0]),
        ] {
            let total: f64 = weights.iter().sum();
            for (i, share) in first_shares(&weights, 10_000, seed).into_iter().enumerate() {
                let want = weights[i] / total;
                assert!(
                    (share - want).abs() <= 0.05 * want,
                    "{weights:?}[{i}]: {share} vs {want}"
                );
            }
        }
        // Small shares: within one percentage point.
        let weights = [1.0, 2.0, 7.0];
        for (i, share) in first_shares(&weights, 10_000, 4).into_iter().enumerate() {
            let want = weights[i] / 10.0;
            assert!((share - want).abs() <= 0.015, "{i}: {share} vs {want}");
        }
    }

    #[test]
    fn zero_weights_go_last() {
        let mut rng = rand::rng();
        for _ in 0..100 {
            let order = weighted_order(&[0.0, 1.0, 0.0], &mut rng);
            assert_eq!(order[0], 1);
        }
    }

    #[test]
    fn latency_prefers_the_fastest_within_the_buffer() {
        let mut rng = rand::rng();
        let lat = [Some(10.0), Some(5.0), Some(5.2), Some(50.0)];
        let mut seen_2_first = false;
        for _ in 0..200 {
            let order = latency_order(&lat, 0.1, &mut rng);
            assert!(order[0] == 1 || order[0] == 2);
            assert_eq!(&order[2..], &[0, 3]);
            seen_2_first |= order[0] == 2;
        }
        assert!(
            seen_2_first,
            "the buffer spreads load over near-equal deployments"
        );
        let order = latency_order(&[Some(3.0), None], 0.0, &mut rng);
        assert_eq!(order[0], 1, "unknown latency is explored first");
    }

    #[test]
    fn tiers_come_first() {
        assert_eq!(by_tier(vec![2, 0, 1, 3], &[1, 0, 1, 0]), vec![1, 3, 2, 0]);
    }

    #[test]
    fn strategy_names() {
        assert_eq!(
            RoutingStrategy::parse("usage-based-routing-v2"),
            Some(RoutingStrategy::UsageBased)
        );
        assert_eq!(
            RoutingStrategy::parse("least-busy"),
            Some(RoutingStrategy::LeastBusy)
        );
        assert_eq!(RoutingStrategy::parse("cost-based-routing"), None);
    }
}
