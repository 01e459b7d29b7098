//! The run's timeline as an SVG, drawn with plotters' SVG backend: tail latency
//! (p50 dashed, p99 solid, per probe) above availability (percent, per probe), on
//! the run's seconds. Each fault step's active window is shaded and labelled with
//! its step name (the planned window, labelled so, where the journal has no
//! inject or revert time), and phase boundaries are vertical lines.
//!
//! No fonts are loaded: without plotters' `ttf` feature text is laid out by an
//! estimate and emitted as `<text>` elements the browser renders.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{ReportError, fault_window};
use crate::journal::Journal;

const WIDTH: u32 = 1100;
const LATENCY_H: u32 = 360;
const AVAIL_H: u32 = 280;

/// Probe line colours: distinct, dark enough on white.
const LINES: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];

/// Fault window shades (drawn at [`SHADE_ALPHA`]).
const SHADES: [RGBColor; 5] = [
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(188, 189, 34),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// The opacity of a fault window's shade.
const SHADE_ALPHA: f64 = 0.18;

/// Phase boundaries and their labels.
const PHASE_LINE: RGBColor = RGBColor(90, 90, 90);

/// The timeline's colours as CSS, for the live dashboard (`service/ui.rs`), so the
/// live view and the report read the same.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Palette {
    pub lines: Vec<String>,
    pub shades: Vec<String>,
    pub shade_alpha: f64,
    pub phase: String,
}

pub(crate) fn palette() -> Palette {
    let hex = |c: &RGBColor| format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2);
    Palette {
        lines: LINES.iter().map(hex).collect(),
        shades: SHADES.iter().map(hex).collect(),
        shade_alpha: SHADE_ALPHA,
        phase: hex(&PHASE_LINE),
    }
}

/// One fault step's window: the union of its faults' windows on every agent.
struct Window {
    label: String,
    start: f64,
    end: f64,
}

struct Line {
    label: String,
    color: RGBColor,
    dashed: bool,
    /// Contiguous runs of points; a bucket without a figure breaks the line.
    segments: Vec<Vec<(f64, f64)>>,
}

struct Panel<'a> {
    caption: String,
    y_desc: &'a str,
    y: std::ops::Range<f64>,
    lines: Vec<Line>,
}

fn chart_err<E: std::fmt::Display>(e: E) -> ReportError {
    ReportError::Chart(e.to_string())
}

/// Draws the timeline of `j` as a standalone SVG document.
pub fn timeline_svg(j: &Journal) -> Result<String, ReportError> {
    let windows = windows(j);
    let phases: Vec<(String, f64)> = j
        .phases
        .iter()
        .map(|p| (p.phase.as_str().to_owned(), p.start_s))
        .collect();

    let mut x_min: f64 = 0.0;
    let mut x_max: f64 = 1.0;
    for p in &j.phases {
        x_min = x_min.min(p.start_s);
        x_max = x_max.max(p.end_s.unwrap_or(p.start_s));
    }
    for t in j.probes.values() {
        if let Some(last) = t.points.last() {
            x_max = x_max.max(last.t_s + t.bucket_s);
        }
    }
    for w in &windows {
        x_min = x_min.min(w.start);
        x_max = x_max.max(w.end);
    }
    let x = x_min..x_max;

    let mut latency = Vec::new();
    let mut availability = Vec::new();
    let mut p99_max: f64 = 0.0;
    let mut avail_min: f64 = 100.0;
    for (i, (name, t)) in j.probes.iter().enumerate() {
        let color = LINES[i % LINES.len()];
        let mid = |t_s: f64| t_s + t.bucket_s / 2.0;
        let series = |f: &dyn Fn(&crate::journal::ProbePoint) -> Option<f64>| {
            let mut segments: Vec<Vec<(f64, f64)>> = Vec::new();
            let mut current = Vec::new();
            for p in &t.points {
                match f(p).filter(|v| v.is_finite()) {
                    Some(v) => current.push((mid(p.t_s), v)),
                    None if !current.is_empty() => segments.push(std::mem::take(&mut current)),
                    None => {}
                }
            }
            if !current.is_empty() {
                segments.push(current);
            }
            segments
        };
        let p99 = series(&|p| p.p99_ms);
        let p50 = series(&|p| p.p50_ms);
        let avail = series(&|p| p.availability);
        for (_, v) in p99.iter().chain(&p50).flatten() {
            p99_max = p99_max.max(*v);
        }
        for (_, v) in avail.iter().flatten() {
            avail_min = avail_min.min(*v);
        }
        if !p99.is_empty() {
            latency.push(Line {
                label: format!("{name} p99"),
                color,
                dashed: false,
                segments: p99,
            });
        }
        if !p50.is_empty() {
            latency.push(Line {
                label: format!("{name} p50"),
                color,
                dashed: true,
                segments: p50,
            });
        }
        if !avail.is_empty() {
            availability.push(Line {
                label: name.clone(),
                color,
                dashed: false,
                segments: avail,
            });
        }
    }
    let avail_floor = ((avail_min.min(95.0) / 5.0).floor() * 5.0).max(0.0);

    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (WIDTH, LATENCY_H + AVAIL_H)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        let (top, bottom) = root.split_vertically(LATENCY_H);
        panel(
            &top,
            Panel {
                caption: format!("{} run {}: latency", j.experiment, j.run_id),
                y_desc: "ms",
                y: 0.0..(p99_max * 1.15).max(10.0),
                lines: latency,
            },
            x.clone(),
            &windows,
            &phases,
        )?;
        panel(
            &bottom,
            Panel {
                caption: "availability".to_owned(),
                y_desc: "%",
                y: avail_floor..100.5,
                lines: availability,
            },
            x,
            &windows,
            &phases,
        )?;
        root.present().map_err(chart_err)?;
    }
    Ok(svg)
}

