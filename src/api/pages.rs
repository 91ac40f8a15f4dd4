//! Paginated lists: `?limit=`, `?cursor=`, `?order=` in, a page of rows and
//! `next_cursor` out. A page is bounded twice: in rows (`limit`, at most
//! [`MAX_LIMIT`]) and in bytes (it stops once its JSON passes
//! [`PAGE_MAX_BYTES`], always with at least one row), so no list answer
//! grows with the user's history. The cursor is opaque: base64url of a
//! version, the list, the order, the list's scope (the caller for
//! documents and conversations, the conversation for messages) and the
//! last row's `(created_at, id)`; a cursor of another list, order or scope
//! is refused, so it can only ever continue the list it came from.

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::ApiError;
use crate::db::page::Keyset;

/// Rows per page when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 50;
/// The largest `limit` accepted.
pub const MAX_LIMIT: i64 = 200;
/// A page stops taking rows once its JSON is this long (1 MiB).
pub const PAGE_MAX_BYTES: usize = 1 << 20;

const CURSOR_VERSION: u8 = 1;
const CURSOR_LEN: usize = 1 + 1 + 1 + 16 + 8 + 16;
/// What follows the rows: `],"next_cursor":"<58 characters>"}`.
const TAIL_MAX: usize = 80;

/// The lists that page, with their default order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    Documents,
    Conversations,
    Messages,
}

impl List {
    fn tag(self) -> u8 {
        self as u8 + 1
    }

    /// The array's key in the answer, also the metric's label.
    fn key(self) -> &'static str {
        match self {
            List::Documents => "documents",
            List::Conversations => "conversations",
            List::Messages => "messages",
        }
    }

    /// Documents and conversations newest first; a conversation's messages
    /// oldest first, the order a chat renders.
    fn newest_first_by_default(self) -> bool {
        self != List::Messages
    }
}

/// The query string as sent; checked by [`PageRequest::parse`].
#[derive(Deserialize, Default)]
pub struct PageParams {
    limit: Option<String>,
    cursor: Option<String>,
    order: Option<String>,
}

/// A checked page request: what to read and how to continue.
#[derive(Debug)]
pub struct PageRequest {
    list: List,
    scope: Uuid,
    limit: i64,
    pub keyset: Keyset,
}

fn refuse(param: &'static str, code: &'static str, message: String) -> ApiError {
    metrics::counter!("ragctl_list_pages_refused_total", "param" => param).increment(1);
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

impl PageRequest {
    /// Checks the parameters of a page of `list` within `scope`.
    pub fn parse(
        list: List,
        scope: Uuid,
        query: Result<Query<PageParams>, QueryRejection>,
    ) -> Result<PageRequest, ApiError> {
        let Query(p) = query.map_err(|e| {
            refuse(
                "query",
                "bad_request",
                format!("malformed query string: {e}"),
            )
        })?;
        let limit = parse_limit(p.limit.as_deref())?;
        let newest_first = match p.order.as_deref() {
            None => list.newest_first_by_default(),
            Some("desc") => true,
            Some("asc") => false,
            Some(_) => {
                return Err(refuse(
                    "order",
                    "bad_request",
                    "`order` must be `asc` or `desc`".into(),
                ));
            }
        };
        let after = match p.cursor.as_deref() {
            None | Some("") => None,
            Some(text) => Some(Cursor::decode(text, list, newest_first, scope)?),
        };
        Ok(PageRequest {
            list,
            scope,
            limit,
            keyset: Keyset {
                after,
                newest_first,
                limit: limit + 1,
            },
        })
    }

    /// The answer: `{"<list>": [rows…], "next_cursor": …}`, written row by
    /// row until `limit` rows or until the next row would pass the byte
    /// bound (the first row always goes in); `rows` were read with one more
    /// than `limit`, so a full page knows whether another follows.
    pub fn answer<T: Serialize>(
        &self,
        rows: &[T],
        at: impl Fn(&T) -> (DateTime<Utc>, Uuid),
    ) -> Response {
        let mut body = format!("{{\"{}\":[", self.list.key()).into_bytes();
        let mut taken = 0;
        for row in rows.iter().take(self.limit as usize) {
            let json = serde_json::to_vec(row).expect("a row serialises");
            if taken > 0 && body.len() + 1 + json.len() + TAIL_MAX > PAGE_MAX_BYTES {
                metrics::counter!("ragctl_list_pages_cut_total", "list" => self.list.key())
                    .increment(1);
                break;
            }
            if taken > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&json);
            taken += 1;
        }
        let next = (taken < rows.len()).then(|| self.cursor(at(&rows[taken - 1])));
        body.extend_from_slice(b"],\"next_cursor\":");
        serde_json::to_writer(&mut body, &next).expect("a cursor serialises");
        body.push(b'}');
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    }

    fn cursor(&self, (at, id): (DateTime<Utc>, Uuid)) -> String {
        let mut b = Vec::with_capacity(CURSOR_LEN);
        b.extend_from_slice(&[
            CURSOR_VERSION,
            self.list.tag(),
            self.keyset.newest_first as u8,
        ]);
        b.extend_from_slice(self.scope.as_bytes());
        b.extend_from_slice(&at.timestamp_micros().to_be_bytes());
        b.extend_from_slice(id.as_bytes());
        B64URL.encode(b)
    }
}

