//! Who a Slack user is: their handle (from `users.info`) and their groups
//! (configured lists of user ids merged with Slack user groups, resolved
//! through `usergroups.users.list`). Both are cached for a short time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::adapters::directory::StaticDirectory;
use crate::app::ports::Directory;
use crate::domain::policy::GroupSource;
use crate::domain::values::{Person, UserId};

use super::api::SlackApi;

/// A value remembered until `until`.
struct Cached<T> {
    value: T,
    until: Instant,
}

/// Handles of Slack users, from `users.info`.
pub struct People {
    shared: Arc<Shared>,
}

struct Shared {
    api: Arc<SlackApi>,
    ttl: Duration,
    handles: Mutex<HashMap<String, Cached<String>>>,
    health: Mutex<Health>,
}

/// What `users.info` has shown lately.
#[derive(Default)]
struct Health {
    /// Until when `users.info` is not asked (it failed): the fallback serves.
    failing_until: Option<Instant>,
    /// Look-ups that outlived [`HANDLE_WAIT`] and have not answered yet:
    /// while there is one, Slack is slow. They go on as probes; nobody else
    /// asks until the last of them answers.
    slow: usize,
}

/// How long a handle is kept: names rarely change, and the request keeps the
/// handle it was made with anyway.
const HANDLE_TTL: Duration = Duration::from_secs(3600);

/// How long a failed look-up is remembered: while Slack fails, people and
/// groups are not asked about again on every command and click.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(10);

/// How long a command or click waits for `users.info` before it goes on with
/// the fallback handle. `users.info` answers in well under this when Slack is
/// well; when it does not, the look-up goes on in the background and fills
/// the cache, while the acknowledgement is not held up to the call's deadline.
pub const HANDLE_WAIT: Duration = Duration::from_millis(250);

impl People {
    pub fn new(api: Arc<SlackApi>) -> Self {
        Self {
            shared: Arc::new(Shared {
                api,
                ttl: HANDLE_TTL,
                handles: Mutex::new(HashMap::new()),
                health: Mutex::new(Health::default()),
            }),
        }
    }

    /// The person behind a Slack user id. When Slack cannot say in time,
    /// `fallback` (a name from the payload) or the id itself serves as handle.
    ///
    /// Bounded work while Slack is unwell: after a failure nobody asks for
    /// [`NEGATIVE_TTL`]; once a look-up outlives [`HANDLE_WAIT`], the ones in
    /// flight go on as probes and everyone else gets the fallback at once
    /// until the last of them answers.
    pub async fn person(&self, id: &UserId, fallback: Option<&str>) -> Person {
        let handle = match self.handle(id).await {
            Some(handle) => handle,
            None => fallback.unwrap_or(id.as_str()).to_owned(),
        };
        Person {
            id: id.clone(),
            handle,
        }
    }

    async fn handle(&self, id: &UserId) -> Option<String> {
        let shared = &self.shared;
        let now = Instant::now();
        if let Some(handle) = shared.cached(id.as_str(), now) {
            return Some(handle);
        }
        {
            let health = shared.health.lock().unwrap_or_else(|e| e.into_inner());
            if health.slow > 0 || health.failing_until.is_some_and(|until| until > now) {
                return None;
            }
        }
        let mut lookup = tokio::spawn({
            let shared = shared.clone();
            let id = id.clone();
            async move { shared.look_up(&id).await }
        });
        match tokio::time::timeout(HANDLE_WAIT, &mut lookup).await {
            Ok(found) => found.ok().flatten(),
            Err(_) => {
                let first = {
                    let mut health = shared.health.lock().unwrap_or_else(|e| e.into_inner());
                    health.slow += 1;
                    health.slow == 1
                };
                if first {
                    tracing::warn!(
                        user = %id,
                        "users.info is slow; the payload's name serves as handle until it answers"
                    );
                }
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = lookup.await;
                    shared.health.lock().unwrap_or_else(|e| e.into_inner()).slow -= 1;
                });
                None
            }
        }
    }
}

