//! The uploaded bytes of each document (`document_blobs`). Keyed by
//! document id only: the callers have already checked the document's owner
//! (the upload creates the row; a worker holds the job's lease).

use bytes::{BufMut, Bytes, BytesMut};
use deadpool_postgres::GenericClient;
use futures_util::SinkExt;
use uuid::Uuid;

use super::DbError;

/// Bytes per CopyData message: what the connection buffers at a time.
const COPY_SLICE: usize = 64 * 1024;

/// Writes the blob with `COPY ... (FORMAT binary)` in slices of the one
/// buffer. A bytea parameter would be copied whole into the Bind message and
/// again into the connection's write buffer, which keeps that capacity.
pub(crate) async fn write(
    tx: &deadpool_postgres::Transaction<'_>,
    id: Uuid,
    content: Bytes,
) -> Result<(), DbError> {
    let len = i32::try_from(content.len())
        .map_err(|_| DbError::Input("a blob cannot exceed 2 GiB".into()))?;
    // Signature, flags, header extension; one tuple of two fields.
    let mut head = BytesMut::with_capacity(48);
    head.put_slice(b"PGCOPY\n\xff\r\n\0");
    head.put_i32(0);
    head.put_i32(0);
    head.put_i16(2);
    head.put_i32(16);
    head.put_slice(id.as_bytes());
    head.put_i32(len);
    let sink = tx
        .copy_in::<_, Bytes>(
            "COPY document_blobs (document_id, content) FROM STDIN (FORMAT binary)",
        )
        .await?;
    futures_util::pin_mut!(sink);
    sink.send(head.freeze()).await?;
    let mut at = 0;
    while at < content.len() {
        let end = (at + COPY_SLICE).min(content.len());
        sink.send(content.slice(at..end)).await?;
        at = end;
    }
    // The trailer: a tuple of -1 fields.
    sink.send(Bytes::from_static(&[0xff, 0xff])).await?;
    sink.finish().await?;
    Ok(())
}

pub async fn read(client: &impl GenericClient, id: Uuid) -> Result<Option<Vec<u8>>, DbError> {
    let row = client
        .query_opt(
            "SELECT content FROM document_blobs WHERE document_id = $1",
            &[&id],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}