fn parse_limit(text: Option<&str>) -> Result<i64, ApiError> {
    let Some(text) = text else {
        return Ok(DEFAULT_LIMIT);
    };
    match text.parse::<i64>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(refuse(
            "limit",
            "bad_request",
            format!("`limit` must be a whole number from 1 to {MAX_LIMIT}, not {text:?}"),
        )),
    }
}

struct Cursor;

impl Cursor {
    /// The position a cursor of this list, order and scope continues from.
    fn decode(
        text: &str,
        list: List,
        newest_first: bool,
        scope: Uuid,
    ) -> Result<(DateTime<Utc>, Uuid), ApiError> {
        let bad = |why: &str| {
            refuse(
                "cursor",
                "invalid_cursor",
                format!("`cursor` {why}: pass the `next_cursor` of the previous page unchanged"),
            )
        };
        let b = B64URL.decode(text).map_err(|_| bad("is malformed"))?;
        if b.len() != CURSOR_LEN || b[0] != CURSOR_VERSION {
            return Err(bad("is malformed"));
        }
        if b[1] != list.tag() || b[3..19] != *scope.as_bytes() {
            return Err(bad("belongs to another list"));
        }
        if b[2] != newest_first as u8 {
            return Err(bad("was issued for the other `order`"));
        }
        let micros = i64::from_be_bytes(b[19..27].try_into().expect("8 bytes"));
        let at = DateTime::from_timestamp_micros(micros).ok_or_else(|| bad("is malformed"))?;
        let id = Uuid::from_slice(&b[27..]).expect("16 bytes");
        Ok((at, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(list: List, scope: Uuid, q: &str) -> Result<PageRequest, ApiError> {
        let uri: axum::http::Uri = format!("/x?{q}").parse().unwrap();
        PageRequest::parse(list, scope, Query::try_from_uri(&uri))
    }

    #[test]
    fn limits_are_checked_and_name_the_parameter() {
        let scope = Uuid::new_v4();
        assert_eq!(
            request(List::Documents, scope, "").unwrap().limit,
            DEFAULT_LIMIT
        );
        assert_eq!(
            request(List::Documents, scope, "limit=200").unwrap().limit,
            200
        );
        for bad in [
            "limit=0",
            "limit=201",
            "limit=-1",
            "limit=x",
            "limit=1.5",
            "limit=",
        ] {
            let e = request(List::Documents, scope, bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.message.contains("`limit`"), "{bad}: {}", e.message);
        }
        let e = request(List::Messages, scope, "order=up").unwrap_err();
        assert!(e.message.contains("`order`"), "{}", e.message);
    }

    #[test]
    fn a_cursor_continues_only_its_own_list_order_and_scope() {
        let scope = Uuid::new_v4();
        let req = request(List::Messages, scope, "").unwrap();
        let (at, id) = (
            DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            Uuid::new_v4(),
        );
        let c = req.cursor((at, id));
        let again = request(List::Messages, scope, &format!("cursor={c}")).unwrap();
        assert_eq!(again.keyset.after, Some((at, id)));
        assert!(!again.keyset.newest_first);
        let refused = [
            request(List::Messages, Uuid::new_v4(), &format!("cursor={c}")),
            request(List::Documents, scope, &format!("cursor={c}")),
            request(List::Messages, scope, &format!("cursor={c}&order=desc")),
            request(List::Messages, scope, "cursor=bm90LWEtY3Vyc29y"),
            request(List::Messages, scope, "cursor=%%%"),
        ];
        for r in refused {
            let e = r.unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "invalid_cursor")
            );
        }
    }

    #[derive(Serialize)]
    struct Row {
        n: usize,
        text: String,
    }

    fn rows(n: usize, len: usize) -> Vec<Row> {
        (0..n)
            .map(|n| Row {
                n,
                text: "\u{1}".repeat(len),
            })
            .collect()
    }

    async fn body(r: Response) -> serde_json::Value {
        let b = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&b).unwrap()
    }

    #[tokio::test]
    async fn a_page_is_bounded_in_rows_and_bytes_and_says_whether_more_follow() {
        let at = |r: &Row| {
            (
                DateTime::from_timestamp_micros(r.n as i64).unwrap(),
                Uuid::nil(),
            )
        };
        let req = request(List::Messages, Uuid::nil(), "limit=3").unwrap();
        let v = body(req.answer(&rows(4, 1), at)).await;
        assert_eq!(v["messages"].as_array().unwrap().len(), 3);
        assert!(v["next_cursor"].is_string());
        let v = body(req.answer(&rows(3, 1), at)).await;
        assert_eq!(v["messages"].as_array().unwrap().len(), 3);
        assert!(v["next_cursor"].is_null());
        // 16,000 control characters are 96,000 bytes of JSON each.
        let req = request(List::Messages, Uuid::nil(), "limit=200").unwrap();
        let r = req.answer(&rows(201, 16_000), at);
        let b = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        assert!(b.len() <= PAGE_MAX_BYTES, "{}", b.len());
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["messages"].as_array().unwrap().len(), 10);
        assert!(v["next_cursor"].is_string());
        // One row alone over the bound still makes a page.
        let v = body(req.answer(&rows(1, 200_000), at)).await;
        assert_eq!(v["messages"].as_array().unwrap().len(), 1);
        assert!(v["next_cursor"].is_null());
    }
}
