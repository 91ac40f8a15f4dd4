//! What the API holds back against hostile load: the in-flight upload byte
//! budget (for the whole process and per user, with a reserve that keeps a
//! floor for users holding little), the per-user shares (`shares`) and the
//! canceller of queries whose request was abandoned.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::StatusCode;
use uuid::Uuid;

use super::error::ApiError;
use super::shares::{PerUser, RETRY_AFTER_SECS, SearchGate};
use crate::db::Canceller;

pub struct Limits {
    pub uploads: UploadBudget,
    pub canceller: Canceller,
    /// Chat searches: per user, and the search pool.
    pub searches: SearchGate,
    /// WebSockets per user (`--ws-max-per-user`).
    pub ws_per_user: PerUser,
}

/// Upload bytes held in memory, bounded for the process and for each user.
/// Reservations never wait: an upload that finds no room is refused at once,
/// so a flood cannot queue up memory or connections.
///
/// Fairness: each user's first `floor` bytes are *floor bytes*; the bytes
/// above their floor, all users together, may take at most
/// `total - reserve`. So the floor bytes always have `reserve` to
/// themselves: while fewer than `reserve / floor` other users hold bytes,
/// a user holding nothing can always reserve `floor` bytes, however much
/// the others hold or declare.
pub struct UploadBudget {
    total: usize,
    per_user: usize,
    floor: usize,
    reserve: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    /// Bytes above their holder's floor, all users together.
    above_floor: usize,
    /// Only users with bytes in flight: at most one entry per upload.
    users: HashMap<Uuid, usize>,
}

/// The part of the budget kept for floor bytes: a quarter.
pub const RESERVE_DIVISOR: usize = 4;

impl UploadBudget {
    /// `floor` is capped by the reserve (a quarter of `total`; none when
    /// `floor` is 0) and the user's share.
    pub fn new(total: usize, per_user: usize, floor: usize) -> UploadBudget {
        let per_user = per_user.min(total);
        // No floor, no reserve: the budget is all common.
        let reserve = if floor == 0 {
            0
        } else {
            total / RESERVE_DIVISOR
        };
        UploadBudget {
            total,
            per_user,
            floor: floor.min(reserve).min(per_user),
            reserve,
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

    fn above(&self, bytes: usize) -> usize {
        bytes.saturating_sub(self.floor)
    }

    fn take(&self, user: Uuid, extra: usize) -> Result<(), ApiError> {
        let mut held = self.held.lock().expect("budget lock");
        let mine = held.users.get(&user).copied().unwrap_or(0);
        let after = mine + extra;
        if after > self.per_user {
            drop(held);
            return Err(self.refuse_share());
        }
        let above_floor = held.above_floor - self.above(mine) + self.above(after);
        if held.total + extra > self.total || above_floor > self.total - self.reserve {
            drop(held);
            return Err(self.refuse_busy());
        }
        held.total += extra;
        held.above_floor = above_floor;
        held.users.insert(user, after);
        metrics::gauge!("ragctl_upload_bytes_in_flight").set(held.total as f64);
        Ok(())
    }

    fn refuse_share(&self) -> ApiError {
        metrics::counter!("ragctl_uploads_refused_total", "reason" => "user_share").increment(1);
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_uploads",
            format!(
                "your uploads in progress would exceed your {}-byte share of the upload \
                 budget (RAG_UPLOAD_USER_BUDGET_BYTES); wait for one to finish",
                self.per_user
            ),
        )
        .retry_after(RETRY_AFTER_SECS)
    }

    fn refuse_busy(&self) -> ApiError {
        metrics::counter!("ragctl_uploads_refused_total", "reason" => "busy").increment(1);
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_busy",
            format!(
                "the server is receiving as many uploads as its {}-byte budget allows \
                 (RAG_UPLOAD_BUDGET_BYTES); try again shortly",
                self.total
            ),
        )
        .retry_after(RETRY_AFTER_SECS)
    }

    fn give_back(&self, user: Uuid, bytes: usize) {
        let mut held = self.held.lock().expect("budget lock");
        held.total -= bytes;
        if let Some(mine) = held.users.get(&user).copied() {
            let after = mine - bytes;
            held.above_floor = held.above_floor - self.above(mine) + self.above(after);
            if after == 0 {
                held.users.remove(&user);
            } else {
                held.users.insert(user, after);
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
        let budget = UploadBudget::new(100, 60, 0);
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

    #[test]
    fn hogs_cannot_take_the_floor_of_a_newcomer() {
        // Reserve 25: five floors of 5; at most 75 above the floors.
        let budget = UploadBudget::new(100, 60, 5);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut ra = budget.reserve(a);
        ra.grow_to(60).unwrap();
        let mut rb = budget.reserve(b);
        let e = rb.grow_to(30).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (503, "server_busy"));
        rb.grow_to(25).unwrap(); // 5 of floor and the last 20 above floors
        assert_eq!(budget.in_flight(), 85);
        // Two users hold bytes: three newcomers (2 + 3 < 25 / 5) get their floor.
        let newcomers: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        let mut held: Vec<_> = newcomers[..3].iter().map(|u| budget.reserve(*u)).collect();
        for r in &mut held {
            r.grow_to(5).unwrap();
            assert_eq!(r.grow_to(6).unwrap_err().code, "server_busy");
        }
        // Five hold bytes now: the guarantee is spent, and said so.
        let e = budget.reserve(newcomers[3]).grow_to(1).unwrap_err();
        assert_eq!(e.code, "server_busy");
        // Whatever is given back is counted back, above the floor too.
        drop(ra);
        budget.reserve(newcomers[3]).grow_to(60).unwrap();
        drop((rb, held));
        assert_eq!(budget.in_flight(), 0);
        let h = budget.held.lock().unwrap();
        assert_eq!((h.above_floor, h.users.len()), (0, 0));
    }

    /// The guarantee, checked after every step of a long random mix of
    /// grows and drops by a few users: whenever fewer than reserve / floor
    /// users hold bytes, a user holding nothing can reserve the floor.
    #[test]
    fn a_user_holding_nothing_always_gets_the_floor_while_few_users_hold_bytes() {
        let (total, share, floor) = (1000, 600, 40);
        let budget = UploadBudget::new(total, share, floor);
        let room = (total / RESERVE_DIVISOR) / floor; // 6 users
        let users: Vec<Uuid> = (0..room).map(|_| Uuid::new_v4()).collect();
        let mut held: Vec<Reservation<'_>> = Vec::new();
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n) as usize
        };
        let (mut granted, mut checked) = (0, 0);
        for _ in 0..20_000 {
            let user = users[next(users.len() as u64 - 1)];
            let mut r = budget.reserve(user);
            if r.grow_to(1 + next(400)).is_ok() {
                granted += 1;
                held.push(r);
            } else if !held.is_empty() {
                // Refused: something finishes, as uploads do.
                let i = next(held.len() as u64);
                held.swap_remove(i);
            }
            let holders = budget.held.lock().unwrap().users.len();
            if holders < room {
                checked += 1;
                let newcomer = users[room - 1]; // never picked above
                budget.reserve(newcomer).grow_to(floor).expect("the floor");
            }
            assert!(budget.in_flight() <= total);
        }
        assert!(granted > 5000 && checked > 5000, "{granted} {checked}");
    }
}
