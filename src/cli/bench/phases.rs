//! The report of the default run: the latency phases' [`Report`] and the
//! optional `--resume` and `--capacity` phases. Those use the report's
//! types (targets, phase results), so they sit above it, and only this
//! module knows all three.

use serde::Serialize;

use super::capacity::{self, CapacityReport};
use super::capacity_bus_report::{self, BusCapacity};
use super::render;
use super::report::Report;
use super::resume::{self, ResumeReport};

#[derive(Debug, Clone, Serialize)]
pub struct PhasesReport {
    #[serde(flatten)]
    pub base: Report,
    /// The `--resume` phase; absent unless selected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume: Option<ResumeReport>,
    /// The `--capacity` phase; absent unless selected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacityReport>,
    /// `--capacity --bus nats`: both buses, the relay, the failover.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_bus: Option<BusCapacity>,
}

/// The optional phases' targets, which join the base report's.
pub(super) fn targets(
    resume: Option<&ResumeReport>,
    bus: Option<&BusCapacity>,
) -> Vec<super::report::TargetCheck> {
    let mut t = resume.map(resume::targets).unwrap_or_default();
    t.extend(bus.iter().flat_map(|b| b.targets.iter().cloned()));
    t
}

pub(super) fn render(r: &PhasesReport) -> String {
    let mut s = render::phases(&r.base);
    if let Some(rr) = &r.resume {
        resume::render(&mut s, rr);
    }
    if let Some(c) = &r.capacity {
        s.push_str(&capacity::render(c));
    }
    if let Some(c) = &r.capacity_bus {
        s.push_str(&capacity_bus_report::render(c));
    }
    render::targets(&mut s, &r.base);
    s
}
