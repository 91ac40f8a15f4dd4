//! A bounded in-process cache of users' vectors, per (user, model id):
//! scoring 10,000 chunks in memory takes milliseconds, reading their 15 MB
//! from PostgreSQL on every question does not (docs/benchmarks.md). An
//! entry is used while the user's `vector_versions` row (bumped by every
//! write or removal, one indexed read) still has the version it was
//! loaded at. Least recently used entries go first once over the byte
//! cap; `ragctl_vector_cache_evictions_total` counts them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::db::{DbError, vectors};

/// One user's vectors for one model, laid end to end.
pub struct Vectors {
    pub version: i64,
    pub dims: usize,
    pub ids: Vec<Uuid>,
    pub flat: Vec<f32>,
    last_used: AtomicU64,
}

impl Vectors {
    fn bytes(&self) -> usize {
        self.flat.len() * 4 + self.ids.len() * 16 + 64
    }

    /// The `n` best (index, cosine) by dot product, best first.
    pub fn top(&self, q: &[f32], n: usize) -> Vec<(usize, f32)> {
        let mut scored: Vec<(usize, f32)> = self
            .flat
            .chunks_exact(self.dims)
            .map(|v| v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>())
            .enumerate()
            .collect();
        let n = n.min(scored.len());
        if n == 0 {
            return vec![];
        }
        let by_score = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1);
        scored.select_nth_unstable_by(n - 1, by_score);
        scored.truncate(n);
        scored.sort_by(by_score);
        scored
    }
}

type Key = (Uuid, String);

/// Shared by the API's requests; `cap_bytes` 0 caches nothing (every
/// question reads the vectors from PostgreSQL).
pub struct VectorCache {
    cap_bytes: usize,
    inner: Mutex<Inner>,
    clock: AtomicU64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Arc<Vectors>>,
    bytes: usize,
}

impl VectorCache {
    pub fn new(cap_bytes: usize) -> VectorCache {
        VectorCache {
            cap_bytes,
            inner: Mutex::default(),
            clock: AtomicU64::new(0),
        }
    }

    /// The user's current vectors for `model`, from the cache when its
    /// version is current. The version is read before the vectors, so a
    /// write in between only makes the next question reload.
    pub async fn get(
        &self,
        client: &impl GenericClient,
        user_id: Uuid,
        model: &str,
        dims: usize,
    ) -> Result<Arc<Vectors>, DbError> {
        let version = vectors::version(client, user_id, model).await?;
        let key = (user_id, model.to_string());
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        if let Some(hit) = self.lookup(&key, version, dims) {
            hit.last_used.store(now, Ordering::Relaxed);
            metrics::counter!("ragctl_vector_cache_total", "result" => "hit").increment(1);
            return Ok(hit);
        }
        metrics::counter!("ragctl_vector_cache_total", "result" => "miss").increment(1);
        let (ids, flat) = vectors::load(client, user_id, model, dims).await?;
        let loaded = Arc::new(Vectors {
            version,
            dims,
            ids,
            flat,
            last_used: AtomicU64::new(now),
        });
        self.insert(key, loaded.clone());
        Ok(loaded)
    }

    fn lookup(&self, key: &Key, version: i64, dims: usize) -> Option<Arc<Vectors>> {
        let inner = self.inner.lock().expect("vector cache lock");
        inner
            .entries
            .get(key)
            .filter(|e| e.version == version && e.dims == dims)
            .cloned()
    }

    /// Stores `v`, evicting the least recently used entries to stay under
    /// the cap; an entry larger than the cap is not stored.
    fn insert(&self, key: Key, v: Arc<Vectors>) {
        let size = v.bytes();
        if size > self.cap_bytes {
            return;
        }
        let mut inner = self.inner.lock().expect("vector cache lock");
        if let Some(old) = inner.entries.remove(&key) {
            inner.bytes -= old.bytes();
        }
        while inner.bytes + size > self.cap_bytes {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(gone) = inner.entries.remove(&oldest) {
                inner.bytes -= gone.bytes();
                metrics::counter!("ragctl_vector_cache_evictions_total").increment(1);
            }
        }
        inner.bytes += size;
        inner.entries.insert(key, v);
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().expect("vector cache lock").bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors(n: usize, used: u64) -> Arc<Vectors> {
        Arc::new(Vectors {
            version: 1,
            dims: 2,
            ids: (0..n).map(|_| Uuid::new_v4()).collect(),
            flat: (0..n).flat_map(|i| [i as f32, 1.0]).collect(),
            last_used: AtomicU64::new(used),
        })
    }

    #[test]
    fn top_is_best_first() {
        let v = vectors(5, 0);
        let top = v.top(&[1.0, 0.0], 2);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![4, 3]);
        assert_eq!(v.top(&[1.0, 0.0], 10).len(), 5);
    }

    #[test]
    fn the_least_recently_used_entry_goes_first_and_the_cap_holds() {
        let one = vectors(10, 0).bytes();
        let cache = VectorCache::new(2 * one);
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        cache.insert((a, "m".into()), vectors(10, 5));
        cache.insert((b, "m".into()), vectors(10, 1));
        cache.insert((c, "m".into()), vectors(10, 9));
        assert!(cache.bytes() <= 2 * one);
        assert!(
            cache.lookup(&(b, "m".into()), 1, 2).is_none(),
            "b was the oldest"
        );
        assert!(cache.lookup(&(a, "m".into()), 1, 2).is_some());
        assert!(
            cache.lookup(&(a, "m".into()), 2, 2).is_none(),
            "another version"
        );
        let none = VectorCache::new(0);
        none.insert((a, "m".into()), vectors(1, 0));
        assert_eq!(none.bytes(), 0);
    }
}
