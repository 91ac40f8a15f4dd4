//! The fair claim's turn key and the preemption rule (issue #18 item 2)
//! against a real database: the order, the victims, the plans. The same
//! rules with real worker processes are in tests/fair.rs.

mod common;

use common::*;
use ragctl::db::jobs::{self, JobKind};
use uuid::Uuid;

async fn migrated(db: &TestDb) -> deadpool_postgres::Object {
    let pool = ragctl::db::pool(&db.url, 2, "ragctl-test").await.unwrap();
    ragctl::db::migrate(&pool).await.unwrap();
    pool.get().await.unwrap()
}

/// A parse job of `user`, due `due_ago` seconds ago; `claimed_ago` and
/// `service` describe its last attempt; a running one is leased to the
/// owner given to [`insert`].
struct Row {
    user: Uuid,
    status: &'static str,
    due_ago: f64,
    claimed_ago: Option<f64>,
    service: f64,
}

async fn insert(c: &deadpool_postgres::Object, r: Row, owner: &str) -> Uuid {
    let (doc, job) = (Uuid::new_v4(), Uuid::new_v4());
    c.execute(
        "INSERT INTO documents (id, user_id, filename, mime_type, size_bytes, status)
         VALUES ($1, $2, 'f.txt', 'text/plain', 1, 'uploaded')",
        &[&doc, &r.user],
    )
    .await
    .unwrap();
    let running = r.status == "running";
    c.execute(
        "INSERT INTO jobs (id, document_id, user_id, kind, status, max_retries, run_after,
                           created_at, claimed_at, service_secs, lease_owner, lease_expires_at)
         VALUES ($1, $2, $3, 'parse', $4, 3, now() - make_interval(secs => $5),
                 now() - make_interval(secs => $5),
                 now() - make_interval(secs => $6), $7,
                 CASE WHEN $8 THEN $9 END, CASE WHEN $8 THEN now() + interval '1 hour' END)",
        &[
            &job,
            &doc,
            &r.user,
            &r.status,
            &r.due_ago,
            &r.claimed_ago,
            &r.service,
            &running,
            &owner,
        ],
    )
    .await
    .unwrap();
    job
}

fn queued(user: Uuid, due_ago: f64) -> Row {
    Row {
        user,
        status: "queued",
        due_ago,
        claimed_ago: None,
        service: 0.0,
    }
}

fn done(user: Uuid, claimed_ago: f64, service: f64) -> Row {
    Row {
        user,
        status: "success",
        due_ago: claimed_ago + 1.0,
        claimed_ago: Some(claimed_ago),
        service,
    }
}

fn running(user: Uuid, claimed_ago: f64) -> Row {
    Row {
        user,
        status: "running",
        due_ago: claimed_ago + 1.0,
        claimed_ago: Some(claimed_ago),
        service: 0.0,
    }
}

async fn next(c: &deadpool_postgres::Object) -> Uuid {
    let claimed = jobs::claim(c, JobKind::Parse, "claimer", 30.0)
        .await
        .unwrap();
    claimed.expect("a due job").job.id
}

/// A returning user who waited first goes before fresh accounts that came
/// after; a heavy user's recent service pushes them behind a later comer.
#[tokio::test]
async fn the_turn_key_orders_by_waiting_and_service() {
    let db = TestDb::new();
    let c = migrated(&db).await;
    let (returning, heavy) = (Uuid::new_v4(), Uuid::new_v4());
    insert(&c, done(returning, 60.0, 1.0), "").await;
    let r = insert(&c, queued(returning, 30.0), "").await;
    let fresh: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let mut f = Vec::new();
    for (i, u) in fresh.iter().enumerate() {
        f.push(insert(&c, queued(*u, 20.0 - i as f64), "").await);
    }
    // 300 s of service in the window: their turn is 100 s ago + 300 s.
    insert(&c, done(heavy, 120.0, 300.0), "").await;
    let h = insert(&c, queued(heavy, 100.0), "").await;

    // R: 30 s ago + 1 s; the fresh accounts: 20, 19, 18 s ago; H: +200 s.
    assert_eq!(next(&c).await, r);
    for id in &f {
        // The claimed jobs keep running, so each user claimed has 1 running
        // and the rest (0 running) come first.
        assert_eq!(next(&c).await, *id);
    }
    assert_eq!(next(&c).await, h);
}

/// A user with more running jobs waits behind one with fewer, whatever
/// the turn keys.
#[tokio::test]
async fn running_jobs_come_before_the_turn_key() {
    let db = TestDb::new();
    let c = migrated(&db).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    insert(&c, running(a, 1.0), "w1").await;
    let a2 = insert(&c, queued(a, 500.0), "").await;
    insert(&c, done(b, 5.0, 400.0), "").await;
    let b1 = insert(&c, queued(b, 1.0), "").await;
    assert_eq!(next(&c).await, b1);
    assert_eq!(next(&c).await, a2);
}

async fn preempt(c: &mut deadpool_postgres::Object, id: Uuid, owner: &str) -> Option<jobs::Job> {
    jobs::preempt(c, JobKind::Parse, id, owner).await.unwrap()
}

