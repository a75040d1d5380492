//! The one place the routing strategy orders a group's deployments, for a request and for admission steps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use admission::GroupOrder;
use rand::seq::SliceRandom;
use tokio::time::Instant;
use usage_tracker::{Candidate, CandidateOrder, Limits, UsageStore};

use crate::strategy::{self, Strategy};
use crate::topology::{Deployment, ModelGroup, Topology};

/// Latency per output token of each deployment of a group, in the group's order.
type Latencies = Arc<Vec<Option<f64>>>;

/// Orders a group's deployments by the configured strategy; keeps the latencies latency-based routing reads.
pub(crate) struct GroupOrders {
    topology: Arc<Topology>,
    /// Where latencies are read.
    usage: Arc<dyn UsageStore>,
    /// latency-based-routing: per group, latency per output token of each deployment, and when it was read.
    latency: Mutex<HashMap<String, (Instant, Latencies)>>,
}

impl GroupOrders {
    pub(crate) fn new(topology: Arc<Topology>, usage: Arc<dyn UsageStore>) -> Self {
        Self {
            topology,
            usage,
            latency: Mutex::new(HashMap::new()),
        }
    }

    /// The candidates of `pool` (indices into the group's deployments) in the strategy's order, and how the
    /// reserve step walks them. Latency-based routing first reads latencies older than its `ttl`.
    pub(crate) async fn for_request(
        &self,
        group: &ModelGroup,
        pool: &[usize],
    ) -> (Vec<Candidate>, CandidateOrder) {
        let latency = match self.topology.policy().strategy {
            Strategy::LatencyBased => Some(self.latencies(group).await),
            _ => None,
        };
        self.candidates(group, pool, latency.as_deref().map(Vec::as_slice))
    }

    /// All deployments of `group` in the strategy's order, without waiting for statistics (latency-based
    /// routing uses the latencies last read, whatever their age): admission steps not tied to one request
    /// (polls, releases) grant with this order.
    pub(crate) fn for_admission(&self, group: &str) -> Option<GroupOrder> {
        let group = self.topology.group(group)?;
        let latency = match self.topology.policy().strategy {
            Strategy::LatencyBased => self
                .latency
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&group.name)
                .map(|(_, v)| v.clone()),
            _ => None,
        };
        let all: Vec<usize> = (0..group.deployments.len()).collect();
        let (candidates, order) =
            self.candidates(group, &all, latency.as_deref().map(Vec::as_slice));
        Some((candidates.into(), order))
    }

    fn candidates(
        &self,
        group: &ModelGroup,
        pool: &[usize],
        latency: Option<&[Option<f64>]>,
    ) -> (Vec<Candidate>, CandidateOrder) {
        let policy = self.topology.policy();
        let candidates = self
            .order(group, pool, latency)
            .iter()
            .map(|&i| candidate(&group.deployments[i], policy.pre_call_checks))
            .collect();
        (candidates, policy.strategy.candidate_order())
    }

    /// The strategy's order of `pool`, lower tiers first: the only place the routing strategy is applied.
    /// `latency` is per deployment of the group; deployments without one are unknown, which latency-based
    /// routing explores first.
    fn order(
        &self,
        group: &ModelGroup,
        pool: &[usize],
        latency: Option<&[Option<f64>]>,
    ) -> Vec<usize> {
        let policy = self.topology.policy();
        let tiers: Vec<u32> = group.deployments.iter().map(|d| d.tier).collect();
        match policy.strategy {
            Strategy::SimpleShuffle => {
                let weights: Vec<f64> = pool.iter().map(|&i| group.shuffle_weights[i]).collect();
                let order = strategy::weighted_order(&weights, &mut rand::rng());
                strategy::by_tier(order.into_iter().map(|j| pool[j]).collect(), &tiers)
            }
            Strategy::LatencyBased => {
                let lat: Vec<Option<f64>> = pool
                    .iter()
                    .map(|&i| latency.and_then(|all| all.get(i).copied().flatten()))
                    .collect();
                let order =
                    strategy::latency_order(&lat, policy.lowest_latency_buffer, &mut rand::rng());
                strategy::by_tier(order.into_iter().map(|j| pool[j]).collect(), &tiers)
            }
            // The reserve script sorts by (tier, metric, given index): a shuffle spreads ties.
            Strategy::UsageBased | Strategy::LeastBusy => {
                let mut order = pool.to_vec();
                order.shuffle(&mut rand::rng());
                order
            }
        }
    }

    /// Latency per output token of each deployment of `group`, read at most once per `ttl`.
    async fn latencies(&self, group: &ModelGroup) -> Latencies {
        let ttl = self.topology.policy().latency_ttl;
        {
            let cache = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((at, v)) = cache.get(&group.name) {
                if at.elapsed() < ttl {
                    return v.clone();
                }
            }
        }
        let ids: Vec<Arc<str>> = group
            .deployments
            .iter()
            .map(|d| d.dref.id.clone())
            .collect();
        let v = match self.usage.stats(&group.name, &ids).await {
            Ok(stats) => stats.iter().map(|s| s.latency_ms_per_token).collect(),
            Err(e) => {
                tracing::warn!(group = %group.name, error = %e, "latency stats unavailable");
                vec![None; ids.len()]
            }
        };
        let v = Arc::new(v);
        self.latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(group.name.clone(), (Instant::now(), v.clone()));
        v
    }
}

