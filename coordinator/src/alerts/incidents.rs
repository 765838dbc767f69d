//! Incidents: one per condition and target while it holds, stored at
//! `<prefix>/incidents/<id>` with every notice it owes, so a new leader
//! sends what was not sent, escalates on time and never opens a second
//! incident for the same thing.
//!
//! An incident is told to its first channel at once and to the next one
//! each `escalate_after` while it is neither acknowledged nor resolved.
//! When its condition clears it is resolved, and said so on every channel
//! it reached. A notice is written as owed before it is sent and marked
//! sent after, so a leader killed between the two sends it again (PagerDuty
//! and Alertmanager take the repeat as the same incident).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use lifeboat_common::policy::alerting::Alerting;
use lifeboat_common::policy::monitoring::MonitoredJob;
use serde::{Deserialize, Serialize};

use super::conditions::Condition;
use super::{Alert, Severity};
use crate::state::{Op, State, StateError, encode};

/// What a notice says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Notify {
    /// The incident is open.
    Trigger,
    /// It is over.
    Resolve,
}

impl Notify {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Notify::Trigger => "trigger",
            Notify::Resolve => "resolve",
        }
    }
}

/// One event of an incident owed to, or delivered on, one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// The channel's name.
    pub channel: String,
    /// What it says.
    pub notify: Notify,
    /// When it was delivered (none: owed).
    pub sent: Option<DateTime<Utc>>,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error.
    pub error: Option<String>,
    /// Every attempt failed; not tried again.
    pub gave_up: bool,
}

impl Notice {
    /// A notice not yet sent.
    pub(crate) fn owed(channel: &str, notify: Notify) -> Self {
        Notice { channel: channel.to_owned(), notify, sent: None, attempts: 0, error: None, gave_up: false }
    }
}

/// Who acknowledged an incident, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The operator.
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// An incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// `<alert>-<opened ms>-<target>`: unique, and stable for its life
    /// (PagerDuty's `dedup_key` is made from it).
    pub id: String,
    /// What.
    pub alert: Alert,
    /// About what.
    pub target: String,
    /// How urgent.
    pub severity: Severity,
    /// One line for people (as first found).
    pub summary: String,
    /// Figures behind it.
    pub details: BTreeMap<String, String>,
    /// Where it goes, in escalation order.
    pub channels: Vec<String>,
    /// The monitoring entry it comes from.
    pub entry: Option<usize>,
    /// When it was opened.
    pub opened: DateTime<Utc>,
    /// When it was resolved.
    pub resolved: Option<DateTime<Utc>>,
    /// Who acknowledged it (escalation stops).
    pub acknowledged: Option<Ack>,
    /// How many of its channels it has gone to.
    pub reached: usize,
    /// When it goes to the next channel.
    pub escalate_at: Option<DateTime<Utc>>,
    /// Notices owed and delivered.
    pub notices: Vec<Notice>,
}

impl Incident {
    /// Where it is stored.
    pub fn key(prefix: &str, id: &str) -> String {
        format!("{prefix}/incidents/{id}")
    }

    /// Whether it is still open.
    pub fn is_open(&self) -> bool {
        self.resolved.is_none()
    }
}

/// A notice to send: the incident (as it stands), the channel, the event.
#[derive(Debug, Clone)]
pub struct Send {
    /// The incident.
    pub incident: Incident,
    /// The channel's name.
    pub channel: String,
    /// What to say.
    pub notify: Notify,
}

/// What a change asks of the leader: write these incidents, then send these notices.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Incidents to store.
    pub write: Vec<Incident>,
    /// Notices to send once they are stored.
    pub send: Vec<Send>,
}

impl Outcome {
    fn add(&mut self, incident: &Incident, sends: impl IntoIterator<Item = (String, Notify)>) {
        for (channel, notify) in sends {
            self.send.push(Send { incident: incident.clone(), channel, notify });
        }
        self.write.push(incident.clone());
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.write.is_empty() && self.send.is_empty()
    }
}

