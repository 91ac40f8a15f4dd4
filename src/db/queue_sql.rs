//! The job queue's scheduling SQL: which job a free slot claims next, and
//! which running jobs are handed back so that a waiting user gets a slot.
//! A leaf: text only, used by `db::jobs`.
//!
//! Parameters: `$1` the kind everywhere; the claim's `$2`/`$3` are the lease
//! owner and seconds, the preemption's `$2`/`$3`/`$4` the job, its owner and
//! the starving threshold in seconds.

/// How far back a user's service counts in their turn key.
pub(super) const SERVICE_WINDOW: &str = "interval '10 minutes'";

/// How long a hand-back counts as a slot on its way to a starving user.
/// The freed slot claims within milliseconds; the mark outlives that
/// claim, so a user who starts starving meanwhile waits up to this much
/// longer, and a slot slower than this to claim lets a second hand-back
/// through: short, but well above a claim's time.
pub(super) const HANDOVER: &str = "interval '500 milliseconds'";

/// Seconds this attempt ran, added to `service_secs` when it ends.
pub(super) const ATTEMPT_SECS: &str =
    "coalesce(greatest(extract(epoch FROM clock_timestamp() - claimed_at)::float8, 0), 0)";

/// A running job whose lease ran out.
pub(super) const EXPIRED: &str = "SELECT id, status AS prev_status FROM jobs
    WHERE kind = $1 AND status = 'running' AND lease_expires_at < now()
    ORDER BY lease_expires_at LIMIT 1
    FOR UPDATE SKIP LOCKED";

/// The users with queued jobs of `$1` due by `due_by`, one index probe each
/// (a loose index scan of `jobs_queued_user_idx`), as CTE `name`.
fn users_due(name: &str, due_by: &str) -> String {
    format!(
        "{name} AS (
        (SELECT user_id FROM jobs
         WHERE kind = $1 AND status = 'queued' AND run_after <= {due_by}
         ORDER BY user_id LIMIT 1)
        UNION ALL
        SELECT (SELECT q.user_id FROM jobs q
                WHERE q.kind = $1 AND q.status = 'queued' AND q.run_after <= {due_by}
                  AND q.user_id > u.user_id
                ORDER BY q.user_id LIMIT 1)
        FROM {name} u WHERE u.user_id IS NOT NULL)"
    )
}

/// The next job of the fair claim. Per user with due jobs: their running
/// count and their *turn key* = greatest(oldest due, last claim) + service
/// of the window; then the first of their four oldest due jobs not locked
/// by another claimer, lowest (running, turn) first. The due conditions
/// are repeated on `j` so that they are checked again on the locked row.
pub(super) fn fair_next() -> String {
    let users = users_due("users", "now()");
    format!(
        "WITH RECURSIVE {users},
    turns AS (
        SELECT u.user_id,
            (SELECT count(*) FROM jobs r
             WHERE r.kind = $1 AND r.status = 'running' AND r.user_id = u.user_id) AS running,
            (SELECT d.run_after FROM jobs d
             WHERE d.kind = $1 AND d.status = 'queued' AND d.run_after <= now()
               AND d.user_id = u.user_id
             ORDER BY d.run_after LIMIT 1) AS due,
            (SELECT c.claimed_at FROM jobs c
             WHERE c.kind = $1 AND c.user_id = u.user_id AND c.claimed_at IS NOT NULL
             ORDER BY c.claimed_at DESC LIMIT 1) AS served,
            (SELECT coalesce(sum(s.service_secs + CASE WHEN s.status = 'running'
                        THEN extract(epoch FROM now() - s.claimed_at)::float8 ELSE 0 END), 0)
             FROM jobs s
             WHERE s.kind = $1 AND s.user_id = u.user_id AND s.claimed_at IS NOT NULL
               AND s.claimed_at > now() - {SERVICE_WINDOW}) AS service
        FROM users u WHERE u.user_id IS NOT NULL),
    keys AS (
        SELECT user_id, running,
            greatest(due, served) + make_interval(secs => service) AS turn
        FROM turns)
    SELECT j.id, j.status AS prev_status
    FROM keys t
    CROSS JOIN LATERAL (
        SELECT q.id FROM jobs q
        WHERE q.kind = $1 AND q.status = 'queued' AND q.run_after <= now()
          AND q.user_id = t.user_id
        ORDER BY q.run_after, q.created_at LIMIT 4) c
    JOIN jobs j ON j.id = c.id
    WHERE j.status = 'queued' AND j.run_after <= now()
    ORDER BY t.running, t.turn, j.run_after, j.created_at
    LIMIT 1
    FOR UPDATE OF j SKIP LOCKED"
    )
}

