//! The chart: one horizontal bar per table row, the median cost of a check on a log scale,
//! grouped by credential, algorithm and mode and coloured by store, so the orders of magnitude
//! between a cached check and a store round trip show at a glance.

use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use tessera_core::keys::Algorithm;

use super::measure::CostRow;
use super::{BenchResult, MODES};

const WIDTH: u32 = 1100;
const ROW_HEIGHT: u32 = 22;
/// Title, axis and legend around the bars.
const FRAME_HEIGHT: u32 = 140;

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

pub fn draw(rows: &[CostRow], path: &Path) -> BenchResult {
    let mut sorted: Vec<&CostRow> = rows.iter().collect();
    // Grouped by what is checked, each group listing the stores in measuring order.
    sorted.sort_by_key(|r| {
        let alg = r
            .alg
            .and_then(|a| Algorithm::ALL.iter().position(|x| *x == a));
        let mode = MODES.iter().position(|m| *m == r.mode);
        (r.credential != "cookie", r.credential, alg, mode)
    });
    let stores: Vec<&str> = rows.iter().fold(Vec::new(), |mut seen, r| {
        if !seen.contains(&r.store.as_str()) {
            seen.push(r.store.as_str());
        }
        seen
    });
    let height =
        FRAME_HEIGHT + ROW_HEIGHT * u32::try_from(sorted.len()).unwrap_or(u32::MAX / ROW_HEIGHT);
    let fail = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", path.display());
    let labels: Vec<String> = sorted.iter().map(|r| r.label()).collect();
    let micros: Vec<f64> = sorted
        .iter()
        .map(|r| (r.cost.median.as_secs_f64() * 1e6).max(0.01))
        .collect();
    let high = micros.iter().copied().fold(1.0, f64::max) * 2.0;
    let low = micros.iter().copied().fold(high, f64::min) / 2.0;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "tessera bench: median cost of one check (µs, log scale)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(300)
        .build_cartesian_2d((low..high).log_scale(), (0..sorted.len()).into_segmented())
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .y_labels(sorted.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("µs per check")
        .disable_y_mesh()
        .draw()
        .map_err(|e| fail(&e))?;
    for (s, store) in stores.iter().enumerate() {
        let colour = PALETTE.get(s % PALETTE.len()).copied().unwrap_or(BLACK);
        let bars = sorted
            .iter()
            .zip(&micros)
            .enumerate()
            .filter(|(_, (row, _))| row.store == *store)
            .map(move |(i, (_, &us))| {
                let mut bar = Rectangle::new(
                    [
                        (low, SegmentValue::Exact(i)),
                        (us, SegmentValue::Exact(i + 1)),
                    ],
                    colour.filled(),
                );
                bar.set_margin(3, 3, 0, 0);
                bar
            });
        chart
            .draw_series(bars)
            .map_err(|e| fail(&e))?
            .label(*store)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}