impl Shared {
    fn cached(&self, id: &str, now: Instant) -> Option<String> {
        let handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        handles
            .get(id)
            .filter(|c| c.until > now)
            .map(|c| c.value.clone())
    }

    /// One `users.info` call; its answer is cached, its failure remembered.
    async fn look_up(&self, id: &UserId) -> Option<String> {
        match self.api.user_name(id.as_str()).await {
            Ok(Some(name)) => {
                let now = Instant::now();
                let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
                if handles.len() > 50_000 {
                    handles.retain(|_, c| c.until > now);
                }
                handles.insert(
                    id.as_str().to_owned(),
                    Cached {
                        value: name.clone(),
                        until: now + self.ttl,
                    },
                );
                Some(name)
            }
            Ok(None) => None,
            Err(e) => {
                self.health
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .failing_until = Some(Instant::now() + NEGATIVE_TTL);
                tracing::warn!(user = %id, error = %e, "users.info failed; using the payload's name or the id as handle");
                None
            }
        }
    }
}

/// Group membership: the configured groups, plus Slack user groups mapped to
/// Passport group names.
pub struct SlackDirectory {
    configured: StaticDirectory,
    api: Arc<SlackApi>,
    /// Passport group name → Slack user group id.
    usergroups: BTreeMap<String, String>,
    ttl: Duration,
    /// One slot per user group: look-ups of one group share one call (they
    /// wait on its slot), and different groups never wait for each other.
    members: Mutex<HashMap<String, Arc<GroupSlot>>>,
}

type GroupSlot = tokio::sync::Mutex<Option<Cached<BTreeSet<String>>>>;

impl SlackDirectory {
    pub fn new(
        configured: &BTreeMap<String, Vec<String>>,
        api: Arc<SlackApi>,
        usergroups: BTreeMap<String, String>,
        ttl: Duration,
    ) -> Self {
        Self {
            configured: StaticDirectory::new(configured),
            api,
            usergroups,
            ttl,
            members: Mutex::new(HashMap::new()),
        }
    }

    /// Members of one Slack user group, cached for the ttl. When the cache has
    /// run out and Slack cannot say, nobody counts as a member (fail closed):
    /// approver rights never outlive what the directory last confirmed.
    async fn members_of(&self, usergroup: &str) -> BTreeSet<String> {
        let slot = {
            let mut slots = self.members.lock().unwrap_or_else(|e| e.into_inner());
            slots.entry(usergroup.to_owned()).or_default().clone()
        };
        // Held across the call so that a burst of clicks asks Slack once
        // (single flight); the call is bounded by the API's call deadline, and
        // other groups have their own slots.
        let mut cached = slot.lock().await;
        let now = Instant::now();
        if let Some(c) = cached.as_ref().filter(|c| c.until > now) {
            return c.value.clone();
        }
        match self.api.usergroup_members(usergroup).await {
            Ok(list) => {
                let set: BTreeSet<String> = list.into_iter().collect();
                *cached = Some(Cached {
                    value: set.clone(),
                    until: now + self.ttl,
                });
                set
            }
            Err(e) => {
                tracing::warn!(usergroup, error = %e, "usergroups.users.list failed and the cached members have run out; nobody counts as a member until Slack answers");
                // Remembered briefly, so the look-ups waiting on this slot and
                // the next ones do not each ask a failing Slack again.
                *cached = Some(Cached {
                    value: BTreeSet::new(),
                    until: now + self.ttl.min(NEGATIVE_TTL),
                });
                BTreeSet::new()
            }
        }
    }
}

#[async_trait]
impl Directory for SlackDirectory {
    async fn groups_of(&self, user: &UserId) -> BTreeMap<String, GroupSource> {
        let mut groups = self.configured.groups_of(user).await;
        for (name, usergroup) in &self.usergroups {
            if groups.contains_key(name) {
                continue;
            }
            if self.members_of(usergroup).await.contains(user.as_str()) {
                groups.insert(
                    name.clone(),
                    GroupSource::SlackUserGroup {
                        id: usergroup.clone(),
                    },
                );
            }
        }
        groups
    }
}