/// Why an incident cannot be acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckRefused {
    /// No incident has that id.
    #[error("no incident {0:?}")]
    NoIncident(String),
    /// It is over.
    #[error("incident {0} is resolved already")]
    Resolved(String),
    /// Someone acknowledged it first.
    #[error("incident {id} was acknowledged by {by} already")]
    Acknowledged {
        /// The incident.
        id: String,
        /// Who acknowledged it.
        by: String,
    },
}

/// The leader's incidents.
#[derive(Debug, Default)]
pub struct IncidentBook {
    prefix: String,
    incidents: BTreeMap<String, Incident>,
    /// When each monitoring entry with a `check_interval` was last checked.
    checked: HashMap<usize, DateTime<Utc>>,
}

fn slug(target: &str) -> String {
    target.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
}

impl IncidentBook {
    /// Every incident stored under `prefix` (one that does not parse is logged and left alone).
    pub async fn load(state: State<'_>, prefix: &str) -> Result<Self, StateError> {
        let mut book = IncidentBook { prefix: prefix.to_owned(), ..IncidentBook::default() };
        for (key, stored) in state.list(&format!("{prefix}/incidents/")).await? {
            match serde_json::from_slice::<Incident>(&stored.value) {
                Ok(i) => {
                    book.incidents.insert(i.id.clone(), i);
                }
                Err(e) => tracing::warn!(key, error = %e, "unreadable incident left alone"),
            }
        }
        Ok(book)
    }

