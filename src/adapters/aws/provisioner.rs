//! [`AwsProvisioner`]: the provisioner port on EC2 (discovery) and SSM Run
//! Command (grant and revoke).
//!
//! A grant or revoke becomes one SendCommand per platform and batch of at
//! most 50 instances, a few batches in flight at once. Each command id is
//! recorded as soon as SSM returns it, before polling starts; a later call for
//! the same request finds it, resumes polling a command still in flight and
//! returns results already settled, so a restart does not send a command
//! again. (A crash between SSM's answer and that write leaves one command
//! unrecorded; it is then sent again, which the idempotent scripts absorb.)
//!
//! Statuses map to outcomes as follows: `Success` is success; `Failed` carries
//! the end of the script's standard error; `TimedOut` says whether delivery or
//! execution ran out of time; `Undeliverable` and a delivery time-out point at
//! the SSM agent; `Cancelled` says so. An invocation still open when Passport
//! stops waiting is reported as failed but stays open in the store, so the
//! next call for the request resumes it.
//!
//! **Invariant:** every SendCommand names the document version that
//! [`AwsProvisioner::check_documents`] verified, never `$DEFAULT` or
//! `$LATEST`; before that check nothing is sent. A document changed in SSM
//! after the check is not run until Passport checks again (a restart).
//!
//! **Invariant:** discovery refuses instances without the configured access
//! tag ([`AwsSettings::instance_tag`]), before anyone is asked to approve;
//! the bot's IAM policy refuses SendCommand on them too.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use futures::stream::{self, StreamExt};
use sha2::{Digest, Sha256};

use super::api::{
    ApiError, CommandRequest, Ec2Api, Ec2Instance, Invocation, InvocationStatus, SsmApi,
};
use super::config::AwsSettings;
use super::documents::{self, DocumentSource, DocumentsError, InstallAction, PinnedVersions};
use super::password::{OneTimeKey, PasswordOwner, PasswordSink};
use super::sdk::{sdk_loader, SdkEc2, SdkSsm};
use super::store::{now_ms, CommandStore, LastCommand, Operation, SentCommand, Settled};
use crate::app::ports::{Described, GrantSpec, ProvisionError, Provisioner, RevokeSpec};
use crate::app::retry::{jitter, retry, Backoff, RetryPolicy, Verdict};
use crate::domain::request::{InstanceInfo, InstanceOutcome, Platform};
use crate::domain::time::Span;
use crate::domain::values::{InstanceId, RequestId, Username};

/// What people are told when SSM cannot reach an instance.
pub const SSM_UNREACHABLE: &str =
    "not reachable through SSM: is the agent running and the instance profile attached?";

/// GetCommandInvocation calls in flight at once for one command.
const POLL_FANOUT: usize = 8;
/// SSM's limit on a command's comment.
const COMMENT_LIMIT: usize = 100;
/// Windows refuses longer account names.
const WINDOWS_USERNAME_MAX: usize = 20;
/// How much of a failed script's standard error is kept for people to read.
const STDERR_EXCERPT: usize = 300;

pub struct AwsProvisioner {
    ec2: Arc<dyn Ec2Api>,
    ssm: Arc<dyn SsmApi>,
    store: Arc<dyn CommandStore>,
    settings: AwsSettings,
    region: String,
    passwords: Option<Arc<dyn PasswordSink>>,
    /// One-time keys of Windows grant commands still being polled, by command id.
    /// Kept in memory only: after a restart such a grant is sent again.
    keys: Mutex<HashMap<String, Arc<OneTimeKey>>>,
    /// The document versions the last successful [`Self::check_documents`]
    /// verified; `None` until then, and nothing is sent without them.
    pinned: RwLock<Option<PinnedVersions>>,
}

impl AwsProvisioner {
    /// A provisioner over any implementation of the two APIs (the SDK, or a fake).
    pub fn new(
        ec2: Arc<dyn Ec2Api>,
        ssm: Arc<dyn SsmApi>,
        store: Arc<dyn CommandStore>,
        settings: AwsSettings,
        region: impl Into<String>,
    ) -> Self {
        Self {
            ec2,
            ssm,
            store,
            settings,
            region: region.into(),
            passwords: None,
            keys: Mutex::new(HashMap::new()),
            pinned: RwLock::new(None),
        }
    }

    /// Where decrypted Windows passwords go. Without one, Windows grants are
    /// refused: a user whose password nobody learns is of no use.
    #[must_use]
    pub fn with_password_sink(mut self, sink: Arc<dyn PasswordSink>) -> Self {
        self.passwords = Some(sink);
        self
    }

    /// Loads the SDK configuration (region, endpoint, credential chain) and
    /// builds the provisioner on it.
    pub async fn connect(
        settings: &AwsSettings,
        store: Arc<dyn CommandStore>,
    ) -> Result<Self, ProvisionError> {
        let sdk = sdk_loader(settings).load().await;
        Self::from_sdk_config(&sdk, settings, store)
    }

