//! `--priority-mix`: which priority each request of a load test carries.

use std::fmt;
use std::str::FromStr;

use queue_core::Priority;

/// One priority class of a mix: requests at `priority`, `weight` parts of the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriorityClass {
    /// The request's `priority` (0 = most urgent).
    pub priority: u32,
    /// Relative share of requests (by convention percentages, any positive integers work).
    pub weight: u32,
}

/// Priorities of a load test's requests: `"0:10,128:90"` sends 10% at priority 0 and 90% at 128.
///
/// The class of request `i` is a pure function of `i` (a fixed hash), so two runs with the same mix send
/// the same sequence of priorities, well interleaved.
///
/// ```
/// use loadtest::PriorityMix;
///
/// let mix: PriorityMix = "0:10,128:90".parse()?;
/// assert_eq!(mix.classes().len(), 2);
/// let urgent = (0..10_000).filter(|&i| mix.class_of(i) == 0).count();
/// assert!((800..1200).contains(&urgent));
/// # Ok::<(), loadtest::PriorityMixError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityMix {
    classes: Vec<PriorityClass>,
    total: u64,
}

/// Why a `--priority-mix` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PriorityMixError {
    /// Nothing was given.
    #[error("the priority mix is empty (expected PRIORITY:WEIGHT[,PRIORITY:WEIGHT...], e.g. 0:10,128:90)")]
    Empty,
    /// An item is not `PRIORITY:WEIGHT`.
    #[error("`{0}` is not PRIORITY:WEIGHT (e.g. 0:10)")]
    Malformed(String),
    /// A priority is not an integer in the accepted range.
    #[error("priority `{0}` is not an integer from 0 to {max}", max = Priority::MAX.get())]
    BadPriority(String),
    /// A weight is not a positive integer.
    #[error("weight `{0}` is not a positive integer")]
    BadWeight(String),
    /// A priority appears twice.
    #[error("priority {0} appears more than once")]
    Duplicate(u32),
}

impl PriorityMix {
    /// The classes in the order given.
    pub fn classes(&self) -> &[PriorityClass] {
        &self.classes
    }

    /// Index into [`classes`](Self::classes) of request number `i`.
    pub fn class_of(&self, i: u64) -> usize {
        let mut point = splitmix64(i) % self.total;
        for (index, class) in self.classes.iter().enumerate() {
            let weight = u64::from(class.weight);
            if point < weight {
                return index;
            }
            point -= weight;
        }
        self.classes.len() - 1
    }
}

impl FromStr for PriorityMix {
    type Err = PriorityMixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut classes: Vec<PriorityClass> = Vec::new();
        for item in s.split(',').map(str::trim) {
            if item.is_empty() {
                if s.trim().is_empty() {
                    return Err(PriorityMixError::Empty);
                }
                return Err(PriorityMixError::Malformed(item.to_owned()));
            }
            let (priority, weight) = item
                .split_once(':')
                .ok_or_else(|| PriorityMixError::Malformed(item.to_owned()))?;
            let (priority, weight) = (priority.trim(), weight.trim());
            let priority = priority
                .parse::<u32>()
                .ok()
                .and_then(|p| Priority::new(p).ok())
                .ok_or_else(|| PriorityMixError::BadPriority(priority.to_owned()))?
                .get();
            let weight = weight
                .parse::<u32>()
                .ok()
                .filter(|w| *w > 0)
                .ok_or_else(|| PriorityMixError::BadWeight(weight.to_owned()))?;
            if classes.iter().any(|c| c.priority == priority) {
                return Err(PriorityMixError::Duplicate(priority));
            }
            classes.push(PriorityClass { priority, weight });
        }
        let total = classes.iter().map(|c| u64::from(c.weight)).sum();
        Ok(Self { classes, total })
    }
}

impl fmt::Display for PriorityMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, class) in self.classes.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{}", class.priority, class.weight)?;
        }
        Ok(())
    }
}

/// A fixed, well-mixing hash of the request number (SplitMix64's finaliser).
fn splitmix64(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_classes_in_order() {
        let mix: PriorityMix = " 0:10 , 128:90".parse().unwrap();
        assert_eq!(
            mix.classes(),
            &[
                PriorityClass {
                    priority: 0,
                    weight: 10
                },
                PriorityClass {
                    priority: 128,
                    weight: 90
                }
            ]
        );
        assert_eq!(mix.to_string(), "0:10,128:90");
        let single: PriorityMix = "1048576:1".parse().unwrap();
        assert!((0..100).all(|i| single.class_of(i) == 0));
    }

    #[test]
    fn refuses_bad_input() {
        let err = |s: &str| s.parse::<PriorityMix>().unwrap_err();
        assert_eq!(err(""), PriorityMixError::Empty);
        assert_eq!(err("  "), PriorityMixError::Empty);
        assert_eq!(err("0"), PriorityMixError::Malformed("0".into()));
        assert_eq!(err("0:10,"), PriorityMixError::Malformed("".into()));
        assert_eq!(err("x:10"), PriorityMixError::BadPriority("x".into()));
        assert_eq!(err("-1:10"), PriorityMixError::BadPriority("-1".into()));
        assert_eq!(
            err("1048577:10"),
            PriorityMixError::BadPriority("1048577".into())
        );
        assert_eq!(err("1.5:10"), PriorityMixError::BadPriority("1.5".into()));
        assert_eq!(err("0:0"), PriorityMixError::BadWeight("0".into()));
        assert_eq!(err("0:-3"), PriorityMixError::BadWeight("-3".into()));
        assert_eq!(err("0:ten"), PriorityMixError::BadWeight("ten".into()));
        assert_eq!(err("0:1,0:2"), PriorityMixError::Duplicate(0));
        assert!(err("5:").to_string().contains("weight"));
    }

    #[test]
    fn shares_follow_weights_and_are_deterministic() {
        let mix: PriorityMix = "0:10,64:30,128:60".parse().unwrap();
        let mut counts = [0u32; 3];
        for i in 0..100_000 {
            counts[mix.class_of(i)] += 1;
        }
        for (count, expected) in counts.iter().zip([10_000, 30_000, 60_000]) {
            assert!(count.abs_diff(expected) < 1_000, "{counts:?}");
        }
        let again: Vec<usize> = (0..50).map(|i| mix.class_of(i)).collect();
        let first: Vec<usize> = (0..50).map(|i| mix.class_of(i)).collect();
        assert_eq!(again, first);
    }
}
