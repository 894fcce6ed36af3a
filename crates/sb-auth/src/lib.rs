//! Identity and access: accounts, sessions, API tokens, invites, the [`authorize`] decision, rate
//! limits and the audit log.
//!
//! [`Auth`] is the service the server's routes call. It takes domain values (usernames, secrets,
//! the caller's [`Origin`], the current time) and returns records or an [`AuthError`] that carries
//! a stable [`ErrorCode`]; it knows nothing of HTTP. Every access check goes through
//! [`Auth::authorize`], which records each denial in the audit log.
//!
//! Revocations are announced on the bus (`auth/credential/<id>`, `auth/user/<id>`) so whoever
//! holds a long-lived connection for that credential can close it at once.

pub mod password;
pub mod policy;
pub mod ratelimit;
pub mod token;

pub use policy::{Action, Credential, Denial, Resource, Scope, Subject, authorize};

use password::{HashError, PasswordHasherPool, PolicyViolation};
use ratelimit::{FailureBackoff, KeyedLimiter, RetryAfter};
use sb_bus::Bus;
use sb_core::config::{AuthConfig, RateLimitConfig, RegistrationMode};
use sb_core::{ErrorCode, InviteId, Role, Secret, SessionId, TokenId, UnixMillis, UserId};
use sb_store::audit::{ChainBreak, ChainVerifier};
use sb_store::{
    Admission, ApiTokenRecord, AuditEntry, AuditFilter, AuditRecord, InviteRecord, SessionRecord,
    Store, StoreError, UserRecord,
};
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// A credential's `last_used_at` is written at most this often, so reads stay reads.
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);
/// Audit records read per page while verifying the chain.
const VERIFY_PAGE: usize = 1_000;
/// Longest audit page a query may ask for.
pub const AUDIT_QUERY_LIMIT_MAX: usize = 1_000;
const CLIENT_LENGTH_MAX: usize = 200;
const TOKEN_NAME_LENGTH_MAX: usize = 64;

/// Where a request came from.
#[derive(Clone, Debug)]
pub struct Origin {
    pub ip: IpAddr,
    /// The client's self-description (User-Agent), shown in session lists.
    pub client: String,
}

/// The context of an authenticated call: who asks, from where, and when.
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    pub subject: &'a Subject,
    pub origin: &'a Origin,
    pub now: UnixMillis,
}

/// Published on the auth bus when a credential or account stops being valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthEvent {
    CredentialRevoked,
    UserDisabled,
}

pub fn credential_topic(credential_id: &str) -> String {
    format!("auth/credential/{credential_id}")
}

pub fn user_topic(user: UserId) -> String {
    format!("auth/user/{user}")
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("this account is disabled; ask an administrator")]
    AccountDisabled,
    #[error("too many attempts; retry in {}s", .0.secs_ceil())]
    RateLimited(RetryAfter),
    #[error("missing credentials: send Authorization: Bearer <token>")]
    Unauthenticated,
    #[error("the token is unknown, expired or revoked; log in again or create a new token")]
    InvalidToken,
    #[error("not allowed")]
    Forbidden,
    #[error("{0}")]
    WeakPassword(PolicyViolation),
    #[error("registration is {0}")]
    RegistrationClosed(&'static str),
    #[error("the invite or setup token is unknown, used or expired")]
    InvalidInvite,
    #[error("that username is taken")]
    UsernameTaken,
    #[error("{0}")]
    InvalidArgument(String),
    #[error("not found")]
    NotFound,
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("password hashing: {0}")]
    Hash(#[from] HashError),
}

impl AuthError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::InvalidCredentials => ErrorCode::InvalidCredentials,
            AuthError::AccountDisabled => ErrorCode::AccountDisabled,
            AuthError::RateLimited(_) => ErrorCode::RateLimited,
            AuthError::Unauthenticated => ErrorCode::Unauthenticated,
            AuthError::InvalidToken => ErrorCode::InvalidToken,
            AuthError::Forbidden => ErrorCode::Forbidden,
            AuthError::WeakPassword(_) => ErrorCode::WeakPassword,
            AuthError::RegistrationClosed(_) => ErrorCode::RegistrationClosed,
            AuthError::InvalidInvite => ErrorCode::InvalidInvite,
            AuthError::UsernameTaken => ErrorCode::UsernameTaken,
            AuthError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            AuthError::NotFound => ErrorCode::NotFound,
            AuthError::Store(StoreError::NotFound) => ErrorCode::NotFound,
            AuthError::Store(_) | AuthError::Hash(_) => ErrorCode::Internal,
        }
    }

    pub fn retry_after(&self) -> Option<RetryAfter> {
        match self {
            AuthError::RateLimited(r) => Some(*r),
            _ => None,
        }
    }
}

