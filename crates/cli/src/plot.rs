//! `type1 bench --plot FILE.svg`: ns per 4 KiB page of every phase and policy, one panel per
//! platform, with the flush floors as lines (drawn with `plotters`).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::model::{Floors, Row};

const COLORS: [RGBColor; 6] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0xc4, 0x4e, 0x52),
    RGBColor(0x81, 0x72, 0xb3),
    RGBColor(0x93, 0x78, 0x60),
];

/// Draws the bars of `rows` into an SVG at `path`.
pub fn bars(path: &Path, floors: &Floors, rows: &[Row]) -> Result<()> {
    let mut platforms: Vec<&str> = Vec::new();
    let mut policies: Vec<&str> = Vec::new();
    let phases = ["map", "unmap", "teardown"];
    for r in rows {
        if !platforms.contains(&r.platform.as_str()) {
            platforms.push(&r.platform);
        }
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
    }
    if platforms.is_empty() {
        return Err(anyhow!("nothing to plot"));
    }
    let root = SVGBackend::new(path, (420 * platforms.len() as u32, 380)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let panels = root.split_evenly((1, platforms.len()));
    for (panel, platform) in panels.iter().zip(&platforms) {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.platform == *platform).collect();
        let top = mine
            .iter()
            .map(|r| r.ns_per_page)
            .chain([floors.flush_ns_per_page_dirty])
            .fold(1.0, f64::max)
            * 1.15;
        let groups = phases.len() as f64;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{platform}: ns per 4 KiB page"), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..groups, 0.0..top)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(phases.len())
            .x_label_formatter(&|x| {
                phases
                    .get(x.floor() as usize)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            })
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        let w = 0.8 / policies.len() as f64;
        for (pi, policy) in policies.iter().enumerate() {
            let color = COLORS[pi % COLORS.len()];
            let bars = phases.iter().enumerate().filter_map(|(i, ph)| {
                let r = mine
                    .iter()
                    .find(|r| r.phase == *ph && r.policy == *policy)?;
                let x0 = i as f64 + 0.1 + pi as f64 * w;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + w * 0.9, r.ns_per_page)],
                    color.filled(),
                ))
            });
            chart
                .draw_series(bars)
                .map_err(|e| anyhow!("{e}"))?
                .label(policy.to_string())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        if floors.flush_ns_per_page_dirty > 0.0 {
            let f = floors.flush_ns_per_page_dirty;
            chart
                .draw_series(LineSeries::new(
                    [(0.0, f), (groups, f)],
                    BLACK.stroke_width(1),
                ))
                .map_err(|e| anyhow!("{e}"))?
                .label("flush floor (dirty)")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 10, y)], BLACK));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