    /// Builds the provisioner on an SDK configuration loaded elsewhere.
    pub fn from_sdk_config(
        sdk: &SdkConfig,
        settings: &AwsSettings,
        store: Arc<dyn CommandStore>,
    ) -> Result<Self, ProvisionError> {
        let region = sdk.region().map(|r| r.to_string()).ok_or_else(|| {
            ProvisionError::Rejected(
                "no AWS region is configured: set region in the [aws] section of passport.toml, or AWS_REGION".into(),
            )
        })?;
        Ok(Self::new(
            Arc::new(SdkEc2::new(sdk)),
            Arc::new(SdkSsm::new(sdk)),
            store,
            settings.clone(),
            region,
        ))
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn settings(&self) -> &AwsSettings {
        &self.settings
    }

    /// The documents this build runs, under the configured names.
    pub fn documents(&self) -> Vec<DocumentSource> {
        documents::passport_documents(&self.settings.documents)
    }

    /// Fails with a message saying what to run when the SSM documents are
    /// missing or differ from this build's; `serve` calls it before
    /// provisioning. On success the versions it verified are the ones every
    /// later SendCommand runs, whatever becomes the default in SSM afterwards.
    pub async fn check_documents(&self) -> Result<PinnedVersions, DocumentsError> {
        let docs = self.documents();
        let statuses = self
            .call("checking the SSM documents", || {
                documents::document_statuses(self.ssm.as_ref(), &docs)
            })
            .await
            .map_err(DocumentsError::Unavailable)?;
        let pinned = documents::readiness(&statuses)?;
        for (document, version) in pinned.iter() {
            tracing::info!(
                document,
                version,
                "SSM document checked; commands run this version"
            );
        }
        *self.pinned.write().unwrap_or_else(|e| e.into_inner()) = Some(pinned.clone());
        Ok(pinned)
    }

    /// The verified version of `document`, or why nothing may be sent.
    fn pinned_version(&self, document: &str) -> Result<String, ProvisionError> {
        let pinned = self.pinned.read().unwrap_or_else(|e| e.into_inner());
        pinned
            .as_ref()
            .and_then(|p| p.get(document))
            .map(str::to_owned)
            .ok_or_else(|| {
                ProvisionError::Rejected(format!(
                    "Passport runs only SSM document versions it has checked, and {document} has not been checked: restart Passport, which checks the documents at start (`passport ssm check` shows what it finds)"
                ))
            })
    }

    /// Creates or updates the SSM documents (`passport ssm install`).
    pub async fn install_documents(&self) -> Result<Vec<(String, InstallAction)>, ApiError> {
        let docs = self.documents();
        self.call("installing the SSM documents", || {
            documents::install_documents(self.ssm.as_ref(), &docs)
        })
        .await
    }

    /// Runs an AWS call, retrying throttling and server errors that outlast
    /// the SDK's own adaptive retries (`aws.retries` more times, with growing,
    /// jittered pauses from `poll_initial` to `poll_max`): the SDK caps its
    /// backoff at seconds, while a batch job may wait out a longer throttle.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let policy = RetryPolicy {
            backoff: Backoff::new(
                Span::from_std(self.settings.poll_initial),
                Span::from_std(self.settings.poll_max),
            ),
            attempts: Some(self.settings.retries.saturating_add(1)),
            jitter: true,
        };
        retry(what, policy, f, |e| {
            if e.is_retryable() {
                Verdict::Backoff
            } else {
                Verdict::Stop
            }
        })
        .await
    }

    fn not_found(&self) -> String {
        format!(
            "no such instance in {}: check the id (instances in other regions or accounts cannot be used)",
            self.region
        )
    }

    /// Groups the instances of a spec into one job per platform. `parameters`
    /// gives each platform's parameters and one-time key, or why the platform's
    /// instances are refused.
    fn jobs(
        &self,
        operation: Operation,
        request: RequestId,
        username: &Username,
        instances: &[InstanceInfo],
        mut parameters: impl FnMut(Platform) -> Result<(Parameters, Option<OneTimeKey>), String>,
        expires_at: Option<i64>,
    ) -> (Vec<Job>, Vec<InstanceOutcome>) {
        let mut jobs = Vec::new();
        let mut refused = Vec::new();
        for platform in [Platform::Linux, Platform::Windows] {
            let ids: Vec<InstanceId> = instances
                .iter()
                .filter(|i| i.platform == platform)
                .map(|i| i.id.clone())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let (parameters, key) = match parameters(platform) {
                Ok(p) => p,
                Err(why) => {
                    refused.extend(ids.into_iter().map(|instance| InstanceOutcome {
                        instance,
                        ok: false,
                        detail: Some(why.clone()),
                    }));
                    continue;
                }
            };
            let names = &self.settings.documents;
            let document = match (operation, platform) {
                (Operation::Grant, Platform::Linux) => &names.grant_linux,
                (Operation::Revoke, Platform::Linux) => &names.revoke_linux,
                (Operation::Grant, Platform::Windows) => &names.grant_windows,
                (Operation::Revoke, Platform::Windows) => &names.revoke_windows,
            }
            .clone();
            let fingerprint = fingerprint(operation, &document, &parameters);
            jobs.push(Job {
                operation,
                request,
                username: username.clone(),
                comment: comment(request, operation, username),
                document,
                parameters,
                fingerprint,
                expires_at,
                key: key.map(Arc::new),
                instances: ids,
            });
        }
        (jobs, refused)
    }

    /// Runs the jobs and returns one outcome per instance, in `order`.
    async fn run(
        &self,
        jobs: Vec<Job>,
        refused: Vec<InstanceOutcome>,
        order: &[InstanceInfo],
    ) -> Result<Vec<InstanceOutcome>, ProvisionError> {
        let mut outcomes: BTreeMap<InstanceId, InstanceOutcome> = refused
            .into_iter()
            .map(|o| (o.instance.clone(), o))
            .collect();
        let mut unsent = Vec::new();
        for job in &jobs {
            let report = self.run_job(job).await?;
            unsent.extend(report.unsent);
            outcomes.extend(report.outcomes.into_iter().map(|o| (o.instance.clone(), o)));
        }
        // Nothing could be sent at all: let the caller try again later rather
        // than record a failure on every instance.
        if !unsent.is_empty() && unsent.len() == order.len() {
            return Err(ProvisionError::Unavailable(unsent.swap_remove(0)));
        }
        Ok(order
            .iter()
            .map(|i| {
                outcomes.remove(&i.id).unwrap_or_else(|| InstanceOutcome {
                    instance: i.id.clone(),
                    ok: false,
                    detail: Some("no result from SSM".into()),
                })
            })
            .collect())
    }

    async fn run_job(&self, job: &Job) -> Result<JobReport, ProvisionError> {
        let last = self
            .store
            .last_commands(job.request, &job.instances)
            .await
            .map_err(|e| ProvisionError::Unavailable(e.to_string()))?;
        let mut report = JobReport::default();
        let mut resume: BTreeMap<String, (LastCommand, Vec<InstanceId>)> = BTreeMap::new();
        let mut to_send = Vec::new();
        for instance in &job.instances {
            match last.get(instance) {
                Some(prior) if job.same_as(prior) => match &prior.settled {
                    None => resume
                        .entry(prior.command.command_id.clone())
                        .or_insert_with(|| (prior.clone(), Vec::new()))
                        .1
                        .push(instance.clone()),
                    Some(settled)
                        if settled.ok && self.expiry_close(job, prior) && job.key.is_none() =>
                    {
                        report.outcomes.push(InstanceOutcome {
                            instance: instance.clone(),
                            ok: true,
                            detail: None,
                        });
                    }
                    Some(_) => to_send.push(instance.clone()),
                },
                _ => to_send.push(instance.clone()),
            }
        }

        // Commands sent before a restart: wait for them rather than run the
        // script twice at once on the same instance.
        let resumed: Vec<(LastCommand, bool, Vec<InstanceOutcome>)> =
            stream::iter(resume.into_values())
                .map(|(prior, instances)| async move {
                    tracing::info!(request = %job.request, command = %prior.command.command_id, instances = instances.len(), "resuming an SSM command sent earlier");
                    let key = self.key_of(&prior.command.command_id);
                    // A Windows grant's password can only be read with the key it was sent with.
                    let readable = job.key.is_none() || key.is_some();
                    let reader = key.as_deref().map(|key| PasswordReader { key, job });
                    let outcomes = self
                        .poll(&prior.command.command_id, prior.command.sent_at_ms, instances, reader)
                        .await;
                    (prior, readable, outcomes)
                })
                .buffer_unordered(self.settings.concurrency)
                .collect()
                .await;
        for (prior, readable, outcomes) in resumed {
            for outcome in outcomes {
                if outcome.ok && (!readable || !self.expiry_close(job, &prior)) {
                    // It worked, but with an expiry too far from the one wanted
                    // now, or with a password nobody can read: send it again.
                    to_send.push(outcome.instance);
                } else {
                    report.outcomes.push(outcome);
                }
            }
        }

        let batches: Vec<Vec<InstanceId>> = to_send
            .chunks(self.settings.batch_size)
            .map(<[InstanceId]>::to_vec)
            .collect();
        let results: Vec<Result<JobReport, ProvisionError>> = stream::iter(batches)
            .map(|batch| self.send_and_poll(job, batch))
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        let mut refusal = None;
        for result in results {
            match result {
                Ok(batch) => {
                    report.outcomes.extend(batch.outcomes);
                    report.unsent.extend(batch.unsent);
                }
                Err(e) => refusal = Some(e),
            }
        }
        match refusal {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// A stored grant counts for the wanted one when its expiry is close enough.
    fn expiry_close(&self, job: &Job, prior: &LastCommand) -> bool {
        match (job.expires_at, prior.command.expires_at) {
            (Some(wanted), Some(sent)) => {
                let tolerance =
                    i64::try_from(self.settings.resume_tolerance.as_secs()).unwrap_or(i64::MAX);
                (wanted - sent).abs() <= tolerance
            }
            (None, None) => true,
            _ => false,
        }
    }

    /// Sends one batch and waits for its results. An instance SSM refuses
    /// (`InvalidInstanceId`) is split off so the others still get the command.
    async fn send_and_poll(
        &self,
        job: &Job,
        batch: Vec<InstanceId>,
    ) -> Result<JobReport, ProvisionError> {
        let document_version = self.pinned_version(&job.document)?;
        let mut report = JobReport::default();
        let mut queue = vec![batch];
        let mut sent = Vec::new();
        while let Some(instances) = queue.pop() {
            let command = CommandRequest {
                document: job.document.clone(),
                document_version: document_version.clone(),
                instances: instances.clone(),
                parameters: job.parameters.clone(),
                comment: job.comment.clone(),
                delivery_timeout_secs: i32::try_from(self.settings.delivery_timeout.as_secs())
                    .unwrap_or(i32::MAX),
            };
            let result = self
                .call("SendCommand", || self.ssm.send_command(&command))
                .await;
            let fail = |why: String| -> Vec<InstanceOutcome> {
                instances
                    .iter()
                    .map(|instance| InstanceOutcome {
                        instance: instance.clone(),
                        ok: false,
                        detail: Some(why.clone()),
                    })
                    .collect()
            };
            match result {
                Ok(command_id) => {
                    let sent_at_ms = now_ms();
                    let record = SentCommand {
                        command_id: command_id.clone(),
                        request: job.request,
                        operation: job.operation,
                        document: job.document.clone(),
                        fingerprint: job.fingerprint.clone(),
                        expires_at: job.expires_at,
                        sent_at_ms,
                        instances: instances.clone(),
                    };
                    if let Err(e) = self.store.record_sent(&record).await {
                        // The command is out; carry on and report it, but a restart
                        // now would send it again.
                        tracing::error!(command = %command_id, error = %e, "SSM command sent but not recorded");
                    }
                    tracing::info!(request = %job.request, command = %command_id, document = %job.document, version = %document_version, instances = instances.len(), "SSM command sent");
                    if let Some(key) = &job.key {
                        self.keys_lock().insert(command_id.clone(), key.clone());
                    }
                    sent.push((command_id, sent_at_ms, instances));
                }
                Err(e) if e.code() == Some("InvalidInstanceId") && instances.len() > 1 => {
                    let mut first = instances;
                    let second = first.split_off(first.len() / 2);
                    queue.push(first);
                    queue.push(second);
                }
                Err(e) if e.code() == Some("InvalidInstanceId") => {
                    report.outcomes.extend(fail(SSM_UNREACHABLE.into()));
                }
                Err(e) if e.code() == Some("InvalidDocumentVersion") => {
                    return Err(ProvisionError::Rejected(format!(
                        "version {document_version} of the SSM document {}, which Passport checked at start, is gone ({e}): run `passport ssm install`, then restart Passport so that it checks the documents again",
                        job.document
                    )));
                }
                Err(e) if e.code() == Some("InvalidDocument") => {
                    return Err(ProvisionError::Rejected(format!(
                        "the SSM document {} is not installed: run `passport ssm install` ({e})",
                        job.document
                    )));
                }
                Err(e) if e.is_access_denied() => {
                    return Err(ProvisionError::Rejected(format!(
                        "AWS refused to run {} ({e}): the bot's role needs the policy in manifests/iam/",
                        job.document
                    )));
                }
                Err(e) if e.is_retryable() => {
                    let why = format!("SSM is unavailable, nothing was sent: {e}");
                    report.unsent.extend(instances.iter().map(|_| why.clone()));
                    report.outcomes.extend(fail(why));
                }
                Err(e) => report
                    .outcomes
                    .extend(fail(format!("SSM refused the command: {e}"))),
            }
        }
        for (command_id, sent_at_ms, instances) in sent {
            let reader = job.key.as_deref().map(|key| PasswordReader { key, job });
            report
                .outcomes
                .extend(self.poll(&command_id, sent_at_ms, instances, reader).await);
        }
        Ok(report)
    }

    /// Polls GetCommandInvocation for each instance until its invocation
    /// settles or the deadline passes, with growing pauses (longer still while
    /// throttled). Settled results are recorded; one still open at the
    /// deadline is reported as failed but left open, so a later call resumes it.
    async fn poll(
        &self,
        command_id: &str,
        sent_at_ms: i64,
        instances: Vec<InstanceId>,
        passwords: Option<PasswordReader<'_>>,
    ) -> Vec<InstanceOutcome> {
        let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let deadline = sent_at_ms.saturating_add(millis(self.settings.settle_deadline()));
        let grace_until = sent_at_ms.saturating_add(millis(self.settings.invocation_grace));
        let mut waiting: Vec<(InstanceId, Option<Invocation>)> =
            instances.into_iter().map(|i| (i, None)).collect();
        let mut done = Vec::new();
        let mut delay = self.settings.poll_initial;
        // A command resumed after a restart may have finished long ago: ask at once.
        let mut ask_now = now_ms() - sent_at_ms >= millis(delay);
        loop {
            if !ask_now {
                let left = Duration::from_millis(u64::try_from(deadline - now_ms()).unwrap_or(0));
                tokio::time::sleep(jitter(delay).min(left.max(Duration::from_millis(1)))).await;
            }
            ask_now = false;
            let answers: Vec<_> = stream::iter(waiting.drain(..))
                .map(|(instance, last)| async move {
                    let answer = self.ssm.get_invocation(command_id, &instance).await;
                    (instance, last, answer)
                })
                .buffer_unordered(POLL_FANOUT)
                .collect()
                .await;
            let now = now_ms();
            let mut throttled = false;
            for (instance, last, answer) in answers {
                let settled = match answer {
                    Ok(invocation) => match self.judge(&invocation) {
                        Some(settled) if settled.ok => match &passwords {
                            Some(reader) => Some(self.hand_over_password(
                                reader,
                                &instance,
                                &invocation,
                                settled,
                            )),
                            None => Some(settled),
                        },
                        Some(settled) => Some(settled),
                        None => {
                            waiting.push((instance, Some(invocation)));
                            continue;
                        }
                    },
                    // Normal for a few seconds after SendCommand.
                    Err(e) if e.code() == Some("InvocationDoesNotExist") && now < grace_until => {
                        waiting.push((instance, last));
                        continue;
                    }
                    Err(e) if e.code() == Some("InvocationDoesNotExist") => Some(Settled {
                        status: "Undeliverable".into(),
                        ok: false,
                        detail: Some(format!(
                            "SSM never started the command on this instance: {SSM_UNREACHABLE}"
                        )),
                    }),
                    Err(e) if e.code() == Some("InvalidCommandId") => Some(Settled {
                        status: "Unknown".into(),
                        ok: false,
                        detail: Some(format!("SSM no longer knows command {command_id}")),
                    }),
                    Err(e) if e.is_retryable() => {
                        throttled |= matches!(e, ApiError::Throttled(_));
                        waiting.push((instance, last));
                        continue;
                    }
                    Err(e) => {
                        // Not recorded: the command may still run, and a later call should look again.
                        done.push(InstanceOutcome {
                            instance,
                            ok: false,
                            detail: Some(format!("cannot read the command's result from SSM: {e}")),
                        });
                        continue;
                    }
                };
                if let Some(settled) = settled {
                    metrics::counter!("passport_ssm_invocations_total", "status" => settled.status.clone()).increment(1);
                    metrics::histogram!("passport_ssm_invocation_seconds", "ok" => if settled.ok { "true" } else { "false" })
                        .record(u64::try_from(now - sent_at_ms).unwrap_or(0) as f64 / 1000.0);
                    if let Err(e) = self
                        .store
                        .record_settled(command_id, &instance, &settled)
                        .await
                    {
                        tracing::error!(command = %command_id, %instance, error = %e, "SSM result not recorded");
                    }
                    done.push(InstanceOutcome {
                        instance,
                        ok: settled.ok,
                        detail: settled.detail,
                    });
                }
            }
            if waiting.is_empty() {
                self.keys_lock().remove(command_id);
                break;
            }
            if now >= deadline {
                let waited = Span::from_millis((now - sent_at_ms).max(0));
                done.extend(waiting.drain(..).map(|(instance, last)| {
                    let status = last.map_or_else(|| "not started".to_owned(), |i| i.status.as_str().to_owned());
                    InstanceOutcome {
                        instance,
                        ok: false,
                        detail: Some(format!(
                            "no result from SSM {waited} after sending (status: {status}); Passport will look again on the next attempt"
                        )),
                    }
                }));
                break;
            }
            delay = if throttled {
                (delay * 2).min(self.settings.poll_max)
            } else {
                delay.mul_f64(1.5).min(self.settings.poll_max)
            };
        }
        done
    }

    fn keys_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<OneTimeKey>>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key_of(&self, command_id: &str) -> Option<Arc<OneTimeKey>> {
        self.keys_lock().get(command_id).cloned()
    }

    /// Decrypts the password a Windows grant returned and passes it on; a
    /// grant whose password cannot be read is a failed grant.
    fn hand_over_password(
        &self,
        reader: &PasswordReader<'_>,
        instance: &InstanceId,
        invocation: &Invocation,
        settled: Settled,
    ) -> Settled {
        let delivered =
            reader
                .key
                .read_password(&invocation.stdout)
                .and_then(|password| match &self.passwords {
                    Some(sink) => {
                        let owner = PasswordOwner {
                            request: reader.job.request,
                            instance: instance.clone(),
                            username: reader.job.username.clone(),
                        };
                        sink.deliver(owner, password);
                        Ok(())
                    }
                    None => Err("Passport has no way to deliver the password".into()),
                });
        match delivered {
            Ok(()) => settled,
            Err(why) => Settled {
                status: settled.status,
                ok: false,
                detail: Some(format!(
                    "the user was created but {why}; it is removed at expiry"
                )),
            },
        }
    }

    /// The final result of an invocation, or `None` while it is still running.
    fn judge(&self, invocation: &Invocation) -> Option<Settled> {
        let details: String = invocation
            .status_details
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        let settled = |ok: bool, detail: Option<String>| Settled {
            status: if details.is_empty() {
                invocation.status.as_str().to_owned()
            } else {
                invocation.status_details.clone()
            },
            ok,
            detail,
        };
        // The details name some final states more precisely than the status.
        match details.as_str() {
            "undeliverable" => {
                return Some(settled(false, Some(format!("the command could not be delivered: {SSM_UNREACHABLE}"))))
            }
            "deliverytimedout" => {
                return Some(settled(
                    false,
                    Some(format!(
                        "the instance did not pick up the command within {} (offline?): {SSM_UNREACHABLE}",
                        Span::from_std(self.settings.delivery_timeout)
                    )),
                ))
            }
            "executiontimedout" => {
                return Some(settled(false, Some("the script did not finish in time".into())))
            }
            "terminated" => {
                return Some(settled(false, Some("the command was stopped before it ran on this instance".into())))
            }
            "invalidplatform" => {
                return Some(settled(
                    false,
                    Some("the document does not run on this instance's platform".into()),
                ))
            }
            "accessdenied" => {
                return Some(settled(
                    false,
                    Some("SSM was denied access to run the command on this instance".into()),
                ))
            }
            _ => {}
        }
        match &invocation.status {
            InvocationStatus::Success => Some(settled(true, None)),
            InvocationStatus::Failed => {
                let excerpt = excerpt(&invocation.stderr, STDERR_EXCERPT);
                let detail = if excerpt.is_empty() {
                    format!("the script failed (exit code {})", invocation.response_code)
                } else {
                    format!(
                        "the script failed (exit code {}): {excerpt}",
                        invocation.response_code
                    )
                };
                Some(settled(false, Some(detail)))
            }
            InvocationStatus::TimedOut => {
                Some(settled(false, Some("the command timed out".into())))
            }
            InvocationStatus::Cancelled => {
                Some(settled(false, Some("the command was cancelled".into())))
            }
            _ => None,
        }
    }
}

/// One SendCommand's worth of work before batching: a document, its
/// parameters and the instances of one platform.
struct Job {
    operation: Operation,
    request: RequestId,
    username: Username,
    document: String,
    parameters: BTreeMap<String, Vec<String>>,
    comment: String,
    fingerprint: String,
    expires_at: Option<i64>,
    /// The one-time key a Windows grant's password comes back encrypted to.
    key: Option<Arc<OneTimeKey>>,
    instances: Vec<InstanceId>,
}

type Parameters = BTreeMap<String, Vec<String>>;

/// What reading a Windows grant's password needs.
#[derive(Clone, Copy)]
struct PasswordReader<'a> {
    key: &'a OneTimeKey,
    job: &'a Job,
}

