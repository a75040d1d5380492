//! [`Topology`]: the model groups, their aliases and direct names, and the policy; what a model name resolves to.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::deployment::Deployment;
use super::policy::Policy;

/// The deployments serving one model name.
#[derive(Debug)]
pub(crate) struct ModelGroup {
    pub(crate) name: String,
    pub(crate) deployments: Vec<Arc<Deployment>>,
    /// simple-shuffle weights, one per deployment (weight, else rpm, else tpm, else equal).
    pub(crate) shuffle_weights: Vec<f64>,
}

/// Everything the router routes over, validated.
#[derive(Debug)]
pub(crate) struct Topology {
    pub(super) groups: BTreeMap<String, ModelGroup>,
    /// alias -> (group, hidden)
    pub(super) aliases: BTreeMap<String, (String, bool)>,
    /// Provider model string (`azure/x`) or deployment id -> (group, deployment ids).
    pub(super) direct: HashMap<String, (String, Vec<String>)>,
    pub(super) policy: Policy,
    /// Entries not served: their provider prefix is not supported.
    pub(super) skipped: Vec<super::SkippedDeployment>,
}

/// What a requested model name resolves to.
pub(crate) struct Target<'a> {
    pub(crate) group: &'a ModelGroup,
    /// Only these deployments (the client named a deployment's model or id).
    pub(crate) only: Option<&'a [String]>,
}

impl Topology {
    /// What `model` names: a group, an alias of one, or a deployment's provider model or id.
    pub(crate) fn resolve(&self, model: &str) -> Option<Target<'_>> {
        if let Some(group) = self.groups.get(model) {
            return Some(Target { group, only: None });
        }
        if let Some((group, _)) = self.aliases.get(model) {
            return self
                .groups
                .get(group)
                .map(|group| Target { group, only: None });
        }
        let (group, ids) = self.direct.get(model)?;
        self.groups.get(group).map(|group| Target {
            group,
            only: Some(ids.as_slice()),
        })
    }

    /// The group called `name` (no aliases).
    pub(crate) fn group(&self, name: &str) -> Option<&ModelGroup> {
        self.groups.get(name)
    }

    /// The model groups, by name.
    pub(crate) fn groups(&self) -> impl Iterator<Item = &ModelGroup> {
        self.groups.values()
    }

    /// The model groups served, with visible aliases, sorted.
    pub(crate) fn model_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.groups.keys().cloned().collect();
        names.extend(
            self.aliases
                .iter()
                .filter(|(_, (_, hidden))| !hidden)
                .map(|(a, _)| a.clone()),
        );
        names.sort();
        names
    }

    /// The `model_list` entries skipped because their provider prefix is not supported.
    pub(crate) fn skipped(&self) -> &[super::SkippedDeployment] {
        &self.skipped
    }

    /// The validated `router_settings`.
    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }
}
