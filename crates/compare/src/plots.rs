//! SVG plots of the report (plotters): IOPS bars per workload with min/max
//! whiskers, latency CDFs side by side, instructions per I/O.

use std::path::Path;

use plotters::prelude::*;

use crate::icount::Icount;
use crate::perf_run::{Matrix, PointResult};
use crate::stats::min_med_max;

type PlotResult = Result<(), Box<dyn std::error::Error>>;

const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

/// Writes every plot into `dir`; returns the file names written and the
/// errors of those that failed.
pub fn write_all(
    dir: &Path,
    stem: &str,
    targets: &[String],
    m: Option<&Matrix>,
    perf: &[PointResult],
    icount: &[Icount],
) -> (Vec<String>, Vec<String>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    let mut attempt = |name: String, r: PlotResult| match r {
        Ok(()) => files.push(name),
        Err(e) => errors.push(format!("{name}: {e}")),
    };
    if let Some(m) = m {
        for bdev in &m.bdevs {
            for g in m.groups.iter().filter(|g| !m.workloads_for(**g).is_empty()) {
                let name = format!("{stem}-iops-{bdev}-{g}pg.svg");
                let r = iops_bars(&dir.join(&name), targets, m, perf, bdev, *g);
                attempt(name, r);
            }
        }
        let name = format!("{stem}-latency-cdf.svg");
        let r = latency_cdfs(&dir.join(&name), targets, perf);
        attempt(name, r);
    }
    if icount.iter().any(|i| i.skipped.is_none()) {
        let name = format!("{stem}-instructions.svg");
        let r = icount_bars(&dir.join(&name), targets, icount);
        attempt(name, r);
    }
    (files, errors)
}

fn iops_bars(
    path: &Path,
    targets: &[String],
    m: &Matrix,
    perf: &[PointResult],
    bdev: &str,
    groups: u32,
) -> PlotResult {
    let wls = m.workloads_for(groups);
    let n = wls.len();
    let point = |t: &str, wl: &str| {
        perf.iter()
            .find(|p| p.target == t && p.workload == wl && p.bdev == bdev && p.groups == groups)
            .and_then(|p| min_med_max(&p.samples.iter().map(|s| s.iops).collect::<Vec<_>>()))
    };
    let ymax = wls
        .iter()
        .flat_map(|w| targets.iter().filter_map(|t| point(t, w.name)).map(|v| v.2))
        .fold(10.0f64, f64::max)
        * 2.0;
    let root = SVGBackend::new(path, (1500, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let names: Vec<&str> = wls.iter().map(|w| w.name).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("IOPS, {bdev} bdev, {groups} poll group(s): median, whiskers min–max"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (1.0f64..ymax).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n + 2)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                names[i as usize].to_string()
            } else {
                String::new()
            }
        })
        .y_desc("IOPS (log)")
        .draw()?;
    let k = targets.len().max(1) as f64;
    let width = 0.8 / k;
    for (ti, t) in targets.iter().enumerate() {
        let color = COLORS[ti % COLORS.len()];
        let mut bars = Vec::new();
        let mut whiskers = Vec::new();
        for (wi, w) in wls.iter().enumerate() {
            if let Some((lo, med, hi)) = point(t, w.name) {
                let x0 = wi as f64 - 0.4 + ti as f64 * width;
                let xc = x0 + width / 2.0;
                bars.push(Rectangle::new(
                    [(x0, 1.0), (x0 + width * 0.9, med.max(1.0))],
                    color.filled(),
                ));
                whiskers.push(PathElement::new(
                    vec![(xc, lo.max(1.0)), (xc, hi.max(1.0))],
                    BLACK,
                ));
                whiskers.push(PathElement::new(
                    vec![
                        (xc - width / 4.0, hi.max(1.0)),
                        (xc + width / 4.0, hi.max(1.0)),
                    ],
                    BLACK,
                ));
                whiskers.push(PathElement::new(
                    vec![
                        (xc - width / 4.0, lo.max(1.0)),
                        (xc + width / 4.0, lo.max(1.0)),
                    ],
                    BLACK,
                ));
            }
        }
        let label = if bars.is_empty() {
            format!("{t} (no data: skipped)")
        } else {
            t.clone()
        };
        chart
            .draw_series(bars)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart.draw_series(whiskers)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()?;
    root.present()?;
    Ok(())
}