impl Job {
    fn same_as(&self, prior: &LastCommand) -> bool {
        prior.command.operation == self.operation
            && prior.command.document == self.document
            && prior.command.fingerprint == self.fingerprint
    }
}

#[derive(Default)]
struct JobReport {
    outcomes: Vec<InstanceOutcome>,
    /// Why, for each instance that could not be sent because AWS was unavailable.
    unsent: Vec<String>,
}

/// A hash of what a command asks for, leaving out the expiry, which moves
/// between attempts of the same grant, and the one-time key.
fn fingerprint(
    operation: Operation,
    document: &str,
    parameters: &BTreeMap<String, Vec<String>>,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(operation.as_str());
    hasher.update([0]);
    hasher.update(document);
    for (name, values) in parameters
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "ExpiresAt" | "PublicKey"))
    {
        hasher.update([0]);
        hasher.update(name);
        for value in values {
            hasher.update([1]);
            hasher.update(value);
        }
    }
    hex::encode(&hasher.finalize()[..16])
}

/// `Passport AR-12: grant pp-alice-12`, cut to SSM's 100 characters.
fn comment(request: RequestId, operation: Operation, username: &Username) -> String {
    format!("Passport {request}: {} {username}", operation.as_str())
        .chars()
        .take(COMMENT_LIMIT)
        .collect()
}

