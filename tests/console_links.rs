//! The console in headless Chromium (tests/common/chrome.rs): a link's
//! token never silently replaces the tab's (attack 8b of issue #17, login
//! CSRF), the page always says whose token it uses, and it follows the
//! pages of the lists (more documents than one page, a long conversation).

mod common;

use std::collections::BTreeSet;

use common::chrome::{Page, browser_or_skip};
use common::*;
use serde_json::Value;
use uuid::Uuid;

const STORED: &str = "sessionStorage.getItem('ragctl.console.token')";
const SWITCH_SHOWN: &str = "document.querySelector('#switch')?.hidden === false";
const SHOWN_SUB: &str = "document.querySelector('#user').dataset.sub";

async fn wait_live(page: &mut Page) {
    page.wait_for(
        "the console to be live",
        "document.querySelector('#status')?.dataset.status === 'live'",
    )
    .await;
}

/// Waits for the document that a click's `location.reload()` loads.
async fn wait_reloaded(page: &mut Page, sub: Uuid) {
    page.wait_for(
        "the reloaded page",
        &format!(
            "!window.__before && document.readyState === 'complete' && {SHOWN_SUB} === '{sub}'"
        ),
    )
    .await;
    wait_live(page).await;
}

#[tokio::test]
async fn a_link_with_another_users_token_asks_before_replacing_the_tabs() {
    let Some((_one, browser)) = browser_or_skip().await else {
        return;
    };
    let db = TestDb::new();
    let api = Api::start(&db, &["--console"], &[]).await;
    let (alice, mallory) = (Uuid::new_v4(), Uuid::new_v4());
    let (alice_token, mallory_token) = (token(alice), token(mallory));

    // First run: no token in the tab, the link signs in without a question.
    let mut page = browser
        .page(&format!("{}/#token={alice_token}", api.url))
        .await;
    wait_live(&mut page).await;
    assert_eq!(page.eval(SWITCH_SHOWN).await, false);
    assert_eq!(page.eval(STORED).await, alice_token);

    // A link from elsewhere, in the same tab, carrying Mallory's token.
    let attack = format!("{}/#token={mallory_token}", api.url);
    page.navigate(&format!("{}/healthz", api.url)).await;
    page.navigate(&attack).await;
    wait_live(&mut page).await;
    assert_eq!(
        page.eval(STORED).await,
        alice_token,
        "the link's token replaced the tab's without asking"
    );
    assert_eq!(page.eval(SHOWN_SUB).await, alice.to_string());
    assert_eq!(
        page.eval("location.hash").await,
        "",
        "the token left the bar"
    );
    page.wait_for("the question", SWITCH_SHOWN).await;
    let names = page
        .eval("[...document.querySelectorAll('#switch-from, #switch-to')].map(e => e.textContent)")
        .await;
    assert_eq!(names, serde_json::json!([alice, mallory]));
    assert!(
        page.eval("document.querySelector('#user').textContent")
            .await
            .as_str()
            .unwrap()
            .contains(&alice.to_string())
    );

    // Declined: the question goes, Alice stays.
    page.eval("document.querySelector('#switch-keep').click(); true")
        .await;
    assert_eq!(page.eval(SWITCH_SHOWN).await, false);
    assert_eq!(page.eval(STORED).await, alice_token);

    // A link followed inside the page changes only the fragment: asked too.
    page.eval(&format!(
        "window.__before = true; location.hash = 'token={mallory_token}'; true"
    ))
    .await;
    wait_reloaded(&mut page, alice).await;
    page.wait_for("the question again", SWITCH_SHOWN).await;
    assert_eq!(page.eval(STORED).await, alice_token);

    // Accepted: the tab is Mallory's.
    page.eval("window.__before = true; document.querySelector('#switch-accept').click(); true")
        .await;
    wait_reloaded(&mut page, mallory).await;
    assert_eq!(page.eval(STORED).await, mallory_token);
    assert_eq!(page.eval(SWITCH_SHOWN).await, false);
}

/// Every id of a list, following its pages through REST.
async fn rest_ids(api: &Api, user: Uuid, path: &str, key: &str) -> BTreeSet<String> {
    let (mut ids, mut cursor) = (BTreeSet::new(), None::<String>);
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}?limit=200&cursor={c}"),
            None => format!("{path}?limit=200"),
        };
        let (code, body) = get_json(api, user, &url).await;
        assert_eq!(code, 200, "{body}");
        ids.extend(
            body[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string()),
        );
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return ids,
        }
    }
}

async fn shown_ids(page: &mut Page, selector: &str) -> Vec<String> {
    let v: Value = page
        .eval(&format!(
            "[...document.querySelectorAll('{selector}')].map(e => e.dataset.id)"
        ))
        .await;
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn the_console_shows_every_document_and_pages_back_through_a_conversation() {
    let Some((_one, browser)) = browser_or_skip().await else {
        return;
    };
    let db = TestDb::new();
    let api = Api::start(&db, &["--console"], &[]).await;
    let user = Uuid::new_v4();
    db.query(&format!(
        "INSERT INTO documents (id, user_id, filename, mime_type, size_bytes, status, created_at, updated_at)
         SELECT gen_random_uuid(), '{user}', 'doc-' || i || '.txt', 'text/plain', 1, 'ingested', t, t
           FROM generate_series(1, 120) i,
                LATERAL (SELECT timestamptz '2026-01-01' + (i / 4) * interval '1 s' AS t) s"
    ))
    .await;
    let conv = new_conversation(&api, user, Some("long")).await;
    db.query(&format!(
        "INSERT INTO messages (id, conversation_id, user_id, role, content, status, created_at, updated_at)
         SELECT gen_random_uuid(), '{conv}', '{user}', 'user', 'message ' || i, 'completed', t, t
           FROM generate_series(1, 70) i,
                LATERAL (SELECT timestamptz '2026-01-01' + i * interval '1 s' AS t) s"
    ))
    .await;

    let mut page = browser
        .page(&format!("{}/#token={}", api.url, token(user)))
        .await;
    wait_live(&mut page).await;
    let docs = shown_ids(&mut page, "#docs tr[data-id]").await;
    assert_eq!(
        docs.len(),
        120,
        "the console shows {} documents",
        docs.len()
    );
    assert_eq!(
        docs.iter().cloned().collect::<BTreeSet<_>>(),
        rest_ids(&api, user, "/documents", "documents").await
    );

    // The latest 50 messages, oldest of them first; then the rest.
    let path = format!("/conversations/{conv}/messages");
    let (_, all) = get_json(&api, user, &format!("{path}?limit=200")).await;
    let all: Vec<String> = all["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    let shown = shown_ids(&mut page, "#messages > li[data-id]").await;
    assert_eq!(shown, all[20..]);
    page.eval("document.querySelector('#older').click(); true")
        .await;
    page.wait_for(
        "the older messages",
        "document.querySelectorAll('#messages > li[data-id]').length === 70",
    )
    .await;
    assert_eq!(shown_ids(&mut page, "#messages > li[data-id]").await, all);
    assert_eq!(
        page.eval("document.querySelector('#older').hidden").await,
        true
    );
}
