//! JUnit XML of an apply (`apply --junit FILE`): one test case per job, so a CI system
//! shows failed jobs, conflicts and blocked keys where it shows failed tests.

use std::time::Duration;

use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};

use crate::diff::Action;
use crate::report::{Report, Status};

/// The JUnit XML of a report: one suite per (sync, target), one case per job. Jobs that
/// make `apply` exit 3 (failed, conflict, blocked) are failures; jobs not run are skipped.
pub(crate) fn render(report: &Report) -> Result<String, quick_junit::SerializeError> {
    let mut junit = quick_junit::Report::new("hsm-sync");
    let mut suites: Vec<TestSuite> = Vec::new();
    for job in &report.jobs {
        let suite_name = format!("{}: {} -> {}", job.sync, job.source, job.target);
        let at = match suites.iter().position(|s| s.name.as_str() == suite_name) {
            Some(i) => i,
            None => {
                suites.push(TestSuite::new(suite_name));
                suites.len() - 1
            }
        };
        let failure = |kind: &str, message: &str| {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_type(kind).set_message(message);
            s
        };
        let status = match (job.status, job.action) {
            (Status::Failed, _) => failure("failed", job.error.as_deref().unwrap_or("failed")),
            (_, Action::Conflict | Action::Blocked) => {
                let why = crate::domain::reason::describe(job.reason, job.detail.as_deref());
                failure(job.action.name(), if why.is_empty() { job.action.name() } else { &why })
            }
            (Status::Skipped | Status::Pending, _) => TestCaseStatus::skipped(),
            (Status::Ok, _) => TestCaseStatus::success(),
        };
        let name = format!(
            "{} {} id={} label={}",
            job.action.name(),
            crate::render::serde_plain(&job.key.class),
            job.key.id,
            job.key.label
        );
        let mut case = TestCase::new(name, status);
        case.set_classname(format!("hsm-sync.{}.{}", job.sync, job.target))
            .set_time(Duration::from_millis(job.duration_ms));
        suites[at].add_test_case(case);
    }
    junit.add_test_suites(suites);
    junit.to_string()
}