/// Takes the job `next` picked: a lapsed attempt's wall time (until its
/// lease ran out) goes to `service_secs`; `waited` is due → claimed.
pub(super) fn claim(next: &str, returning: &str) -> String {
    format!(
        "WITH next AS ({next})
         UPDATE jobs j SET status = 'running', lease_owner = $2,
            lease_expires_at = clock_timestamp() + make_interval(secs => $3),
            service_secs = j.service_secs + CASE WHEN j.status = 'running' THEN coalesce(greatest(
                extract(epoch FROM least(j.lease_expires_at, clock_timestamp()) - j.claimed_at)::float8,
                0), 0) ELSE 0 END,
            claimed_at = clock_timestamp(), updated_at = clock_timestamp()
         FROM next WHERE j.id = next.id
         RETURNING next.prev_status,
            extract(epoch FROM clock_timestamp() - j.run_after)::float8 AS waited, {returning}"
    )
}

/// Users with a queued job due for `$4` seconds and no running job: they
/// are *starving*.
fn starving() -> String {
    let waiting = users_due("waiting", "now() - make_interval(secs => $4)");
    format!(
        "WITH RECURSIVE {waiting},
    starving AS (
        SELECT w.user_id FROM waiting w
        WHERE w.user_id IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM jobs r
            WHERE r.kind = $1 AND r.status = 'running' AND r.user_id = w.user_id))"
    )
}

/// Cheap check without the lock, run every tick: is job `$2` (held by `$3`)
/// preemptible (its user has a running job of the kind claimed earlier),
/// and is some user starving?
pub(super) fn preempt_probe() -> String {
    format!(
        "{}
    SELECT EXISTS (
            SELECT 1 FROM jobs me JOIN jobs r
              ON r.kind = me.kind AND r.status = 'running' AND r.user_id = me.user_id
            WHERE me.id = $2 AND me.lease_owner = $3 AND me.status = 'running'
              AND me.kind = $1 AND (r.claimed_at, r.id) < (me.claimed_at, me.id))
        AND EXISTS (SELECT 1 FROM starving)",
        starving()
    )
}

/// The decision and the hand-back in one statement (run under the kind's
/// advisory lock, so deciders see each other's hand-backs): with k starving
/// users, the victims are k preemptible jobs taken greedily from the users
/// with the most running jobs, each user's latest claimed first (a job's
/// rank `nth` is its user's running count when it is taken). Job `$2` goes
/// back to `queued` only if it is a victim; `retry_count` is untouched.
///
/// A hand-back leaves [`HANDOVER`] on the queued job's `lease_expires_at`
/// (otherwise unused while queued; a claim overwrites it): a slot is on
/// its way to a starving user. Those in flight are taken off k, so that a
/// decider in the moment before the freed slot claims does not hand back
/// a second job for the same user; if the slot never claims, the mark
/// runs out and the user counts again.
pub(super) fn preempt(returning: &str) -> String {
    format!(
        "{},
    running AS (
        SELECT id, claimed_at,
            row_number() OVER (PARTITION BY user_id ORDER BY claimed_at, id) AS nth
        FROM jobs WHERE kind = $1 AND status = 'running' AND lease_expires_at > now()),
    victims AS (
        SELECT id FROM running WHERE nth > 1
        ORDER BY nth DESC, claimed_at DESC, id
        LIMIT greatest(0, (SELECT count(*) FROM starving) - (
            SELECT count(*) FROM jobs h
            WHERE h.kind = $1 AND h.status = 'queued' AND h.lease_expires_at > now())))
    UPDATE jobs SET status = 'queued', lease_owner = NULL,
        lease_expires_at = clock_timestamp() + {HANDOVER},
        run_after = now(), service_secs = service_secs + {ATTEMPT_SECS},
        updated_at = clock_timestamp()
    WHERE id = $2 AND lease_owner = $3 AND status = 'running'
      AND id IN (SELECT id FROM victims)
    RETURNING {returning}",
        starving()
    )
}
