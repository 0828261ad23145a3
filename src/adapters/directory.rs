//! Group membership from configuration.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;

use crate::app::ports::Directory;
use crate::domain::policy::GroupSource;
use crate::domain::values::UserId;

#[derive(Debug, Clone, Default)]
pub struct StaticDirectory {
    /// Group name → member user ids.
    groups: BTreeMap<String, BTreeSet<String>>,
}

impl StaticDirectory {
    pub fn new(groups: &BTreeMap<String, Vec<String>>) -> Self {
        Self {
            groups: groups
                .iter()
                .map(|(name, members)| (name.clone(), members.iter().cloned().collect()))
                .collect(),
        }
    }
}

#[async_trait]
impl Directory for StaticDirectory {
    async fn groups_of(&self, user: &UserId) -> BTreeMap<String, GroupSource> {
        self.groups
            .iter()
            .filter(|(_, members)| members.contains(user.as_str()))
            .map(|(name, _)| (name.clone(), GroupSource::Config))
            .collect()
    }
}
