//! What the API holds back against hostile load: the in-flight upload byte
//! budget (for the whole process and per user) and the canceller of queries
//! whose request was abandoned.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::StatusCode;
use uuid::Uuid;

use super::error::ApiError;
use crate::db::Canceller;

/// Seconds a refused upload is told to wait.
const RETRY_AFTER_SECS: u64 = 2;

pub struct Limits {
    pub uploads: UploadBudget,
    pub canceller: Canceller,
}

/// Upload bytes held in memory, bounded for the process and for each user.
/// Reservations never wait: an upload that finds no room is refused at once,
/// so a flood cannot queue up memory or connections.
pub struct UploadBudget {
    total: usize,
    per_user: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    /// Only users with bytes in flight: at most one entry per upload.
    users: HashMap<Uuid, usize>,
}

impl UploadBudget {
    pub fn new(total: usize, per_user: usize) -> UploadBudget {
        UploadBudget {
            total,
            per_user: per_user.min(total),
            held: Mutex::default(),
        }
    }

    /// An empty reservation for one upload of `user`.
    pub fn reserve(&self, user: Uuid) -> Reservation<'_> {
        Reservation {
            budget: self,
            user,
            bytes: 0,
        }
    }

    /// Bytes held now, all users together.
    pub fn in_flight(&self) -> usize {
        self.held.lock().expect("budget lock").total
    }

    fn take(&self, user: Uuid, extra: usize) -> Result<(), ApiError> {
        let mut held = self.held.lock().expect("budget lock");
        let mine = held.users.get(&user).copied().unwrap_or(0);
        if mine + extra > self.per_user {
            drop(held);
            metrics::counter!("ragctl_uploads_refused_total", "reason" => "user_share")
                .increment(1);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_uploads",
                format!(
                    "your uploads in progress would exceed your {}-byte share of the upload \
                     budget (RAG_UPLOAD_USER_BUDGET_BYTES); wait for one to finish",
                    self.per_user
                ),
            )
            .retry_after(RETRY_AFTER_SECS));
        }
        if held.total + extra > self.total {
            drop(held);
            metrics::counter!("ragctl_uploads_refused_total", "reason" => "busy").increment(1);
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_busy",
                format!(
                    "the server is receiving as many uploads as its {}-byte budget allows \
                     (RAG_UPLOAD_BUDGET_BYTES); try again shortly",
                    self.total
                ),
            )
            .retry_after(RETRY_AFTER_SECS));
        }
        held.total += extra;
        *held.users.entry(user).or_insert(0) += extra;
        metrics::gauge!("ragctl_upload_bytes_in_flight").set(held.total as f64);
        Ok(())
    }

    fn give_back(&self, user: Uuid, bytes: usize) {
        let mut held = self.held.lock().expect("budget lock");
        held.total -= bytes;
        if let Some(mine) = held.users.get_mut(&user) {
            *mine -= bytes;
            if *mine == 0 {
                held.users.remove(&user);
            }
        }
        metrics::gauge!("ragctl_upload_bytes_in_flight").set(held.total as f64);
    }
}

/// Bytes of the budget held by one upload; given back on drop.
pub struct Reservation<'a> {
    budget: &'a UploadBudget,
    user: Uuid,
    bytes: usize,
}

impl Reservation<'_> {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Grows the reservation to `bytes` (never shrinks it), without waiting.
    pub fn grow_to(&mut self, bytes: usize) -> Result<(), ApiError> {
        if bytes > self.bytes {
            self.budget.take(self.user, bytes - self.bytes)?;
            self.bytes = bytes;
        }
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give_back(self.user, self.bytes);
        }
    }
}

/// Makes glibc serve every allocation of 1 MiB or more (upload buffers)
/// with its own mmap, returned to the kernel when freed. By default glibc
/// raises that threshold to the size of the last freed block, so later
/// 25 MiB buffers come from its heaps and stay resident after the upload
/// (measured: 101–129 MB still resident after a flood, 22–24 MB with this).
pub fn return_big_buffers_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called at start-up.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_total_are_bounded_and_given_back() {
        let budget = UploadBudget::new(100, 60);
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut ra = budget.reserve(a);
        ra.grow_to(50).unwrap();
        let mut ra2 = budget.reserve(a);
        let e = ra2.grow_to(20).unwrap_err();
        assert_eq!((e.status.as_u16(), e.retry_after), (429, Some(2)));
        let mut rb = budget.reserve(b);
        rb.grow_to(40).unwrap();
        let e = budget.reserve(c).grow_to(20).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (503, "server_busy"));
        assert_eq!(budget.in_flight(), 90);
        drop((ra, ra2, rb));
        assert_eq!(budget.in_flight(), 0);
        assert!(budget.held.lock().unwrap().users.is_empty());
        budget.reserve(c).grow_to(60).unwrap();
    }
}
