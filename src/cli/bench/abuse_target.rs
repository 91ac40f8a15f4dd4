//! What an attack is given (`Target`, passed to attacker processes as
//! JSON) and what it counts as it goes (`Tally`); shared by the attacks
//! of `abuse_attack` and the many-connection ones of `abuse_slots`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::abuse_report::AttackerReport;
use super::fleet::Endpoint;

/// Where an attack goes, and what it was given (passed to the attacker
/// process as JSON).
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Target {
    pub(super) api: String,
    pub(super) secret: String,
    pub(super) db_url: String,
    pub(super) channel: String,
    pub(super) attacker: Uuid,
    /// Attacks 1-2: the long history; 6: the conversation to ask in.
    pub(super) conversation: Option<Uuid>,
    /// This process's slots of a many-connection attack: `first_slot`,
    /// `first_slot + 1`, … (the index also picks the source address).
    pub(super) first_slot: usize,
    pub(super) slots: usize,
    /// Resolved from `api` in the attacker process.
    #[serde(skip)]
    pub(super) ep: Option<Endpoint>,
}

impl Target {
    pub(super) fn ep(&self) -> &Endpoint {
        self.ep
            .as_ref()
            .expect("the endpoint is resolved before attacking")
    }
}

/// What the attacker achieved, counted as it happens.
#[derive(Default)]
pub(super) struct Tally {
    attempts: AtomicU64,
    opened: AtomicU64,
    held: AtomicU64,
    peak: AtomicU64,
    failed: AtomicU64,
    ends: Mutex<BTreeMap<String, u64>>,
    ready_after: AtomicU64,
    ready: AtomicBool,
}

impl Tally {
    /// The attack is at full strength once it has made `n` attempts.
    pub(super) fn ready_after(&self, n: usize) {
        self.ready_after.store(n as u64, Ordering::SeqCst);
    }

    pub(super) fn attempt(&self) {
        let n = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.ready_after.load(Ordering::SeqCst) {
            self.ready.store(true, Ordering::SeqCst);
        }
    }

    pub(super) fn open(&self) {
        self.opened.fetch_add(1, Ordering::SeqCst);
        let now = self.held.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    pub(super) fn end(&self, how: String) {
        self.held.fetch_sub(1, Ordering::SeqCst);
        *self.ends.lock().expect("tally").entry(how).or_default() += 1;
    }

    pub(super) fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        *self.ends.lock().expect("tally").entry(why).or_default() += 1;
    }

    /// A request that answered (the search flood): counted by status.
    pub(super) fn answer(&self, how: String) {
        self.opened.fetch_add(1, Ordering::SeqCst);
        *self.ends.lock().expect("tally").entry(how).or_default() += 1;
    }

    pub(super) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub(super) fn report(&self) -> AttackerReport {
        AttackerReport {
            ready: self.is_ready(),
            attempts: self.attempts.load(Ordering::SeqCst),
            opened: self.opened.load(Ordering::SeqCst),
            peak_held: self.peak.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
            outcomes: self.ends.lock().expect("tally").clone(),
        }
    }
}

/// Why a connect failed, short enough to count by.
pub(super) fn reason(e: &anyhow::Error) -> String {
    format!(
        "error: {}",
        e.to_string().chars().take(60).collect::<String>()
    )
}