/// The end of a script's error output on one line, control characters removed.
fn excerpt(text: &str, limit: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let words: Vec<&str> = flat.split_whitespace().collect();
    let line = words.join(" ");
    let count = line.chars().count();
    if count <= limit {
        line
    } else {
        let tail: String = line.chars().skip(count - limit).collect();
        format!("…{tail}")
    }
}

/// What people are told about an instance without the access tag.
fn untagged(tag: &super::config::InstanceTag) -> String {
    format!(
        "Passport may not manage this instance: it lacks the tag {}={} that opens an instance to Passport; ask the instance's owners to add it if it should be reachable this way",
        tag.key(),
        tag.value()
    )
}

/// Why an instance in this state cannot be used, if it cannot.
fn state_problem(state: &str) -> Option<String> {
    match state {
        "running" => None,
        "stopped" | "stopping" => {
            Some(format!("the instance is {state}: start it, then ask again"))
        }
        "terminated" | "shutting-down" => {
            Some(format!("the instance is {state} and cannot be used"))
        }
        "pending" => Some("the instance is still starting: ask again when it is running".into()),
        other => Some(format!("the instance is {other}, not running")),
    }
}

pub(super) fn provision_error(what: &str, e: ApiError) -> ProvisionError {
    if e.is_retryable() {
        ProvisionError::Unavailable(format!("{what}: {e}"))
    } else if e.is_access_denied() {
        ProvisionError::Rejected(format!(
            "AWS refused {what} ({e}): the bot's role needs the policy in manifests/iam/"
        ))
    } else {
        ProvisionError::Rejected(format!("{what} failed: {e}"))
    }
}

