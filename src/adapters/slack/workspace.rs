//! The one Slack workspace, enterprise and app Passport serves, and the check
//! that what Slack sends comes from them.
//!
//! A valid signature proves only that the request was signed with Passport's
//! signing secret. The same app installed in a second workspace, or a second
//! app given the same secret, signs just as well. So every slash command,
//! click, form and event must also name Passport's workspace (`team_id`,
//! `team.id`, and the person's own team where the payload gives it), its
//! enterprise when it has one (`enterprise_id`) and Passport's app
//! (`api_app_id`); anything else is refused before it is read further.
//!
//! The ids are learnt at start from `auth.test` (the bot token belongs to one
//! workspace) and `bots.info` (the app of the bot), unless `[slack] team_id`
//! and `app_id` name them.

use super::api::SlackApi;
use super::config::SlackSettings;

/// Passport's own workspace, enterprise (Enterprise Grid only) and app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub team_id: String,
    pub enterprise_id: Option<String>,
    pub app_id: String,
}

/// Where a payload says it comes from. Empty strings count as absent.
#[derive(Debug, Clone, Default)]
pub struct Origin<'a> {
    /// Every team the payload names: the workspace it was sent from, and the
    /// team of the person who acted (a Slack Connect partner's differs).
    pub teams: Vec<&'a str>,
    pub enterprise: Option<&'a str>,
    pub app: Option<&'a str>,
}

impl<'a> Origin<'a> {
    /// Adds `team` to the teams named, when present.
    #[must_use]
    pub fn team(mut self, team: Option<&'a str>) -> Self {
        if let Some(t) = team.filter(|t| !t.is_empty()) {
            self.teams.push(t);
        }
        self
    }
}

/// Why a payload was refused: shown in the log, never to the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Foreign {
    #[error("it names no workspace")]
    NoTeam,
    #[error("it comes from the workspace {0}")]
    Team(String),
    #[error("it comes from the enterprise {0}")]
    Enterprise(String),
    #[error("it names no app")]
    NoApp,
    #[error("it is for the app {0}")]
    App(String),
}

impl Workspace {
    /// Whether `origin` is this workspace, enterprise and app.
    pub fn admit(&self, origin: &Origin<'_>) -> Result<(), Foreign> {
        if origin.teams.is_empty() {
            return Err(Foreign::NoTeam);
        }
        if let Some(other) = origin.teams.iter().find(|t| **t != self.team_id) {
            return Err(Foreign::Team((*other).to_owned()));
        }
        if let Some(e) = origin.enterprise.filter(|e| !e.is_empty()) {
            if self.enterprise_id.as_deref() != Some(e) {
                return Err(Foreign::Enterprise(e.to_owned()));
            }
        }
        match origin.app.filter(|a| !a.is_empty()) {
            None => Err(Foreign::NoApp),
            Some(a) if a != self.app_id => Err(Foreign::App(a.to_owned())),
            Some(_) => Ok(()),
        }
    }
}

/// Why Passport's own workspace could not be learnt.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("cannot learn which Slack workspace the bot token belongs to (auth.test: {0}): check slack.bot_token, or set slack.team_id and slack.app_id")]
    AuthTest(String),
    #[error("slack.team_id is {configured} but the bot token belongs to the workspace {actual}: use the bot token of {configured}'s installation, or correct slack.team_id")]
    OtherTeam { configured: String, actual: String },
    #[error("cannot learn the bot's Slack app (bots.info: {0}): set slack.app_id to the App ID from Basic Information → App Credentials")]
    BotsInfo(String),
}

/// Passport's workspace: what `[slack]` names, completed by `auth.test` and
/// `bots.info` when it names less than the workspace and the app.
pub async fn learn(api: &SlackApi, slack: &SlackSettings) -> Result<Workspace, WorkspaceError> {
    if let (Some(team_id), Some(app_id)) = (&slack.team_id, &slack.app_id) {
        return Ok(Workspace {
            team_id: team_id.clone(),
            enterprise_id: slack.enterprise_id.clone(),
            app_id: app_id.clone(),
        });
    }
    let me = api
        .whoami()
        .await
        .map_err(|e| WorkspaceError::AuthTest(e.to_string()))?;
    if let Some(configured) = &slack.team_id {
        if *configured != me.team_id {
            return Err(WorkspaceError::OtherTeam {
                configured: configured.clone(),
                actual: me.team_id,
            });
        }
    }
    let app_id = match &slack.app_id {
        Some(a) => a.clone(),
        None => {
            let bot = me.bot_id.as_deref().ok_or_else(|| {
                WorkspaceError::BotsInfo(
                    "auth.test named no bot: is slack.bot_token a bot token?".into(),
                )
            })?;
            api.app_of_bot(bot)
                .await
                .map_err(|e| WorkspaceError::BotsInfo(e.to_string()))?
        }
    };
    Ok(Workspace {
        team_id: me.team_id,
        enterprise_id: me
            .enterprise_id
            .filter(|e| !e.is_empty())
            .or_else(|| slack.enterprise_id.clone()),
        app_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> Workspace {
        Workspace {
            team_id: "T1".into(),
            enterprise_id: None,
            app_id: "A1".into(),
        }
    }

    fn origin<'a>(
        teams: &[&'a str],
        enterprise: Option<&'a str>,
        app: Option<&'a str>,
    ) -> Origin<'a> {
        Origin {
            teams: teams.to_vec(),
            enterprise,
            app,
        }
    }

    #[test]
    fn only_our_workspace_enterprise_and_app_are_admitted() {
        let w = ours();
        assert_eq!(w.admit(&origin(&["T1", "T1"], None, Some("A1"))), Ok(()));
        assert_eq!(w.admit(&origin(&["T1"], Some(""), Some("A1"))), Ok(()));
        assert_eq!(
            w.admit(&origin(&["T2"], None, Some("A1"))),
            Err(Foreign::Team("T2".into()))
        );
        // A Slack Connect partner acting in a shared channel.
        assert_eq!(
            w.admit(&origin(&["T1", "T9"], None, Some("A1"))),
            Err(Foreign::Team("T9".into()))
        );
        assert_eq!(
            w.admit(&origin(&["T1"], Some("E1"), Some("A1"))),
            Err(Foreign::Enterprise("E1".into()))
        );
        assert_eq!(
            w.admit(&origin(&["T1"], None, Some("A2"))),
            Err(Foreign::App("A2".into()))
        );
        assert_eq!(w.admit(&origin(&["T1"], None, None)), Err(Foreign::NoApp));
        assert_eq!(
            w.admit(&origin(&[], None, Some("A1"))),
            Err(Foreign::NoTeam)
        );
        let grid = Workspace {
            enterprise_id: Some("E1".into()),
            ..ours()
        };
        assert_eq!(grid.admit(&origin(&["T1"], Some("E1"), Some("A1"))), Ok(()));
        assert_eq!(
            grid.admit(&origin(&["T1"], Some("E2"), Some("A1"))),
            Err(Foreign::Enterprise("E2".into()))
        );
    }
}
