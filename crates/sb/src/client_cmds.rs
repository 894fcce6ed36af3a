//! What each command does. Server errors come back as `ClientError`s whose text says what
//! happened and what to do next.

use crate::cli::*;
use anyhow::{Context, anyhow, bail};
use sb_client::state::{ClientState, Login};
use sb_client::{Client, Trust};
use sb_core::Secret;
use sb_core::config::{DEFAULT_CONFIG_TOML, LogFormat};
use sb_proto::*;
use serde::Serialize;
use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Serve(a) => serve(a).await,
        Command::Config(ConfigCmd::Default) => {
            print!("{DEFAULT_CONFIG_TOML}");
            Ok(())
        }
        Command::Register(a) => register(a, json).await,
        Command::Login(a) => login(a, json).await,
        Command::Logout => logout().await,
        Command::Whoami => {
            let me = logged_in()?.1.me().await?;
            output(json, &me, || print_user(&me))
        }
        Command::Passwd(a) => passwd(a, json).await,
        Command::Sessions(a) => sessions(a, json).await,
        Command::Profile(a) => profile(a, json).await,
        Command::Token(c) => token(c, json).await,
        Command::Admin(c) => admin(c, json).await,
        Command::Trust(c) => trust(c, json),
        Command::Chat(c) => crate::chat_cmds::chat(c, json).await,
        Command::Files(c) => crate::files_cmds::files(c, json).await,
        Command::Device(c) => crate::device_cmds::device(c, json).await,
        Command::Firmware(c) => crate::device_cmds::firmware(c, json).await,
        Command::Query(a) => crate::monitor_cmds::query(a, json).await,
        Command::Alerts(c) => crate::monitor_cmds::alerts(c, json).await,
        Command::Agent(a) => agent(a).await,
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let mut config =
        sb_server::config::load(a.config.as_deref()).context("loading configuration")?;
    if let Some(l) = a.listen {
        config.server.listen = l;
    }
    if let Some(d) = a.data_dir {
        config.server.data_dir = d;
    }
    for bind in a.mqtt {
        config.mqtt.listeners.push(sb_core::config::MqttListener {
            bind,
            tls: false,
            allow_anonymous: false,
        });
    }
    if let Some(f) = a.log_format {
        config.server.log_format = match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        };
    }
    sb_server::init_logging(config.server.log_format);
    sb_server::run(config).await
}

pub(crate) fn output<T: Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce(),
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        text();
    }
    Ok(())
}

pub(crate) fn state() -> anyhow::Result<ClientState> {
    Ok(ClientState::open_default()?)
}

/// The saved login and a client for it.
pub(crate) fn logged_in() -> anyhow::Result<(Login, Client)> {
    let st = state()?;
    let login = st.login()?.ok_or_else(|| {
        anyhow!("not logged in; run `sb login https://HOST:PORT --username NAME`")
    })?;
    let trust = match &login.ca_file {
        Some(ca) => Trust::CaFile(ca.clone()),
        None => {
            let key = sb_client::server_key(&login.server)?;
            let fp = st
                .known_servers()?
                .servers
                .get(&key)
                .cloned()
                .ok_or_else(|| {
                    anyhow!(
                        "no pinned certificate for {key}; log in again with `sb login {}`",
                        login.server
                    )
                })?;
            Trust::Fingerprint(fp)
        }
    };
    let client = Client::new(&login.server, &trust)?.with_token(login.token.clone());
    Ok((login, client))
}