#[async_trait]
impl Provisioner for AwsProvisioner {
    fn name(&self) -> &str {
        "aws"
    }

    fn requires_ssh_key(&self) -> bool {
        // Only without a CA, which the engine knows: see Engine::request.
        true
    }

    async fn forget_finished(
        &self,
        before: crate::domain::time::Timestamp,
    ) -> Result<u64, ProvisionError> {
        self.store
            .prune(before.as_millis())
            .await
            .map_err(|e| ProvisionError::Unavailable(e.to_string()))
    }

    async fn describe(&self, ids: &[InstanceId]) -> Result<Vec<Described>, ProvisionError> {
        let mut unique: Vec<InstanceId> = Vec::new();
        for id in ids {
            if !unique.contains(id) {
                unique.push(id.clone());
            }
        }
        if unique.is_empty() {
            return Ok(Vec::new());
        }
        let found: BTreeMap<InstanceId, Ec2Instance> = self
            .call("DescribeInstances", || self.ec2.describe_instances(&unique))
            .await
            .map_err(|e| provision_error("DescribeInstances", e))?
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        let tag = &self.settings.instance_tag;
        let running: Vec<InstanceId> = unique
            .iter()
            .filter(|id| {
                found
                    .get(*id)
                    .is_some_and(|i| i.state == "running" && tag.is_on(&i.tags))
            })
            .cloned()
            .collect();
        let managed: Option<BTreeMap<InstanceId, String>> =
            if self.settings.check_ssm_online && !running.is_empty() {
                Some(
                    self.call("DescribeInstanceInformation", || {
                        self.ssm.managed_instances(&running)
                    })
                    .await
                    .map_err(|e| provision_error("DescribeInstanceInformation", e))?
                    .into_iter()
                    .map(|m| (m.id, m.ping_status))
                    .collect(),
                )
            } else {
                None
            };
        Ok(ids
            .iter()
            .map(|id| {
                let unusable = |reason: String| Described::Unusable {
                    id: id.clone(),
                    reason,
                };
                let Some(instance) = found.get(id) else {
                    return unusable(self.not_found());
                };
                if let Some(reason) = state_problem(&instance.state) {
                    return unusable(reason);
                }
                if !tag.is_on(&instance.tags) {
                    return unusable(untagged(tag));
                }
                if let Some(managed) = &managed {
                    match managed.get(id).map(String::as_str) {
                        Some("Online") => {}
                        Some(status) => {
                            return unusable(format!(
                                "not reachable through SSM (agent status {status}): is the agent running and the instance profile attached?"
                            ))
                        }
                        None => return unusable(SSM_UNREACHABLE.into()),
                    }
                }
                Described::Usable(InstanceInfo {
                    id: instance.id.clone(),
                    name: instance.tags.get("Name").cloned(),
                    platform: instance.platform,
                    state: instance.state.clone(),
                    tags: instance.tags.clone(),
                    private_ips: instance.private_ips.clone(),
                })
            })
            .collect())
    }

