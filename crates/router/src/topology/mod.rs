//! The validated runtime model: deployments, model groups and the router policy, built from [`RouterConfig`].
//!
//! Validation names the key path of every problem (`model_list[2].litellm_params.rpm`).
//!
//! [`RouterConfig`]: crate::RouterConfig

mod build;
mod deployment;
mod entry;
mod groups;
mod policy;
mod provider_table;
mod settings;
mod values;

pub(crate) use build::build;
pub(crate) use deployment::Deployment;
pub use entry::{implements_litellm_param, SkippedDeployment};
pub(crate) use groups::{ModelGroup, Topology};
pub use policy::RedisFailureMode;
pub(crate) use policy::{CachePolicy, JobSettings};
pub(crate) use provider_table::ProviderKind;
pub use provider_table::{provider_table_markdown, providers, ProviderInfo};