fn latency_cdfs(path: &Path, targets: &[String], perf: &[PointResult]) -> PlotResult {
    let root = SVGBackend::new(path, (1400, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    for (panel, wl) in panels.iter().zip(["4k randread qd1", "4k randread qd32"]) {
        let curves: Vec<(usize, &PointResult)> = targets
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                perf.iter()
                    .find(|p| {
                        &p.target == t && p.workload == wl && p.bdev == "null" && p.groups == 1
                    })
                    .map(|p| (i, p))
            })
            .collect();
        let xmax = curves
            .iter()
            .flat_map(|(_, p)| p.cdf.iter().map(|c| c.0))
            .fold(10.0f64, f64::max)
            * 1.2;
        let xmin = curves
            .iter()
            .flat_map(|(_, p)| p.cdf.iter().map(|c| c.0))
            .fold(xmax, f64::min)
            .max(0.1)
            * 0.8;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("latency CDF, {wl}, null bdev, 1 poll group"),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((xmin..xmax).log_scale(), 0f64..100f64)?;
        chart
            .configure_mesh()
            .x_desc("latency µs (log)")
            .y_desc("% of I/Os ≤")
            .draw()?;
        for (i, p) in curves {
            if p.cdf.is_empty() {
                continue;
            }
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    p.cdf.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(p.target.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn icount_bars(path: &Path, targets: &[String], icount: &[Icount]) -> PlotResult {
    let mut wls: Vec<&str> = icount.iter().map(|i| i.workload.as_str()).collect();
    wls.dedup();
    let n = wls.len();
    let ymax = icount.iter().map(|i| i.ir_per_io).fold(100.0f64, f64::max) * 1.2;
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "instructions per I/O inside the transport (callgrind)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n + 2)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < wls.len() {
                wls[i as usize].to_string()
            } else {
                String::new()
            }
        })
        .y_desc("Ir per I/O")
        .draw()?;
    let width = 0.8 / targets.len().max(1) as f64;
    for (ti, t) in targets.iter().enumerate() {
        let color = COLORS[ti % COLORS.len()];
        let bars: Vec<_> = wls
            .iter()
            .enumerate()
            .filter_map(|(wi, w)| {
                let v = icount
                    .iter()
                    .find(|i| &i.target == t && i.workload == *w && i.skipped.is_none())?;
                let x0 = wi as f64 - 0.4 + ti as f64 * width;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.9, v.ir_per_io)],
                    color.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(t.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf_run::Sample;

    #[test]
    fn writes_svg_files() {
        let dir = std::env::temp_dir().join(format!("compare-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = Matrix::new(true, 3);
        let s = |iops| Sample {
            iops,
            mib_s: 1.0,
            mean_us: 1.0,
            p50_us: None,
            p99_us: None,
            p999_us: None,
            cpu_us_per_io: None,
        };
        let perf = vec![PointResult {
            target: "a".into(),
            workload: m.workloads[0].name,
            bdev: "null",
            groups: 1,
            samples: vec![s(100.0), s(200.0), s(150.0)],
            cdf: vec![(5.0, 10.0), (10.0, 90.0), (50.0, 100.0)],
            failures: vec![],
            skipped: None,
        }];
        let (files, errors) = write_all(&dir, "t", &["a".into(), "b".into()], Some(&m), &perf, &[]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(files, vec!["t-iops-null-1pg.svg", "t-latency-cdf.svg"]);
        let svg = std::fs::read_to_string(dir.join(&files[0])).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("4k randread qd1"));
        assert!(svg.contains("b (no data: skipped)"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