fn windows(j: &Journal) -> Vec<Window> {
    // (step, start, end, planned, agents)
    let mut steps: Vec<(String, f64, f64, bool, usize)> = Vec::new();
    for f in &j.faults {
        let (start, end, planned) = fault_window(f);
        match steps.iter_mut().find(|s| s.0 == f.step) {
            Some(s) => {
                s.1 = s.1.min(start);
                s.2 = s.2.max(end);
                s.3 &= planned;
                s.4 += 1;
            }
            None => steps.push((f.step.clone(), start, end, planned, 1)),
        }
    }
    steps
        .into_iter()
        .map(|(step, start, end, planned, agents)| {
            let mut label = step;
            if agents > 1 {
                label.push_str(&format!(" ({agents} agents)"));
            }
            if planned {
                label.push_str(" (planned)");
            }
            Window { label, start, end }
        })
        .collect()
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    p: Panel<'_>,
    x: std::ops::Range<f64>,
    windows: &[Window],
    phases: &[(String, f64)],
) -> Result<(), ReportError> {
    let y = p.y.clone();
    let span = y.end - y.start;
    let mut chart = ChartBuilder::on(area)
        .caption(p.caption, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(x.clone(), y.clone())
        .map_err(chart_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds from the run's start")
        .y_desc(p.y_desc)
        .light_line_style(WHITE.mix(0.0))
        .label_style(("sans-serif", 11))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(chart_err)?;

    for (i, w) in windows.iter().enumerate() {
        let shade = SHADES[i % SHADES.len()];
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(w.start, y.start), (w.end, y.end)],
                shade.mix(SHADE_ALPHA).filled(),
            )))
            .map_err(chart_err)?;
        // Labels stagger down from the top so overlapping windows stay legible.
        let row = (i % 3) as f64;
        chart
            .draw_series(std::iter::once(Text::new(
                w.label.clone(),
                (w.start, y.end - span * (0.04 + 0.07 * row)),
                ("sans-serif", 12).into_font().color(&shade.mix(1.0)),
            )))
            .map_err(chart_err)?;
    }

    for (name, at) in phases {
        if *at <= x.start {
            continue;
        }
        let grey = PHASE_LINE;
        chart
            .draw_series(DashedLineSeries::new(
                [(*at, y.start), (*at, y.end)],
                4,
                4,
                grey.stroke_width(1),
            ))
            .map_err(chart_err)?;
        // A label near the right edge ends at its line instead of running off.
        let near_end = x.end - at < (x.end - x.start) * 0.08;
        let pos = if near_end {
            Pos::new(HPos::Right, VPos::Bottom)
        } else {
            Pos::new(HPos::Left, VPos::Bottom)
        };
        chart
            .draw_series(std::iter::once(Text::new(
                name.clone(),
                (*at, y.start + span * 0.03),
                ("sans-serif", 11).into_font().color(&grey).pos(pos),
            )))
            .map_err(chart_err)?;
    }

    let has_lines = !p.lines.is_empty();
    for line in p.lines {
        let color = line.color;
        for (k, seg) in line.segments.into_iter().enumerate() {
            let drawn = if line.dashed {
                chart.draw_series(DashedLineSeries::new(seg, 5, 3, color.stroke_width(1)))
            } else {
                chart.draw_series(LineSeries::new(seg, color.stroke_width(2)))
            }
            .map_err(chart_err)?;
            if k == 0 {
                let dashed = line.dashed;
                drawn.label(line.label.clone()).legend(move |(lx, ly)| {
                    PathElement::new(
                        vec![(lx, ly), (lx + 18, ly)],
                        color.stroke_width(if dashed { 1 } else { 2 }),
                    )
                });
            }
        }
    }
    if has_lines {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .label_font(("sans-serif", 11))
            .draw()
            .map_err(chart_err)?;
    } else {
        chart
            .draw_series(std::iter::once(Text::new(
                "no data".to_owned(),
                (x.start + (x.end - x.start) * 0.45, y.start + span * 0.5),
                ("sans-serif", 14).into_font(),
            )))
            .map_err(chart_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;

    #[test]
    fn report_timeline_draws_windows_phases_and_lines() {
        let svg = timeline_svg(&fixtures::failed_run()).expect("svg");
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("lose-gpus (2 agents)"));
        assert!(
            svg.contains(">stall-db<") || svg.contains("stall-db\n"),
            "step label"
        );
        assert!(svg.contains("recovery"));
        assert!(svg.contains("api p99"));
        assert!(svg.contains("<polyline"), "probe lines");
        assert!(svg.contains("opacity=\"0.18\""), "shaded windows");
    }

    #[test]
    fn report_timeline_marks_planned_windows_and_survives_no_data() {
        let mut j = fixtures::unconfirmed_run();
        j.probes.clear();
        let svg = timeline_svg(&j).expect("svg");
        // stall-db was never confirmed reverted: its end is the planned one.
        assert!(svg.contains("stall-db (planned)"));
        assert!(svg.contains("no data"));
    }
}
