//! Who a Discord user is in Passport's terms: their groups are the configured
//! lists of user ids merged with Discord roles mapped to Passport groups.
//! Roles come from the member record (`GET /guilds/{guild}/members/{user}`),
//! remembered for a short time; each interaction refreshes them with the
//! roles Discord sent in it (signed, so current).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::adapters::directory::StaticDirectory;
use crate::app::ports::Directory;
use crate::domain::policy::GroupSource;
use crate::domain::values::UserId;

use super::api::DiscordApi;

/// How long a failed look-up is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(10);

struct Cached {
    roles: BTreeSet<String>,
    until: Instant,
}

pub struct DiscordDirectory {
    configured: StaticDirectory,
    api: Arc<DiscordApi>,
    guild: u64,
    /// Passport group name → Discord role id.
    roles: BTreeMap<String, String>,
    ttl: Duration,
    members: Mutex<HashMap<String, Cached>>,
}

impl DiscordDirectory {
    pub fn new(
        configured: &BTreeMap<String, Vec<String>>,
        api: Arc<DiscordApi>,
        guild: u64,
        roles: BTreeMap<String, String>,
        ttl: Duration,
    ) -> Self {
        Self {
            configured: StaticDirectory::new(configured),
            api,
            guild,
            roles,
            ttl,
            members: Mutex::new(HashMap::new()),
        }
    }

    /// Remembers the roles Discord sent with an interaction of `user`.
    pub fn saw_member(&self, user: &str, roles: &[String]) {
        self.remember(user, roles, self.ttl);
    }

    fn remember(&self, user: &str, roles: &[String], ttl: Duration) {
        let now = Instant::now();
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        if members.len() > 50_000 {
            members.retain(|_, c| c.until > now);
        }
        members.insert(
            user.to_owned(),
            Cached {
                roles: roles.iter().cloned().collect(),
                until: now + ttl,
            },
        );
    }

    /// The roles of `user`, cached for the ttl. When the cache has run out and
    /// Discord cannot say, the user has none (fail closed): approver rights
    /// never outlive what Discord last confirmed.
    async fn roles_of(&self, user: &str) -> BTreeSet<String> {
        let now = Instant::now();
        {
            let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = members.get(user).filter(|c| c.until > now) {
                return c.roles.clone();
            }
        }
        match self.api.member(self.guild, user).await {
            Ok(member) => {
                let roles = member.map(|m| m.roles).unwrap_or_default();
                self.saw_member(user, &roles);
                roles.into_iter().collect()
            }
            Err(e) => {
                tracing::warn!(user, error = %e, "cannot read a member's roles and the cached ones have run out; no roles count until Discord answers");
                // Remembered briefly, so a failing Discord is not asked again
                // on every click.
                self.remember(user, &[], self.ttl.min(NEGATIVE_TTL));
                BTreeSet::new()
            }
        }
    }
}

#[async_trait]
impl Directory for DiscordDirectory {
    async fn groups_of(&self, user: &UserId) -> BTreeMap<String, GroupSource> {
        let mut groups = self.configured.groups_of(user).await;
        if self.roles.keys().all(|g| groups.contains_key(g)) {
            return groups;
        }
        let roles = self.roles_of(user.as_str()).await;
        for (group, role) in &self.roles {
            if roles.contains(role) && !groups.contains_key(group) {
                groups.insert(group.clone(), GroupSource::DiscordRole { id: role.clone() });
            }
        }
        groups
    }
}
