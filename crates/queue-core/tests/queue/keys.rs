//! Arbitrary UTF-8 group names keep the key layout and the one-slot-per-group property.

use queue_core::{Priority, QueueOps, Score};
use store::{BackendErrorKind, Keyspace};
use testkit::RedisServer;

use crate::common::{entry, memory, redis, roomy};

const GROUPS: [&str; 12] = [
    "gpt-4o",
    "a{b}c",
    "}{",
    "{",
    "}",
    "%7B",
    "%",
    "",
    "org/team/model name",
    "with space",
    "ünïcødé ☃ 模型",
    "{{}}%{%7D}",
];

/// Every group is its own queue: one entry each, all found again under their own name.
async fn weird_group_names_are_separate_queues(queue: &dyn QueueOps) -> anyhow::Result<()> {
    let mut entries = Vec::new();
    for (i, group) in GROUPS.iter().enumerate() {
        let e = entry("replica-a");
        let queued = queue
            .enqueue(group, Priority::new(i as u32)?, &e, roomy())
            .await?;
        assert_eq!(queued.position, 0, "group {group:?}");
        entries.push(e);
    }
    for (group, e) in GROUPS.iter().zip(&entries) {
        assert_eq!(queue.depth(group).await?, 1, "group {group:?}");
        assert_eq!(queue.position(group, e).await?, Some(0), "group {group:?}");
        let popped = queue.pop_head_if(group, Score::MAX).await?;
        assert_eq!(
            popped.head.map(|q| q.entry).as_ref(),
            Some(e),
            "group {group:?}"
        );
        assert_eq!(queue.depth(group).await?, 0, "group {group:?}");
    }
    Ok(())
}

#[tokio::test]
async fn group_names_memory() -> anyhow::Result<()> {
    weird_group_names_are_separate_queues(&*memory()).await
}

#[tokio::test]
async fn group_names_redis() -> anyhow::Result<()> {
    let server = RedisServer::start().await?;
    weird_group_names_are_separate_queues(&*redis(&server, "keys")?).await
}

#[test]
fn all_keys_of_a_group_share_one_slot() {
    let keyspace = Keyspace::default();
    let mut tags = std::collections::HashSet::new();
    for group in GROUPS {
        let keys = keyspace.group(group);
        let tag = Keyspace::hash_tag(group);
        assert!(tags.insert(tag.clone()), "two groups share the tag {tag:?}");
        let inner = &tag[1..tag.len() - 1];
        assert!(
            !inner.is_empty() && !inner.contains(['{', '}']),
            "{group:?} -> {tag:?}"
        );
        assert_eq!(keys.base, format!("llms:{tag}"));
        let slot = Keyspace::slot(inner);
        for key in [
            &keys.queue,
            &keys.seq,
            &keys.owners,
            &keys.grants,
            &keys.deployment("d1"),
            &keys.deployment_inflight("d1"),
            &keys.deployment_cooldown("d1"),
        ] {
            assert!(key.starts_with(&keys.base));
            assert_eq!(Keyspace::slot(key), slot, "{key:?}");
        }
    }
    assert_eq!(keyspace.group("a{b}c").queue, "llms:{a%7Bb%7Dc}:q");
    assert_eq!(keyspace.group("50%").seq, "llms:{50%25}:seq");
    assert_eq!(keyspace.group("").owners, "llms:{%}:owners");
}

#[test]
fn slot_matches_redis_cluster() {
    // CRC16/XMODEM("123456789") = 0x31C3 = 12739.
    assert_eq!(Keyspace::slot("123456789"), 12739);
    assert_eq!(Keyspace::slot("{123456789}:q"), 12739);
    assert_eq!(Keyspace::slot("llms:{123456789}:owners"), 12739);
    // Hash tag rules from the Redis Cluster specification.
    assert_eq!(
        Keyspace::slot("{user1000}.following"),
        Keyspace::slot("user1000")
    );
    assert_eq!(Keyspace::slot("foo{{bar}}zap"), Keyspace::slot("{bar"));
    assert_eq!(Keyspace::slot("foo{bar}{zap}"), Keyspace::slot("bar"));
    assert_eq!(Keyspace::slot("foo{}{bar}"), Keyspace::slot("foo{}{bar}"));
    assert_ne!(Keyspace::slot("foo{}{bar}"), Keyspace::slot("bar"));
    assert!(Keyspace::slot("anything at all") < 16384);
}

#[test]
fn braces_in_the_prefix_are_refused() {
    for prefix in ["a{", "}b", "{x}:"] {
        let err = Keyspace::new(prefix).unwrap_err();
        assert_eq!(err.kind(), BackendErrorKind::Config, "{err:?}");
    }
    assert_eq!(
        Keyspace::new("custom/prefix:").unwrap().prefix(),
        "custom/prefix:"
    );
}
