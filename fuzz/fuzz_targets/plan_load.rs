//! Fuzzes plan loading and validation: any text must give a plan or located diagnostics,
//! never a panic or a hang, and every diagnostic must render (labels inside the text).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, JSONReportHandler};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let len = text.len();
    match hsm_sync::plan::validate::validate(Path::new("/nonexistent/fuzz.yaml"), "fuzz.yaml", text.to_string()) {
        Ok(loaded) => {
            if let Some(w) = loaded.warnings {
                render(&w, len);
            }
        }
        Err(hsm_sync::plan::PlanError::Invalid(inv)) => render(&*inv, len),
        Err(e) => panic!("validation returned a non-plan error: {e}"),
    }
});

fn render(inv: &hsm_sync::plan::InvalidPlan, len: usize) {
    assert!(!inv.issues.is_empty(), "an invalid plan must name a problem");
    for issue in &inv.issues {
        for label in issue.labels().into_iter().flatten() {
            let end = label.offset() + label.len();
            assert!(end <= len, "label outside the text: {issue:?}");
            assert!(
                inv.source.text().is_char_boundary(label.offset()),
                "label inside a character: {issue:?}"
            );
            assert!(
                inv.source.text().is_char_boundary(end),
                "label ends inside a character: {issue:?}"
            );
            let _ = inv.source.line_col(label.offset());
        }
    }
    let mut out = String::new();
    let _ = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(80)
        .render_report(&mut out, inv);
    out.clear();
    let _ = JSONReportHandler::new().render_report(&mut out, inv);
}