    async fn grant(&self, spec: &GrantSpec) -> Result<Vec<InstanceOutcome>, ProvisionError> {
        let expires_at = spec.expires_at.as_millis().div_euclid(1000);
        let base = || {
            let mut p = Parameters::new();
            p.insert("Username".into(), vec![spec.username.to_string()]);
            p.insert("RequestId".into(), vec![spec.request.to_string()]);
            p.insert("ExpiresAt".into(), vec![expires_at.to_string()]);
            p.insert("Sudo".into(), vec![spec.sudo.to_string()]);
            p
        };
        let (jobs, refused) = self.jobs(
            Operation::Grant,
            spec.request,
            &spec.username,
            &spec.instances,
            |platform| match platform {
                Platform::Linux => {
                    // With a CA the instance trusts its keys and no personal
                    // key is installed; without one, the registered key is.
                    let (key, cas) = if spec.trusted_ca_keys.is_empty() {
                        let key = spec
                            .ssh_public_key
                            .as_deref()
                            .and_then(bare_public_key)
                            .ok_or_else(|| {
                                "no SSH public key is registered for the requester: register one with `/passport key set <openssh public key>` and request again".to_owned()
                            })?;
                        (key, "none".to_owned())
                    } else {
                        ("none".to_owned(), spec.trusted_ca_keys.join(","))
                    };
                    let mut p = base();
                    p.insert("SshPublicKey".into(), vec![key]);
                    p.insert("TrustedCaKeys".into(), vec![cas]);
                    p.insert("PortForwarding".into(), vec![spec.port_forwarding.to_string()]);
                    p.insert("UidRange".into(), vec![self.settings.uid_range.to_string()]);
                    Ok((p, None))
                }
                Platform::Windows => {
                    if spec.username.as_str().len() > WINDOWS_USERNAME_MAX {
                        return Err(format!(
                            "the username {} is longer than the {WINDOWS_USERNAME_MAX} characters Windows allows",
                            spec.username
                        ));
                    }
                    if self.passwords.is_none() {
                        return Err("Windows access is not available: this Passport cannot deliver passwords yet".into());
                    }
                    let key = OneTimeKey::generate()?;
                    let mut p = base();
                    p.insert("PublicKey".into(), vec![key.public_key_base64().to_owned()]);
                    Ok((p, Some(key)))
                }
            },
            Some(expires_at),
        );
        self.run(jobs, refused, &spec.instances).await
    }