/// With one starving user, exactly one job is handed back: the latest
/// claimed of the user with the most running jobs; a user's only (or
/// first) running job never is. The hand-back keeps `retry_count` and
/// counts the attempt's service.
#[tokio::test]
async fn preemption_hands_back_the_heaviest_users_latest_job() {
    let db = TestDb::new();
    let mut c = migrated(&db).await;
    let (a, b, starving) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let a1 = insert(&c, running(a, 30.0), "a1").await;
    let a2 = insert(&c, running(a, 20.0), "a2").await;
    let a3 = insert(&c, running(a, 10.0), "a3").await;
    let b1 = insert(&c, running(b, 40.0), "b1").await;
    let b2 = insert(&c, running(b, 5.0), "b2").await;

    // Nobody starving: nothing moves.
    for (id, owner) in [(a1, "a1"), (a2, "a2"), (a3, "a3"), (b1, "b1"), (b2, "b2")] {
        assert!(preempt(&mut c, id, owner).await.is_none());
    }
    // Due for less than the threshold: not starving yet.
    insert(&c, queued(starving, 0.0), "").await;
    assert!(preempt(&mut c, a3, "a3").await.is_none());
    insert(&c, queued(starving, 2.0), "").await;
    // A has 3 running, B 2: A's latest claimed is the one victim.
    for (id, owner) in [(a1, "a1"), (a2, "a2"), (b1, "b1"), (b2, "b2")] {
        assert!(preempt(&mut c, id, owner).await.is_none(), "{owner}");
    }
    // Another owner cannot hand a job back.
    assert!(preempt(&mut c, a3, "b1").await.is_none());
    let back = preempt(&mut c, a3, "a3").await.expect("a3 handed back");
    assert_eq!(back.status, jobs::JobStatus::Queued);
    assert_eq!(back.retry_count, 0);
    let service: f64 = c
        .query_one("SELECT service_secs FROM jobs WHERE id = $1", &[&a3])
        .await
        .unwrap()
        .get(0);
    assert!(service >= 10.0, "the attempt's 10 s counted: {service}");
    // The freed slot has not claimed yet: the user still looks starving,
    // but a slot is on its way, so nothing more is handed back.
    for (id, owner) in [(a1, "a1"), (a2, "a2"), (b1, "b1"), (b2, "b2")] {
        assert!(preempt(&mut c, id, owner).await.is_none(), "{owner}");
    }
    // The mark runs out (a slot that died before claiming): the user
    // counts again, and A and B have 2 running each: B's latest goes.
    expire_handovers(&c).await;
    assert!(preempt(&mut c, a2, "a2").await.is_none());
    assert!(preempt(&mut c, b2, "b2").await.is_some());
    // A second starving user, with B's slot still on its way to the first:
    // one more hand-back, A's second job, the last preemptible one.
    insert(&c, queued(Uuid::new_v4(), 2.0), "").await;
    assert!(preempt(&mut c, a1, "a1").await.is_none());
    assert!(preempt(&mut c, b1, "b1").await.is_none());
    assert!(preempt(&mut c, a2, "a2").await.is_some(), "A still had 2");
    // Each has one running job left: none is preemptible.
    expire_handovers(&c).await;
    assert!(preempt(&mut c, a1, "a1").await.is_none());
    assert!(preempt(&mut c, b1, "b1").await.is_none());
}

/// Ends every hand-back's "slot on its way" mark, as time would.
async fn expire_handovers(c: &deadpool_postgres::Object) {
    c.execute(
        "UPDATE jobs SET lease_expires_at = now() - interval '1 second'
         WHERE status = 'queued' AND lease_expires_at IS NOT NULL",
        &[],
    )
    .await
    .unwrap();
}

/// The claim and the preemption stay index walks on a few thousand rows.
#[tokio::test]
async fn fair_queries_use_the_indexes() {
    let db = TestDb::new();
    let c = migrated(&db).await;
    for n in 0..3000 {
        let user = Uuid::from_u128(1 + n % 300);
        let row = match n % 3 {
            0 => queued(user, f64::from((n % 50) as u32)),
            1 => done(user, f64::from((n % 900) as u32), 2.0),
            _ if n % 30 == 2 => running(user, 3.0),
            _ => done(user, 1000.0, 1.0),
        };
        insert(&c, row, &format!("w{n}")).await;
    }
    // VACUUM too: index-only scans are costed from the visibility map,
    // which autovacuum may or may not have set by now on a busy machine.
    c.batch_execute("VACUUM ANALYZE jobs").await.unwrap();
    let explain = |sql: String, params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync>>| {
        let c = &c;
        async move {
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                params.iter().map(|p| p.as_ref()).collect();
            let rows = c.query(&format!("EXPLAIN {sql}"), &refs).await.unwrap();
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let claim = explain(
        jobs::claim_plan_sql(),
        vec![Box::new("parse"), Box::new("w"), Box::new(30.0f64)],
    )
    .await;
    assert!(!claim.contains("Seq Scan on jobs"), "{claim}");
    assert!(claim.contains("jobs_queued_user_idx"), "{claim}");
    assert!(claim.contains("jobs_service_idx"), "{claim}");
    let [probe, decision] = jobs::preempt_plan_sql();
    for (sql, counts_handbacks) in [(probe, false), (decision, true)] {
        let plan = explain(
            sql,
            vec![
                Box::new("parse"),
                Box::new(Uuid::new_v4()),
                Box::new("w"),
                Box::new(0.5f64),
            ],
        )
        .await;
        assert!(!plan.contains("Seq Scan on jobs"), "{plan}");
        assert!(plan.contains("jobs_queued_user_idx"), "{plan}");
        // The decision counts the hand-backs in flight.
        if counts_handbacks {
            assert!(plan.contains("jobs_handover_idx"), "{plan}");
        }
    }
}
