//! Key paths inside the config document (`model_list[0].litellm_params.api_key`), for error messages.

use std::fmt;

/// One step of a [`KeyPath`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Segment {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// Where a value sits in the config document, printed as `router_settings.fallbacks[0].gpt-4o`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct KeyPath(Vec<Segment>);

impl KeyPath {
    pub(crate) fn root() -> Self {
        Self(Vec::new())
    }

    pub(crate) fn key(&self, key: impl Into<String>) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Key(key.into()));
        next
    }

    pub(crate) fn index(&self, index: usize) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Index(index));
        next
    }

    pub(crate) fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// This path with `from` replaced by `to` when it starts with `from`.
    pub(crate) fn rebase(&self, from: &KeyPath, to: &KeyPath) -> Option<KeyPath> {
        self.0.strip_prefix(from.0.as_slice()).map(|rest| {
            let mut segments = to.0.clone();
            segments.extend_from_slice(rest);
            KeyPath(segments)
        })
    }

    /// The path serde_path_to_error reports; enum variant steps are not keys of the document and are skipped.
    pub(crate) fn from_serde(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment as S;
        let mut out = Vec::new();
        for segment in path {
            match segment {
                S::Seq { index } => out.push(Segment::Index(*index)),
                S::Map { key } => out.push(Segment::Key(key.clone())),
                S::Enum { .. } => {}
                S::Unknown => out.push(Segment::Key("?".to_owned())),
            }
        }
        Self(out)
    }

    /// The path serde_ignored reports for a key nobody read.
    pub(crate) fn from_ignored(path: &serde_ignored::Path<'_>) -> Self {
        use serde_ignored::Path as P;
        fn walk(path: &P<'_>, out: &mut Vec<Segment>) {
            match path {
                P::Root => {}
                P::Seq { parent, index } => {
                    walk(parent, out);
                    out.push(Segment::Index(*index));
                }
                P::Map { parent, key } => {
                    walk(parent, out);
                    out.push(Segment::Key(key.clone()));
                }
                P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
                    walk(parent, out)
                }
            }
        }
        let mut out = Vec::new();
        walk(path, &mut out);
        Self(out)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}
