//! Redis key names of a model group and the Cluster slot they hash to.

use crate::BackendError;

/// Number of Redis Cluster hash slots.
const CLUSTER_SLOTS: u16 = 16384;

/// Maps a key prefix and a model group name onto Redis key names.
///
/// All keys of one group share the hash tag `{escape(group)}`, so a script touching them stays within one
/// Redis Cluster slot. `escape` replaces `%` with `%25`, `{` with `%7B` and `}` with `%7D`, which keeps any
/// UTF-8 group name from ending the tag early; the empty group name is encoded as `%` (a tag no other name
/// produces), because the empty tag `{}` would not pin a slot.
///
/// ```
/// use store::Keyspace;
///
/// let keys = Keyspace::default().group("gpt-4o {eu}");
/// assert_eq!(keys.queue, "llms:{gpt-4o %7Beu%7D}:q");
/// assert_eq!(Keyspace::slot(&keys.queue), Keyspace::slot(&keys.deployment("a1")));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Keyspace {
    prefix: String,
}

impl Keyspace {
    /// Prefix used when the configuration names none.
    pub const DEFAULT_PREFIX: &'static str = "llms:";

    /// A keyspace under `prefix`; a prefix containing `{` or `}` (it would break the groups' hash tags) is
    /// a [`crate::BackendErrorKind::Config`] error.
    pub fn new(prefix: impl Into<String>) -> Result<Self, BackendError> {
        let prefix = prefix.into();
        if prefix.contains(['{', '}']) {
            return Err(BackendError::config(format!(
                "invalid key prefix {prefix:?}: it must not contain '{{' or '}}'"
            )));
        }
        Ok(Self { prefix })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The group's hash tag including braces: `{` + escape(group) + `}`.
    pub fn hash_tag(group: &str) -> String {
        let mut tag = String::with_capacity(group.len() + 2);
        tag.push('{');
        if group.is_empty() {
            tag.push('%');
        }
        for c in group.chars() {
            match c {
                '%' => tag.push_str("%25"),
                '{' => tag.push_str("%7B"),
                '}' => tag.push_str("%7D"),
                c => tag.push(c),
            }
        }
        tag.push('}');
        tag
    }

    /// `<prefix>{<escaped group>}`: the start of every key of the group.
    pub fn base(&self, group: &str) -> String {
        format!("{}{}", self.prefix, Self::hash_tag(group))
    }

    /// All key names of one group.
    pub fn group(&self, group: &str) -> GroupKeys {
        GroupKeys::from_base(self.base(group))
    }

    /// Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the text between the first `{` and the
    /// next `}`, when non-empty) or of the whole key, modulo 16384.
    pub fn slot(key: impl AsRef<[u8]>) -> u16 {
        let key = key.as_ref();
        let hashed = key
            .iter()
            .position(|&b| b == b'{')
            .and_then(|open| {
                let rest = &key[open + 1..];
                rest.iter()
                    .position(|&b| b == b'}')
                    .filter(|&close| close > 0)
                    .map(|close| &rest[..close])
            })
            .unwrap_or(key);
        crc16(hashed) % CLUSTER_SLOTS
    }
}

impl Default for Keyspace {
    fn default() -> Self {
        Self {
            prefix: Self::DEFAULT_PREFIX.to_owned(),
        }
    }
}

/// Key names of one model group (see [`Keyspace`]); all hash to the same Cluster slot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKeys {
    /// `<prefix>{<escaped group>}`.
    pub base: String,
    /// `<base>:q`: ZSET of waiting members by score.
    pub queue: String,
    /// `<base>:seq`: the group's sequence counter.
    pub seq: String,
    /// `<base>:owners`: ZSET of owner id -> lease expiry (epoch ms).
    pub owners: String,
    /// `<base>:grants`: HASH of granted member -> grant payload.
    pub grants: String,
    /// `<base>:jobs`: HASH of a live durable job's queue member -> `<score>:<attempts>` (its place in the
    /// queue and the runs started); the field goes when the job finishes.
    pub jobs: String,
    /// `<base>:jobruns`: ZSET of a running job's queue member -> its runner's lease expiry (epoch ms).
    pub job_runs: String,
}

impl GroupKeys {
    fn from_base(base: String) -> Self {
        Self {
            queue: format!("{base}:q"),
            seq: format!("{base}:seq"),
            owners: format!("{base}:owners"),
            grants: format!("{base}:grants"),
            jobs: format!("{base}:jobs"),
            job_runs: format!("{base}:jobruns"),
            base,
        }
    }

    /// `<base>:job:<id>`: HASH of one durable job's record (request, caller, status, result or error).
    pub fn job(&self, job_id: &str) -> String {
        format!("{}:job:{job_id}", self.base)
    }

    /// `<base>:d:<deployment_id>`: usage HASH of one deployment.
    pub fn deployment(&self, deployment_id: &str) -> String {
        format!("{}:d:{deployment_id}", self.base)
    }

    /// `<base>:d:<deployment_id>:if`: ZSET of in-flight reservation id -> lease expiry (epoch ms).
    pub fn deployment_inflight(&self, deployment_id: &str) -> String {
        format!("{}:d:{deployment_id}:if", self.base)
    }

    /// `<base>:d:<deployment_id>:cd`: cooldown STRING (PX expiry, value = reason).
    pub fn deployment_cooldown(&self, deployment_id: &str) -> String {
        format!("{}:d:{deployment_id}:cd", self.base)
    }
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), as used by Redis Cluster.
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |mut crc, &byte| {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
        crc
    })
}