/// A deployment as the reserve step sees it: its reference and limits.
fn candidate(d: &Deployment, pre_call_checks: bool) -> Candidate {
    Candidate {
        deployment: d.dref.clone(),
        limits: Limits {
            rpm: d.rpm,
            tpm: d.tpm,
            max_parallel: d.max_parallel,
            max_input_tokens: if pre_call_checks {
                d.max_input_tokens
            } else {
                None
            },
            tier: d.tier,
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use usage_tracker::{MemoryUsage, UsageSettings};

    use super::*;
    use crate::config::RouterConfig;

    fn orders(strategy: &str, deployments: &[(&str, Option<u32>)]) -> GroupOrders {
        let list: Vec<_> = deployments
            .iter()
            .map(|(id, order)| {
                json!({"model_name": "g", "model_info": {"id": id},
                       "litellm_params": {"model": "openai/x", "mock_response": "hi", "order": order}})
            })
            .collect();
        let config = RouterConfig::from_json(json!({
            "model_list": list, "router_settings": {"routing_strategy": strategy},
        }))
        .unwrap();
        let topology = Arc::new(crate::topology::build(&config).unwrap());
        let usage = MemoryUsage::new(&UsageSettings::default()).unwrap();
        GroupOrders::new(topology, Arc::new(usage))
    }

    fn ids(candidates: &[Candidate]) -> Vec<&str> {
        candidates.iter().map(|c| &*c.deployment.id).collect()
    }

    #[tokio::test]
    async fn requests_and_admission_steps_get_the_same_strategy() {
        let o = orders(
            "simple-shuffle",
            &[("a", Some(2)), ("b", Some(1)), ("c", None)],
        );
        let group = o.topology.group("g").unwrap();
        let (by_request, mode) = o.for_request(group, &[0, 1, 2]).await;
        let (by_admission, admission_mode) = o.for_admission("g").unwrap();
        assert_eq!(ids(&by_request), ["b", "a", "c"]);
        assert_eq!(ids(&by_admission), ["b", "a", "c"]);
        assert_eq!(
            (mode, admission_mode),
            (CandidateOrder::AsGiven, CandidateOrder::AsGiven)
        );

        let o = orders("usage-based-routing-v2", &[("a", None), ("b", None)]);
        let group = o.topology.group("g").unwrap();
        assert_eq!(
            o.for_request(group, &[0, 1]).await.1,
            CandidateOrder::LowestTpm
        );
        assert_eq!(o.for_admission("g").unwrap().1, CandidateOrder::LowestTpm);
    }

    #[tokio::test]
    async fn unknown_latencies_are_explored_in_random_order_on_both_paths() {
        let o = orders("latency-based-routing", &[("a", None), ("b", None)]);
        let group = o.topology.group("g").unwrap();
        let mut firsts = HashMap::new();
        for _ in 0..200 {
            let (admission, _) = o.for_admission("g").unwrap();
            *firsts
                .entry(("admission", admission[0].deployment.id.clone()))
                .or_insert(0) += 1;
            let (request, _) = o.for_request(group, &[0, 1]).await;
            *firsts
                .entry(("request", request[0].deployment.id.clone()))
                .or_insert(0) += 1;
        }
        assert_eq!(
            firsts.len(),
            4,
            "each path puts each deployment first sometimes: {firsts:?}"
        );
    }
}
