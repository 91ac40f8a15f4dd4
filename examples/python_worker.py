#!/usr/bin/env python3
"""A worker written in Python that publishes a ragctl event with pg_notify.

Any process that can run SQL can publish: build the envelope, then call
pg_notify('rag_events', <json>) *after* the business transaction commits
(NOTIFY inside a transaction is only sent at COMMIT, and is dropped on
ROLLBACK, which is what you want if you do publish inside it).

    pip install "psycopg[binary]"
    python3 examples/python_worker.py postgres://postgres@127.0.0.1/ragctl USER_UUID [STATUS] [DOCUMENT_UUID]

The envelope (docs of the contract: src/events/contract.rs):

    {"v": 1, "id": UUID, "user_id": UUID, "type": "document.status_updated",
     "payload": {...}, "ts": RFC 3339, "origin": "..."}

Size: PostgreSQL refuses a NOTIFY payload of 8000 bytes or more. The Rust
publisher splits bigger envelopes into fragments; this example does not, so
it refuses to send one that is too large. Keep payloads small (ids and
statuses; clients fetch the rest over REST).
"""

import json
import sys
import uuid
from datetime import datetime, timezone

import psycopg

CHANNEL = "rag_events"
MAX_NOTIFY_BYTES = 7999


def envelope(user_id: str, event_type: str, payload: dict, origin: str) -> str:
    env = {
        "v": 1,
        "id": str(uuid.uuid4()),
        "user_id": user_id,
        "type": event_type,
        "payload": payload,
        "ts": datetime.now(timezone.utc).isoformat(),
        "origin": origin,
    }
    # Compact separators: every byte counts against the NOTIFY limit.
    return json.dumps(env, separators=(",", ":"), ensure_ascii=False)


def main() -> int:
    if len(sys.argv) < 3:
        print("usage: python_worker.py DATABASE_URL USER_ID [STATUS] [DOCUMENT_ID]", file=sys.stderr)
        return 2
    url, user_id = sys.argv[1], str(uuid.UUID(sys.argv[2]))
    status = sys.argv[3] if len(sys.argv) > 3 else "parsed"
    document_id = str(uuid.UUID(sys.argv[4])) if len(sys.argv) > 4 else str(uuid.uuid4())

    text = envelope(
        user_id,
        "document.status_updated",
        {
            "document_id": document_id,
            "status": status,  # uploaded, parsing, parsed, ingesting, ingested or error
            "error_message": None,
            "updated_at": datetime.now(timezone.utc).isoformat(),
        },
        "python-worker",
    )
    size = len(text.encode("utf-8"))
    if size > MAX_NOTIFY_BYTES:
        print(f"envelope is {size} bytes; NOTIFY takes at most {MAX_NOTIFY_BYTES}", file=sys.stderr)
        return 2

    # autocommit: the NOTIFY is sent at once, not at a later COMMIT.
    with psycopg.connect(url, autocommit=True, application_name="python-worker") as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, text))
    print(f"published document.status_updated for user {user_id}: document {document_id} is {status} ({size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