fn ask(question: &str) -> anyhow::Result<String> {
    // Ask on the terminal itself, so stdin stays free for --password-stdin.
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal to ask on; pass --yes to accept the certificate in scripts")?;
    write!(tty, "{question}")?;
    tty.flush()?;
    let mut line = String::new();
    std::io::BufReader::new(tty).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// Decides how to trust `url`: a CA file, the pinned fingerprint, or (first contact) the
/// fingerprint the server presents, confirmed by the user or `--yes`.
async fn agent(a: crate::cli::AgentArgs) -> anyhow::Result<()> {
    let login = state()?.login()?;
    let client = match (&a.server, login) {
        (Some(url), login) => {
            let trust = trust_for(url, &a.trust).await?;
            let token = match (&a.token, login) {
                (Some(t), _) => Secret::new(t.clone()),
                (None, Some(l)) if l.server.trim_end_matches('/') == url.trim_end_matches('/') => {
                    l.token
                }
                _ => bail!(
                    "no token for {url}: pass --token (an API token from `sb token create`) or log in to it"
                ),
            };
            Client::new(url, &trust)?.with_token(token)
        }
        (None, _) => {
            let (_, client) = logged_in()?;
            match &a.token {
                Some(t) => client.with_token(Secret::new(t.clone())),
                None => client,
            }
        }
    };
    crate::agent::run(a, client).await
}

async fn trust_for(url: &str, t: &TrustArgs) -> anyhow::Result<Trust> {
    if let Some(ca) = &t.ca {
        return Ok(Trust::CaFile(ca.clone()));
    }
    let st = state()?;
    let key = sb_client::server_key(url)?;
    if let Some(fp) = st.known_servers()?.servers.get(&key) {
        return Ok(Trust::Fingerprint(fp.clone()));
    }
    let fp = sb_client::probe_fingerprint(url).await?;
    eprintln!("First contact with {key}. Its certificate's SHA-256 fingerprint is:\n  {fp}");
    eprintln!("Compare it with the fingerprint `sb serve` printed at start.");
    if !t.yes {
        let answer = ask("Trust this server and remember its certificate? [y/N] ")?;
        if !matches!(answer.to_lowercase().as_str(), "y" | "yes") {
            bail!("not trusted; nothing was sent to the server");
        }
    }
    st.pin(&key, &fp)?;
    eprintln!("Pinned {key}.");
    Ok(Trust::Fingerprint(fp))
}

fn read_stdin_lines(n: usize) -> anyhow::Result<Vec<String>> {
    let stdin = std::io::stdin();
    let mut out = Vec::new();
    for _ in 0..n {
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            bail!("expected {n} line(s) on stdin");
        }
        out.push(line.trim_end_matches(['\r', '\n']).to_string());
    }
    Ok(out)
}

fn prompt_password(prompt: &str) -> anyhow::Result<Secret<String>> {
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to read a password from; use --password-stdin");
    }
    Ok(Secret::new(rpassword::prompt_password(prompt)?))
}

fn new_password(from_stdin: Option<String>) -> anyhow::Result<Secret<String>> {
    if let Some(p) = from_stdin {
        return Ok(Secret::new(p));
    }
    let a = prompt_password("New password: ")?;
    let b = prompt_password("Repeat it: ")?;
    if a != b {
        bail!("the passwords differ; nothing changed");
    }
    Ok(a)
}

async fn save_session(
    url: &str,
    trust: &Trust,
    client: &Client,
    username: &str,
    password: Secret<String>,
) -> anyhow::Result<LoginResponse> {
    let resp = client.login(username, password).await?;
    state()?.save_login(&Login {
        server: url.trim_end_matches('/').to_string(),
        username: resp.user.username.clone(),
        session_id: resp.session.id.clone(),
        token: resp.token.clone(),
        ca_file: match trust {
            Trust::CaFile(p) => Some(p.clone()),
            Trust::Fingerprint(_) => None,
        },
    })?;
    // Publish this device's MLS key packages so others can add it to encrypted rooms. A failure
    // here does not undo the login: encrypted rooms say what is missing when they need it.
    let login = state()?
        .login()?
        .ok_or_else(|| anyhow!("the login was not saved"))?;
    let client = client.clone().with_token(resp.token.clone());
    if let Err(e) = crate::chat_cmds::publish_keys(&login, &client).await {
        eprintln!("warning: could not publish keys for encrypted rooms: {e:#}");
    }
    Ok(resp)
}