    async fn revoke(&self, spec: &RevokeSpec) -> Result<Vec<InstanceOutcome>, ProvisionError> {
        let (jobs, refused) = self.jobs(
            Operation::Revoke,
            spec.request,
            &spec.username,
            &spec.instances,
            |_| {
                let mut p = Parameters::new();
                p.insert("Username".into(), vec![spec.username.to_string()]);
                p.insert("RequestId".into(), vec![spec.request.to_string()]);
                Ok((p, None))
            },
            None,
        );
        self.run(jobs, refused, &spec.instances).await
    }
}

/// `<type> <base64>` of an OpenSSH public key line, without options or
/// comment, as the Linux grant document expects.
fn bare_public_key(line: &str) -> Option<String> {
    let mut fields = line.split_whitespace();
    let kind = fields.next()?;
    let body = fields.next()?;
    Some(format!("{kind} {body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_comment_names_the_request_and_fits_ssm() {
        let request = RequestId::new(12).unwrap();
        let user = Username::for_request("alice", request);
        assert_eq!(
            comment(request, Operation::Grant, &user),
            "Passport AR-12: grant pp-alice-12"
        );
        let long = RequestId::new(999_999_999).unwrap();
        let user = Username::for_request(&"x".repeat(200), long);
        assert!(comment(long, Operation::Revoke, &user).chars().count() <= COMMENT_LIMIT);
    }

    #[test]
    fn the_fingerprint_ignores_the_expiry_only() {
        let params = |expires: &str, sudo: &str| {
            BTreeMap::from([
                ("ExpiresAt".to_owned(), vec![expires.to_owned()]),
                ("Sudo".to_owned(), vec![sudo.to_owned()]),
            ])
        };
        let a = fingerprint(Operation::Grant, "D", &params("1", "false"));
        assert_eq!(a, fingerprint(Operation::Grant, "D", &params("2", "false")));
        assert_ne!(a, fingerprint(Operation::Grant, "D", &params("1", "true")));
        assert_ne!(
            a,
            fingerprint(Operation::Revoke, "D", &params("1", "false"))
        );
        assert_ne!(a, fingerprint(Operation::Grant, "E", &params("1", "false")));
    }

    #[test]
    fn stderr_excerpts_are_one_line_and_keep_the_end() {
        assert_eq!(
            excerpt("useradd: failure\n\tline two\r\n", 100),
            "useradd: failure line two"
        );
        let long = format!("{}THE END", "x ".repeat(400));
        let cut = excerpt(&long, 20);
        assert!(cut.starts_with('…') && cut.ends_with("THE END"));
        assert_eq!(cut.chars().count(), 21);
    }

    #[test]
    fn ssh_keys_lose_their_comment() {
        assert_eq!(
            bare_public_key("ssh-ed25519 AAAAC3Nza alice@laptop\n").as_deref(),
            Some("ssh-ed25519 AAAAC3Nza")
        );
        assert_eq!(bare_public_key("  "), None);
        assert_eq!(bare_public_key("ssh-ed25519"), None);
    }
}