    /// Every incident, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Incident> {
        let mut all: Vec<&Incident> = self.incidents.values().collect();
        all.sort_by_key(|i| (i.opened, &i.id));
        all.into_iter()
    }

    /// One incident.
    pub fn get(&self, id: &str) -> Option<&Incident> {
        self.incidents.get(id)
    }

    /// Open incidents by alert.
    pub fn firing(&self) -> BTreeMap<&'static str, u64> {
        let mut by = BTreeMap::new();
        for i in self.incidents.values().filter(|i| i.is_open()) {
            *by.entry(i.alert.name()).or_insert(0) += 1;
        }
        by
    }

    fn open_for(&self, alert: Alert, target: &str) -> Option<&Incident> {
        self.incidents.values().find(|i| i.is_open() && i.alert == alert && i.target == target)
    }

    /// Opens incidents for conditions newly holding and resolves those of
    /// conditions that cleared. An entry with a `check_interval` has its
    /// conditions judged only when that interval has passed.
    pub fn reconcile(
        &mut self,
        conditions: Vec<Condition>,
        monitoring: &[MonitoredJob],
        alerting: &Alerting,
        now: DateTime<Utc>,
    ) -> Outcome {
        let due = |entry: Option<usize>, checked: &HashMap<usize, DateTime<Utc>>| match entry {
            Some(i) => match monitoring.get(i).and_then(|e| e.check_interval) {
                Some(every) => checked
                    .get(&i)
                    .is_none_or(|last| now - *last >= chrono::Duration::from_std(every).unwrap_or_default()),
                None => true,
            },
            None => true,
        };
        let mut out = Outcome::default();
        let mut holding = std::collections::HashSet::new();
        for c in conditions {
            holding.insert((c.alert, c.target.clone()));
            if !due(c.entry, &self.checked) || self.open_for(c.alert, &c.target).is_some() {
                continue;
            }
            let id = format!("{}-{}-{}", c.alert.name(), now.timestamp_millis(), slug(&c.target));
            let first = c.channels.first().cloned();
            let incident = Incident {
                id: id.clone(),
                alert: c.alert,
                target: c.target,
                severity: c.alert.severity(),
                summary: c.summary,
                details: c.details,
                escalate_at: (c.channels.len() > 1).then(|| now + delay(alerting)),
                reached: usize::from(first.is_some()),
                notices: first.iter().map(|ch| Notice::owed(ch, Notify::Trigger)).collect(),
                channels: c.channels,
                entry: c.entry,
                opened: now,
                resolved: None,
                acknowledged: None,
            };
            tracing::warn!(incident = id, alert = %incident.alert, target = incident.target, summary = incident.summary, "incident opened");
            out.add(&incident, first.map(|ch| (ch, Notify::Trigger)));
            self.incidents.insert(id, incident);
        }
        let cleared: Vec<String> = self
            .incidents
            .values()
            .filter(|i| i.is_open() && !holding.contains(&(i.alert, i.target.clone())) && due(i.entry, &self.checked))
            .map(|i| i.id.clone())
            .collect();
        for id in cleared {
            let Some(incident) = self.incidents.get_mut(&id) else { continue };
            incident.resolved = Some(now);
            incident.escalate_at = None;
            let told: Vec<String> = incident.channels.iter().take(incident.reached).cloned().collect();
            incident.notices.extend(told.iter().map(|ch| Notice::owed(ch, Notify::Resolve)));
            tracing::info!(incident = id, alert = %incident.alert, target = incident.target, "incident resolved");
            out.add(incident, told.into_iter().map(|ch| (ch, Notify::Resolve)));
        }
        for (i, e) in monitoring.iter().enumerate() {
            if e.check_interval.is_some() && due(Some(i), &self.checked) {
                self.checked.insert(i, now);
            }
        }
        out
    }

    /// Sends open incidents, neither acknowledged nor resolved, whose
    /// delay ran out to their next channel.
    pub fn escalate(&mut self, alerting: &Alerting, now: DateTime<Utc>) -> Outcome {
        let mut out = Outcome::default();
        for incident in self.incidents.values_mut() {
            let due = incident.escalate_at.is_some_and(|t| t <= now);
            if !due || !incident.is_open() || incident.acknowledged.is_some() {
                continue;
            }
            let Some(next) = incident.channels.get(incident.reached).cloned() else {
                incident.escalate_at = None;
                continue;
            };
            incident.reached += 1;
            incident.escalate_at = (incident.reached < incident.channels.len()).then(|| now + delay(alerting));
            incident.notices.push(Notice::owed(&next, Notify::Trigger));
            tracing::warn!(incident = incident.id, channel = next, "incident escalated");
            out.add(incident, [(next, Notify::Trigger)]);
        }
        out
    }

    /// Notices owed and not given up on: what a new leader sends first.
    pub fn owed(&self) -> Vec<Send> {
        self.incidents
            .values()
            .flat_map(|i| {
                i.notices.iter().filter(|n| n.sent.is_none() && !n.gave_up).map(move |n| Send {
                    incident: i.clone(),
                    channel: n.channel.clone(),
                    notify: n.notify,
                })
            })
            .collect()
    }

    /// Records how a notice went; the incident to store, if it changed.
    pub fn delivered(
        &mut self,
        id: &str,
        channel: &str,
        notify: Notify,
        result: Result<(), String>,
        attempts: u32,
        now: DateTime<Utc>,
    ) -> Option<Incident> {
        let incident = self.incidents.get_mut(id)?;
        let notice =
            incident.notices.iter_mut().find(|n| n.channel == channel && n.notify == notify && n.sent.is_none())?;
        notice.attempts += attempts;
        match result {
            Ok(()) => {
                notice.sent = Some(now);
                notice.error = None;
            }
            Err(e) => {
                notice.error = Some(e);
                notice.gave_up = true;
            }
        }
        Some(incident.clone())
    }

    /// An operator acknowledged it: no more escalation.
    pub fn acknowledge(&mut self, id: &str, by: &str, now: DateTime<Utc>) -> Result<Incident, AckRefused> {
        let incident = self.incidents.get_mut(id).ok_or_else(|| AckRefused::NoIncident(id.to_owned()))?;
        if !incident.is_open() {
            return Err(AckRefused::Resolved(id.to_owned()));
        }
        if let Some(ack) = &incident.acknowledged {
            return Err(AckRefused::Acknowledged { id: id.to_owned(), by: ack.by.clone() });
        }
        incident.acknowledged = Some(Ack { by: by.to_owned(), at: now });
        incident.escalate_at = None;
        Ok(incident.clone())
    }

    /// Forgets incidents resolved before `before`; the keys to delete.
    pub fn expire(&mut self, before: DateTime<Utc>) -> Vec<String> {
        let old: Vec<String> =
            self.incidents.values().filter(|i| i.resolved.is_some_and(|r| r < before)).map(|i| i.id.clone()).collect();
        for id in &old {
            self.incidents.remove(id);
        }
        old.iter().map(|id| Incident::key(&self.prefix, id)).collect()
    }

    /// Stores incidents in as few transactions as the store allows.
    pub async fn write(&self, state: State<'_>, incidents: &[Incident]) -> Result<(), StateError> {
        for batch in incidents.chunks(100) {
            let puts = batch
                .iter()
                .map(|i| Ok(Op::Put(Incident::key(&self.prefix, &i.id), encode("an incident", i)?)))
                .collect::<Result<Vec<Op>, StateError>>()?;
            state.commit_if(&[], &puts).await?;
        }
        Ok(())
    }
}