async fn register(a: RegisterArgs, json: bool) -> anyhow::Result<()> {
    let trust = trust_for(&a.url, &a.trust).await?;
    let client = Client::new(&a.url, &trust)?;
    let password = if a.password_stdin {
        Secret::new(read_stdin_lines(1)?.remove(0))
    } else {
        new_password(None)?
    };
    let user = client
        .register(&RegisterRequest {
            username: a.username.clone(),
            password: password.clone(),
            setup_token: a.setup_token.map(|t| Secret::new(t.trim().to_string())),
            invite: a.invite.map(|t| Secret::new(t.trim().to_string())),
        })
        .await?;
    let resp = save_session(&a.url, &trust, &client, &a.username, password).await?;
    output(json, &resp.user, || {
        println!(
            "Registered {} ({}) and logged in.",
            user.username, user.role
        )
    })
}

async fn login(a: LoginArgs, json: bool) -> anyhow::Result<()> {
    let trust = trust_for(&a.url, &a.trust).await?;
    let client = Client::new(&a.url, &trust)?;
    let password = if a.password_stdin {
        Secret::new(read_stdin_lines(1)?.remove(0))
    } else {
        prompt_password(&format!("Password for {}: ", a.username))?
    };
    let resp = save_session(&a.url, &trust, &client, &a.username, password).await?;
    #[derive(Serialize)]
    struct Out<'a> {
        user: &'a UserInfo,
        session: &'a SessionInfo,
    }
    output(
        json,
        &Out {
            user: &resp.user,
            session: &resp.session,
        },
        || {
            println!(
                "Logged in as {} (session {}).",
                resp.user.username, resp.session.id
            )
        },
    )
}

async fn logout() -> anyhow::Result<()> {
    let (_, client) = logged_in()?;
    let result = client.logout().await;
    // Forget the local token either way: a revoked or expired one is no use.
    state()?.clear_login()?;
    match result {
        Ok(()) => {
            eprintln!("Logged out.");
            Ok(())
        }
        Err(e) if e.status() == Some(401) => {
            eprintln!("Logged out (the session had already ended).");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

async fn passwd(a: PasswdArgs, json: bool) -> anyhow::Result<()> {
    let (_, client) = logged_in()?;
    let (current, new) = if a.password_stdin {
        let mut l = read_stdin_lines(2)?;
        let new = l.remove(1);
        (Secret::new(l.remove(0)), Secret::new(new))
    } else {
        (prompt_password("Current password: ")?, new_password(None)?)
    };
    let r = client
        .change_password(&PasswordChange {
            current_password: current,
            new_password: new,
        })
        .await?;
    output(json, &r, || {
        println!(
            "Password changed; {} other session(s) signed out.",
            r.sessions_revoked
        )
    })
}

pub(crate) fn fmt_time(ms: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let delta = (now - ms) / 1000;
    let (n, unit, suffix) = match delta.abs() {
        s if s < 60 => (s, "s", ""),
        s if s < 3600 => (s / 60, "m", ""),
        s if s < 86_400 => (s / 3600, "h", ""),
        s => (s / 86_400, "d", ""),
    };
    if delta >= 0 {
        format!("{n}{unit} ago{suffix}")
    } else {
        format!("in {n}{unit}")
    }
}

fn print_user(u: &UserInfo) {
    println!("{} ({})", u.username, u.role);
    println!("  id:       {}", u.id);
    if !u.display_name.is_empty() {
        println!("  name:     {}", u.display_name);
    }
    if !u.status_text.is_empty() {
        println!("  status:   {}", u.status_text);
    }
    if u.disabled {
        println!("  DISABLED");
    }
}

async fn sessions(a: SessionsArgs, json: bool) -> anyhow::Result<()> {
    let (_, client) = logged_in()?;
    match a.command {
        Some(SessionsCmd::Revoke { id }) => {
            client.revoke_session(&id).await?;
            eprintln!("Revoked session {id}.");
            Ok(())
        }
        None => {
            let list = client.sessions().await?;
            output(json, &list, || {
                println!(
                    "{:<38} {:<9} {:<12} {:<16} CLIENT",
                    "ID", "STATE", "LAST USED", "IP"
                );
                for s in &list {
                    let state = if s.revoked {
                        "revoked"
                    } else if s.current {
                        "current"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<38} {:<9} {:<12} {:<16} {}",
                        s.id,
                        state,
                        fmt_time(s.last_used_at_ms),
                        s.ip,
                        s.client
                    );
                }
            })
        }
    }
}

async fn profile(a: ProfileArgs, json: bool) -> anyhow::Result<()> {
    let (_, client) = logged_in()?;
    let user = if a.display_name.is_some() || a.status.is_some() {
        client
            .update_profile(&ProfileUpdate {
                display_name: a.display_name,
                status_text: a.status,
            })
            .await?
    } else {
        client.me().await?
    };
    output(json, &user, || print_user(&user))
}

/// Parses lifetimes like `90s`, `15m`, `12h`, `30d`, `2w`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| {
        anyhow!("bad duration {s:?}: use a number and ms, s, m, h, d or w (e.g. 30d)")
    })?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        "w" => n * 7 * 86_400,
        _ => bail!("bad duration {s:?}: use a number and ms, s, m, h, d or w (e.g. 30d)"),
    };
    Ok(Duration::from_secs(secs))
}