pub type Result<T, E = AuthError> = std::result::Result<T, E>;

pub struct RegisterInput {
    pub username: String,
    pub password: Secret<String>,
    pub setup_token: Option<Secret<String>>,
    pub invite: Option<Secret<String>>,
}

pub struct NewToken {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub ttl: Option<Duration>,
}

/// The outcome of checking the audit chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditVerification {
    pub checked: u64,
    pub first_break: Option<ChainBreak>,
}

pub struct Auth {
    store: Arc<dyn Store>,
    bus: Bus<AuthEvent>,
    config: AuthConfig,
    hasher: PasswordHasherPool,
    login_ip: KeyedLimiter<IpAddr>,
    login_account: KeyedLimiter<String>,
    register_ip: KeyedLimiter<IpAddr>,
    token_failures_ip: KeyedLimiter<IpAddr>,
    per_credential: KeyedLimiter<[u8; 32]>,
    backoff: FailureBackoff<String>,
}

fn validate_username(name: &str, max: usize) -> Result<()> {
    let ok_len = !name.is_empty() && name.chars().count() <= max;
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    let ok_start = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_start {
        Ok(())
    } else {
        Err(AuthError::InvalidArgument(format!(
            "username must be 1-{max} characters of a-z, 0-9, '_', '-', '.', starting with a letter or digit"
        )))
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

impl Auth {
    pub fn new(
        store: Arc<dyn Store>,
        bus: Bus<AuthEvent>,
        config: AuthConfig,
        limits: &RateLimitConfig,
    ) -> Result<Self> {
        let minute = Duration::from_secs(60);
        let keys = limits.tracked_keys_max;
        Ok(Self {
            hasher: PasswordHasherPool::new(&config)?,
            store,
            bus,
            config,
            login_ip: KeyedLimiter::new(limits.login_per_ip_per_minute, minute, keys),
            login_account: KeyedLimiter::new(limits.login_per_account_per_minute, minute, keys),
            register_ip: KeyedLimiter::new(limits.register_per_ip_per_minute, minute, keys),
            token_failures_ip: KeyedLimiter::new(
                limits.token_failures_per_ip_per_minute,
                minute,
                keys,
            ),
            per_credential: KeyedLimiter::new(
                limits.requests_per_credential_per_second,
                Duration::from_secs(1),
                keys,
            ),
            backoff: FailureBackoff::new(
                limits.failures_before_backoff,
                Duration::from_millis(limits.backoff_base_ms),
                Duration::from_millis(limits.backoff_max_ms),
                keys,
            ),
        })
    }

    pub fn bus(&self) -> &Bus<AuthEvent> {
        &self.bus
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    async fn audit(
        &self,
        now: UnixMillis,
        actor: String,
        action: &str,
        target: String,
        ip: Option<IpAddr>,
        detail: serde_json::Value,
    ) -> Result<AuditRecord> {
        Ok(self
            .store
            .append_audit(AuditEntry {
                at: now,
                actor,
                action: action.to_string(),
                target,
                ip: ip.map(|i| i.to_string()).unwrap_or_default(),
                detail: detail.to_string(),
            })
            .await?)
    }

    /// Records an action taken on the caller's behalf (after `authorize` allowed it).
    pub async fn record(
        &self,
        cx: Ctx<'_>,
        action: &str,
        target: String,
        detail: serde_json::Value,
    ) -> Result<()> {
        self.audit(
            cx.now,
            cx.subject.user_id.to_string(),
            action,
            target,
            Some(cx.origin.ip),
            detail,
        )
        .await?;
        Ok(())
    }

    /// The access decision for a route: allowed, or `Forbidden` with the denial audited.
    pub async fn authorize(&self, cx: Ctx<'_>, action: Action, resource: &Resource) -> Result<()> {
        let Ctx {
            subject,
            origin,
            now,
        } = cx;
        let Err(denial) = policy::authorize(subject, action, resource) else {
            return Ok(());
        };
        let reason = match denial {
            Denial::Scope => "token scope",
            Denial::NotPermitted => "role or ownership",
        };
        tracing::info!(user = %subject.user_id, action = action.as_str(), resource = %resource.describe(), reason, "permission denied");
        self.audit(
            now,
            subject.user_id.to_string(),
            "permission.denied",
            resource.describe(),
            Some(origin.ip),
            json!({"action": action.as_str(), "reason": reason, "credential": subject.credential.id_string()}),
        )
        .await?;
        Err(AuthError::Forbidden)
    }

    /// At first start (no account yet): a fresh setup token, whose hash replaces any earlier one.
    /// `None` once an account exists.
    pub async fn issue_setup_token(&self) -> Result<Option<Secret<String>>> {
        if self.store.user_count().await? > 0 {
            return Ok(None);
        }
        let t = token::generate(token::SETUP_PREFIX);
        Ok(self
            .store
            .set_setup_token(token::hash(t.expose()))
            .await?
            .then_some(t))
    }

    /// Creates an account. Returns it and whether the setup token admitted it (then it is admin).
    pub async fn register(
        &self,
        input: RegisterInput,
        origin: &Origin,
        now: UnixMillis,
    ) -> Result<(UserRecord, bool)> {
        self.register_ip
            .check(&origin.ip, now)
            .map_err(AuthError::RateLimited)?;
        validate_username(&input.username, self.config.username_length_max)?;
        let (admission, role, via) = match (&input.setup_token, &input.invite) {
            (Some(t), _) => (
                Admission::Setup {
                    token_hash: token::hash(t.expose()),
                },
                Role::Admin,
                "setup_token",
            ),
            (None, invite) => match (self.config.registration, invite) {
                (RegistrationMode::Closed, _) => {
                    return Err(AuthError::RegistrationClosed("closed on this server"));
                }
                (_, Some(t)) => (
                    Admission::Invite {
                        token_hash: token::hash(t.expose()),
                    },
                    Role::User,
                    "invite",
                ),
                (RegistrationMode::Open, None) => (Admission::Open, Role::User, "open"),
                (RegistrationMode::Invite, None) => {
                    return Err(AuthError::RegistrationClosed(
                        "by invite only; ask an administrator for an invite",
                    ));
                }
            },
        };
        password::check_policy(input.password.expose(), &input.username, &self.config)
            .map_err(AuthError::WeakPassword)?;
        let user = UserRecord {
            id: UserId::new_at(now),
            username: input.username,
            display_name: String::new(),
            status_text: String::new(),
            password_hash: self.hasher.hash(input.password).await?,
            role,
            disabled: false,
            created_at: now,
        };
        match self.store.create_user(user.clone(), admission, now).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Err(AuthError::UsernameTaken),
            Err(StoreError::AdmissionRejected) => return Err(AuthError::InvalidInvite),
            Err(e) => return Err(e.into()),
        }
        self.audit(
            now,
            user.id.to_string(),
            "user.register",
            user.username.clone(),
            Some(origin.ip),
            json!({"role": role.as_str(), "via": via}),
        )
        .await?;
        Ok((user, via == "setup_token"))
    }

    /// Checks a username and password and opens a session. Unknown user and wrong password give
    /// the same error after the same work.
    pub async fn login(
        &self,
        username: &str,
        password: Secret<String>,
        origin: &Origin,
        now: UnixMillis,
    ) -> Result<(SessionRecord, Secret<String>, UserRecord)> {
        let account = truncate(
            &username.to_lowercase(),
            self.config.username_length_max + 1,
        );
        self.login_ip
            .check(&origin.ip, now)
            .map_err(AuthError::RateLimited)?;
        self.login_account
            .check(&account, now)
            .map_err(AuthError::RateLimited)?;
        self.backoff
            .check(&account, now)
            .map_err(AuthError::RateLimited)?;
        if password.expose().chars().count() > self.config.password_max_length {
            return Err(AuthError::InvalidCredentials);
        }
        let user = self.store.user_by_username(&account).await?;
        let ok = self
            .hasher
            .verify(password, user.as_ref().map(|u| u.password_hash.clone()))
            .await?;
        let user = match (ok, user) {
            (true, Some(u)) => u,
            (_, user) => {
                self.backoff.record_failure(&account, now);
                self.audit(
                    now,
                    user.map(|u| u.id.to_string())
                        .unwrap_or_else(|| format!("username:{account}")),
                    "login.failure",
                    account,
                    Some(origin.ip),
                    json!({"client": truncate(&origin.client, CLIENT_LENGTH_MAX)}),
                )
                .await?;
                return Err(AuthError::InvalidCredentials);
            }
        };
        if user.disabled {
            self.audit(
                now,
                user.id.to_string(),
                "login.failure",
                user.username.clone(),
                Some(origin.ip),
                json!({"reason": "disabled"}),
            )
            .await?;
            return Err(AuthError::AccountDisabled);
        }
        self.backoff.record_success(&account);
        let secret = token::generate(token::SESSION_PREFIX);
        let session = SessionRecord {
            id: SessionId::new_at(now),
            user_id: user.id,
            token_hash: token::hash(secret.expose()),
            created_at: now,
            expires_at: now.plus(Duration::from_secs(self.config.session_ttl_secs)),
            last_used_at: now,
            client: truncate(&origin.client, CLIENT_LENGTH_MAX),
            ip: origin.ip.to_string(),
            revoked_at: None,
        };
        self.store.insert_session(session.clone()).await?;
        self.audit(
            now,
            user.id.to_string(),
            "login.success",
            session.id.to_string(),
            Some(origin.ip),
            json!({"client": session.client}),
        )
        .await?;
        Ok((session, secret, user))
    }

    /// Whether a credential (a device secret or certificate) may be tried from `ip` now:
    /// after `token_failures_per_ip_per_minute` failures from it, not for a while.
    pub fn credential_attempt(&self, ip: IpAddr, now: UnixMillis) -> Result<()> {
        self.token_failures_ip
            .peek(&ip, now)
            .map_err(AuthError::RateLimited)
    }

    /// Counts a credential that did not hold against `ip`.
    pub fn credential_failed(&self, ip: IpAddr, now: UnixMillis) {
        let _ = self.token_failures_ip.check(&ip, now);
    }

    /// Resolves a bearer token (session or API token) to its subject.
    pub async fn authenticate(&self, bearer: &str, ip: IpAddr, now: UnixMillis) -> Result<Subject> {
        self.token_failures_ip
            .peek(&ip, now)
            .map_err(AuthError::RateLimited)?;
        match self.resolve(bearer, now).await? {
            Some((subject, hash)) => {
                self.per_credential
                    .check(&hash, now)
                    .map_err(AuthError::RateLimited)?;
                Ok(subject)
            }
            None => {
                // Count the failure against the IP; the next one over the limit is refused early.
                let _ = self.token_failures_ip.check(&ip, now);
                Err(AuthError::InvalidToken)
            }
        }
    }

    async fn resolve(&self, bearer: &str, now: UnixMillis) -> Result<Option<(Subject, [u8; 32])>> {
        if bearer.len() > token::TOKEN_LENGTH_MAX {
            return Ok(None);
        }
        let hash = token::hash(bearer);
        if bearer.starts_with(token::SESSION_PREFIX) {
            let Some((s, u)) = self.store.session_by_token_hash(hash).await? else {
                return Ok(None);
            };
            if s.revoked_at.is_some() || s.expires_at <= now || u.disabled {
                return Ok(None);
            }
            if now.0 - s.last_used_at.0 >= TOUCH_INTERVAL.as_millis() as i64 {
                self.store.touch_session(s.id, now).await?;
            }
            return Ok(Some((
                Subject {
                    user_id: u.id,
                    username: u.username,
                    role: u.role,
                    credential: Credential::Session(s.id),
                },
                hash,
            )));
        }
        if bearer.starts_with(token::API_TOKEN_PREFIX) {
            let Some((t, u)) = self.store.token_by_hash(hash).await? else {
                return Ok(None);
            };
            if t.revoked_at.is_some() || t.expires_at.is_some_and(|e| e <= now) || u.disabled {
                return Ok(None);
            }
            if t.last_used_at
                .is_none_or(|l| now.0 - l.0 >= TOUCH_INTERVAL.as_millis() as i64)
            {
                self.store.touch_token(t.id, now).await?;
            }
            let scopes = t.scopes.iter().filter_map(|s| Scope::parse(s)).collect();
            return Ok(Some((
                Subject {
                    user_id: u.id,
                    username: u.username,
                    role: u.role,
                    credential: Credential::ApiToken { id: t.id, scopes },
                },
                hash,
            )));
        }
        Ok(None)
    }

    /// Deletes sessions that ended more than `ended_session_retention_secs` before `now`.
    pub async fn prune_ended_sessions(&self, now: UnixMillis) -> Result<u64> {
        let retention = Duration::from_secs(self.config.ended_session_retention_secs);
        Ok(self.store.prune_sessions(now.minus(retention)).await?)
    }

    pub async fn me(&self, subject: &Subject) -> Result<UserRecord> {
        self.store
            .user_by_id(subject.user_id)
            .await?
            .ok_or(AuthError::NotFound)
    }

    pub async fn update_profile(
        &self,
        cx: Ctx<'_>,
        display_name: Option<String>,
        status_text: Option<String>,
    ) -> Result<UserRecord> {
        let Ctx { subject, .. } = cx;
        let owner = subject.user_id;
        self.authorize(cx, Action::Update, &Resource::Account { owner })
            .await?;
        let max = self.config.profile_field_length_max;
        for v in [&display_name, &status_text].into_iter().flatten() {
            if v.chars().count() > max || v.chars().any(char::is_control) {
                return Err(AuthError::InvalidArgument(format!(
                    "profile fields are at most {max} characters, without control characters"
                )));
            }
        }
        let me = self.me(subject).await?;
        let display = display_name.unwrap_or(me.display_name);
        let status = status_text.unwrap_or(me.status_text);
        self.store.update_profile(owner, &display, &status).await?;
        self.me(subject).await
    }

    /// Ends the caller's own session (a no-op for API tokens, which are revoked by id).
    pub async fn logout(&self, cx: Ctx<'_>) -> Result<()> {
        if let Credential::Session(id) = cx.subject.credential {
            self.revoke_session_record(cx, id, "logout").await?;
        }
        Ok(())
    }

    pub async fn change_password(
        &self,
        cx: Ctx<'_>,
        current: Secret<String>,
        new: Secret<String>,
    ) -> Result<Vec<SessionId>> {
        let Ctx {
            subject,
            origin,
            now,
        } = cx;
        let owner = subject.user_id;
        self.authorize(cx, Action::Update, &Resource::Account { owner })
            .await?;
        let me = self.me(subject).await?;
        if !self
            .hasher
            .verify(current, Some(me.password_hash.clone()))
            .await?
        {
            return Err(AuthError::InvalidCredentials);
        }
        password::check_policy(new.expose(), &me.username, &self.config)
            .map_err(AuthError::WeakPassword)?;
        let hash = self.hasher.hash(new).await?;
        let keep = match subject.credential {
            Credential::Session(id) => Some(id),
            Credential::ApiToken { .. } | Credential::Device(_) => None,
        };
        let revoked = self.store.change_password(owner, &hash, keep, now).await?;
        for id in &revoked {
            self.bus.publish(
                &credential_topic(&id.to_string()),
                AuthEvent::CredentialRevoked,
            );
        }
        self.audit(
            now,
            owner.to_string(),
            "password.change",
            owner.to_string(),
            Some(origin.ip),
            json!({"sessions_revoked": revoked.len()}),
        )
        .await?;
        Ok(revoked)
    }

    pub async fn list_sessions(&self, cx: Ctx<'_>) -> Result<Vec<SessionRecord>> {
        let Ctx { subject, .. } = cx;
        let owner = subject.user_id;
        self.authorize(cx, Action::Read, &Resource::Session { owner })
            .await?;
        Ok(self.store.list_sessions(owner).await?)
    }

    pub async fn revoke_session(&self, cx: Ctx<'_>, id: SessionId) -> Result<()> {
        self.revoke_session_record(cx, id, "session.revoke").await
    }

    /// After a credential is revoked: close its open connections and record who did it.
    async fn revoked(
        &self,
        cx: Ctx<'_>,
        credential_id: &str,
        audit_action: &str,
        detail: serde_json::Value,
    ) -> Result<()> {
        self.bus.publish(
            &credential_topic(credential_id),
            AuthEvent::CredentialRevoked,
        );
        self.audit(
            cx.now,
            cx.subject.user_id.to_string(),
            audit_action,
            credential_id.to_string(),
            Some(cx.origin.ip),
            detail,
        )
        .await?;
        Ok(())
    }

    async fn revoke_session_record(
        &self,
        cx: Ctx<'_>,
        id: SessionId,
        audit_action: &str,
    ) -> Result<()> {
        let now = cx.now;
        let session = self
            .store
            .session_by_id(id)
            .await?
            .ok_or(AuthError::NotFound)?;
        let resource = Resource::Session {
            owner: session.user_id,
        };
        self.authorize(cx, Action::Delete, &resource).await?;
        if self.store.revoke_session(id, now).await? {
            let detail = json!({"owner": session.user_id.to_string()});
            self.revoked(cx, &id.to_string(), audit_action, detail)
                .await?;
        }
        Ok(())
    }

    pub async fn create_token(
        &self,
        cx: Ctx<'_>,
        new: NewToken,
    ) -> Result<(ApiTokenRecord, Secret<String>)> {
        let Ctx {
            subject,
            origin,
            now,
        } = cx;
        let owner = subject.user_id;
        self.authorize(cx, Action::Create, &Resource::ApiToken { owner })
            .await?;
        let name = new.name.trim();
        if name.is_empty()
            || name.chars().count() > TOKEN_NAME_LENGTH_MAX
            || name.chars().any(char::is_control)
        {
            return Err(AuthError::InvalidArgument(format!(
                "token name must be 1-{TOKEN_NAME_LENGTH_MAX} printable characters"
            )));
        }
        if new.scopes.is_empty() {
            return Err(AuthError::InvalidArgument(
                "a token needs at least one scope (read, write, admin)".into(),
            ));
        }
        // A token can never hold more than its creator: no admin scope for users, and a token
        // cannot mint a token with scopes it lacks.
        for scope in &new.scopes {
            if (*scope == Scope::Admin && subject.role != Role::Admin)
                || !subject.credential.has_scope(*scope)
            {
                return Err(AuthError::InvalidArgument(format!(
                    "you cannot grant the '{}' scope",
                    scope.as_str()
                )));
            }
        }
        let max = self.config.token_ttl_max_secs;
        let ttl = match (new.ttl, max) {
            (None, 0) => None,
            (None, max) => Some(Duration::from_secs(max)),
            (Some(t), max) if max > 0 && t.as_secs() > max => {
                return Err(AuthError::InvalidArgument(format!(
                    "tokens on this server expire within {max} seconds"
                )));
            }
            (Some(t), _) => Some(t),
        };
        let secret = token::generate(token::API_TOKEN_PREFIX);
        let mut scopes: Vec<String> = new.scopes.iter().map(|s| s.as_str().to_string()).collect();
        scopes.sort();
        scopes.dedup();
        let record = ApiTokenRecord {
            id: TokenId::new_at(now),
            user_id: owner,
            name: name.to_string(),
            token_hash: token::hash(secret.expose()),
            scopes,
            created_at: now,
            expires_at: ttl.map(|t| now.plus(t)),
            last_used_at: None,
            revoked_at: None,
        };
        self.store.insert_token(record.clone()).await?;
        self.audit(
            now,
            owner.to_string(),
            "token.create",
            record.id.to_string(),
            Some(origin.ip),
            json!({"name": record.name, "scopes": record.scopes}),
        )
        .await?;
        Ok((record, secret))
    }

    pub async fn list_tokens(&self, cx: Ctx<'_>) -> Result<Vec<ApiTokenRecord>> {
        let Ctx { subject, .. } = cx;
        let owner = subject.user_id;
        self.authorize(cx, Action::Read, &Resource::ApiToken { owner })
            .await?;
        Ok(self.store.list_tokens(owner).await?)
    }

    pub async fn revoke_token(&self, cx: Ctx<'_>, id: TokenId) -> Result<()> {
        let now = cx.now;
        let token = self
            .store
            .token_by_id(id)
            .await?
            .ok_or(AuthError::NotFound)?;
        let resource = Resource::ApiToken {
            owner: token.user_id,
        };
        self.authorize(cx, Action::Delete, &resource).await?;
        if self.store.revoke_token(id, now).await? {
            let detail = json!({"owner": token.user_id.to_string(), "name": token.name});
            self.revoked(cx, &id.to_string(), "token.revoke", detail)
                .await?;
        }
        Ok(())
    }

    // --- administration ---

    pub async fn list_users(&self, cx: Ctx<'_>) -> Result<Vec<UserRecord>> {
        self.authorize(cx, Action::Read, &Resource::Users).await?;
        Ok(self.store.list_users().await?)
    }

    async fn admin_target(&self, cx: Ctx<'_>, target: &str) -> Result<UserRecord> {
        let Ctx { subject, .. } = cx;
        self.authorize(cx, Action::Update, &Resource::Users).await?;
        let user = match target.parse::<UserId>() {
            Ok(id) => self.store.user_by_id(id).await?,
            Err(_) => self.store.user_by_username(target).await?,
        };
        let user = user.ok_or(AuthError::NotFound)?;
        if user.id == subject.user_id {
            return Err(AuthError::InvalidArgument(
                "administrators cannot change their own role or disable themselves".into(),
            ));
        }
        Ok(user)
    }

    pub async fn set_role(&self, cx: Ctx<'_>, target: &str, role: Role) -> Result<UserRecord> {
        let Ctx {
            subject,
            origin,
            now,
        } = cx;
        let user = self.admin_target(cx, target).await?;
        self.store.set_role(user.id, role).await?;
        self.audit(
            now,
            subject.user_id.to_string(),
            "user.role_change",
            user.id.to_string(),
            Some(origin.ip),
            json!({"from": user.role.as_str(), "to": role.as_str()}),
        )
        .await?;
        Ok(UserRecord { role, ..user })
    }

    /// Disables or re-enables an account. Disabling revokes its sessions and closes its
    /// real-time connections; its API tokens stop working while it is disabled.
    pub async fn set_disabled(
        &self,
        cx: Ctx<'_>,
        target: &str,
        disabled: bool,
    ) -> Result<UserRecord> {
        let Ctx {
            subject,
            origin,
            now,
        } = cx;
        let user = self.admin_target(cx, target).await?;
        self.store.set_disabled(user.id, disabled).await?;
        if disabled {
            self.store.revoke_user_sessions(user.id, now).await?;
            self.bus
                .publish(&user_topic(user.id), AuthEvent::UserDisabled);
        }
        let action = if disabled {
            "user.disable"
        } else {
            "user.enable"
        };
        self.audit(
            now,
            subject.user_id.to_string(),
            action,
            user.id.to_string(),
            Some(origin.ip),
            json!({"username": user.username}),
        )
        .await?;
        Ok(UserRecord { disabled, ..user })
    }

    pub async fn create_invite(
        &self,
        cx: Ctx<'_>,
        ttl: Option<Duration>,
    ) -> Result<(InviteRecord, Secret<String>)> {
        let Ctx {
            subject,
            origin,
            now,
        } = cx;
        self.authorize(cx, Action::Create, &Resource::Invites)
            .await?;
        let ttl = ttl.unwrap_or(Duration::from_secs(self.config.invite_ttl_secs));
        let secret = token::generate(token::INVITE_PREFIX);
        let invite = InviteRecord {
            id: InviteId::new_at(now),
            token_hash: token::hash(secret.expose()),
            created_by: subject.user_id,
            created_at: now,
            expires_at: now.plus(ttl),
            used_by: None,
        };
        self.store.insert_invite(invite.clone()).await?;
        self.audit(
            now,
            subject.user_id.to_string(),
            "invite.create",
            invite.id.to_string(),
            Some(origin.ip),
            json!({"expires_at": invite.expires_at.0}),
        )
        .await?;
        Ok((invite, secret))
    }

    pub async fn query_audit(
        &self,
        cx: Ctx<'_>,
        mut filter: AuditFilter,
    ) -> Result<Vec<AuditRecord>> {
        self.authorize(cx, Action::Read, &Resource::Audit).await?;
        filter.limit = filter.limit.clamp(1, AUDIT_QUERY_LIMIT_MAX);
        Ok(self.store.query_audit(filter).await?)
    }

    /// Walks the whole chain and reports the first broken record, if any.
    pub async fn verify_audit(&self, cx: Ctx<'_>) -> Result<AuditVerification> {
        self.authorize(cx, Action::Read, &Resource::Audit).await?;
        let mut verifier = ChainVerifier::default();
        let mut after = 0;
        loop {
            let page = self
                .store
                .query_audit(AuditFilter {
                    after_seq: Some(after),
                    limit: VERIFY_PAGE,
                    ..Default::default()
                })
                .await?;
            for rec in &page {
                if let Err(b) = verifier.check(rec) {
                    return Ok(AuditVerification {
                        checked: verifier.checked(),
                        first_break: Some(b),
                    });
                }
            }
            match page.last() {
                Some(last) if page.len() == VERIFY_PAGE => after = last.seq,
                _ => break,
            }
        }
        Ok(AuditVerification {
            checked: verifier.checked(),
            first_break: None,
        })
    }
}
