//! Alerting and recording rules in Prometheus' rule-file format, with Prometheus' alert states
//! (pending after the expression first matches, firing once it has held for `for`, resolved when
//! it stops), grouping, a repeat interval, silences, and notifications in Alertmanager's webhook
//! payload format. Time is passed in; delivery is the caller's (see [`Notification`]).

use crate::promql::{self, Engine, EngineConfig, Value};
use promql_parser::parser::Expr;
use sb_tsdb::{Batch, Labels, METRIC_NAME, MatchOp, Matcher, Tsdb};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Resolved alerts are kept (and shown) this long after they resolve.
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFileSpec {
    groups: Vec<GroupSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupSpec {
    name: String,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    #[serde(default)]
    alert: Option<String>,
    #[serde(default)]
    record: Option<String>,
    expr: serde_norway::Value,
    #[serde(default, rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub enum RuleKind {
    Alert(String),
    Record(String),
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub kind: RuleKind,
    pub expr_text: String,
    expr: Expr,
    pub for_ms: i64,
    pub keep_firing_for_ms: i64,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct Group {
    pub name: String,
    pub file: String,
    pub interval_ms: i64,
    /// Most alerts or series one rule may produce (0: no limit).
    pub limit: u64,
    pub rules: Vec<Rule>,
}

/// A Prometheus duration in a rule file: `1h30m`, `15s`, `500ms`, `2d` (a unit is required,
/// except for `0`).
pub fn parse_duration(s: &str) -> Result<i64, String> {
    if s != "0" && s.parse::<f64>().is_ok() {
        return Err(format!(
            "not a duration: {s:?} (add a unit: ms, s, m, h, d, w, y)"
        ));
    }
    crate::time::parse_duration(s).map_err(|e| e.to_string())
}

fn valid_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

/// Parses rule files (`(name, text)`), checking everything `promtool check rules` checks that
/// matters here. The error names the file, group and rule.
pub fn load_rules(
    files: &[(String, String)],
    default_interval_ms: i64,
) -> Result<Vec<Group>, String> {
    let mut groups = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (file, text) in files {
        let spec: RuleFileSpec =
            serde_norway::from_str(text).map_err(|e| format!("{file}: {e}"))?;
        for g in spec.groups {
            if g.name.is_empty() {
                return Err(format!("{file}: a group needs a name"));
            }
            if !names.insert((file.clone(), g.name.clone())) {
                return Err(format!("{file}: group {:?} is defined twice", g.name));
            }
            let interval_ms = match &g.interval {
                Some(i) => {
                    parse_duration(i).map_err(|e| format!("{file}: group {}: {e}", g.name))?
                }
                None => default_interval_ms,
            };
            if interval_ms <= 0 {
                return Err(format!(
                    "{file}: group {}: interval must be positive",
                    g.name
                ));
            }
            let mut rules = Vec::new();
            for (i, r) in g.rules.into_iter().enumerate() {
                let at = |what: String| format!("{file}: group {}: rule {}: {what}", g.name, i + 1);
                let kind = match (r.alert, r.record) {
                    (Some(a), None) if !a.is_empty() => RuleKind::Alert(a),
                    (None, Some(rec)) if valid_metric_name(&rec) => RuleKind::Record(rec),
                    (None, Some(rec)) => {
                        return Err(at(format!("invalid recording rule name {rec:?}")));
                    }
                    _ => return Err(at("one of `alert` or `record` is required".into())),
                };
                let expr_text = match r.expr {
                    serde_norway::Value::String(s) => s,
                    serde_norway::Value::Number(n) => n.to_string(),
                    other => return Err(at(format!("expr must be a string, not {other:?}"))),
                };
                let expr = promql::parse(&expr_text)
                    .map_err(|e| at(format!("could not parse expression: {e}")))?;
                if let RuleKind::Record(_) = kind
                    && (r.for_.is_some() || !r.annotations.is_empty())
                {
                    return Err(at("recording rules take no `for` or annotations".into()));
                }
                for name in r.labels.keys().chain(r.annotations.keys()) {
                    if !crate::remote_write::valid_label_name(name) {
                        return Err(at(format!("invalid label name {name:?}")));
                    }
                }
                let for_ms = r
                    .for_
                    .as_deref()
                    .map(parse_duration)
                    .transpose()
                    .map_err(at)?
                    .unwrap_or(0);
                let keep_firing_for_ms = r
                    .keep_firing_for
                    .as_deref()
                    .map(parse_duration)
                    .transpose()
                    .map_err(at)?
                    .unwrap_or(0);
                rules.push(Rule {
                    kind,
                    expr_text,
                    expr,
                    for_ms,
                    keep_firing_for_ms,
                    labels: r.labels,
                    annotations: r.annotations,
                });
            }
            groups.push(Group {
                name: g.name,
                file: file.clone(),
                interval_ms,
                limit: g.limit.unwrap_or(0),
                rules,
            });
        }
    }
    Ok(groups)
}

/// Expands the rule-template subset: `{{ $labels.NAME }}`, `{{ .Labels.NAME }}`,
/// `{{ $value }}`, `{{ .Value }}`, `{{ $labels }}`, with `| humanize` accepted on values.
/// Anything else is kept as written.
pub fn expand_template(text: &str, labels: &Labels, value: f64) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = rest[start + 2..start + end]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        let (head, filter) = match inner.split_once('|') {
            Some((h, f)) => (h.trim(), Some(f.trim())),
            None => (inner, None),
        };
        let fmt_value = |v: f64| match filter {
            Some("humanize") => humanize(v),
            _ => promql::fmt_float(v),
        };
        let expanded = if head == "$value" || head == ".Value" {
            Some(fmt_value(value))
        } else if let Some(name) = head
            .strip_prefix("$labels.")
            .or_else(|| head.strip_prefix(".Labels."))
        {
            Some(labels.get(name).unwrap_or("").to_string())
        } else if head == "$labels" || head == ".Labels" {
            Some(labels.to_string())
        } else if let Some(v) = head.strip_prefix("humanize ") {
            (v.trim() == "$value" || v.trim() == ".Value").then(|| humanize(value))
        } else {
            None
        };
        match expanded {
            Some(s) => out.push_str(&s),
            None => out.push_str(&rest[start..start + end + 2]),
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

/// Four significant digits, as Go's `%.4g` prints them (without an exponent).
fn sig4(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let decimals = (3 - x.abs().log10().floor() as i64).clamp(0, 20) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Prometheus' `humanize`: SI prefixes, four significant digits.
fn humanize(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return promql::fmt_float(v);
    }
    let big = [
        (1e24, "Y"),
        (1e21, "Z"),
        (1e18, "E"),
        (1e15, "P"),
        (1e12, "T"),
        (1e9, "G"),
        (1e6, "M"),
        (1e3, "k"),
    ];
    if let Some((scale, unit)) = big.iter().find(|(scale, _)| v.abs() >= *scale) {
        return format!("{}{unit}", sig4(v / scale));
    }
    let small = [
        (1e-3, "m"),
        (1e-6, "u"),
        (1e-9, "n"),
        (1e-12, "p"),
        (1e-15, "f"),
        (1e-18, "a"),
    ];
    if v.abs() < 1.0
        && let Some((scale, unit)) = small.iter().find(|(scale, _)| v.abs() >= *scale)
    {
        return format!("{}{unit}", sig4(v / scale));
    }
    sig4(v)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Pending,
    Firing,
    Resolved,
}

#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    pub labels: Labels,
    pub annotations: BTreeMap<String, String>,
    pub state: AlertState,
    pub value: f64,
    pub active_at_ms: i64,
    pub fired_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    /// The last time the expression returned it (for keep_firing_for).
    last_seen_ms: i64,
    /// A resolution not yet notified.
    resolved_notified: bool,
}

impl Alert {
    /// A stable id for the alert's label set (hex of a 64-bit hash).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.labels)
    }
}

pub fn fingerprint(labels: &Labels) -> String {
    // FNV-1a: stable across runs and versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (n, v) in labels.iter() {
        for b in n.bytes().chain([0xff]).chain(v.bytes()).chain([0xfe]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// A silence: alerts matching every matcher are not notified between its start and end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    /// `name=value`, `name!=value`, `name=~regex`, `name!~regex`.
    pub matchers: Vec<String>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub created_by: String,
    pub comment: String,
}

/// Parses `name=value`, `name!=value`, `name=~re`, `name!~re`.
pub fn parse_matcher(s: &str) -> Result<Matcher, String> {
    let pos = s
        .find(['=', '!'])
        .ok_or_else(|| format!("{s:?} is not name=value, name!=value, name=~re or name!~re"))?;
    let (name, rest) = s.split_at(pos);
    let (op, value) = if let Some(v) = rest.strip_prefix("=~") {
        (MatchOp::Regex, v)
    } else if let Some(v) = rest.strip_prefix("!~") {
        (MatchOp::NotRegex, v)
    } else if let Some(v) = rest.strip_prefix("!=") {
        (MatchOp::NotEqual, v)
    } else if let Some(v) = rest.strip_prefix('=') {
        (MatchOp::Equal, v)
    } else {
        return Err(format!("{s:?}: expected =, !=, =~ or !~ after the name"));
    };
    let name = name.trim();
    if !crate::remote_write::valid_label_name(name) {
        return Err(format!("{name:?} is not a label name"));
    }
    let value = value.trim().trim_matches('"');
    Matcher::new(name, op, value).map_err(|e| format!("{s:?}: {e}"))
}

impl Silence {
    pub fn active(&self, now: i64) -> bool {
        self.starts_at_ms <= now && now < self.ends_at_ms
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.matchers
            .iter()
            .filter_map(|m| parse_matcher(m).ok())
            .all(|m| m.matches_labels(labels))
    }
}

/// One webhook notification for a group of alerts, in Alertmanager's payload format.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Notification {
    /// Unique per notification and kept across retries, so a receiver can drop repeats.
    #[serde(rename = "dedupKey")]
    pub dedup_key: String,
    pub version: &'static str,
    #[serde(rename = "groupKey")]
    pub group_key: String,
    #[serde(rename = "truncatedAlerts")]
    pub truncated_alerts: u64,
    pub status: &'static str,
    pub receiver: &'static str,
    #[serde(rename = "groupLabels")]
    pub group_labels: BTreeMap<String, String>,
    #[serde(rename = "commonLabels")]
    pub common_labels: BTreeMap<String, String>,
    #[serde(rename = "commonAnnotations")]
    pub common_annotations: BTreeMap<String, String>,
    #[serde(rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<NotifiedAlert>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NotifiedAlert {
    pub status: &'static str,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    #[serde(rename = "endsAt")]
    pub ends_at: String,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
    pub fingerprint: String,
}

impl Notification {
    /// One line for a log or a chat room.
    pub fn summary(&self) -> String {
        let mut names: Vec<String> = self
            .alerts
            .iter()
            .map(|a| {
                let name = a.labels.get("alertname").cloned().unwrap_or_default();
                let text = a
                    .annotations
                    .get("summary")
                    .cloned()
                    .unwrap_or_else(|| format!("{:?}", a.labels));
                format!("[{}] {name}: {text}", a.status.to_uppercase())
            })
            .collect();
        names.sort();
        names.join("\n")
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

#[derive(Clone, Debug)]
pub struct RoutingConfig {
    pub group_by: Vec<String>,
    pub repeat_interval_ms: i64,
}

#[derive(Default)]
struct GroupNotice {
    last_sent_ms: i64,
    /// Fingerprints of the firing alerts in the last notification.
    firing: Vec<String>,
    sequence: u64,
}

/// Rule state: the loaded groups, their alerts, silences, and what was last notified.
pub struct Alerting {
    groups: Vec<Group>,
    /// Per group: when it was last evaluated.
    last_eval: Vec<i64>,
    /// (group, rule) → alerts by label set.
    alerts: HashMap<(usize, usize), BTreeMap<Labels, Alert>>,
    notices: HashMap<String, GroupNotice>,
    routing: RoutingConfig,
}

/// One evaluation's output: samples of recording rules to store, and notifications to send.
#[derive(Default)]
pub struct Evaluation {
    pub recorded: Batch,
    pub notifications: Vec<Notification>,
    /// Rules whose evaluation failed, with the reason.
    pub errors: Vec<String>,
}

/// A rule's current view, for `/api/v1/rules` and the CLI.
#[derive(Clone, Debug, Serialize)]
pub struct RuleStatus {
    pub group: String,
    pub file: String,
    pub name: String,
    pub kind: &'static str,
    pub query: String,
    pub for_ms: i64,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub alerts: Vec<Alert>,
}

impl Alerting {
    pub fn new(groups: Vec<Group>, routing: RoutingConfig) -> Self {
        let n = groups.len();
        Self {
            groups,
            last_eval: vec![i64::MIN; n],
            alerts: HashMap::new(),
            notices: HashMap::new(),
            routing,
        }
    }

    /// Swaps in new rules; alerts of rules that keep their group, name and query carry over.
    pub fn reload(&mut self, groups: Vec<Group>) {
        let mut carried = HashMap::new();
        for ((gi, ri), alerts) in self.alerts.drain() {
            let (g, r) = (&self.groups[gi], &self.groups[gi].rules[ri]);
            carried.insert(
                (
                    g.file.clone(),
                    g.name.clone(),
                    rule_name(r).to_string(),
                    r.expr_text.clone(),
                ),
                alerts,
            );
        }
        self.last_eval = vec![i64::MIN; groups.len()];
        for (gi, g) in groups.iter().enumerate() {
            for (ri, r) in g.rules.iter().enumerate() {
                let key = (
                    g.file.clone(),
                    g.name.clone(),
                    rule_name(r).to_string(),
                    r.expr_text.clone(),
                );
                if let Some(a) = carried.remove(&key) {
                    self.alerts.insert((gi, ri), a);
                }
            }
        }
        self.groups = groups;
    }

    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// Evaluates the groups that are due at `now`, then works out notifications.
    pub fn evaluate(
        &mut self,
        db: &Tsdb,
        engine: &EngineConfig,
        silences: &[Silence],
        now: i64,
    ) -> Evaluation {
        let mut out = Evaluation::default();
        for gi in 0..self.groups.len() {
            let due = self.last_eval[gi] == i64::MIN
                || now - self.last_eval[gi] >= self.groups[gi].interval_ms;
            if !due {
                continue;
            }
            self.last_eval[gi] = now;
            for ri in 0..self.groups[gi].rules.len() {
                let rule = &self.groups[gi].rules[ri];
                let limit = self.groups[gi].limit;
                let result = Engine::new(db, engine.clone()).instant(&rule.expr, now);
                let samples = match result {
                    Ok(Value::Vector(v)) => {
                        v.into_iter().map(|s| (s.labels, s.v)).collect::<Vec<_>>()
                    }
                    Ok(Value::Scalar(v)) => vec![(Labels::default(), v)],
                    Ok(other) => {
                        out.errors.push(format!(
                            "{}: a rule must give a vector, not a {}",
                            rule_name(rule),
                            other.type_name()
                        ));
                        continue;
                    }
                    Err(e) => {
                        out.errors.push(format!("{}: {e}", rule_name(rule)));
                        continue;
                    }
                };
                if limit > 0 && samples.len() as u64 > limit {
                    out.errors.push(format!(
                        "{}: {} results, over the group's limit of {limit}",
                        rule_name(rule),
                        samples.len()
                    ));
                    continue;
                }
                match &rule.kind {
                    RuleKind::Record(name) => {
                        for (labels, v) in samples {
                            let mut l = labels.with(METRIC_NAME, name);
                            for (k, val) in &rule.labels {
                                l = l.with(k, val);
                            }
                            out.recorded.push((l, vec![(now, v)]));
                        }
                    }
                    RuleKind::Alert(name) => {
                        let rule = rule.clone();
                        let name = name.clone();
                        let alerts = self.alerts.entry((gi, ri)).or_default();
                        step_alerts(alerts, &rule, &name, samples, now);
                    }
                }
            }
        }
        out.notifications = self.route(silences, now);
        out
    }

    fn route(&mut self, silences: &[Silence], now: i64) -> Vec<Notification> {
        let mut by_group: BTreeMap<String, (BTreeMap<String, String>, Vec<Alert>)> =
            BTreeMap::new();
        for alerts in self.alerts.values() {
            for a in alerts.values() {
                let notify = match a.state {
                    AlertState::Firing => true,
                    AlertState::Resolved => !a.resolved_notified,
                    AlertState::Pending => false,
                };
                if !notify
                    || silences
                        .iter()
                        .any(|s| s.active(now) && s.matches(&a.labels))
                {
                    continue;
                }
                let group_labels: BTreeMap<String, String> = self
                    .routing
                    .group_by
                    .iter()
                    .filter_map(|n| a.labels.get(n).map(|v| (n.clone(), v.to_string())))
                    .collect();
                let key = format!(
                    "{{}}:{}",
                    Labels::new(group_labels.clone().into_iter().collect())
                );
                by_group
                    .entry(key)
                    .or_insert_with(|| (group_labels, Vec::new()))
                    .1
                    .push(a.clone());
            }
        }
        let mut out = Vec::new();
        let mut resolved_sent = Vec::new();
        for (key, (group_labels, alerts)) in by_group {
            let notice = self.notices.entry(key.clone()).or_default();
            let mut firing: Vec<String> = alerts
                .iter()
                .filter(|a| a.state == AlertState::Firing)
                .map(Alert::fingerprint)
                .collect();
            firing.sort();
            let has_resolved = alerts.iter().any(|a| a.state == AlertState::Resolved);
            let new_firing = firing.iter().any(|f| !notice.firing.contains(f));
            let repeat =
                !firing.is_empty() && now - notice.last_sent_ms >= self.routing.repeat_interval_ms;
            if !(has_resolved || new_firing || repeat) {
                continue;
            }
            notice.sequence += 1;
            notice.last_sent_ms = now;
            notice.firing = firing.clone();
            let status = if firing.is_empty() {
                "resolved"
            } else {
                "firing"
            };
            let notified: Vec<NotifiedAlert> = alerts
                .iter()
                .map(|a| NotifiedAlert {
                    status: if a.state == AlertState::Firing {
                        "firing"
                    } else {
                        "resolved"
                    },
                    labels: a
                        .labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    annotations: a.annotations.clone(),
                    starts_at: rfc3339(a.fired_at_ms.unwrap_or(a.active_at_ms)),
                    ends_at: a
                        .resolved_at_ms
                        .map(rfc3339)
                        .unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
                    generator_url: String::new(),
                    fingerprint: a.fingerprint(),
                })
                .collect();
            for a in alerts.iter().filter(|a| a.state == AlertState::Resolved) {
                resolved_sent.push(a.labels.clone());
            }
            let common = |pick: &dyn Fn(&NotifiedAlert) -> &BTreeMap<String, String>| -> BTreeMap<String, String> {
                let mut it = notified.iter();
                let Some(first) = it.next() else { return BTreeMap::new() };
                let mut c = pick(first).clone();
                for a in it {
                    c.retain(|k, v| pick(a).get(k) == Some(v));
                }
                c
            };
            out.push(Notification {
                dedup_key: format!(
                    "{}-{}-{now}",
                    fingerprint(&Labels::new(vec![("g".into(), key.clone())])),
                    notice.sequence
                ),
                version: "4",
                group_key: key,
                truncated_alerts: 0,
                status,
                receiver: "switchboard",
                common_labels: common(&|a| &a.labels),
                common_annotations: common(&|a| &a.annotations),
                group_labels,
                external_url: String::new(),
                alerts: notified,
            });
        }
        for alerts in self.alerts.values_mut() {
            for labels in &resolved_sent {
                if let Some(a) = alerts.get_mut(labels) {
                    a.resolved_notified = true;
                }
            }
            // Resolved alerts are shown for a while, then dropped.
            alerts.retain(|_, a| {
                a.state != AlertState::Resolved
                    || now - a.resolved_at_ms.unwrap_or(now) < RESOLVED_RETENTION_MS
                    || !a.resolved_notified
            });
        }
        out
    }

    /// Every rule with its alerts.
    pub fn status(&self) -> Vec<RuleStatus> {
        let mut out = Vec::new();
        for (gi, g) in self.groups.iter().enumerate() {
            for (ri, r) in g.rules.iter().enumerate() {
                out.push(RuleStatus {
                    group: g.name.clone(),
                    file: g.file.clone(),
                    name: rule_name(r).to_string(),
                    kind: match r.kind {
                        RuleKind::Alert(_) => "alerting",
                        RuleKind::Record(_) => "recording",
                    },
                    query: r.expr_text.clone(),
                    for_ms: r.for_ms,
                    labels: r.labels.clone(),
                    annotations: r.annotations.clone(),
                    alerts: self
                        .alerts
                        .get(&(gi, ri))
                        .map(|a| a.values().cloned().collect())
                        .unwrap_or_default(),
                });
            }
        }
        out
    }
}

fn rule_name(r: &Rule) -> &str {
    match &r.kind {
        RuleKind::Alert(n) | RuleKind::Record(n) => n,
    }
}

/// One evaluation of an alerting rule, with Prometheus' state transitions.
fn step_alerts(
    alerts: &mut BTreeMap<Labels, Alert>,
    rule: &Rule,
    name: &str,
    samples: Vec<(Labels, f64)>,
    now: i64,
) {
    let mut seen = Vec::with_capacity(samples.len());
    for (labels, v) in samples {
        let mut l = labels.without(&[METRIC_NAME]);
        // Rule labels may use templates too; the alert name comes last and wins.
        let base = l.clone();
        for (k, val) in &rule.labels {
            l = l.with(k, &expand_template(val, &base, v));
        }
        l = l.with("alertname", name);
        let annotations: BTreeMap<String, String> = rule
            .annotations
            .iter()
            .map(|(k, t)| (k.clone(), expand_template(t, &base, v)))
            .collect();
        seen.push(l.clone());
        match alerts.get_mut(&l) {
            Some(a) if a.state != AlertState::Resolved => {
                a.value = v;
                a.annotations = annotations;
                a.last_seen_ms = now;
                if a.state == AlertState::Pending && now - a.active_at_ms >= rule.for_ms {
                    a.state = AlertState::Firing;
                    a.fired_at_ms = Some(now);
                }
            }
            _ => {
                let firing = rule.for_ms == 0;
                alerts.insert(
                    l.clone(),
                    Alert {
                        labels: l,
                        annotations,
                        state: if firing {
                            AlertState::Firing
                        } else {
                            AlertState::Pending
                        },
                        value: v,
                        active_at_ms: now,
                        fired_at_ms: firing.then_some(now),
                        resolved_at_ms: None,
                        last_seen_ms: now,
                        resolved_notified: false,
                    },
                );
            }
        }
    }
    let mut gone = Vec::new();
    for (labels, a) in alerts.iter_mut() {
        if seen.contains(labels) || a.state == AlertState::Resolved {
            continue;
        }
        match a.state {
            AlertState::Pending => gone.push(labels.clone()),
            AlertState::Firing if now - a.last_seen_ms < rule.keep_firing_for_ms => {}
            _ => {
                a.state = AlertState::Resolved;
                a.resolved_at_ms = Some(now);
            }
        }
    }
    for l in gone {
        alerts.remove(&l);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sb_tsdb::TsdbConfig;

    const RULES: &str = r#"
groups:
  - name: demo
    interval: 10s
    rules:
      - alert: TooHot
        expr: temp > 30
        for: 30s
        labels:
          severity: page
          where: "{{ $labels.room }}"
        annotations:
          summary: "{{ $labels.room }} is at {{ $value }} degrees"
      - record: room:temp:max
        expr: max by (room) (temp)
"#;

    fn setup() -> (tempfile::TempDir, Tsdb, Alerting) {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = Tsdb::open(
            dir.path(),
            TsdbConfig {
                sync: false,
                ..TsdbConfig::default()
            },
        )
        .unwrap();
        let groups = load_rules(&[("rules.yml".into(), RULES.into())], 60_000).unwrap();
        let alerting = Alerting::new(
            groups,
            RoutingConfig {
                group_by: vec!["alertname".into()],
                repeat_interval_ms: 60_000,
            },
        );
        (dir, db, alerting)
    }

    fn temp(db: &Tsdb, t: i64, v: f64) {
        db.append(&[(
            Labels::from_pairs(&[("__name__", "temp"), ("room", "lab")]),
            vec![(t, v)],
        )])
        .unwrap();
    }

    #[test]
    fn pending_then_firing_after_for_repeats_once_per_interval_then_resolves() {
        let (_dir, db, mut al) = setup();
        let eng = EngineConfig::default();
        let s = 1000;
        temp(&db, 0, 35.0);
        let e = al.evaluate(&db, &eng, &[], 0);
        assert!(e.notifications.is_empty(), "pending is not notified");
        assert_eq!(
            e.recorded.len(),
            1,
            "the recording rule wrote room:temp:max"
        );
        assert_eq!(al.status()[0].alerts[0].state, AlertState::Pending);
        let mut sent = Vec::new();
        for t in (10..=120).step_by(10) {
            temp(&db, t * s, 35.0);
            sent.extend(
                al.evaluate(&db, &eng, &[], t * s)
                    .notifications
                    .into_iter()
                    .map(|n| (t, n)),
            );
        }
        let times: Vec<i64> = sent.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            times,
            vec![30, 90],
            "firing at 30 s, repeated once a minute"
        );
        let n = &sent[0].1;
        assert_eq!(n.status, "firing");
        assert_eq!(n.alerts[0].annotations["summary"], "lab is at 35 degrees");
        assert_eq!(n.alerts[0].labels["where"], "lab");
        assert_ne!(sent[0].1.dedup_key, sent[1].1.dedup_key);
        assert_eq!(sent[0].1.group_key, sent[1].1.group_key);
        temp(&db, 130 * s, 20.0);
        let e = al.evaluate(&db, &eng, &[], 130 * s);
        assert_eq!(e.notifications.len(), 1);
        assert_eq!(e.notifications[0].status, "resolved");
        assert!(
            al.evaluate(&db, &eng, &[], 140 * s)
                .notifications
                .is_empty(),
            "resolved is told once"
        );
    }

    #[test]
    fn a_silence_holds_notifications_back_while_it_lasts() {
        let (_dir, db, mut al) = setup();
        let eng = EngineConfig::default();
        let silence = Silence {
            id: "s".into(),
            matchers: vec!["alertname=TooHot".into(), "room=~la.*".into()],
            starts_at_ms: 0,
            ends_at_ms: 100_000,
            created_by: "ops".into(),
            comment: "maintenance".into(),
        };
        let mut times = Vec::new();
        for t in (0..=120).step_by(10) {
            temp(&db, t * 1000, 35.0);
            if !al
                .evaluate(&db, &eng, std::slice::from_ref(&silence), t * 1000)
                .notifications
                .is_empty()
            {
                times.push(t);
            }
        }
        assert_eq!(times, vec![100], "notified once the silence ended");
    }

    #[test]
    fn bad_rule_files_say_where() {
        for (text, why) in [
            (
                "groups: [{name: g, rules: [{alert: A, expr: 'sum('}]}]",
                "rule 1: could not parse",
            ),
            (
                "groups: [{name: g, rules: [{expr: up}]}]",
                "one of `alert` or `record`",
            ),
            (
                "groups: [{name: g, rules: [{record: 'bad name', expr: up}]}]",
                "invalid recording rule name",
            ),
            (
                "groups: [{name: g, rules: [{alert: A, expr: up, for: soon}]}]",
                "valid duration",
            ),
            (
                "groups: [{name: g, rules: [{alert: A, expr: up, bogus: 1}]}]",
                "unknown field",
            ),
        ] {
            let e = load_rules(&[("f.yml".into(), text.into())], 60_000).unwrap_err();
            assert!(e.contains(why) && e.starts_with("f.yml"), "{text}: {e}");
        }
    }

    #[test]
    fn templates_and_times_render_as_prometheus_does() {
        let l = Labels::from_pairs(&[("instance", "web1")]);
        assert_eq!(
            expand_template(
                "{{ $labels.instance }} at {{ $value | humanize }}",
                &l,
                1234567.0
            ),
            "web1 at 1.235M"
        );
        assert_eq!(
            expand_template("{{ .Labels.instance }}/{{ .Value }} {{ unknown }}", &l, 0.5),
            "web1/0.5 {{ unknown }}"
        );
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