async fn token(c: TokenCmd, json: bool) -> anyhow::Result<()> {
    let (_, client) = logged_in()?;
    match c {
        TokenCmd::Create {
            name,
            scope,
            expires,
        } => {
            let req = TokenCreate {
                name,
                scopes: scope,
                expires_in_secs: expires
                    .map(|e| parse_duration(&e))
                    .transpose()?
                    .map(|d| d.as_secs()),
            };
            let created = client.create_token(&req).await?;
            #[derive(Serialize)]
            struct Out<'a> {
                id: &'a str,
                token: &'a str,
            }
            output(
                json,
                &Out {
                    id: &created.id,
                    token: created.token.expose(),
                },
                || {
                    println!("{}", created.token.expose());
                    eprintln!(
                        "Token {} ({}) created with scopes {}. It is shown only now; store it safely.",
                        created.info.name,
                        created.id,
                        created.info.scopes.join(",")
                    );
                },
            )
        }
        TokenCmd::List => {
            let list = client.tokens().await?;
            output(json, &list, || {
                println!(
                    "{:<38} {:<20} {:<18} {:<12} STATE",
                    "ID", "NAME", "SCOPES", "LAST USED"
                );
                for t in &list {
                    let state = if t.revoked { "revoked" } else { "active" };
                    let used = t
                        .last_used_at_ms
                        .map(fmt_time)
                        .unwrap_or_else(|| "never".into());
                    println!(
                        "{:<38} {:<20} {:<18} {:<12} {}",
                        t.id,
                        t.name,
                        t.scopes.join(","),
                        used,
                        state
                    );
                }
            })
        }
        TokenCmd::Revoke { id } => {
            client.revoke_token(&id).await?;
            eprintln!("Revoked token {id}.");
            Ok(())
        }
    }
}