fn delay(alerting: &Alerting) -> chrono::Duration {
    chrono::Duration::from_std(alerting.escalate_after).unwrap_or_else(|_| chrono::Duration::minutes(15))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn failed(target: &str, entry: Option<usize>) -> Condition {
        Condition {
            alert: Alert::BackupFailed,
            target: target.to_owned(),
            summary: format!("backup of {target} failed"),
            details: BTreeMap::new(),
            channels: vec!["pd".into(), "slack".into(), "mail".into()],
            entry,
        }
    }

    fn alerting() -> Alerting {
        Alerting { escalate_after: std::time::Duration::from_secs(900), ..Alerting::default() }
    }

    fn sends(o: &Outcome) -> Vec<(String, Notify)> {
        o.send.iter().map(|s| (s.channel.clone(), s.notify)).collect()
    }

    #[test]
    fn one_incident_per_condition_escalated_in_order_and_resolved_where_it_went() {
        let mut book = IncidentBook::default();
        let t0 = at("2026-12-01T10:00:00Z");
        let opened = book.reconcile(vec![failed("db1/pg", None)], &[], &alerting(), t0);
        assert_eq!(sends(&opened), [("pd".to_owned(), Notify::Trigger)]);
        assert_eq!(book.firing().get("backup_failed"), Some(&1));
        // Still holding: nothing new, however often it is judged.
        let again = book.reconcile(vec![failed("db1/pg", None)], &[], &alerting(), at("2026-12-01T10:01:00Z"));
        assert!(again.is_empty());
        assert!(book.escalate(&alerting(), at("2026-12-01T10:14:59Z")).is_empty());
        let second = book.escalate(&alerting(), at("2026-12-01T10:15:00Z"));
        assert_eq!(sends(&second), [("slack".to_owned(), Notify::Trigger)]);
        let id = second.write[0].id.clone();
        assert_eq!(book.get(&id).unwrap().escalate_at, Some(at("2026-12-01T10:30:00Z")));

        // Cleared: a resolve to the two channels it reached, not the third.
        let resolved = book.reconcile(vec![], &[], &alerting(), at("2026-12-01T10:20:00Z"));
        assert_eq!(sends(&resolved), [("pd".to_owned(), Notify::Resolve), ("slack".to_owned(), Notify::Resolve)]);
        assert!(book.escalate(&alerting(), at("2026-12-01T11:00:00Z")).is_empty());
        assert!(book.firing().is_empty());
        // The same condition again is a new incident.
        let reopened = book.reconcile(vec![failed("db1/pg", None)], &[], &alerting(), at("2026-12-01T12:00:00Z"));
        assert_ne!(reopened.write[0].id, id);
        assert_eq!(book.iter().count(), 2);
    }

    #[test]
    fn acknowledged_stops_escalation_and_owed_notices_survive_a_new_leader() {
        let mut book = IncidentBook::default();
        let t0 = at("2026-12-01T10:00:00Z");
        let opened = book.reconcile(vec![failed("db1/pg", None)], &[], &alerting(), t0);
        let id = opened.write[0].id.clone();
        // Not yet delivered: a new leader loading this owes it.
        let mut reloaded = IncidentBook::default();
        reloaded.incidents.insert(id.clone(), opened.write[0].clone());
        assert_eq!(reloaded.owed().len(), 1);
        let stored = book.delivered(&id, "pd", Notify::Trigger, Ok(()), 1, t0).unwrap();
        assert!(stored.notices[0].sent.is_some());
        reloaded.incidents.insert(id.clone(), stored);
        assert!(reloaded.owed().is_empty(), "a sent notice is sent again");

        book.acknowledge(&id, "admin:alice", at("2026-12-01T10:05:00Z")).unwrap();
        assert!(book.escalate(&alerting(), at("2026-12-01T11:00:00Z")).is_empty());
        assert!(book.acknowledge(&id, "admin:bob", t0).unwrap_err().to_string().contains("alice"));
        assert!(book.acknowledge("nope", "admin:bob", t0).unwrap_err().to_string().starts_with("no incident"));
        // A channel that failed every attempt is given up, not retried by the next leader.
        let failed_pd = book.delivered(&id, "pd", Notify::Trigger, Err("HTTP 500".into()), 5, t0);
        assert!(failed_pd.is_none(), "the trigger was already sent");
        let resolved = book.reconcile(vec![], &[], &alerting(), at("2026-12-01T12:00:00Z"));
        let gave_up = book.delivered(&id, "pd", Notify::Resolve, Err("HTTP 500".into()), 5, t0).unwrap();
        assert!(gave_up.notices.iter().any(|n| n.gave_up && n.notify == Notify::Resolve));
        assert_eq!(resolved.send.len(), 1);
        let gone = book.expire(at("2026-12-02T00:00:00Z"));
        assert_eq!(gone, vec![Incident::key("", &id)]);
    }

    #[test]
    fn an_entry_with_a_check_interval_is_judged_only_that_often() {
        let seed = include_str!("../../../deploy/examples/policy.yaml");
        let schedules = lifeboat_common::policy::backup_schedules_from_yaml(seed).unwrap();
        let monitoring = lifeboat_common::policy::monitoring::monitoring_from_yaml(seed, &schedules).unwrap();
        // Entry 2, "File Sync Status", checks every hour.
        let mut book = IncidentBook::default();
        let t0 = at("2026-12-01T10:00:00Z");
        assert!(book.reconcile(vec![], &monitoring, &alerting(), t0).is_empty());
        let early =
            book.reconcile(vec![failed("web1/docs", Some(2))], &monitoring, &alerting(), at("2026-12-01T10:30:00Z"));
        assert!(early.is_empty(), "judged before its hour was up");
        let due =
            book.reconcile(vec![failed("web1/docs", Some(2))], &monitoring, &alerting(), at("2026-12-01T11:00:00Z"));
        assert_eq!(due.write.len(), 1);
        // Cleared at once, but resolved only at its next check.
        assert!(book.reconcile(vec![], &monitoring, &alerting(), at("2026-12-01T11:10:00Z")).is_empty());
        let resolved = book.reconcile(vec![], &monitoring, &alerting(), at("2026-12-01T12:00:00Z"));
        assert_eq!(resolved.write.len(), 1);
        assert!(resolved.write[0].resolved.is_some());
    }
}
