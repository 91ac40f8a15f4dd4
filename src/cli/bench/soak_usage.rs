//! What each API instance holds over the load: a reading a minute (RSS and
//! its anonymous and file-backed parts, descriptors, and the allocator's
//! view from its `/metrics`: heap in use, free heap held), and the two
//! judged samples, after a warm-up from the instance's last start and at
//! the end of the load, if that span is long enough to mean something.
//! RSS that grows while heap in use does not is the allocator keeping
//! pages, or (in `RssFile`) code read in for the first time, not a leak.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::sample::metrics_request;
use super::soak_procs::{Instances, Live, usage, usage_median};

/// Readings of RSS and descriptors whose median is one judged sample.
const READINGS: usize = 5;
/// The least span between the warm-up sample and the end worth judging.
pub(super) const MIN_SPAN: Duration = Duration::from_secs(60);
/// One trail reading this often.
const TRAIL_EVERY: Duration = Duration::from_secs(60);

/// The warm-up after an instance's start: 10% of the run, at least 60 s.
pub(super) fn warm_up(length: Duration) -> Duration {
    length.mul_f64(0.1).max(Duration::from_secs(60))
}

/// One reading of an instance.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Sample {
    /// Seconds into the load.
    pub at_s: u64,
    /// Which start of the instance (1: the first).
    pub start: u32,
    /// `VmRSS` (judged), and its two parts: `RssAnon` (heap and stacks)
    /// and `RssFile` (the executable's pages read in so far).
    pub rss_kib: u64,
    pub anon_kib: u64,
    pub file_kib: u64,
    pub fds: u64,
    /// `ragctl_heap_in_use_bytes` and `ragctl_heap_free_held_bytes`, as of
    /// the server's last trim (once a minute); none if unread.
    pub heap_in_use_bytes: Option<u64>,
    pub heap_free_held_bytes: Option<u64>,
}

/// One instance over the load.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct InstanceUsage {
    pub process: String,
    /// The judged samples: after the warm-up of its last start, at the end.
    pub warm: Option<Sample>,
    pub end: Option<Sample>,
    /// Why the growth was not judged (the span was too short).
    pub not_measured: Option<String>,
    /// One reading a minute from each start, and one at each start.
    pub trail: Vec<Sample>,
}

/// The load's start and length.
#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    pub(super) start: Instant,
    pub(super) length: Duration,
}

impl Span {
    /// When `live`'s warm-up sample is due, or why it is not judged.
    pub(super) fn warm_at(&self, since: Instant) -> Result<Instant, String> {
        let from = since.max(self.start);
        let (warm, end) = (from + warm_up(self.length), self.start + self.length);
        if warm + MIN_SPAN <= end {
            return Ok(warm);
        }
        Err(format!(
            "not measured (too short): its start {} s into the {} s load leaves {} s, \
             less than a warm-up of {} s and {} s judged",
            (from - self.start).as_secs(),
            self.length.as_secs(),
            end.saturating_duration_since(from).as_secs(),
            warm_up(self.length).as_secs(),
            MIN_SPAN.as_secs()
        ))
    }
}

/// Watches instance `i` until `stop` (the end of the load), then takes
/// the end sample if a warm-up one was taken since its last start.
pub(super) async fn watch(
    i: usize,
    instances: Instances,
    span: Span,
    stop: CancellationToken,
) -> InstanceUsage {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let mut u = InstanceUsage {
        process: format!("api-{i}"),
        ..InstanceUsage::default()
    };
    let (mut starts, mut warm_due, mut next_trail) = (0, None, Instant::now());
    loop {
        let live = instances.read().expect("instances")[i].clone();
        if live.starts != starts {
            starts = live.starts;
            warm_due = begin(&mut u, &live, span);
            next_trail = Instant::now();
        }
        if Instant::now() >= next_trail {
            next_trail += TRAIL_EVERY;
            u.trail.extend(read(&http, &live, span, 1).await);
        }
        if warm_due.is_some_and(|at| Instant::now() >= at) {
            warm_due = None;
            u.warm = read(&http, &live, span, READINGS).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => break,
        }
    }
    let live = instances.read().expect("instances")[i].clone();
    if live.starts != starts {
        // Started again since the last look (a restart just before the end):
        // read at its start, as every start is.
        begin(&mut u, &live, span);
        u.trail.extend(read(&http, &live, span, 1).await);
    }
    if u.warm.is_some() {
        u.end = read(&http, &live, span, READINGS).await;
    }
    u
}

/// A new start: the judged span begins again from its warm-up; when that
/// is due, or nothing if the span left is too short (and why).
fn begin(u: &mut InstanceUsage, live: &Live, span: Span) -> Option<Instant> {
    u.warm = None;
    match span.warm_at(Instant::from_std(live.since)) {
        Ok(at) => {
            u.not_measured = None;
            Some(at)
        }
        Err(why) => {
            u.not_measured = Some(why);
            None
        }
    }
}

/// RSS and descriptors (the median of `n` readings a second apart), and
/// the heap gauges.
async fn read(http: &reqwest::Client, live: &Live, span: Span, n: usize) -> Option<Sample> {
    let u = match n {
        1 => usage(live.pid)?,
        n => usage_median(live.pid, n).await?,
    };
    let text = match metrics_request(http, &live.url).send().await {
        Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
        _ => String::new(),
    };
    Some(Sample {
        at_s: span.start.elapsed().as_secs(),
        start: live.starts,
        rss_kib: u.rss_kib,
        anon_kib: u.anon_kib,
        file_kib: u.file_kib,
        fds: u.fds,
        heap_in_use_bytes: gauge(&text, "ragctl_heap_in_use_bytes"),
        heap_free_held_bytes: gauge(&text, "ragctl_heap_free_held_bytes"),
    })
}

/// The value of an unlabelled gauge in a Prometheus text page.
fn gauge(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_too_late_for_a_warm_up_and_a_minute_is_not_measured() {
        let start = Instant::now();
        let span = Span {
            start,
            length: Duration::from_secs(600),
        };
        // From the load's start: 60 s warm-up, judged to 600 s.
        assert_eq!(span.warm_at(start), Ok(start + Duration::from_secs(60)));
        // Restarted at 480 s: 540 s + 60 s fits exactly.
        let late = start + Duration::from_secs(480);
        assert_eq!(span.warm_at(late), Ok(late + Duration::from_secs(60)));
        let too_late = start + Duration::from_secs(481);
        let why = span.warm_at(too_late).unwrap_err();
        assert!(why.starts_with("not measured (too short)"), "{why}");
        // A 20 s run has no room at all.
        let short = Span {
            start,
            length: Duration::from_secs(20),
        };
        assert!(short.warm_at(start).is_err());
        assert_eq!(warm_up(Duration::from_secs(3600)), Duration::from_secs(360));
    }

    #[test]
    fn gauges_are_read_by_their_whole_name() {
        let text = "# TYPE ragctl_heap_in_use_bytes gauge\n\
                    ragctl_heap_in_use_bytes_other 1\n\
                    ragctl_heap_in_use_bytes 12345678\n\
                    ragctl_heap_free_held_bytes 2.5e6\n";
        assert_eq!(gauge(text, "ragctl_heap_in_use_bytes"), Some(12_345_678));
        assert_eq!(gauge(text, "ragctl_heap_free_held_bytes"), Some(2_500_000));
        assert_eq!(gauge("", "ragctl_heap_in_use_bytes"), None);
    }
}