async fn admin(c: AdminCmd, json: bool) -> anyhow::Result<()> {
    let (_, client) = logged_in()?;
    match c {
        AdminCmd::Users { command: None } => {
            let users = client.admin_users().await?;
            output(json, &users, || {
                println!("{:<38} {:<20} {:<6} STATE", "ID", "USERNAME", "ROLE");
                for u in &users {
                    let state = if u.disabled { "disabled" } else { "active" };
                    println!("{:<38} {:<20} {:<6} {}", u.id, u.username, u.role, state);
                }
            })
        }
        AdminCmd::Users { command: Some(cmd) } => {
            let (user, update) = match cmd {
                AdminUsersCmd::Disable { user } => (
                    user,
                    AdminUserUpdate {
                        disabled: Some(true),
                        role: None,
                    },
                ),
                AdminUsersCmd::Enable { user } => (
                    user,
                    AdminUserUpdate {
                        disabled: Some(false),
                        role: None,
                    },
                ),
                AdminUsersCmd::SetRole { user, role } => (
                    user,
                    AdminUserUpdate {
                        disabled: None,
                        role: Some(role),
                    },
                ),
            };
            let u = client.admin_update_user(&user, &update).await?;
            output(json, &u, || print_user(&u))
        }
        AdminCmd::Invite { expires } => {
            let req = InviteCreate {
                expires_in_secs: expires
                    .map(|e| parse_duration(&e))
                    .transpose()?
                    .map(|d| d.as_secs()),
            };
            let inv = client.admin_invite(&req).await?;
            #[derive(Serialize)]
            struct Out<'a> {
                id: &'a str,
                token: &'a str,
                expires_at_ms: i64,
            }
            output(
                json,
                &Out {
                    id: &inv.id,
                    token: inv.token.expose(),
                    expires_at_ms: inv.expires_at_ms,
                },
                || {
                    println!("{}", inv.token.expose());
                    eprintln!(
                        "Single-use invite, expires {}. The new user runs: sb register URL --username NAME --invite TOKEN",
                        fmt_time(inv.expires_at_ms)
                    );
                },
            )
        }
        AdminCmd::Audit(a) => audit(&client, a, json).await,
        AdminCmd::Gc => {
            let r = client.admin_gc().await?;
            output(json, &r, || {
                println!(
                    "{} old versions and {} trashed files deleted; {} blobs deleted, {} kept.",
                    r.versions_deleted, r.files_purged, r.blobs_deleted, r.blobs_kept
                );
            })
        }
        AdminCmd::Scrub => {
            eprintln!("Scrubbing: re-hashing every copy of every blob on the server…");
            let r = client.admin_scrub().await?;
            output(json, &r, || {
                println!(
                    "{} blobs, {} copies ({}) checked: {} corrupt, {} repaired from a replica, {} lost.",
                    r.blobs,
                    r.copies_checked,
                    human_bytes(r.bytes_checked),
                    r.corrupt_copies,
                    r.repaired_copies,
                    r.lost.len()
                );
                for id in &r.lost {
                    println!("lost: {id}");
                }
            })?;
            if !r.lost.is_empty() {
                bail!(
                    "{} blob(s) have no good copy left; restore them from a backup, or set blobs.replicas = 2 with a second entry in blobs.dirs so the next loss can be repaired",
                    r.lost.len()
                );
            }
            Ok(())
        }
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

async fn audit(client: &Client, a: AuditArgs, json: bool) -> anyhow::Result<()> {
    if a.verify {
        let v = client.admin_audit_verify().await?;
        output(json, &v, || {
            if v.ok {
                println!("Audit log intact: {} records verified.", v.checked);
            } else {
                println!(
                    "Audit log BROKEN at record {} ({}); {} records before it verified.",
                    v.first_broken_seq.unwrap_or_default(),
                    match v.problem.as_deref() {
                        Some("link") => "a record before it was removed or inserted",
                        _ => "its content was edited",
                    },
                    v.checked
                );
            }
        })?;
        if !v.ok {
            bail!("audit chain verification failed");
        }
        return Ok(());
    }
    let since_ms = match a.since {
        Some(s) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
            Some(now - parse_duration(&s)?.as_millis() as i64)
        }
        None => None,
    };
    let events = client
        .admin_audit(&AuditQuery {
            actor: a.actor,
            action: a.action,
            since_ms,
            until_ms: None,
            after_seq: a.after,
            limit: Some(a.limit),
        })
        .await?;
    output(json, &events, || {
        println!(
            "{:<6} {:<10} {:<20} {:<38} {:<38} IP",
            "SEQ", "WHEN", "ACTION", "ACTOR", "TARGET"
        );
        for e in &events {
            println!(
                "{:<6} {:<10} {:<20} {:<38} {:<38} {}",
                e.seq,
                fmt_time(e.at_ms),
                e.action,
                e.actor,
                e.target,
                e.ip
            );
        }
    })
}

fn trust(c: TrustCmd, json: bool) -> anyhow::Result<()> {
    let st = state()?;
    match c {
        TrustCmd::List => {
            let k = st.known_servers()?;
            output(json, &k.servers, || {
                for (server, fp) in &k.servers {
                    println!("{server}  {fp}");
                }
            })
        }
        TrustCmd::Forget { server } => {
            let key = if server.starts_with("https://") {
                sb_client::server_key(&server)?
            } else {
                server
            };
            if st.forget(&key)? {
                eprintln!(
                    "Forgot the pinned certificate of {key}; the next connection asks again."
                );
                Ok(())
            } else {
                bail!("{key} is not pinned (see `sb trust list`)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(
            parse_duration("2w").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert!(parse_duration("3y").is_err());
        assert!(parse_duration("d").is_err());
    }
}
